"""Worker-to-worker transport: nng sockets driven from trio, frames from multiraft.wire.

Each worker owns one `pynng.Pull0` socket listening on its own address (all
inbound frames, from every peer) and one `pynng.Push0` socket per remote worker,
dialed without blocking (all outbound frames to that worker). docs/wire.md says
why this pattern and not Pair or Req/Rep.

Sockets are driven through their pollable descriptors (`wait_readable(recv_fd)`
then `recv(block=False)` until `TryAgain`; likewise `send_fd` for sends), never
through pynng's asend/arecv, which cost ~8x more CPU per message under trio.

Outbound, `send()` is a plain function that never blocks: it appends to the
peer's bounded outbox or drops the message and counts why (Raft tolerates loss).
One sender task per peer coalesces whatever is queued into one frame.

Inbound, one receive loop decodes frames. Bad frames (malformed, oversized,
unknown version, failing their checksum, addressed to another worker) are
counted and dropped, and nothing a peer sends ends the loop. Raft
batches go to `receive_channel` (bounded; a full channel back-pressures the
receive loop, hence nng, TCP and finally the senders' outboxes, which drop).
Other kinds go to `frame_channel` (bounded; dropped and counted when full, so a
slow client-frame consumer never stalls Raft).

Consumers should drain a channel with `receive_nowait()` after each
`await receive()`: every `await receive()` is a scheduling point, so taking one
batch per await lets the channel fill and throttles the receive loop.

All methods must be called from the trio thread that runs `run()`.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pynng
import trio

from multiraft import wire
from multiraft.wire import Frame, FrameError, FrameKind, Message

__all__ = ["Transport", "open_transport", "STAT_NAMES"]

#: Counter names in Transport.stats(); all start at 0.
STAT_NAMES = (
    "frames_sent",  # frames handed to nng (raft and other kinds)
    "frames_received",  # frames accepted: decoded, addressed to us, delivered
    "messages_sent",  # raft messages in frames_sent
    "messages_received",  # raft messages in frames_received
    "bytes_sent",
    "bytes_received",  # of accepted frames
    "dropped_outbox_full",  # send()/send_frame() on a full outbox
    "dropped_peer_down",  # no connection to the peer (at send, or queued when it went)
    "dropped_unknown_peer",  # send() to an address never added (or removed)
    "dropped_too_large",  # one message or frame alone exceeds frame_size_bytes_max
    "dropped_unencodable",  # a message cbor2 could not encode (our bug; logged once)
    "dropped_inbox_full",  # a non-raft frame while frame_channel was full
    "dropped_inbox_closed",  # the consumer closed its receive channel
    "frames_malformed",  # not a frame of this format (also: an empty nng message)
    "frames_oversized",
    "frames_bad_version",  # an older or newer format version
    "frames_corrupted",  # the crc32 trailer does not match: damaged on the way
    "frames_misaddressed",  # a valid frame whose target is not this worker
    "inbox_full_waits",  # times the receive loop waited on a full receive_channel
    "send_stalls",  # times a sender waited for nng to accept a frame
)

_RAFT = FrameKind.RAFT
_log = logging.getLogger(__name__)


class _Peer:
    """One remote worker: its push socket, its outbox, its sender's state."""

    __slots__ = (
        "address",
        "url",
        "sock",
        "send_fd",
        "outbox",
        "pipes",
        "wakeup",
        "connected",
        "cancel_scope",
        "removed",
    )

    def __init__(self, address: str, url: str, sock: pynng.Socket) -> None:
        self.address = address
        self.url = url
        self.sock = sock
        self.send_fd: int | None = None
        # Items: (group, Message) for raft, or bytes for a pre-encoded other frame.
        self.outbox: deque[Any] = deque()
        # Ids of the live nng pipes (connections). Written by nng's threads from
        # pipe callbacks; read (truthiness only) from the trio thread.
        self.pipes: set[int] = set()
        # Set by send() when the sender is idle and something was queued.
        self.wakeup: trio.Event | None = None
        # Set (from the trio thread) when a pipe comes up; for wait_connected().
        self.connected = trio.Event()
        self.cancel_scope = trio.CancelScope()
        self.removed = False


def _bound_url(requested: str, listener: pynng.Listener) -> str:
    """The URL peers should dial: `requested` with an ephemeral port filled in."""
    if requested.startswith("tcp://"):
        host, _, port = requested[len("tcp://") :].rpartition(":")
        if port == "0":
            # pynng reports the port in network byte order.
            bound = socket.ntohs(listener.local_address.port)
            return f"tcp://{host}:{bound}"
    return requested


class Transport:
    """The nng endpoint of one worker. See the module docstring and docs/wire.md.

    The listening socket is bound in the constructor (so `listen_url`, with any
    ephemeral port resolved, is known before `run()`); everything is closed when
    `run()` ends, or by `close()` if it never runs.
    """

    def __init__(
        self,
        address: str,
        listen_url: str,
        *,
        outbox_messages_max: int = 10_000,
        batch_messages_max: int = 256,
        frame_size_bytes_max: int = wire.FRAME_SIZE_BYTES_MAX,
        inbox_batches_max: int = 256,
        inbox_frames_max: int = 256,
        reconnect_time_min_ms: int = 100,
        reconnect_time_max_ms: int = 1_000,
        send_buffer_frames: int = 8,
        recv_buffer_frames: int = 8,
        stall_check_seconds: float = 0.2,
        checkpoint_every_frames: int = 16,
    ) -> None:
        if not (0 < len(address) <= wire.ADDRESS_CHARS_MAX):
            raise ValueError(f"bad worker address {address!r}")
        if batch_messages_max < 1 or outbox_messages_max < 1:
            raise ValueError("batch_messages_max and outbox_messages_max must be >= 1")
        self.address = address
        self._outbox_max = outbox_messages_max
        self._batch_max = batch_messages_max
        self._frame_max = frame_size_bytes_max
        self._reconnect = (reconnect_time_min_ms, reconnect_time_max_ms)
        self._send_buffer = send_buffer_frames
        self._stall_check = stall_check_seconds
        self._checkpoint_every = max(1, checkpoint_every_frames)
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._peers: dict[str, _Peer] = {}
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._started = False
        self._closed = False

        self._raft_send, self.receive_channel = trio.open_memory_channel[
            list[tuple[int, Message]]
        ](inbox_batches_max)
        self._frame_send, self.frame_channel = trio.open_memory_channel[Frame](
            inbox_frames_max
        )
        # nng's own hard limit: a frame over it closes the connection, unread
        # (and uncounted). Between frame_size_bytes_max and this, frames are read
        # and counted as frames_oversized, so a misconfigured peer is visible.
        self._pull = pynng.Pull0(
            recv_max_size=2 * frame_size_bytes_max,
            recv_buffer_size=recv_buffer_frames,
        )
        try:
            listener = self._pull.listen(listen_url)
            self.listen_url = _bound_url(listen_url, listener)
            self._recv_fd = self._pull.recv_fd
        except BaseException:
            self._pull.close()
            raise

    # -- lifecycle ---------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the receive loop and one sender per peer until cancelled.

        Use `await nursery.start(transport.run)`, or `open_transport()`. On
        exit (cancellation) every socket is closed and both receive channels
        see end-of-channel.
        """
        if self._started or self._closed:
            raise RuntimeError("a Transport runs once")
        self._started = True
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._receive_loop)
                for peer in self._peers.values():
                    nursery.start_soon(self._sender, peer)
                task_status.started(self)
        finally:
            self._nursery = None
            self._close()

    def close(self) -> None:
        """Close a Transport whose run() never started (idempotent)."""
        if self._nursery is not None:
            raise RuntimeError("cancel run() to stop a running Transport")
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        in_trio = self._in_trio()
        for peer in list(self._peers.values()):
            self._close_peer_socket(peer, in_trio)
        if in_trio:
            _forget_fd(self._recv_fd)
        self._pull.close()
        self._raft_send.close()
        self._frame_send.close()

    def _in_trio(self) -> bool:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return False
        return True

    # -- peers ------------------------------------------------------------

    def add_peer(self, address: str, url: str) -> None:
        """Start (non-blocking) dialing the worker `address` at `url`.

        Returns at once; the connection comes up in the background and is
        re-established by nng whenever it drops (reconnect_time_min/max).
        """
        if self._closed:
            raise RuntimeError("transport is closed")
        if address in self._peers:
            raise ValueError(f"peer {address!r} already added")
        sock = pynng.Push0(
            send_buffer_size=self._send_buffer,
            reconnect_time_min=self._reconnect[0],
            reconnect_time_max=self._reconnect[1],
        )
        peer = _Peer(address, url, sock)
        try:
            # Callbacks before dialing, so no connection is missed.
            sock.add_post_pipe_connect_cb(lambda pipe: self._on_pipe_up(peer, pipe))
            sock.add_post_pipe_remove_cb(lambda pipe: peer.pipes.discard(pipe.id))
            peer.send_fd = sock.send_fd
            # block=False: never wait for the peer; nng retries in the background
            # (a blocking dial to a down peer would fail, and a blocking send
            # after a failed background dial would hang: DESIGN §12).
            sock.dial(url, block=False)
        except BaseException:
            sock.close()
            raise
        self._peers[address] = peer
        if self._nursery is not None:
            self._nursery.start_soon(self._sender, peer)

    def remove_peer(self, address: str) -> None:
        """Forget `address`: its queued messages are dropped, its socket closed."""
        peer = self._peers.pop(address)
        peer.removed = True
        self._stats["dropped_unknown_peer"] += len(peer.outbox)
        peer.outbox.clear()
        if self._nursery is not None:
            peer.cancel_scope.cancel()  # the sender closes the socket on its way out
        else:
            self._close_peer_socket(peer, self._in_trio())

    def peers(self) -> dict[str, str]:
        """address -> url of every peer."""
        return {a: p.url for a, p in self._peers.items()}

    def is_connected(self, address: str) -> bool:
        peer = self._peers.get(address)
        return bool(peer is not None and peer.pipes)

    async def wait_connected(self, address: str) -> None:
        """Wait until there is a live connection to `address` (for tests, startup)."""
        peer = self._peers[address]
        if self._token is None:
            self._token = trio.lowlevel.current_trio_token()
        while not peer.pipes:
            if peer.connected.is_set():
                peer.connected = trio.Event()
            await peer.connected.wait()

    def _on_pipe_up(self, peer: _Peer, pipe: pynng.Pipe) -> None:
        # Runs on an nng thread.
        peer.pipes.add(pipe.id)
        token = self._token
        if token is not None:
            try:
                token.run_sync_soon(_set_connected, peer)
            except trio.RunFinishedError:
                pass

    def _close_peer_socket(self, peer: _Peer, in_trio: bool) -> None:
        if in_trio and peer.send_fd is not None:
            _forget_fd(peer.send_fd)
        peer.sock.close()

    # -- sending ----------------------------------------------------------

    def send(self, address: str, group: int, msg: Message) -> bool:
        """Queue one raft message for `address`. Never blocks.

        Returns False (and counts why) if it was dropped: unknown peer, peer
        down, or outbox full. True means queued, not delivered.
        """
        peer = self._peers.get(address)
        if peer is None:
            self._stats["dropped_unknown_peer"] += 1
            return False
        if not peer.pipes:
            self._stats["dropped_peer_down"] += 1
            return False
        outbox = peer.outbox
        if len(outbox) >= self._outbox_max:
            self._stats["dropped_outbox_full"] += 1
            return False
        outbox.append((group, msg))
        wakeup = peer.wakeup
        if wakeup is not None:
            peer.wakeup = None
            wakeup.set()
        return True

    def send_frame(self, address: str, kind: FrameKind | int, payload: Any) -> bool:
        """Queue one non-raft frame (CLIENT_REQUEST, CLIENT_RESPONSE, ADMIN).

        `payload` is a plain list or dict (see wire.encode_frame; TypeError if
        not). It keeps its order relative to raft messages sent to the same peer.
        Returns False if dropped, like send().
        """
        kind = FrameKind(kind)
        if kind is _RAFT:
            raise ValueError("use send() for raft messages")
        data = wire.encode_frame(kind, self.address, address, payload)
        peer = self._peers.get(address)
        if peer is None:
            self._stats["dropped_unknown_peer"] += 1
            return False
        if len(data) > self._frame_max:
            self._stats["dropped_too_large"] += 1
            return False
        if not peer.pipes:
            self._stats["dropped_peer_down"] += 1
            return False
        if len(peer.outbox) >= self._outbox_max:
            self._stats["dropped_outbox_full"] += 1
            return False
        peer.outbox.append(data)
        wakeup = peer.wakeup
        if wakeup is not None:
            peer.wakeup = None
            wakeup.set()
        return True

    async def _sender(self, peer: _Peer) -> None:
        try:
            with peer.cancel_scope:
                outbox = peer.outbox
                while True:
                    if not outbox:
                        peer.wakeup = wakeup = trio.Event()
                        await wakeup.wait()
                        continue
                    data, count = self._next_frame(peer)
                    if data is not None:
                        await self._send_bytes(peer, data, count)
                    # Let the producers run (and fill the next batch).
                    await trio.lowlevel.checkpoint()
        finally:
            peer.wakeup = None
            if peer.removed:
                self._close_peer_socket(peer, True)

    def _next_frame(self, peer: _Peer) -> tuple[bytes | None, int]:
        """Pop the next frame's worth of the outbox and encode it."""
        outbox = peer.outbox
        first = outbox[0]
        if type(first) is bytes:  # a pre-encoded non-raft frame
            outbox.popleft()
            return first, 0
        limit = self._frame_max
        batch_max = self._batch_max
        estimate = wire.message_size_estimate
        items = []
        size = 64
        while outbox and len(items) < batch_max:
            item = outbox[0]
            if type(item) is bytes:
                break
            msg = item[1]
            if msg[6] or msg[11] is not None or type(msg[10]) is bytes:
                est = estimate(msg)
            else:
                est = 64
            if items and size + est > limit:
                break
            outbox.popleft()
            items.append(item)
            size += est
        while True:
            try:
                data = wire.encode_raft_batch(self.address, peer.address, items)
            except Exception:
                # A message we cannot encode is our own bug; it must not take
                # the worker down nor the rest of the batch with it.
                items = self._drop_unencodable(peer, items)
                if not items:
                    return None, 0
                continue
            if len(data) <= limit:
                return data, len(items)
            if len(items) == 1:
                self._stats["dropped_too_large"] += 1
                return None, 0
            # The estimate was short: send the first half now, requeue the rest.
            half = len(items) // 2
            outbox.extendleft(reversed(items[half:]))
            del items[half:]

    def _drop_unencodable(self, peer: _Peer, items: list) -> list:
        good = []
        for item in items:
            try:
                wire.encode_raft_batch(self.address, peer.address, [item])
            except Exception:
                if not self._stats["dropped_unencodable"]:
                    _log.exception("dropping a raft message that cannot be encoded: %r", item)
                self._stats["dropped_unencodable"] += 1
            else:
                good.append(item)
        return good

    async def _send_bytes(self, peer: _Peer, data: bytes, count: int) -> None:
        sock = peer.sock
        stats = self._stats
        while True:
            try:
                sock.send(data, block=False)
            except pynng.TryAgain:
                if not peer.pipes:
                    # Down: drop this frame and everything queued behind it.
                    stats["dropped_peer_down"] += (count or 1) + len(peer.outbox)
                    peer.outbox.clear()
                    return
                # Connected but nng's buffers are full: wait for room, checking
                # now and then whether the connection went away meanwhile.
                stats["send_stalls"] += 1
                with trio.move_on_after(self._stall_check):
                    await trio.lowlevel.wait_readable(peer.send_fd)
                continue
            stats["frames_sent"] += 1
            stats["messages_sent"] += count
            stats["bytes_sent"] += len(data)
            return

    # -- receiving --------------------------------------------------------

    async def _receive_loop(self) -> None:
        sock = self._pull
        recv = sock.recv
        recv_fd = self._recv_fd
        stats = self._stats
        limit = self._frame_max
        my_address = self.address
        raft_send = self._raft_send
        frame_send = self._frame_send
        decode = wire.decode_frame
        checkpoint_every = self._checkpoint_every
        since_checkpoint = 0
        while True:
            try:
                data = recv(block=False)
            except pynng.TryAgain:
                since_checkpoint = 0
                await trio.lowlevel.wait_readable(recv_fd)
                continue
            except RuntimeError:
                # pynng cannot return an empty nng message: ffi.unpack() of
                # its NULL buffer raises RuntimeError (the message is consumed).
                # A peer can send one at will; it is a malformed frame.
                stats["frames_malformed"] += 1
                continue
            since_checkpoint += 1
            if since_checkpoint >= checkpoint_every:
                since_checkpoint = 0
                await trio.lowlevel.checkpoint()
            try:
                frame = decode(data, frame_size_bytes_max=limit)
            except FrameError as exc:
                stats[exc.stat] += 1
                continue
            if frame.dst != my_address:
                stats["frames_misaddressed"] += 1
                continue
            if frame.kind is _RAFT:
                batch = frame.payload
                try:
                    try:
                        raft_send.send_nowait(batch)
                    except trio.WouldBlock:
                        stats["inbox_full_waits"] += 1
                        await raft_send.send(batch)
                except trio.BrokenResourceError:
                    stats["dropped_inbox_closed"] += 1
                    continue
                stats["messages_received"] += len(batch)
            else:
                try:
                    frame_send.send_nowait(frame)
                except trio.WouldBlock:
                    stats["dropped_inbox_full"] += 1
                    continue
                except trio.BrokenResourceError:
                    stats["dropped_inbox_closed"] += 1
                    continue
            stats["frames_received"] += 1
            stats["bytes_received"] += len(data)

    # -- observability ------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (STAT_NAMES) plus two gauges:
        peers_connected and outbox_messages (queued, all peers)."""
        out = dict(self._stats)
        out["peers_connected"] = sum(1 for p in self._peers.values() if p.pipes)
        out["outbox_messages"] = sum(len(p.outbox) for p in self._peers.values())
        return out


def _set_connected(peer: _Peer) -> None:
    # In the trio thread, so it sets whichever Event wait_connected() awaits now.
    peer.connected.set()


def _forget_fd(fd: int) -> None:
    """Tell trio an nng pollable fd is about to be closed by nng."""
    try:
        trio.lowlevel.notify_closing(fd)
    except Exception:  # pragma: no cover - not registered, or already gone
        pass


@asynccontextmanager
async def open_transport(
    address: str, listen_url: str, **options: Any
) -> AsyncIterator[Transport]:
    """`async with open_transport("n1/w0", "tcp://127.0.0.1:0") as t:` runs a
    Transport in its own nursery for the duration of the block."""
    transport = Transport(address, listen_url, **options)
    body_exc: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            try:
                yield transport
            except BaseException as exc:
                body_exc = exc
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # With strict exception groups (trio >= 0.25) the body's own exception
        # comes back wrapped; hand it back as raised.
        if body_exc is not None and list(group.exceptions) == [body_exc]:
            raise body_exc from None
        raise
    finally:
        if not transport._started:
            transport.close()
