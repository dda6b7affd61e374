"""The nng transport on loopback: real sockets, so real time, but never a fixed
sleep to assert timing: every wait is on a condition, under a generous fail_after."""

from __future__ import annotations

from contextlib import asynccontextmanager

import cbor2
import pynng
import pytest
import trio

from multiraft import wire
from multiraft.raft.types import Entry, Message, MessageType
from multiraft.transport import STAT_NAMES, Transport, open_transport
from multiraft.wire import FrameKind, encode_frame, encode_raft_batch

A, B = "n1/w0", "n2/w0"
LOCAL = "tcp://127.0.0.1:0"
# Quick reconnects and stall checks, so down/up tests take milliseconds.
FAST = dict(reconnect_time_min_ms=10, reconnect_time_max_ms=40, stall_check_seconds=0.05)
BOUND = 10  # seconds: generous upper bound for anything below


def sealed(doc) -> bytes:
    """A frame of `doc` with a correct checksum, as a peer would send it."""
    return wire.seal_frame(cbor2.dumps(doc))


def append(i: int, data: bytes = b"x" * 16, frm: str = "n1", to: str = "n2") -> Message:
    return Message(MessageType.APPEND, frm, to, 3, 1, i, (Entry(2, i + 1, 0, data),), i)


def heartbeat(i: int) -> Message:
    return Message(MessageType.HEARTBEAT, "n2", "n1", 3, commit=i, context=i)


async def wait_until(predicate, timeout: float = BOUND) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.002)


async def collect(transport: Transport, count: int, timeout: float = BOUND) -> list:
    got: list = []
    with trio.fail_after(timeout):
        while len(got) < count:
            got.extend(await transport.receive_channel.receive())
    return got


@asynccontextmanager
async def connected_pair(**options):
    async with open_transport(A, LOCAL, **FAST, **options) as a, open_transport(
        B, LOCAL, **FAST, **options
    ) as b:
        a.add_peer(B, b.listen_url)
        b.add_peer(A, a.listen_url)
        with trio.fail_after(BOUND):
            await a.wait_connected(B)
            await b.wait_connected(A)
        yield a, b


async def test_listen_url_resolves_the_ephemeral_port():
    async with open_transport(A, LOCAL) as a:
        assert a.listen_url.startswith("tcp://127.0.0.1:")
        assert int(a.listen_url.rsplit(":", 1)[1]) > 0
        assert set(STAT_NAMES) <= set(a.stats())
        assert all(v == 0 for v in a.stats().values())


async def test_thousands_of_messages_both_ways_in_batches():
    n = 5000
    async with connected_pair() as (a, b):
        sent_ab = [(i % 97, append(i)) for i in range(n)]
        sent_ba = [(i % 89, heartbeat(i)) for i in range(n)]

        async def produce(src, dst, items):
            for k in range(0, len(items), 250):
                for group, msg in items[k : k + 250]:
                    assert src.send(dst, group, msg)
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, a, B, sent_ab)
            nursery.start_soon(produce, b, A, sent_ba)
            got_b = await collect(b, n)
            got_a = await collect(a, n)
        # One connection per direction: order is kept, nothing lost.
        assert got_b == sent_ab
        assert got_a == sent_ba
        sa, sb = a.stats(), b.stats()
        assert sa["messages_sent"] == sb["messages_received"] == n
        assert sb["messages_sent"] == sa["messages_received"] == n
        # Coalesced: far fewer frames than messages, never more than the batch max.
        assert n / 256 <= sa["frames_sent"] < n / 10
        assert sa["frames_sent"] == sb["frames_received"]
        assert sa["bytes_sent"] == sb["bytes_received"] > 0
        for s in (sa, sb):
            assert s["frames_malformed"] == s["dropped_outbox_full"] == s["dropped_peer_down"] == 0


async def test_batch_messages_max_bounds_frames():
    async with connected_pair(batch_messages_max=10) as (a, b):
        for i in range(100):
            assert a.send(B, 1, append(i))
        got = await collect(b, 100)
        assert [m for _, m in got] == [append(i) for i in range(100)]
        assert a.stats()["frames_sent"] >= 10


async def test_client_and_admin_frames_share_the_sockets():
    async with connected_pair() as (a, b):
        assert a.send(B, 5, append(1))
        assert a.send_frame(B, FrameKind.CLIENT_REQUEST, {"op": "get", "key": b"k", "id": 7})
        assert a.send_frame(B, FrameKind.ADMIN, ["status"])
        assert b.send_frame(A, FrameKind.CLIENT_RESPONSE, {"id": 7, "value": None})
        assert a.send(B, 6, append(2))
        with trio.fail_after(BOUND):
            f1 = await b.frame_channel.receive()
            f2 = await b.frame_channel.receive()
            f3 = await a.frame_channel.receive()
        assert (f1.src, f1.dst, f1.kind, f1.payload) == (
            A, B, FrameKind.CLIENT_REQUEST, {"op": "get", "key": b"k", "id": 7},
        )
        assert (f2.kind, f2.payload) == (FrameKind.ADMIN, ["status"])
        assert (f3.src, f3.kind, f3.payload) == (B, FrameKind.CLIENT_RESPONSE, {"id": 7, "value": None})
        assert await collect(b, 2) == [(5, append(1)), (6, append(2))]
        with pytest.raises(ValueError):
            a.send_frame(B, FrameKind.RAFT, [])
        with pytest.raises(TypeError):
            a.send_frame(B, FrameKind.ADMIN, [object()])


async def test_bad_frames_are_counted_and_dropped_and_delivery_goes_on():
    limit = 4096
    async with connected_pair(frame_size_bytes_max=limit) as (a, b):
        raw = pynng.Push0(send_timeout=2000)
        raw.dial(b.listen_url, block=True)
        try:
            ok_msg = append(1)
            V = wire.FORMAT_VERSION
            raw.send(b"\xff\x00 this is not cbor")
            raw.send(sealed([V, A, B, 1, [1, 2, 3]]))  # truncated message
            raw.send(sealed([V, A, B, 1, [0, 14, "n1", "n2", 1, 0, 0, 0, 0, False, 0, None, None]]))
            raw.send(b"\x00" * (limit + 1))  # oversized, but within nng's hard cap
            raw.send(sealed([V + 1, A, B, 1, []]))  # a newer format version
            raw.send(encode_raft_batch(A, "n9/w9", [(1, ok_msg)]))  # someone else's
            raw.send(encode_raft_batch(A, B, [(1, ok_msg)]))  # fine, from a raw socket
            await wait_until(
                lambda: b.stats()["frames_misaddressed"] == 1 and b.stats()["messages_received"] == 1
            )
            s = b.stats()
            assert (s["frames_malformed"], s["frames_oversized"], s["frames_bad_version"]) == (3, 1, 1)
            assert s["frames_received"] == 1
            assert await collect(b, 1) == [(1, ok_msg)]

            # Past nng's own hard cap (2 x limit), nng drops the connection itself.
            raw.send(b"\x00" * (3 * limit))
            # The transport carries on as if nothing happened.
            for i in range(300):
                assert a.send(B, 2, append(i))
            got = await collect(b, 300)
            assert got == [(2, append(i)) for i in range(300)]
            assert b.stats()["frames_malformed"] == 3
        finally:
            raw.close()


async def test_unknown_peer_and_removed_peer():
    async with connected_pair() as (a, b):
        assert not a.send("n9/w9", 1, append(1))
        assert not a.send_frame("n9/w9", FrameKind.ADMIN, [])
        assert a.stats()["dropped_unknown_peer"] == 2
        assert a.peers() == {B: b.listen_url}
        with pytest.raises(ValueError):
            a.add_peer(B, b.listen_url)
        a.remove_peer(B)
        assert a.peers() == {} and not a.is_connected(B)
        assert not a.send(B, 1, append(1))
        assert a.stats()["dropped_unknown_peer"] == 3
        # And back again.
        a.add_peer(B, b.listen_url)
        with trio.fail_after(BOUND):
            await a.wait_connected(B)
        assert a.send(B, 1, append(1))
        assert await collect(b, 1) == [(1, append(1))]


async def test_peer_down_drops_without_blocking_and_delivery_resumes(tmp_path):
    url_b = f"ipc://{tmp_path}/b.ipc"
    async with open_transport(A, LOCAL, **FAST) as a:
        a.add_peer(B, url_b)  # nobody there yet: must not hang
        assert not a.is_connected(B)
        with trio.fail_after(1):  # send() is synchronous; this only guards a hang
            results = [a.send(B, 1, append(i)) for i in range(1000)]
        assert not any(results)
        assert a.stats()["dropped_peer_down"] == 1000
        assert a.stats()["peers_connected"] == 0

        for round_ in range(2):
            async with open_transport(B, url_b, **FAST) as b:
                with trio.fail_after(BOUND):
                    await a.wait_connected(B)
                assert a.stats()["peers_connected"] == 1
                for i in range(500):
                    assert a.send(B, round_, append(i))
                assert await collect(b, 500) == [(round_, append(i)) for i in range(500)]
            # b is gone: a notices the connection closed, then drops at send().
            await wait_until(lambda: not a.is_connected(B))
            before = a.stats()["dropped_peer_down"]
            assert not a.send(B, 1, append(0))
            assert a.stats()["dropped_peer_down"] == before + 1
        assert a.stats()["messages_sent"] == 1000


async def test_full_outbox_drops_and_counts():
    async with open_transport(B, LOCAL, **FAST) as b:
        a = Transport(A, LOCAL, outbox_messages_max=50, **FAST)
        a.add_peer(B, b.listen_url)
        with trio.fail_after(BOUND):
            await a.wait_connected(B)  # nng connects even before a runs
        # a's sender is not running yet, so nothing drains the outbox.
        results = [a.send(B, 1, append(i)) for i in range(60)]
        assert results == [True] * 50 + [False] * 10
        assert a.stats()["dropped_outbox_full"] == 10
        assert a.stats()["outbox_messages"] == 50
        assert not a.send_frame(B, FrameKind.ADMIN, ["x"])
        assert a.stats()["dropped_outbox_full"] == 11
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            got = await collect(b, 50)
            assert got == [(1, append(i)) for i in range(50)]
            assert a.stats()["outbox_messages"] == 0
            nursery.cancel_scope.cancel()


async def test_too_large_messages_are_dropped_and_big_batches_split():
    limit = 8192
    async with connected_pair(frame_size_bytes_max=limit) as (a, b):
        assert a.send(B, 1, append(0, b"z" * (limit + 1)))  # queued, then dropped
        big = [append(i, bytes([i]) * 1500) for i in range(1, 21)]
        for msg in big:
            assert a.send(B, 2, msg)
        got = await collect(b, len(big))
        assert [m for _, m in got] == big
        sa = a.stats()
        assert sa["dropped_too_large"] == 1
        assert sa["frames_sent"] >= 4  # ~5 messages of 1.5 KB per 8 KB frame
        assert b.stats()["frames_oversized"] == 0
        # A non-raft frame over the limit is refused at once.
        assert not a.send_frame(B, FrameKind.CLIENT_RESPONSE, [b"q" * limit])
        assert a.stats()["dropped_too_large"] == 2


async def test_estimate_shortfall_splits_instead_of_dropping(monkeypatch):
    # If the size estimate is (wrongly) tiny, the sender must still never emit
    # a frame over the limit: it splits the batch and requeues the rest.
    limit = 8192
    monkeypatch.setattr(wire, "message_size_estimate", lambda msg: 1)
    async with connected_pair(frame_size_bytes_max=limit) as (a, b):
        big = [append(i, b"w" * 1000) for i in range(40)]
        for msg in big:
            assert a.send(B, 3, msg)
        got = await collect(b, len(big))
        assert [m for _, m in got] == big
        assert a.stats()["dropped_too_large"] == 0
        assert b.stats()["frames_oversized"] == 0


async def test_full_inbox_applies_backpressure_without_loss():
    n = 2000
    async with connected_pair(inbox_batches_max=1, batch_messages_max=20) as (a, b):
        for i in range(n):
            assert a.send(B, 4, append(i))
        # Nobody reads b's channel yet: its receive loop ends up waiting on it.
        await wait_until(lambda: b.stats()["inbox_full_waits"] >= 1)
        await wait_until(lambda: a.stats()["messages_sent"] == n)
        got = await collect(b, n)
        assert got == [(4, append(i)) for i in range(n)]


async def test_non_raft_frames_dropped_when_their_channel_is_full():
    async with connected_pair(inbox_frames_max=2) as (a, b):
        for i in range(5):
            assert a.send_frame(B, FrameKind.CLIENT_REQUEST, [i])
        assert a.send(B, 1, append(1))
        # Raft traffic is not held up behind the unread client frames.
        assert await collect(b, 1) == [(1, append(1))]
        await wait_until(lambda: b.stats()["dropped_inbox_full"] == 3)
        assert [(await b.frame_channel.receive()).payload for _ in range(2)] == [[0], [1]]


async def test_run_in_callers_nursery_and_clean_shutdown():
    t = Transport(A, LOCAL)
    url = t.listen_url
    async with trio.open_nursery() as nursery:
        assert await nursery.start(t.run) is t
        with pytest.raises(RuntimeError):
            t.close()  # running: cancel run() instead
        nursery.cancel_scope.cancel()
    # Closed: both channels report end-of-channel, the port is free again.
    with pytest.raises(trio.EndOfChannel):
        await t.receive_channel.receive()
    with pytest.raises(trio.EndOfChannel):
        await t.frame_channel.receive()
    with pytest.raises(RuntimeError):
        await t.run()
    again = Transport(A, url)
    again.close()
    again.close()  # idempotent


async def test_open_transport_passes_body_exceptions_through():
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with open_transport(A, LOCAL) as t:
            t.add_peer(B, "tcp://127.0.0.1:9")  # never connects: must not hang shutdown
            assert not t.send(B, 1, append(1))
            raise Boom()


def test_constructor_validates_and_never_leaks_the_socket():
    with pytest.raises(ValueError):
        Transport("", LOCAL)
    with pytest.raises(pynng.NNGException):
        Transport(A, "nonsense://here")
    t = Transport(A, LOCAL)
    with pytest.raises(pynng.NNGException):
        Transport(B, t.listen_url)  # address in use
    t.close()


async def test_generic_frame_helper_matches_transport_encoding():
    # What send_frame puts on the wire is exactly wire.encode_frame's output.
    async with open_transport(B, LOCAL) as b:
        raw = pynng.Push0(send_timeout=2000)
        raw.dial(b.listen_url, block=True)
        try:
            raw.send(encode_frame(FrameKind.ADMIN, A, B, {"k": [1, 2]}))
            with trio.fail_after(BOUND):
                frame = await b.frame_channel.receive()
            assert (frame.src, frame.payload) == (A, {"k": [1, 2]})
        finally:
            raw.close()


async def test_unencodable_message_is_dropped_alone():
    async with connected_pair() as (a, b):
        bad = append(2)._replace(context=object())  # a core bug: not CBOR
        assert a.send(B, 1, append(1))
        assert a.send(B, 1, bad)
        assert a.send(B, 1, append(3))
        assert await collect(b, 2) == [(1, append(1)), (1, append(3))]
        assert a.stats()["dropped_unencodable"] == 1


@asynccontextmanager
async def raw_sender_to(transport: Transport):
    """A bare pynng socket dialed to `transport`: sends whatever bytes a test likes."""
    raw = pynng.Push0(send_timeout=2000)
    raw.dial(transport.listen_url, block=True)
    try:
        yield raw
    finally:
        raw.close()


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


async def test_corrupted_frames_are_dropped_counted_and_the_transport_keeps_working():
    async with connected_pair() as (a, b), raw_sender_to(b) as raw:
        good = encode_raft_batch(A, B, [(1, append(7, b"v" * 64))])
        # A bit flipped in an entry's data, in its index, in the checksum itself.
        value_bit = 8 * good.index(b"v" * 64) + 3
        for bit in (value_bit, 8 * 30, len(good) * 8 - 1):
            raw.send(flip_bit(good, bit))
        raw.send(good)  # the same frame intact: delivered
        assert await collect(b, 1) == [(1, append(7, b"v" * 64))]
        await wait_until(lambda: b.stats()["frames_corrupted"] == 3)
        s = b.stats()
        assert s["frames_received"] == 1 and s["messages_received"] == 1
        assert s["frames_malformed"] == s["frames_bad_version"] == 0
        # Normal traffic goes on over the peer connection.
        for i in range(50):
            assert a.send(B, 2, append(i))
        assert await collect(b, 50) == [(2, append(i)) for i in range(50)]
        assert b.stats()["frames_corrupted"] == 3


async def test_zero_length_message_does_not_kill_the_receive_loop():
    # pynng's recv raises RuntimeError ("cannot use unpack() on <cdata 'char *'
    # NULL>") for an empty nng message; the loop must count it and go on.
    async with connected_pair() as (a, b), raw_sender_to(b) as raw:
        raw.send(b"")
        raw.send(b"")
        raw.send(encode_raft_batch(A, B, [(3, append(1))]))
        assert await collect(b, 1) == [(3, append(1))]
        assert b.stats()["frames_malformed"] == 2
        for i in range(20):
            assert a.send(B, 4, append(i))
        assert await collect(b, 20) == [(4, append(i)) for i in range(20)]
