"""The worker's client server: TCP, multiraft.protocol channel 1.

Each connection has two tasks in its own nursery: a reader that decodes
frames (`protocol.FrameBuffer`) and hands each request to the worker
synchronously (`Worker.handle_request`), and a writer that sends every
response queued since its last send as one `send_all`. Requests are pipelined
and answered in any order.

Bounds: at most `client_connections_max` connections (more are closed at
once); a frame above `client_frame_bytes_max`, or bytes that are not a frame,
close that connection only (`client_bad_frames`); when a connection's unsent
responses exceed `connection_output_bytes_max` its reader stops reading until
the writer drains them, so a client that does not read cannot grow our memory.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from multiraft import protocol
from multiraft.replica import node_of

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["ClientServer", "Connection"]

_log = logging.getLogger("workers")
_RECEIVE_BYTES = 256 * 1024


class Connection:
    """One client connection: the queue of encoded responses not yet sent."""

    __slots__ = ("stream", "out", "out_bytes", "has_output", "drained", "closed", "peer", "counters")

    def __init__(self, stream: trio.abc.Stream, peer: str = "?", counters: dict | None = None) -> None:
        self.stream = stream
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.has_output: trio.Event | None = None
        self.drained: trio.Event | None = None
        self.closed = False
        self.peer = peer
        self.counters = counters if counters is not None else {}

    def respond(self, req_id: Any, status: str, payload: Any) -> None:
        """Queue one response (never blocks; dropped if the connection closed)."""
        if self.closed:
            return
        if status == protocol.NOT_LEADER and isinstance(payload, str):
            # The hint is the leader's replica id; clients route to nodes
            # (multiraft.replica). Every not_leader answer passes here.
            payload = node_of(payload)
        data, why = protocol.encode_response(req_id, status, payload)
        if why is not None:  # too large, or a value cbor2 refuses: "error" instead
            self.counters["client_answers_unencodable"] = self.counters.get("client_answers_unencodable", 0) + 1
            _log.warning("client %s: answered %.80r with an error: %s", self.peer, req_id, why)
        self.out.append(data)
        self.out_bytes += len(data)
        ev = self.has_output
        if ev is not None:
            self.has_output = None
            ev.set()


class ClientServer:
    def __init__(self, worker: Worker, host: str, port: int) -> None:
        self.worker = worker
        self.host = host
        self.port = port
        self.connections: set[Connection] = set()

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from .worker import WorkerError

        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise WorkerError(f"cannot listen for clients on {self.host}:{self.port}: {exc}") from None
        sockname = listeners[0].socket.getsockname()
        host = sockname[0]
        address = f"[{host}]:{sockname[1]}" if ":" in host else f"{host}:{sockname[1]}"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve_connection, listeners)
            task_status.started(address)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        worker = self.worker
        counters = worker.counters
        if len(self.connections) >= worker.limits.client_connections_max:
            counters["client_connections_refused"] += 1
            await trio.aclose_forcefully(stream)
            return
        try:
            peer = "{}:{}".format(*stream.socket.getpeername()[:2])
        except (OSError, TypeError):
            peer = "?"
        conn = Connection(stream, peer, counters)
        self.connections.add(conn)
        counters["client_connections"] += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, conn, nursery.cancel_scope)
                await self._reader(conn)
                nursery.cancel_scope.cancel()
        finally:
            conn.closed = True
            conn.out.clear()
            self.connections.discard(conn)
            await trio.aclose_forcefully(stream)

    async def _reader(self, conn: Connection) -> None:
        worker = self.worker
        limits = worker.limits
        out_max = limits.connection_output_bytes_max
        buf = protocol.FrameBuffer(limits.client_frame_bytes_max, text_keys_only=True)
        stream = conn.stream
        handle = worker.handle_request
        while True:
            if conn.out_bytes > out_max:
                conn.drained = trio.Event()
                await conn.drained.wait()
                continue
            try:
                data = await stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            buf.feed(data)
            try:
                frames = buf.frames()
            except protocol.ProtocolError as exc:
                worker.counters["client_bad_frames"] += 1
                _log.info("%s: closing client %s: %s", worker.address, conn.peer, exc)
                return
            if frames:
                for frame in frames:
                    handle(conn, frame)
                worker._notify()

    async def _writer(self, conn: Connection, cancel_scope: trio.CancelScope) -> None:
        stream = conn.stream
        try:
            while True:
                if not conn.out:
                    conn.has_output = ev = trio.Event()
                    await ev.wait()
                    continue
                chunks, conn.out = conn.out, []
                conn.out_bytes = 0
                drained = conn.drained
                if drained is not None:
                    conn.drained = None
                    drained.set()
                await stream.send_all(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            cancel_scope.cancel()
