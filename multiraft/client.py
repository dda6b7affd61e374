"""The multiraft KV client: async (trio), with a synchronous wrapper for scripts.

Usage::

    import trio
    from multiraft.client import open_client

    async def main():
        async with open_client(cluster=["127.0.0.1:7100"]) as c:
            await c.put(b"k", b"v")
            assert await c.get(b"k") == b"v"          # linearizable (ReadIndex)
            await c.get(b"k", lease=True)             # leader-lease read
            swapped, current = await c.cas(b"k", b"v", b"w")
            await c.delete(b"k")

    trio.run(main)

    from multiraft.client import SyncClient
    with SyncClient(cluster=["127.0.0.1:7100"]) as c:   # a trio loop in a thread
        c.put("k", "v"); print(c.get("k"))

How it works (docs/operations.md has the details):

- Routing: the table (group -> replicas, leader; node -> worker client
  addresses) comes from any coordinator of `cluster` (protocol channel 2) and
  is refreshed in the background about every second and at once when a
  request cannot be routed. The coordinator is never on the data path.
- Requests go straight to the worker hosting the group's leader, over one
  pipelined TCP connection per worker (many requests in flight, matched by
  request id). A `not_leader` answer's hint is followed at once; `busy`,
  `timeout`, lost connections and unknown leaders are retried with jittered
  exponential backoff until the operation's deadline.
- Exactly-once writes: a write carries (client_id, seq). Sessions are
  registered through the group's log (op "register": the id is the log index
  of the Register entry) and the KV state machine remembers only the *last*
  seq of each session, so a session has one write in flight at a time; this
  client keeps a pool of registered sessions per group and gives each write
  in flight its own (one Register round trip per new session, none per
  write). A retry keeps its seq, so the write applies once however often it
  is sent. A group that evicted a session answers "session_expired" and
  applies nothing: if that was the write's first send, it provably did not
  apply, and the client registers a new session and sends it again; if the
  write had been sent before (a retry after a timeout or a lost connection),
  an earlier attempt may have applied, and the client raises `UnknownOutcome`
  rather than retry under a new session (which could apply it twice).
- Errors: `get` of a missing key returns None (not an error). Past the
  deadline a write raises `Timeout` with ``outcome_unknown=True`` if it may
  have been applied (it was sent and no answer settled it); `UnknownOutcome`
  (also ``outcome_unknown=True``) as above; a request that never reached any
  replica raises `ClusterUnavailable`; a malformed request raises
  `RequestError`. All are `ClientError`.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from multiraft import protocol
from multiraft.nodeconfig import ConfigError, format_address, parse_address
from multiraft.protocol import BUSY, ERROR, NO_GROUP, NOT_LEADER, OK, SESSION_EXPIRED, TIMEOUT
from multiraft.sharding import group_for_key

__all__ = [
    "Client",
    "ClientError",
    "ClusterUnavailable",
    "ConnectionLost",
    "Connection",
    "RequestError",
    "SyncClient",
    "Timeout",
    "UnknownOutcome",
    "WrongValue",
    "open_client",
    "open_connection",
    "coordinator_request",
]

DEFAULT_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 2.0
ATTEMPT_TIMEOUT_S = 3.0
ROUTING_REFRESH_S = 1.0
BACKOFF_MIN_S = 0.01
BACKOFF_MAX_S = 0.5
# New sessions one write may use up when the group evicts each before the
# write lands (a group whose session table churns faster than one round trip).
SESSION_RENEWALS_MAX = 3
_READ_SIZE = 1 << 16


class ClientError(Exception):
    """Any failure of a client operation."""

    outcome_unknown = False


class ClusterUnavailable(ClientError):
    """No coordinator, or no replica of the key's group, could be reached."""


class Timeout(ClientError):
    """The deadline passed. For a write, `outcome_unknown` says whether it may
    still have been applied (then read the key to find out)."""

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class UnknownOutcome(ClientError):
    """A write that had been sent before came back "session expired": an
    earlier attempt may have applied before the group evicted the session, or
    not. It is not retried (under a new session it could apply twice): read
    the key to find out."""

    outcome_unknown = True


class _SessionExpired(Exception):
    """Internal: the write's first send met an expired session (not applied)."""


class RequestError(ClientError):
    """The server refused the request as malformed (status "error"): retrying
    would not help."""


class WrongValue(ClientError):
    """The write applied as a no-op because of the value it found: `reason` is
    "not_integer" or "overflow" (incr) or "too_large" (append). Retrying the
    same operation gives the same answer until the value changes."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConnectionLost(Exception):
    """The connection broke while a request was in flight (internal)."""


# ---------------------------------------------------------------------------
# One pipelined connection


class _Call:
    __slots__ = ("event", "status", "payload", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.status: Any = None
        self.payload: Any = None
        self.error: BaseException | None = None


class Connection:
    """A TCP stream carrying [req_id, op, *args] frames and their responses.

    Any number of tasks may call `request` concurrently: requests are batched
    into one write by a writer task; a reader task completes them by req_id.
    """

    def __init__(self, stream: trio.abc.Stream, address: str) -> None:
        self.address = address
        self._stream = stream
        self._pending: dict[int, _Call] = {}
        self._next_id = 1
        self._out = bytearray()
        self._out_ready = trio.Event()
        self.closed = False
        self.error: BaseException | None = None
        self._cancel: trio.CancelScope | None = None

    async def _run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                if self.closed:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._guard, self._writer)
                nursery.start_soon(self._guard, self._reader)
        finally:
            self._fail(ConnectionLost(f"connection to {self.address} closed"))
            with trio.CancelScope(shield=True):
                with trio.move_on_after(0.5):
                    await self._stream.aclose()

    async def _guard(self, fn) -> None:
        try:
            await fn()
        except (
            OSError,
            ConnectionLost,
            protocol.ProtocolError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as exc:
            self._fail(exc)
        finally:
            self._cancel.cancel()

    async def _reader(self) -> None:
        buf = protocol.FrameBuffer()
        while True:
            data = await self._stream.receive_some(_READ_SIZE)
            if not data:
                raise ConnectionLost(f"{self.address} closed the connection")
            buf.feed(data)
            for frame in buf.frames():
                if len(frame) < 3:
                    continue
                call = self._pending.pop(frame[0], None) if type(frame[0]) is int else None
                if call is not None:
                    call.status = frame[1]
                    call.payload = frame[2]
                    call.event.set()

    async def _writer(self) -> None:
        while not self.closed:
            await self._out_ready.wait()
            self._out_ready = trio.Event()
            if not self._out:
                continue
            data = bytes(self._out)
            self._out.clear()
            await self._stream.send_all(data)

    def _fail(self, exc: BaseException) -> None:
        if not self.closed:
            self.closed = True
            self.error = exc
        pending, self._pending = self._pending, {}
        for call in pending.values():
            call.error = exc
            call.event.set()
        self._out_ready.set()

    def close(self) -> None:
        self._fail(ConnectionLost(f"connection to {self.address} closed by us"))
        if self._cancel is not None:
            self._cancel.cancel()

    async def request(self, body: Sequence[Any]) -> tuple[Any, Any]:
        """Send [req_id, *body]; return (status, payload). Raises ConnectionLost."""
        if self.closed:
            raise ConnectionLost(f"connection to {self.address} is closed: {self.error}")
        req_id = self._next_id
        self._next_id += 1
        call = _Call()
        self._pending[req_id] = call
        self._out += protocol.encode([req_id, *body])
        self._out_ready.set()
        try:
            await call.event.wait()
        finally:
            self._pending.pop(req_id, None)
        if call.error is not None:
            raise ConnectionLost(str(call.error)) from None
        return call.status, call.payload


def _flatten(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def open_connection(
    nursery: trio.Nursery, address: str, *, timeout_s: float = CONNECT_TIMEOUT_S
) -> Connection:
    """Connect to "host:port" and start the connection's tasks in `nursery`.
    Raises OSError (also on timeout)."""
    host, port = _split(address)
    with trio.move_on_after(timeout_s) as cs:
        stream = await trio.open_tcp_stream(host, port)
    if cs.cancelled_caught:
        raise OSError(f"connecting to {address} timed out")
    try:
        stream.setsockopt(6, 1, 1)  # TCP_NODELAY (trio sets it; be sure)
    except (OSError, AttributeError):
        pass
    conn = Connection(stream, address)
    nursery.start_soon(conn._run)
    return conn


def _split(address: str) -> tuple[str, int]:
    try:
        return parse_address(address)
    except ConfigError as exc:
        raise OSError(str(exc)) from None


async def coordinator_request(
    addresses: Sequence[str], body: Sequence[Any], *, timeout_s: float = CONNECT_TIMEOUT_S + 3
) -> Any:
    """One request to the first coordinator of `addresses` that answers it.
    Returns the payload; raises ClusterUnavailable, or RequestError."""
    problems = []
    for address in addresses:
        try:
            with trio.fail_after(timeout_s):
                async with trio.open_nursery() as nursery:
                    conn = await open_connection(nursery, address)
                    try:
                        status, payload = await conn.request(body)
                    finally:
                        conn.close()
                        nursery.cancel_scope.cancel()
        except (OSError, ConnectionLost, trio.TooSlowError, protocol.ProtocolError) as exc:
            problems.append(f"{address}: {exc or type(exc).__name__}")
            continue
        except BaseExceptionGroup as eg:  # pragma: no cover - strict groups
            exc = _flatten(eg)
            if isinstance(exc, (OSError, ConnectionLost, trio.TooSlowError, protocol.ProtocolError)):
                problems.append(f"{address}: {exc}")
                continue
            raise
        if status == OK:
            return payload
        if status == ERROR:
            raise RequestError(f"{address}: {payload}")
        problems.append(f"{address}: {status} {payload}")
    raise ClusterUnavailable("no coordinator answered (" + "; ".join(problems) + ")")


# ---------------------------------------------------------------------------
# The client


def _to_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


class _Session:
    __slots__ = ("client_id", "next_seq")

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.next_seq = 1


def _normalise_cluster(cluster: str | Iterable[Any] | None) -> list[str]:
    from multiraft.nodeconfig import parse_cluster

    if cluster is None or isinstance(cluster, str):
        pairs = parse_cluster(cluster)
    else:
        pairs = []
        for item in cluster:
            if isinstance(item, tuple):
                pairs.append((str(item[0]), int(item[1])))
            else:
                pairs.append(parse_address(str(item), what="cluster address"))
        if not pairs:
            raise ConfigError("cluster is empty: expected HOST:PORT[,HOST:PORT...]")
    return [format_address(h, p) for h, p in pairs]


class Client:
    """Use `open_client` to make one. All methods must run in its trio loop."""

    def __init__(
        self,
        nursery: trio.Nursery,
        cluster: Sequence[str],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        routing_refresh_s: float = ROUTING_REFRESH_S,
        rng: random.Random | None = None,
    ) -> None:
        self._nursery = nursery
        self.cluster = list(cluster)
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.routing_refresh_s = routing_refresh_s
        self._rng = rng or random.Random()
        self.routing: dict | None = None
        self._routing_at = -math.inf
        self._routing_lock = trio.Lock()
        self._coordinator: Connection | None = None
        self._conns: dict[str, Connection] = {}
        self._connecting: dict[str, trio.Event] = {}
        self._leaders: dict[int, str] = {}
        # group -> registered sessions with no write in flight
        self._free_sessions: dict[int, list[_Session]] = {}
        self.stats = {
            "requests": 0, "retries": 0, "redirects": 0, "timeouts": 0,
            "sessions_registered": 0, "sessions_expired": 0,
        }
        self._closed = False

    # --- routing ---

    async def _coordinator_call(self, body: list) -> Any:
        """A request to a coordinator, keeping one connection open."""
        order = list(self.cluster)
        self._rng.shuffle(order)
        if self._coordinator is not None and not self._coordinator.closed:
            order.remove(self._coordinator.address) if self._coordinator.address in order else None
            order.insert(0, self._coordinator.address)
        problems = []
        for address in order:
            conn = self._coordinator
            try:
                if conn is None or conn.closed or conn.address != address:
                    if conn is not None:
                        conn.close()
                    self._coordinator = None
                    conn = await open_connection(self._nursery, address)
                    self._coordinator = conn
                with trio.move_on_after(self.attempt_timeout_s) as cs:
                    status, payload = await conn.request(body)
                if cs.cancelled_caught:
                    conn.close()
                    raise OSError("no answer")
            except (OSError, ConnectionLost) as exc:
                problems.append(f"{address}: {exc}")
                continue
            if status == OK:
                return payload
            if status == ERROR:
                raise RequestError(f"{address}: {payload}")
            problems.append(f"{address}: {status}")
        raise ClusterUnavailable(
            "no coordinator reachable at " + ",".join(self.cluster) + " (" + "; ".join(problems) + ")"
        )

    async def refresh_routing(self, *, max_age_s: float = 0.0) -> dict:
        """Fetch the routing table unless the cached one is younger than max_age_s."""
        async with self._routing_lock:
            if self.routing is not None and trio.current_time() - self._routing_at < max_age_s:
                return self.routing
            table = await self._coordinator_call(["routing"])
            if not isinstance(table, dict) or "groups" not in table or "nodes" not in table:
                raise ClusterUnavailable("a coordinator sent a malformed routing table")
            self.routing = table
            self._routing_at = trio.current_time()
            return table

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(self.routing_refresh_s * (0.8 + 0.4 * self._rng.random()))
            try:
                await self.refresh_routing(max_age_s=self.routing_refresh_s / 2)
            except ClientError:
                pass

    async def cluster_status(self) -> dict:
        """The admin's cluster status (see docs/operations.md)."""
        return await self._coordinator_call(["cluster_status"])

    @property
    def groups_total(self) -> int:
        assert self.routing is not None
        return int(self.routing["groups_total"])

    def group_of(self, key: bytes | str) -> int:
        return group_for_key(_to_bytes(key, "key"), self.groups_total)

    def _pick(self, group: int, attempt: int) -> tuple[str, str] | None:
        table = self.routing
        if table is None:
            return None
        info = table["groups"].get(group)
        if info is None:
            return None
        nodes = table["nodes"]

        def address_of(node: str) -> str | None:
            w = info["replicas"].get(node)
            n = nodes.get(node)
            if w is None or n is None or not n.get("up"):
                return None
            workers = n.get("workers") or []
            if not 0 <= w < len(workers):
                return None
            return workers[w].get("client_address")

        leader = self._leaders.get(group) or info.get("leader")
        if leader is not None:
            addr = address_of(leader)
            if addr:
                return leader, addr
        candidates = [(n, a) for n in sorted(info["replicas"]) if (a := address_of(n))]
        if not candidates:
            return None
        return candidates[(attempt + self._rng.randrange(len(candidates))) % len(candidates)]

    # --- connections ---

    async def _connection(self, address: str) -> Connection:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        waiting = self._connecting.get(address)
        if waiting is not None:
            await waiting.wait()
            conn = self._conns.get(address)
            if conn is not None and not conn.closed:
                return conn
            raise OSError(f"cannot connect to {address}")
        event = self._connecting[address] = trio.Event()
        try:
            conn = await open_connection(self._nursery, address)
            self._conns[address] = conn
            return conn
        finally:
            del self._connecting[address]
            event.set()

    # --- the request loop ---

    def _backoff(self, attempt: int) -> float:
        top = min(BACKOFF_MAX_S, BACKOFF_MIN_S * (2 ** min(attempt, 10)))
        return top * (0.5 + 0.5 * self._rng.random())

    def _deadline(self, timeout_s: float | None) -> float:
        return trio.current_time() + (self.timeout_s if timeout_s is None else timeout_s)

    async def _execute(
        self,
        group: int,
        build,
        *,
        write: bool,
        timeout_s: float | None = None,
        what: str,
        deadline: float | None = None,
    ) -> Any:
        if deadline is None:
            deadline = self._deadline(timeout_s)
        uncertain = False  # a write was sent and nothing settled it
        reached = False  # some worker answered
        attempt = 0
        failures = 0
        problem = "no attempt"
        self.stats["requests"] += 1
        while True:
            now = trio.current_time()
            if now >= deadline:
                self.stats["timeouts"] += 1
                if write and uncertain:
                    raise Timeout(
                        f"{what}: deadline passed, outcome unknown (last: {problem})",
                        outcome_unknown=True,
                    )
                if not reached:
                    raise ClusterUnavailable(f"{what}: group {group} unreachable ({problem})")
                raise Timeout(f"{what}: deadline passed, not applied (last: {problem})")
            if attempt:
                self.stats["retries"] += 1
            target = self._pick(group, attempt)
            attempt += 1
            if target is None:
                problem = f"no known replica of group {group} is up"
                failures += 1
                with trio.move_on_at(deadline):
                    try:
                        await self.refresh_routing(max_age_s=0.2)
                    except ClientError:
                        pass
                    await trio.sleep(self._backoff(failures))
                continue
            node, address = target
            try:
                conn = self._conns.get(address)  # fast path: no cancel scope
                if conn is None or conn.closed:
                    with trio.move_on_at(deadline) as cs:
                        conn = await self._connection(address)
                    if cs.cancelled_caught:
                        continue
            except OSError as exc:
                problem = f"{node} ({address}): {exc}"
                self._leaders.pop(group, None)
                failures += 1
                with trio.move_on_at(deadline):
                    try:
                        await self.refresh_routing(max_age_s=0.3)
                    except ClientError:
                        pass
                    await trio.sleep(self._backoff(failures))
                continue
            answered = False
            with trio.move_on_at(min(deadline, now + self.attempt_timeout_s)):
                try:
                    status, payload = await conn.request(build())
                    answered = True
                except ConnectionLost as exc:
                    problem = f"{node} ({address}): {exc}"
                    uncertain = uncertain or write
                    self._leaders.pop(group, None)
                    failures += 1
                    with trio.move_on_at(deadline):
                        await trio.sleep(self._backoff(failures))
                    continue
            if not answered:
                problem = f"{node} ({address}) did not answer in time"
                uncertain = uncertain or write
                self._leaders.pop(group, None)
                continue
            reached = True
            if status == OK:
                self._leaders[group] = node
                return payload
            if status == NOT_LEADER:
                hint = payload if isinstance(payload, str) else None
                problem = f"{node} is not the leader of group {group}"
                self.stats["redirects"] += 1
                if hint and hint != node and failures < 3:
                    self._leaders[group] = hint
                    failures += 1
                    continue
                if hint and hint != node:
                    self._leaders[group] = hint
                else:
                    self._leaders.pop(group, None)
                failures += 1
                with trio.move_on_at(deadline):
                    await trio.sleep(self._backoff(failures))
                if failures % 4 == 0:
                    with trio.move_on_at(deadline):
                        try:
                            await self.refresh_routing(max_age_s=0.3)
                        except ClientError:
                            pass
                continue
            if status == NO_GROUP:
                problem = f"{node} does not host group {group}"
                self._leaders.pop(group, None)
                failures += 1
                with trio.move_on_at(deadline):
                    try:
                        await self.refresh_routing(max_age_s=0.2)
                    except ClientError:
                        pass
                    await trio.sleep(self._backoff(failures))
                continue
            if status in (BUSY, TIMEOUT):
                problem = f"{node}: {status}"
                if status == TIMEOUT:
                    uncertain = uncertain or write
                failures += 1
                with trio.move_on_at(deadline):
                    await trio.sleep(self._backoff(failures))
                continue
            if status == SESSION_EXPIRED:
                if uncertain:
                    raise UnknownOutcome(
                        f"{what}: outcome unknown: an earlier attempt may have applied before "
                        f"the group evicted its session ({node}: {payload})"
                    )
                raise _SessionExpired(payload)
            if status == ERROR:
                raise RequestError(f"{what}: {node} refused the request: {payload}")
            problem = f"{node}: unexpected status {status!r}"
            failures += 1
            with trio.move_on_at(deadline):
                await trio.sleep(self._backoff(failures))

    async def _session(self, group: int, deadline: float) -> _Session:
        """A registered session of `group` with no write in flight."""
        free = self._free_sessions.get(group)
        if free:
            return free.pop()
        # Not a write: a lost answer leaves at most an unused session behind.
        body = ["register", group]
        client_id = await self._execute(
            group, lambda: body, write=False, deadline=deadline, what=f"register a session in group {group}"
        )
        if type(client_id) is not int or client_id < 1:
            raise RequestError(f"group {group} registered a session with a bad id {client_id!r}")
        self.stats["sessions_registered"] += 1
        return _Session(client_id)

    async def _write(self, group: int, op: str, args: list, timeout_s: float | None, what: str) -> Any:
        deadline = self._deadline(timeout_s)
        for _ in range(SESSION_RENEWALS_MAX + 1):
            session = await self._session(group, deadline)
            seq = session.next_seq
            session.next_seq += 1
            body = [op, group, *args, session.client_id, seq]
            try:
                result = await self._execute(group, lambda body=body: body, write=True, deadline=deadline, what=what)
            except _SessionExpired:
                # The first send met an evicted session: not applied. The
                # session is gone; a new one may send the write again.
                self.stats["sessions_expired"] += 1
                continue
            except UnknownOutcome:
                self.stats["sessions_expired"] += 1
                raise  # the session is gone: drop it
            except ClientError:
                # Also after a Timeout with an unknown outcome: seqs only grow,
                # so a late copy of this write, if it arrives after the next
                # write of the session, is stale and never applies.
                self._free_sessions.setdefault(group, []).append(session)
                raise
            self._free_sessions.setdefault(group, []).append(session)
            return result
        raise Timeout(
            f"{what}: group {group} evicted {SESSION_RENEWALS_MAX + 1} new sessions before "
            "the write could use them (sessions_max too small for the writers): not applied"
        )

    # --- the API ---

    async def put(self, key: bytes | str, value: bytes | str, *, timeout_s: float | None = None) -> bool:
        """Set key to value. Returns whether the key existed before."""
        k = _to_bytes(key, "key")
        v = _to_bytes(value, "value")
        g = self.group_of(k)
        return bool(await self._write(g, "put", [k, v], timeout_s, f"put {k!r}"))

    async def delete(self, key: bytes | str, *, timeout_s: float | None = None) -> bool:
        """Delete key. Returns whether it existed."""
        k = _to_bytes(key, "key")
        g = self.group_of(k)
        return bool(await self._write(g, "delete", [k], timeout_s, f"delete {k!r}"))

    async def cas(
        self,
        key: bytes | str,
        expected: bytes | str | None,
        new: bytes | str | None,
        *,
        timeout_s: float | None = None,
    ) -> tuple[bool, bytes | None]:
        """If key's value is `expected` (None: absent), set it to `new` (None:
        delete). Returns (swapped, current value after the operation)."""
        k = _to_bytes(key, "key")
        e = None if expected is None else _to_bytes(expected, "expected")
        n = None if new is None else _to_bytes(new, "new")
        g = self.group_of(k)
        result = await self._write(g, "cas", [k, e, n], timeout_s, f"cas {k!r}")
        swapped, current = result
        return bool(swapped), current

    async def get(self, key: bytes | str, *, lease: bool = False, timeout_s: float | None = None) -> bytes | None:
        """The value of key, or None if it is absent. Linearizable (ReadIndex)
        unless lease=True (a leader-lease read: no quorum round)."""
        k = _to_bytes(key, "key")
        g = self.group_of(k)
        mode = protocol.READ_LEASE if lease else protocol.READ_LINEARIZABLE
        body = ["get", g, k, mode]
        return await self._execute(g, lambda: body, write=False, timeout_s=timeout_s, what=f"get {k!r}")

    # --- operations added for the Redis front-end (multiraft.resp) ---

    async def write_many(
        self, items: Sequence[tuple[bytes | str, bytes | str | None]], *, timeout_s: float | None = None
    ) -> int:
        """Set (value) or delete (None) every key of `items`, in order: one
        atomic log entry per group, the groups concurrently (so atomic per
        group, not across groups). Returns how many items found their key
        present. If a group fails, its error is raised once all are done; the
        other groups' writes may have applied."""
        by_group: dict[int, list[list]] = {}
        for key, value in items:
            k = _to_bytes(key, "key")
            v = None if value is None else _to_bytes(value, "value")
            by_group.setdefault(self.group_of(k), []).append([k, v])
        results = await self._each_group(
            sorted(by_group),
            lambda g: self._write(g, "mput", [by_group[g]], timeout_s, f"mput of {len(by_group[g])} keys"),
        )
        return sum(int(r) for r in results)

    async def incr(self, key: bytes | str, delta: int = 1, *, timeout_s: float | None = None) -> int:
        """Add `delta` (an int64) to the decimal int64 stored at key (absent:
        0), atomically; returns the new value. Raises WrongValue
        ("not_integer", "overflow") and then nothing changed."""
        k = _to_bytes(key, "key")
        value, error = await self._write(self.group_of(k), "incr", [k, delta], timeout_s, f"incr {k!r}")
        if error is not None:
            raise WrongValue(f"incr {k!r}: {error}", error)
        return int(value)

    async def append(self, key: bytes | str, suffix: bytes | str, *, timeout_s: float | None = None) -> int:
        """Append to key's value (absent: empty); returns the new length.
        Raises WrongValue("too_large") past the value size limit."""
        k = _to_bytes(key, "key")
        s = _to_bytes(suffix, "suffix")
        length = await self._write(self.group_of(k), "append", [k, s], timeout_s, f"append {k!r}")
        if length is None:
            raise WrongValue(f"append {k!r}: the value would exceed the size limit", "too_large")
        return int(length)

    async def put_if(
        self, key: bytes | str, value: bytes | str, condition: str = "always", *, timeout_s: float | None = None
    ) -> tuple[bool, bytes | None]:
        """Set key to value if `condition` holds ("always", "absent",
        "present"). Returns (done, the value before)."""
        k = _to_bytes(key, "key")
        v = _to_bytes(value, "value")
        done, previous = await self._write(self.group_of(k), "putif", [k, v, condition], timeout_s, f"putif {k!r}")
        return bool(done), previous

    async def scan_keys(
        self,
        group: int,
        start: bytes = b"",
        prefix: bytes = b"",
        limit: int | None = None,
        *,
        timeout_s: float | None = None,
    ) -> tuple[list[bytes], bytes | None]:
        """One page of `group`'s keys >= start with `prefix`, in order
        (linearizable). Returns (keys, next): `next` is where the next page
        starts, None at the end."""
        body = ["keys", group, bytes(start), bytes(prefix), limit]
        keys, nxt = await self._execute(group, lambda: body, write=False, timeout_s=timeout_s, what="keys")
        return list(keys), nxt

    async def count(self, group: int | None = None, *, timeout_s: float | None = None) -> int:
        """The number of keys of `group`, or of every group (None; the groups
        are read one by one, so that sum is not one snapshot)."""
        if group is not None:
            body = ["count", group]
            return int(await self._execute(group, lambda: body, write=False, timeout_s=timeout_s, what="count"))
        results = await self._each_group(
            list(range(self.groups_total)), lambda g: self.count(g, timeout_s=timeout_s)
        )
        return sum(results)

    async def _each_group(self, groups: list[int], fn) -> list[Any]:
        """fn(g) for every group concurrently; the first failure is raised
        once all are done."""
        results: list[Any] = [None] * len(groups)
        errors: list[BaseException] = []

        async def one(i: int, g: int) -> None:
            try:
                results[i] = await fn(g)
            except ClientError as exc:
                errors.append(exc)

        if len(groups) == 1:
            await one(0, groups[0])
        else:
            async with trio.open_nursery() as nursery:
                for i, g in enumerate(groups):
                    nursery.start_soon(one, i, g)
        if errors:
            raise errors[0]
        return results

    def close(self) -> None:
        self._closed = True
        for conn in list(self._conns.values()):
            conn.close()
        if self._coordinator is not None:
            self._coordinator.close()


@asynccontextmanager
async def open_client(
    cluster: str | Iterable[Any] | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
    routing_refresh_s: float = ROUTING_REFRESH_S,
    seed: int | None = None,
) -> AsyncIterator[Client]:
    """A connected client. `cluster`: "h:p,h:p", a list of "h:p" or (host, port),
    or None for $MULTIRAFT_CLUSTER / 127.0.0.1:7100. Raises ClusterUnavailable
    if no coordinator answers."""
    addresses = _normalise_cluster(cluster)
    try:
        async with trio.open_nursery() as nursery:
            client = Client(
                nursery,
                addresses,
                timeout_s=timeout_s,
                attempt_timeout_s=attempt_timeout_s,
                routing_refresh_s=routing_refresh_s,
                rng=random.Random(seed),
            )
            try:
                with trio.fail_after(max(timeout_s, CONNECT_TIMEOUT_S + 1)):
                    await client.refresh_routing()
            except trio.TooSlowError:
                raise ClusterUnavailable(f"no coordinator answered at {','.join(addresses)}") from None
            nursery.start_soon(client._refresh_loop)
            try:
                yield client
            finally:
                client.close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as eg:
        inner = _flatten(eg)
        if inner is not eg:
            raise inner from None
        raise


# ---------------------------------------------------------------------------
# The synchronous wrapper


class SyncClient:
    """A blocking client for scripts: runs a trio loop with one `Client` in a
    background thread; every method blocks the caller until its operation is
    done. Safe to call from several threads at once (their operations run
    concurrently in the loop). Use as a context manager, or call close()."""

    def __init__(self, cluster: str | Iterable[Any] | None = None, **kwargs: Any) -> None:
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._client: Client | None = None
        self._token: Any = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(
            target=self._run, args=(cluster, kwargs), name="multiraft-client", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _run(self, cluster: Any, kwargs: dict) -> None:
        async def main() -> None:
            try:
                async with open_client(cluster, **kwargs) as client:
                    self._client = client
                    self._token = trio.lowlevel.current_trio_token()
                    self._stop = trio.Event()
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._error = _flatten(exc)
                self._ready.set()

        trio.run(main)

    def _call(self, fn, *args: Any, **kwargs: Any) -> Any:
        if self._client is None or self._stop is None or self._stop.is_set():
            raise ClientError("the client is closed")

        async def run() -> Any:
            return await fn(*args, **kwargs)

        return trio.from_thread.run(run, trio_token=self._token)

    def put(self, key, value, **kw) -> bool:
        return self._call(self._client.put, key, value, **kw)

    def get(self, key, **kw) -> bytes | None:
        return self._call(self._client.get, key, **kw)

    def delete(self, key, **kw) -> bool:
        return self._call(self._client.delete, key, **kw)

    def cas(self, key, expected, new, **kw) -> tuple[bool, bytes | None]:
        return self._call(self._client.cas, key, expected, new, **kw)

    def write_many(self, items, **kw) -> int:
        return self._call(self._client.write_many, items, **kw)

    def incr(self, key, delta: int = 1, **kw) -> int:
        return self._call(self._client.incr, key, delta, **kw)

    def append(self, key, suffix, **kw) -> int:
        return self._call(self._client.append, key, suffix, **kw)

    def put_if(self, key, value, condition: str = "always", **kw) -> tuple[bool, bytes | None]:
        return self._call(self._client.put_if, key, value, condition, **kw)

    def scan_keys(self, group: int, start: bytes = b"", prefix: bytes = b"", limit: int | None = None, **kw):
        return self._call(self._client.scan_keys, group, start, prefix, limit, **kw)

    def count(self, group: int | None = None, **kw) -> int:
        return self._call(self._client.count, group, **kw)

    def cluster_status(self) -> dict:
        return self._call(self._client.cluster_status)

    @property
    def routing(self) -> dict | None:
        return self._client.routing if self._client else None

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
