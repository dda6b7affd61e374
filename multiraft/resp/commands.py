"""The RESP command table: name, arity, key positions, handler (docs/resp.md).

A handler takes (session, args) -- args[0] is the command name as sent -- and
returns a reply value (multiraft.resp.protocol), or raises `ReplyError`; the
data commands are coroutines that call a `Backend`. Arity follows Redis: n
means exactly n arguments counting the name, -n at least n. `lookup` answers
unknown commands and wrong arities with Redis's own error texts.

The backend is `multiraft.client.Client` (tests use an in-memory stand-in):
writes are answered once committed and applied, reads are linearizable
(ReadIndex). Its errors become RESP errors: WrongValue -> Redis's texts,
ClusterUnavailable -> CLUSTERDOWN, a timeout that did not apply -> TRYAGAIN,
one whose outcome is unknown -> TIMEOUT, a retried write whose session
expired (multiraft.client.UnknownOutcome) -> ERR unknown outcome, a refused
request -> ERR.
"""

from __future__ import annotations

import inspect
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

import multiraft
from multiraft.client import ClientError, ClusterUnavailable, RequestError, Timeout, UnknownOutcome, WrongValue
from multiraft.kv import parse_int64

from .protocol import OK, ErrorReply, Limits, Map, Status
from .scan import CursorTable, InvalidCursor, all_keys, compile_glob, gather, group_keys, parse_cursor, scan_page

__all__ = ["Backend", "CommandSpec", "ReplyError", "ServerState", "Session", "TABLE", "lookup", "error_reply"]

REDIS_VERSION = "7.0.0"  # the Redis whose commands and replies we follow
KEYS_MAX = 1_000_000  # KEYS refuses to answer more (use SCAN)
SCAN_COUNT_MAX = 100_000
FLUSH_BATCH = 1000  # keys deleted per log entry by FLUSHDB
ERROR_CHARS_MAX = 512

E_NOT_INTEGER = "ERR value is not an integer or out of range"
E_SYNTAX = "ERR syntax error"
E_OVERFLOW = "ERR increment or decrement would overflow"
E_EXPIRY = (
    "ERR key expiry (EX, PX, EXAT, PXAT, KEEPTTL, EXPIRE, SETEX, ...) is not supported: replicas "
    "must agree on when a key expires, and multiraft does not replicate expiry times (see docs/resp.md)"
)


class Backend(Protocol):
    """What the commands need from the cluster (multiraft.client.Client has it all)."""

    @property
    def groups_total(self) -> int: ...

    async def get(self, key: bytes) -> bytes | None: ...

    async def put(self, key: bytes, value: bytes) -> bool: ...

    async def put_if(self, key: bytes, value: bytes, condition: str = "always") -> tuple[bool, bytes | None]: ...

    async def write_many(self, items: Sequence[tuple[bytes, bytes | None]]) -> int: ...

    async def incr(self, key: bytes, delta: int = 1) -> int: ...

    async def append(self, key: bytes, suffix: bytes) -> int: ...

    async def scan_keys(
        self, group: int, start: bytes = b"", prefix: bytes = b"", limit: int | None = None
    ) -> tuple[list[bytes], bytes | None]: ...

    async def count(self, group: int | None = None) -> int: ...

    async def cluster_status(self) -> dict: ...


class ReplyError(Exception):
    """Raised by a handler: answer this error."""

    def __init__(self, message: str | bytes) -> None:
        super().__init__(message)
        self.reply = ErrorReply(message)


def error_reply(exc: ClientError) -> ErrorReply:
    """A backend (client) error as a RESP error (at most ERROR_CHARS_MAX
    characters: a message may quote a 64 KiB key)."""
    reply = _error_reply(exc)
    if len(reply.message) > ERROR_CHARS_MAX:
        reply = ErrorReply(reply.message[: ERROR_CHARS_MAX - 3] + "...")
    return reply


def _error_reply(exc: ClientError) -> ErrorReply:
    if isinstance(exc, WrongValue):
        if exc.reason == "not_integer":
            return ErrorReply(E_NOT_INTEGER)
        if exc.reason == "overflow":
            return ErrorReply(E_OVERFLOW)
        return ErrorReply("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    if isinstance(exc, ClusterUnavailable):
        return ErrorReply(f"CLUSTERDOWN {exc}")
    if isinstance(exc, Timeout):
        if exc.outcome_unknown:
            return ErrorReply(f"TIMEOUT the write may or may not have been applied: {exc}")
        return ErrorReply(f"TRYAGAIN {exc}")
    if isinstance(exc, UnknownOutcome):
        return ErrorReply(
            f"ERR unknown outcome: the write may or may not have been applied (its session expired): {exc}"
        )
    if isinstance(exc, RequestError):
        return ErrorReply(f"ERR {exc}")
    return ErrorReply(f"ERR {exc}")


# ---------------------------------------------------------------------------
# State


class ServerState:
    """What all connections of one RESP server share."""

    def __init__(self, backend: Backend, *, limits: Limits | None = None, listen: str = "") -> None:
        self.backend = backend
        self.limits = limits or Limits()
        self.listen = listen
        self.started = time.time()
        self.cursors = CursorTable()
        self.sessions: dict[int, Session] = {}
        self.next_id = 1
        self.commands_processed = 0
        self.connections_received = 0

    def config(self) -> dict[str, str]:
        """What CONFIG GET shows (read-only)."""
        port = self.listen.rpartition(":")[2]
        return {
            "appendonly": "no",
            "save": "",
            "databases": "1",
            "maxmemory": "0",
            "timeout": "0",
            "port": port,
            "proto-max-bulk-len": str(self.limits.bulk_bytes_max),
            "cluster-enabled": "no",
        }


@attrs.define(eq=False)
class Session:
    """One client connection."""

    server: ServerState
    id: int
    addr: str = ""
    name: bytes | None = None
    lib_name: bytes = b""
    lib_ver: bytes = b""
    created: float = attrs.field(factory=time.time)
    last_command: str = ""
    closing: bool = False  # QUIT: answer, then close
    protocol: int = 2  # 3 after HELLO 3

    @property
    def backend(self) -> Backend:
        return self.server.backend

    def describe(self) -> str:
        age = int(time.time() - self.created)
        name = (self.name or b"").decode(errors="replace")
        return (
            f"id={self.id} addr={self.addr} laddr={self.server.listen} name={name} age={age} db=0 "
            f"cmd={self.last_command or 'NULL'} lib-name={self.lib_name.decode(errors='replace')} "
            f"lib-ver={self.lib_ver.decode(errors='replace')}"
        )


# ---------------------------------------------------------------------------
# The table


@attrs.frozen
class CommandSpec:
    name: str  # lower case, as Redis reports it
    arity: int
    handler: Callable[..., Any]
    flags: tuple[str, ...] = ()
    first_key: int = 0
    last_key: int = 0
    step: int = 0
    # Ordered against every other command of its connection (see server.py).
    barrier: bool = False
    is_async: bool = False
    readonly: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "readonly", "readonly" in self.flags)

    def keys(self, args: list[bytes]) -> list[bytes]:
        if not self.first_key:
            return []
        last = self.last_key if self.last_key > 0 else len(args) + self.last_key
        return args[self.first_key : last + 1 : self.step]

    def info(self) -> list:
        """The COMMAND / COMMAND INFO entry (Redis 7 layout)."""
        return [self.name, self.arity, [Status(f) for f in self.flags], self.first_key, self.last_key,
                self.step, [], [], [], []]


TABLE: dict[bytes, CommandSpec] = {}


def command(name: str, arity: int, flags: str = "", keys: tuple[int, int, int] = (0, 0, 0),
            barrier: bool = False) -> Callable:
    def register(fn: Callable) -> Callable:
        TABLE[name.encode()] = CommandSpec(
            name, arity, fn, tuple(flags.split()), *keys, barrier=barrier,
            is_async=inspect.iscoroutinefunction(fn),
        )
        return fn

    return register


def _cstr(data: bytes, size: int) -> bytes:
    """printf's %.<size>s of a C string."""
    nul = data.find(0)
    return (data if nul < 0 else data[:nul])[:size]


def lookup(args: list[bytes]) -> CommandSpec | ErrorReply:
    """The command for `args`, or Redis's error for an unknown command or a
    wrong number of arguments."""
    spec = TABLE.get(args[0].lower())
    if spec is None:
        shown = b""
        for a in args[1:]:
            if len(shown) >= 128:
                break
            shown += b"'" + _cstr(a, 128 - len(shown)) + b"' "
        return ErrorReply(
            b"ERR unknown command '" + _cstr(args[0], 128) + b"', with args beginning with: " + shown
        )
    n = len(args)
    if (spec.arity > 0 and n != spec.arity) or n < -spec.arity:
        return arity_error(spec.name)
    return spec


def arity_error(fullname: str) -> ErrorReply:
    return ErrorReply(f"ERR wrong number of arguments for '{fullname}' command")


def _int_arg(data: bytes) -> int:
    value = parse_int64(data)
    if value is None:
        raise ReplyError(E_NOT_INTEGER)
    return value


def _unknown_subcommand(args: list[bytes]) -> ReplyError:
    return ReplyError(
        b"ERR unknown subcommand '" + _cstr(args[1], 128) + b"'. Try " + args[0].upper() + b" HELP."
    )


# --- connection and server ---


@command("ping", -1, "fast")
def cmd_ping(s: Session, args: list[bytes]) -> Any:
    if len(args) > 2:
        raise ReplyError(arity_error("ping").message)
    return args[1] if len(args) == 2 else Status("PONG")


@command("echo", 2, "fast")
def cmd_echo(s: Session, args: list[bytes]) -> Any:
    return args[1]


@command("quit", -1, "fast")
def cmd_quit(s: Session, args: list[bytes]) -> Any:
    s.closing = True
    return OK


@command("select", 2, "fast")
def cmd_select(s: Session, args: list[bytes]) -> Any:
    if _int_arg(args[1]) != 0:
        raise ReplyError("ERR DB index is out of range")
    return OK


@command("auth", -2, "fast")
def cmd_auth(s: Session, args: list[bytes]) -> Any:
    if len(args) > 3:
        raise ReplyError(E_SYNTAX)
    if len(args) == 2:
        raise ReplyError(
            "ERR AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?"
        )
    return OK  # the default user has no password


@command("hello", -1, "fast")
def cmd_hello(s: Session, args: list[bytes]) -> Any:
    if len(args) > 1:
        version = parse_int64(args[1])
        if version is None:
            raise ReplyError("ERR Protocol version is not an integer or out of range")
        if version not in (2, 3):
            raise ReplyError("NOPROTO sorry, this protocol version is not supported")
        i = 2
        while i < len(args):
            opt = args[i].upper()
            if opt == b"AUTH" and i + 2 < len(args):
                i += 3
            elif opt == b"SETNAME" and i + 1 < len(args):
                s.name = _check_name(args[i + 1])
                i += 2
            else:
                raise ReplyError(b"ERR Syntax error in HELLO option '" + _cstr(args[i], 128) + b"'")
        s.protocol = version
    return Map(server="redis", version=REDIS_VERSION, proto=s.protocol, id=s.id, mode="standalone",
               role="master", modules=[])


def _check_name(name: bytes) -> bytes | None:
    if any(c < 33 or c > 126 for c in name):
        raise ReplyError("ERR Client names cannot contain spaces, newlines or special characters.")
    return name or None


_CLIENT_HELP = [
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GETNAME", "    Return the name of the current connection.",
    "ID", "    Return the ID of the current connection.",
    "INFO", "    Return information about the current client connection.",
    "LIST", "    Return information about client connections.",
    "SETINFO <LIB-NAME|LIB-VER> <value>", "    Set client library name or version.",
    "SETNAME <name>", "    Assign the name <name> to the current connection.",
    "HELP", "    Print this help.",
]


@command("client", -2, "")
def cmd_client(s: Session, args: list[bytes]) -> Any:
    sub = args[1].lower()
    arities = {b"setname": 3, b"getname": 2, b"id": 2, b"info": 2, b"list": -2, b"setinfo": 4, b"help": 2}
    arity = arities.get(sub)
    if arity is None:
        raise _unknown_subcommand(args)
    if (arity > 0 and len(args) != arity) or len(args) < -arity:
        raise ReplyError(arity_error(f"client|{sub.decode()}").message)
    if sub == b"setname":
        s.name = _check_name(args[2])
        return OK
    if sub == b"getname":
        return s.name
    if sub == b"id":
        return s.id
    if sub == b"info":
        return s.describe() + "\n"
    if sub == b"list":
        return "".join(c.describe() + "\n" for c in s.server.sessions.values())
    if sub == b"setinfo":
        attr = args[2].lower()
        if any(c < 33 or c > 126 for c in args[3]):
            raise ReplyError(
                b"ERR " + _cstr(args[2], 128) + b" cannot contain spaces, newlines or special characters."
            )
        if attr == b"lib-name":
            s.lib_name = args[3]
        elif attr == b"lib-ver":
            s.lib_ver = args[3]
        else:
            raise ReplyError(b"ERR Unrecognized option '" + _cstr(args[2], 128) + b"'")
        return OK
    return _CLIENT_HELP


@command("command", -1, "")
def cmd_command(s: Session, args: list[bytes]) -> Any:
    if len(args) == 1:
        return [spec.info() for spec in TABLE.values()]
    sub = args[1].lower()
    if sub == b"count" and len(args) == 2:
        return len(TABLE)
    if sub == b"info":
        return [TABLE[n.lower()].info() if n.lower() in TABLE else None for n in args[2:]]
    if sub == b"docs":
        return Map()  # no docs: redis-cli falls back on its own hints
    if sub == b"list":
        return [spec.name for spec in TABLE.values()]
    if sub == b"getkeys" and len(args) >= 3:
        found = lookup(args[2:])
        if isinstance(found, ErrorReply):
            raise ReplyError("ERR Invalid command specified")
        keys = found.keys(args[2:])
        if not keys:
            raise ReplyError("ERR The command has no key arguments")
        return keys
    if sub == b"help" and len(args) == 2:
        return ["COMMAND [<subcommand>]. Subcommands are:", "COUNT", "DOCS", "GETKEYS", "INFO", "LIST", "HELP"]
    if sub in (b"count", b"getkeys", b"help"):
        raise ReplyError(arity_error(f"command|{sub.decode()}").message)
    raise _unknown_subcommand(args)


@command("config", -2, "")
def cmd_config(s: Session, args: list[bytes]) -> Any:
    sub = args[1].lower()
    if sub == b"get":
        if len(args) < 3:
            raise ReplyError(arity_error("config|get").message)
        out = Map()
        config = s.server.config()
        for pattern in args[2:]:
            match = compile_glob(pattern.lower())
            out.update((k, v) for k, v in config.items() if match(k.encode()))
        return out
    if sub == b"set":
        raise ReplyError("ERR CONFIG SET is not supported by multiraft's RESP front-end")
    if sub == b"resetstat" and len(args) == 2:
        s.server.commands_processed = 0
        return OK
    if sub == b"help":
        return ["CONFIG <subcommand>. Subcommands are:", "GET <pattern>", "RESETSTAT", "HELP"]
    raise _unknown_subcommand(args)


@command("info", -1, "")
async def cmd_info(s: Session, args: list[bytes]) -> Any:
    everything = {"server", "clients", "cluster", "keyspace"}
    wanted = {a.decode(errors="replace").lower() for a in args[1:]} or {"default"}
    if wanted & {"default", "all", "everything"}:
        wanted = everything
    server = s.server
    sections = []
    if "server" in wanted:
        uptime = int(time.time() - server.started)
        sections.append([
            "# Server",
            f"redis_version:{REDIS_VERSION}",
            f"multiraft_version:{getattr(multiraft, '__version__', '0')}",
            "redis_mode:standalone",
            f"os:{platform.system()} {platform.release()} {platform.machine()}",
            "arch_bits:64",
            f"python_version:{sys.version.split()[0]}",
            f"process_id:{os.getpid()}",
            f"tcp_port:{server.listen.rpartition(':')[2]}",
            f"uptime_in_seconds:{uptime}",
            f"uptime_in_days:{uptime // 86400}",
        ])
    if "clients" in wanted:
        sections.append([
            "# Clients",
            f"connected_clients:{len(server.sessions)}",
            f"total_connections_received:{server.connections_received}",
            f"total_commands_processed:{server.commands_processed}",
        ])
    if "cluster" in wanted:
        sections.append(["# Cluster", "cluster_enabled:0", *await _cluster_lines(s.backend)])
    if "keyspace" in wanted:
        lines = ["# Keyspace"]
        try:
            lines.append(f"db0:keys={await s.backend.count()},expires=0,avg_ttl=0")
        except ClientError:
            pass
        sections.append(lines)
    return "\r\n\r\n".join("\r\n".join(lines) for lines in sections) + "\r\n"


async def _cluster_lines(backend: Backend) -> list[str]:
    try:
        st = await backend.cluster_status()
    except ClientError as exc:
        return [f"multiraft_status:unavailable ({exc})"]
    nodes = st.get("nodes") or []
    groups = st.get("groups") or []
    leaders: dict[str, int] = {n["id"]: 0 for n in nodes}
    for g in groups:
        if g.get("leader"):
            leaders[g["leader"]] = leaders.get(g["leader"], 0) + 1
    lines = [
        f"multiraft_nodes:{len(nodes)}",
        f"multiraft_nodes_up:{sum(1 for n in nodes if n.get('up'))}",
        f"multiraft_groups:{st.get('groups_total', len(groups))}",
        f"multiraft_groups_with_leader:{sum(1 for g in groups if g.get('leader'))}",
        f"multiraft_replicas:{st.get('replicas')}",
        "multiraft_leaders:" + ",".join(f"{n}={c}" for n, c in sorted(leaders.items())),
    ]
    for n in nodes:
        workers = n.get("workers") or []
        lines.append(
            f"multiraft_node_{n['id']}:address={n.get('address')},up={int(bool(n.get('up')))},"
            f"workers={len(workers)},workers_up={sum(1 for w in workers if w.get('up'))},"
            f"leaders={leaders.get(n['id'], 0)}"
        )
    return lines


# --- strings ---


@command("get", 2, "readonly fast", (1, 1, 1))
async def cmd_get(s: Session, args: list[bytes]) -> Any:
    return await s.backend.get(args[1])


@command("set", -3, "write", (1, 1, 1))
async def cmd_set(s: Session, args: list[bytes]) -> Any:
    nx = xx = get = False
    expiry = None
    i = 3
    while i < len(args):
        opt = args[i].upper()
        if opt == b"NX" and not xx:
            nx = True
        elif opt == b"XX" and not nx:
            xx = True
        elif opt == b"GET":
            get = True
        elif opt == b"KEEPTTL" and expiry is None:
            expiry = opt
        elif opt in (b"EX", b"PX", b"EXAT", b"PXAT") and expiry is None and i + 1 < len(args):
            expiry = opt
            i += 1
        else:
            raise ReplyError(E_SYNTAX)
        i += 1
    if expiry is not None:
        raise ReplyError(E_EXPIRY)
    key, value = args[1], args[2]
    if not (nx or xx or get):
        await s.backend.put(key, value)
        return OK
    done, previous = await s.backend.put_if(key, value, "absent" if nx else "present" if xx else "always")
    if get:
        return previous
    return OK if done else None


@command("setnx", 3, "write fast", (1, 1, 1))
async def cmd_setnx(s: Session, args: list[bytes]) -> Any:
    done, _ = await s.backend.put_if(args[1], args[2], "absent")
    return int(done)


@command("getset", 3, "write fast", (1, 1, 1))
async def cmd_getset(s: Session, args: list[bytes]) -> Any:
    _, previous = await s.backend.put_if(args[1], args[2], "always")
    return previous


@command("mget", -2, "readonly fast", (1, -1, 1))
async def cmd_mget(s: Session, args: list[bytes]) -> Any:
    backend = s.backend
    return await gather([lambda k=k: backend.get(k) for k in args[1:]])


@command("mset", -3, "write", (1, -1, 2))
async def cmd_mset(s: Session, args: list[bytes]) -> Any:
    if len(args) % 2 == 0:
        raise ReplyError(arity_error("mset").message)
    await s.backend.write_many(list(zip(args[1::2], args[2::2], strict=True)))
    return OK


@command("del", -2, "write", (1, -1, 1))
async def cmd_del(s: Session, args: list[bytes]) -> Any:
    return await s.backend.write_many([(k, None) for k in args[1:]])


TABLE[b"unlink"] = attrs.evolve(TABLE[b"del"], name="unlink")


@command("exists", -2, "readonly fast", (1, -1, 1))
async def cmd_exists(s: Session, args: list[bytes]) -> Any:
    backend = s.backend
    values = await gather([lambda k=k: backend.get(k) for k in args[1:]])
    return sum(1 for v in values if v is not None)


async def _incr(s: Session, key: bytes, delta: int) -> int:
    return await s.backend.incr(key, delta)


@command("incr", 2, "write fast", (1, 1, 1))
async def cmd_incr(s: Session, args: list[bytes]) -> Any:
    return await _incr(s, args[1], 1)


@command("decr", 2, "write fast", (1, 1, 1))
async def cmd_decr(s: Session, args: list[bytes]) -> Any:
    return await _incr(s, args[1], -1)


@command("incrby", 3, "write fast", (1, 1, 1))
async def cmd_incrby(s: Session, args: list[bytes]) -> Any:
    return await _incr(s, args[1], _int_arg(args[2]))


@command("decrby", 3, "write fast", (1, 1, 1))
async def cmd_decrby(s: Session, args: list[bytes]) -> Any:
    delta = _int_arg(args[2])
    if delta == -(1 << 63):
        raise ReplyError("ERR decrement would overflow")
    return await _incr(s, args[1], -delta)


@command("append", 3, "write", (1, 1, 1))
async def cmd_append(s: Session, args: list[bytes]) -> Any:
    return await s.backend.append(args[1], args[2])


@command("strlen", 2, "readonly fast", (1, 1, 1))
async def cmd_strlen(s: Session, args: list[bytes]) -> Any:
    value = await s.backend.get(args[1])
    return 0 if value is None else len(value)


@command("type", 2, "readonly fast", (1, 1, 1))
async def cmd_type(s: Session, args: list[bytes]) -> Any:
    return Status("none" if await s.backend.get(args[1]) is None else "string")


# --- expiry: not supported (docs/resp.md); keys never expire ---


@command("ttl", 2, "readonly fast", (1, 1, 1))
async def cmd_ttl(s: Session, args: list[bytes]) -> Any:
    return -2 if await s.backend.get(args[1]) is None else -1


TABLE[b"pttl"] = attrs.evolve(TABLE[b"ttl"], name="pttl")


@command("persist", 2, "write fast", (1, 1, 1))
def cmd_persist(s: Session, args: list[bytes]) -> Any:
    return 0  # no key has a timeout to remove


def cmd_expiry(s: Session, args: list[bytes]) -> Any:
    raise ReplyError(E_EXPIRY)


for _name, _arity in (("expire", -3), ("pexpire", -3), ("expireat", -3), ("pexpireat", -3),
                      ("setex", 4), ("psetex", 4)):
    command(_name, _arity, "write", (1, 1, 1))(cmd_expiry)


@command("getex", -2, "write fast", (1, 1, 1))
async def cmd_getex(s: Session, args: list[bytes]) -> Any:
    if len(args) == 3 and args[2].upper() == b"PERSIST" or len(args) == 2:
        return await s.backend.get(args[1])
    if args[2].upper() in (b"EX", b"PX", b"EXAT", b"PXAT"):
        raise ReplyError(E_EXPIRY)
    raise ReplyError(E_SYNTAX)


# --- the key space (across all groups) ---


@command("dbsize", 1, "readonly fast", barrier=True)
async def cmd_dbsize(s: Session, args: list[bytes]) -> Any:
    return await s.backend.count()


@command("keys", 2, "readonly", barrier=True)
async def cmd_keys(s: Session, args: list[bytes]) -> Any:
    try:
        return await all_keys(s.backend, args[1], keys_max=KEYS_MAX)
    except OverflowError:
        raise ReplyError(f"ERR KEYS would answer more than {KEYS_MAX} keys: use SCAN") from None


@command("scan", -2, "readonly", barrier=True)
async def cmd_scan(s: Session, args: list[bytes]) -> Any:
    try:
        cursor = parse_cursor(args[1])
    except InvalidCursor:
        raise ReplyError("ERR invalid cursor") from None
    match = None
    count = 10
    kind = None
    i = 2
    while i < len(args):
        opt = args[i].lower()
        if i + 1 >= len(args):
            raise ReplyError(E_SYNTAX)
        if opt == b"match":
            match = args[i + 1]
        elif opt == b"count":
            count = _int_arg(args[i + 1])
            if count < 1:
                raise ReplyError(E_SYNTAX)
        elif opt == b"type":
            kind = args[i + 1].lower()
        else:
            raise ReplyError(E_SYNTAX)
        i += 2
    if kind is not None and kind != b"string":
        return [b"0", []]  # every value is a string
    if match == b"*":
        match = None
    try:
        nxt, keys = await scan_page(s.backend, s.server.cursors, cursor, match=match,
                                    count=min(count, SCAN_COUNT_MAX))
    except InvalidCursor:
        raise ReplyError("ERR invalid cursor") from None
    return [str(nxt).encode(), keys]


@command("flushdb", -1, "write", barrier=True)
async def cmd_flushdb(s: Session, args: list[bytes]) -> Any:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise ReplyError(E_SYNTAX)
    backend = s.backend

    async def flush(g: int) -> None:
        keys = await group_keys(backend, g)
        for i in range(0, len(keys), FLUSH_BATCH):
            await backend.write_many([(k, None) for k in keys[i : i + FLUSH_BATCH]])

    await gather([lambda g=g: flush(g) for g in range(backend.groups_total)])
    return OK


TABLE[b"flushall"] = attrs.evolve(TABLE[b"flushdb"], name="flushall")

