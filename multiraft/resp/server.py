"""The RESP server: connections, pipelining, per-connection ordering.

One trio task pair per connection (a reader and a writer) plus one task per
data command in flight. The reader parses commands as they arrive and starts
each at once, so a pipeline has many commands in flight; the writer sends the
replies strictly in request order, each batch of ready replies in one send.

Order: a command waits for the earlier commands *of its connection* that
touch one of its keys, except that reads do not wait for reads (so SET k;
INCR k; GET k in a pipeline behave as in Redis), and the key-space commands (KEYS, SCAN, DBSIZE, FLUSHDB) wait for
every earlier command and make every later one wait for them. Commands on
different keys run concurrently: their effects may become visible to other
clients in any order (as if sent by different clients), while each one is
linearizable and answered only once it is applied (docs/resp.md).

Bounded: at most `inflight_max` unanswered commands per connection (then
the reader stops reading), `connections_max` connections (more get "ERR max
number of clients reached" and are closed), and the parser's Limits. Bad
input gets "-ERR Protocol error: ..." and closes that connection only.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import trio

from multiraft.client import ClientError
from multiraft.nodeconfig import format_address

from .commands import CommandSpec, ReplyError, ServerState, Session, error_reply, lookup
from .protocol import ErrorReply, Limits, ProtocolError, RequestParser, encode_reply

__all__ = ["Server"]

_log = logging.getLogger("multiraft.resp")

_READ_SIZE = 1 << 16


class _Slot:
    """One command's place in its connection's reply order."""

    __slots__ = ("reply", "event", "close_after")

    def __init__(self) -> None:
        self.reply: bytes | None = None
        self.event: trio.Event | None = None
        self.close_after = False

    def finish(self, reply: bytes) -> None:
        self.reply = reply
        if self.event is not None:
            self.event.set()

    async def wait(self) -> None:
        if self.reply is None:
            if self.event is None:
                self.event = trio.Event()
            await self.event.wait()


class _Connection:
    def __init__(self, server: Server, stream: trio.SocketStream, session: Session) -> None:
        self.server = server
        self.state = server.state
        self.stream = stream
        self.session = session
        self.slots: collections.deque[_Slot] = collections.deque()
        self.running: set[_Slot] = set()  # data commands not finished
        # key -> [the last write in flight on it, the reads in flight since]
        self.by_key: dict[bytes, list] = {}
        self.barrier: _Slot | None = None  # a key-space command in flight
        self.reading_done = False
        self._wake = trio.Event()  # the writer's
        self._space: trio.Event | None = None  # the reader waits for room
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._writer, nursery.cancel_scope)
            try:
                await self._reader()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            self.reading_done = True
            self._wake.set()

    async def _reader(self) -> None:
        parser = RequestParser(self.state.limits)
        inflight_max = self.server.inflight_max
        while True:
            data = await self.stream.receive_some(_READ_SIZE)
            if not data:
                return
            parser.feed(data)
            while True:
                try:
                    args = parser.next()
                except ProtocolError as exc:
                    self.server.stats["protocol_errors"] += 1
                    slot = self._push()
                    slot.close_after = True
                    self._finish(slot, ErrorReply(f"ERR {exc}"))
                    return
                if args is None:
                    break
                while len(self.slots) >= inflight_max:
                    self._space = trio.Event()
                    await self._space.wait()
                self._dispatch(args)
                if self.session.closing:
                    self.slots[-1].close_after = True
                    return

    def _push(self) -> _Slot:
        slot = _Slot()
        self.slots.append(slot)
        return slot

    def _finish(self, slot: _Slot, reply: Any) -> None:
        try:
            data = encode_reply(reply, self.session.protocol == 3)
        except (TypeError, ValueError) as exc:  # a bug of ours
            _log.error("cannot encode reply %r: %s", reply, exc)
            data = encode_reply(ErrorReply("ERR internal error: unencodable reply"))
        slot.finish(data)
        self._wake.set()

    def _dispatch(self, args: list[bytes]) -> None:
        self.state.commands_processed += 1
        spec = lookup(args)
        slot = self._push()
        if isinstance(spec, ErrorReply):
            self._finish(slot, spec)
            return
        self.session.last_command = spec.name
        if not spec.is_async:
            try:
                reply = spec.handler(self.session, args)
            except ReplyError as exc:
                reply = exc.reply
            except Exception as exc:  # noqa: BLE001 - a bug of ours: answer it, keep serving
                _log.exception("%s failed", spec.name)
                reply = ErrorReply(f"ERR internal error: {exc}")
            self._finish(slot, reply)
            return
        deps: list[_Slot] = []
        keys: list[bytes] = []
        if spec.barrier:
            deps = list(self.running)
            self.barrier = slot
        else:
            if self.barrier is not None:
                deps.append(self.barrier)
            keys = list(dict.fromkeys(spec.keys(args)))  # once each (EXISTS k k)
            by_key = self.by_key
            reading = spec.readonly
            for k in keys:
                entry = by_key.get(k)
                if entry is None:
                    by_key[k] = [None, {slot}] if reading else [slot, set()]
                    continue
                if entry[0] is not None:
                    deps.append(entry[0])
                if reading:
                    entry[1].add(slot)
                else:
                    deps.extend(entry[1])
                    entry[0] = slot
                    entry[1] = set()
        self.running.add(slot)
        assert self._nursery is not None
        self._nursery.start_soon(self._execute, slot, spec, args, deps, keys)

    async def _execute(self, slot: _Slot, spec: CommandSpec, args: list[bytes], deps: list[_Slot],
                       keys: list[bytes]) -> None:
        for dep in deps:
            await dep.wait()
        try:
            reply = await spec.handler(self.session, args)
        except ReplyError as exc:
            reply = exc.reply
        except ClientError as exc:
            self.server.stats["backend_errors"] += 1
            reply = error_reply(exc)
        except Exception as exc:  # noqa: BLE001 - a bug of ours: answer it, keep serving
            _log.exception("%s failed", spec.name)
            reply = ErrorReply(f"ERR internal error: {exc}")
        self.running.discard(slot)
        by_key = self.by_key
        for k in keys:
            entry = by_key.get(k)
            if entry is not None:
                if entry[0] is slot:
                    entry[0] = None
                entry[1].discard(slot)
                if entry[0] is None and not entry[1]:
                    del by_key[k]
        if self.barrier is slot:
            self.barrier = None
        self._finish(slot, reply)

    async def _writer(self, scope: trio.CancelScope) -> None:
        slots = self.slots
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                out = []
                close = False
                while slots and slots[0].reply is not None:
                    slot = slots.popleft()
                    out.append(slot.reply)
                    if slot.close_after:
                        close = True
                        break
                if self._space is not None and len(slots) < self.server.inflight_max:
                    self._space.set()
                if out:
                    await self.stream.send_all(out[0] if len(out) == 1 else b"".join(out))
                if close or (self.reading_done and not slots):
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()


class Server:
    """A RESP2 server in front of a `Backend` (multiraft.resp.commands)."""

    def __init__(
        self,
        backend: Any,
        *,
        limits: Limits | None = None,
        connections_max: int = 10_000,
        inflight_max: int = 1024,
    ) -> None:
        self.state = ServerState(backend, limits=limits)
        self.connections_max = connections_max
        self.inflight_max = inflight_max
        self.stats = collections.Counter({"protocol_errors": 0, "backend_errors": 0, "connections_refused": 0})

    async def serve(self, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on host:port (0: any free port) and serve until cancelled;
        task_status gets the address actually listened on."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        self.state.listen = format_address(host, bound[1])
        _log.info("serving RESP on %s", self.state.listen)
        task_status.started(self.state.listen)
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        state = self.state
        state.connections_received += 1
        try:
            if len(state.sessions) >= self.connections_max:
                self.stats["connections_refused"] += 1
                with trio.move_on_after(1):
                    await stream.send_all(b"-ERR max number of clients reached\r\n")
                return
            try:
                peer = stream.socket.getpeername()
                addr = format_address(peer[0], peer[1])
            except (OSError, AttributeError, IndexError):
                addr = "?"
            session = Session(state, state.next_id, addr)
            state.next_id += 1
            state.sessions[session.id] = session
            try:
                await _Connection(self, stream, session).run()
            finally:
                del state.sessions[session.id]
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:  # noqa: BLE001 - a bug of ours: lose this connection, not the server
            _log.exception("connection failed")
        finally:
            with trio.move_on_after(1) as cs:
                cs.shield = True
                await stream.aclose()
