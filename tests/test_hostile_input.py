"""Hostile client input (issue 13): frames that are valid CBOR but built to
crash or stall a server. Decoding refuses them (multiraft.protocol), error
messages never format a client's value unboundedly (workers/requests.py), and
a real worker keeps serving other requests after each one.

The in-process workers run on trio's MockClock (pytest-trio's autojump_clock),
so the bounds below are virtual seconds: no real sleeps."""

from __future__ import annotations

import cbor2
import pytest
import trio

from multiraft import protocol
from workers.requests import BadRequest, parse_request
from workers.testing import open_cluster

BOUND = 120  # virtual seconds

# [x, "ping"] where x is a list holding itself: tag 28 marks a value shareable,
# tag 29 refers back to it. 10 bytes. cbor2.loads builds the cycle, and
# encoding the answer (which echoes the req_id) raised CBOREncodeValueError.
CYCLIC_REQ_ID = bytes.fromhex("82" "d81c81d81d00" "6470696e67")


def _shared_dag(levels: int) -> bytes:
    """A list whose every level holds the one below twice (the second time by
    shared reference): 2**levels leaves in about 5 bytes per level."""
    doc = b"\xd8\x1c\x81\x01"  # level 0: shareable [1]
    for i in range(levels):
        # shareables are numbered in the order they start: level i's is levels - i
        doc = b"\xd8\x1c\x82" + doc + cbor2.dumps(cbor2.CBORTag(29, levels - i))
    return doc


def _frame(*items: bytes) -> bytes:
    """The CBOR bytes of a list of already encoded items (fewer than 24)."""
    return bytes([0x80 | len(items)]) + b"".join(items)


def test_shared_dag_helper_is_what_it_claims():
    # the reference decoder builds 2**levels leaves from a few hundred bytes
    doc = _shared_dag(20)
    assert len(doc) < 250
    value = cbor2.loads(doc)
    for _ in range(20):
        assert value[0] is value[1]
        value = value[0]


@pytest.mark.parametrize(
    "body, why",
    [
        (CYCLIC_REQ_ID, "tag"),
        (_frame(_shared_dag(12), cbor2.dumps("ping")), "tag"),
        (_frame(cbor2.dumps(1), cbor2.dumps("put"), _shared_dag(12)), "tag"),
        (b"\x82\x01" + b"\x81" * 40 + b"\x01", "depth"),
        (cbor2.dumps([1, "put", 1 << 20000]), "beyond 128 bits"),
        (cbor2.dumps([1, "put", -(1 << 200)]), "beyond 128 bits"),
        (_frame(cbor2.dumps(1), cbor2.dumps(cbor2.CBORTag(1, 0))), "tag"),  # a datetime
        (_frame(cbor2.dumps(1), cbor2.dumps(cbor2.CBORTag(35, "(a+)+$"))), "tag"),  # a regex
        (_frame(cbor2.dumps(1), cbor2.dumps(cbor2.CBORTag(258, [1]))), "tag"),  # a set
        (_frame(cbor2.dumps(1), cbor2.dumps(cbor2.CBORTag(12345, b""))), "tag"),
        (cbor2.dumps(["x" * 8, "x" * 8], string_referencing=True), "tag"),
        (cbor2.dumps([1, "ping"]) + b"\x00", "after the CBOR document"),
        (b"\x9b\x00\x00\x00\x10\x00\x00\x00\x00", "malformed"),  # claims 2**36 items
    ],
    ids=["cyclic", "dag-req-id", "dag-arg", "deep", "bignum", "neg-bignum", "datetime", "regex",
         "set", "unknown-tag", "stringref", "trailing", "huge-length"],
)
def test_decode_refuses_shared_refs_tags_deep_nesting_and_huge_ints(body, why):
    for text_keys_only in (False, True):
        with pytest.raises(protocol.ProtocolError, match=why):
            protocol.decode_body(body, text_keys_only=text_keys_only)


def test_decode_keeps_plain_frames_and_128_bit_ints():
    frame = [1, "put", 3, b"k", b"v", 2**64 - 1, -(2**64)]
    assert protocol.decode_body(cbor2.dumps(frame), text_keys_only=True) == frame
    assert protocol.decode_body(cbor2.dumps([1, 2**100]))[1] == 2**100
    # answers key maps by group id; requests never do
    assert protocol.decode_body(cbor2.dumps([1, {3: "x"}])) == [1, {3: "x"}]
    with pytest.raises(protocol.ProtocolError, match="map key"):
        protocol.decode_body(cbor2.dumps([1, {3: "x"}]), text_keys_only=True)


def test_frame_buffer_decodes_strictly():
    buf = protocol.FrameBuffer(text_keys_only=True)
    buf.feed(len(CYCLIC_REQ_ID).to_bytes(4, "big") + CYCLIC_REQ_ID)
    with pytest.raises(protocol.ProtocolError):
        buf.frames()


def test_an_unencodable_answer_becomes_an_error_answer():
    cyclic: list = []
    cyclic.append(cyclic)
    data, why = protocol.encode_response(7, "ok", cyclic)
    assert why and "cyclic" in why
    assert protocol.decode_body(data[4:]) == [7, "error", why]
    data, why = protocol.encode_response(cyclic, "ok", 1)  # the req_id itself
    assert protocol.decode_body(data[4:])[:2] == [None, "error"]
    assert protocol.encode_response(7, "ok", 1) == (protocol.encode([7, "ok", 1]), None)


@pytest.mark.parametrize(
    "frame",
    [
        [1, "put", 10**5000, b"k", b"v", 0, 0],
        [1, "put", 0, b"k", b"v", -(10**5000), 0],
        [1, "get", 0, b"k", 10**5000],
        [1, "scan", 0, b"", b"", 10**5000],
        [1, "incr", 0, b"k", 10**5000, 0, 0],
        [1, "putif", 0, b"k", b"v", 10**5000, 0, 0],
        [1, "transfer_leader", 0, 10**5000],
        [1, 10**5000],
        [1, "x" * 100_000],
        [1, "get", 0, b"k", "y" * 100_000],
        [1, "mput", 0, [[b"k", b"v"], [10**5000] * 3], 0, 0],
    ],
)
def test_huge_ints_and_strings_are_refused_with_short_messages(frame):
    with pytest.raises(BadRequest) as info:
        parse_request(frame)
    assert info.value.req_id == 1
    assert len(info.value.message) < 300


def test_out_of_u64_ints_are_refused_naming_their_size():
    with pytest.raises(BadRequest, match="an integer of 101 bits"):
        parse_request([1, "get", 2**100, b"k"])
    with pytest.raises(BadRequest, match="an integer of 101 bits"):
        parse_request([1, "scan", 0, b"", b"", 2**100])


async def _answers(stream, n: int) -> list:
    buf = protocol.FrameBuffer()
    got: list = []
    while len(got) < n:
        data = await stream.receive_some(1 << 16)
        if not data:
            break
        buf.feed(data)
        got += buf.frames()
    return got


async def _closed(stream) -> bool:
    try:
        while await stream.receive_some(1 << 16):
            pass
    except trio.BrokenResourceError:
        pass
    return True


async def test_worker_survives_cyclic_dag_and_huge_int_frames(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, nodes=("n1",)) as cluster:
            leader = await cluster.wait_leader(0)
            worker = cluster.workers[leader]
            host, _, port = worker.client_address.rpartition(":")
            bad = [
                CYCLIC_REQ_ID,
                _frame(cbor2.dumps(1), cbor2.dumps("get"), _shared_dag(12), cbor2.dumps(b"k")),
                cbor2.dumps([1, "put", 1 << 20000, b"k", b"v", 0, 0]),
            ]
            for body in bad:
                stream = await trio.open_tcp_stream(host, int(port))
                await stream.send_all(len(body).to_bytes(4, "big") + body)
                assert await _closed(stream)  # dropped: not a valid frame
                await stream.aclose()
            assert worker.counters["client_bad_frames"] == len(bad)
            # a too-wide int that decodes is answered, and the connection serves on
            async with cluster.client(leader) as c:
                status, message = await c.call("get", 2**100, b"k")
                assert status == "error" and "an integer of 101 bits" in message
                assert await c.call("put", 0, b"k", b"v", 0, 0) == ["ok", False]
                assert await c.call("get", 0, b"k") == ["ok", b"v"]
