"""Client requests (multiraft.protocol, channel 1): parsing and result mapping.

Pure functions, no I/O: `parse_request(frame)` turns one decoded frame into a
typed request or raises `BadRequest` (answered with status "error"; the
connection stays open). `write_payload(result)` maps a KV result to the
protocol's ok-payload.
"""

from __future__ import annotations

from typing import Any

import attrs

from multiraft import kv, protocol

__all__ = [
    "AdminRequest",
    "BadRequest",
    "ReadRequest",
    "WriteRequest",
    "PingRequest",
    "parse_request",
    "write_payload",
]

_U64 = 1 << 64


class BadRequest(ValueError):
    """The request is malformed: the client's fault. Answered with "error"."""

    def __init__(self, req_id: Any, message: str) -> None:
        super().__init__(message)
        self.req_id = req_id
        self.message = message


@attrs.frozen
class PingRequest:
    req_id: Any


@attrs.frozen
class AdminRequest:
    """A membership request of the coordinators (multiraft-admin), see
    multiraft.protocol: conf_change, transfer_leader, group_status."""

    req_id: Any
    op: str
    group: int
    changes: tuple[tuple[str, str], ...] = ()  # conf_change: (kind, node) pairs
    joint: bool = False  # conf_change: force joint consensus
    node: str | None = None  # transfer_leader: the target


ADMIN_OPS = ("conf_change", "transfer_leader", "group_status")
CONF_CHANGE_KINDS = ("add_voter", "add_learner", "remove")


@attrs.frozen
class WriteRequest:
    req_id: Any
    op: str
    group: int
    command: kv.Put | kv.Delete | kv.Cas | kv.PutMany | kv.Incr | kv.Append | kv.PutIf | kv.Register


@attrs.frozen
class ReadRequest:
    req_id: Any
    op: str
    group: int
    query: kv.Get | kv.Scan | kv.ScanKeys | kv.Count
    lease: bool  # the client asked for read_mode "lease"


# op -> number of items after req_id and op
_ARITY = {
    "put": 5, "delete": 4, "cas": 6, "get": 3, "scan": 4,
    # added for the Redis front-end (docs/resp.md)
    "mput": 4, "incr": 5, "append": 5, "putif": 6, "keys": 4, "count": 1,
    "register": 1,  # exactly-once sessions (multiraft.kv)
}
_CONDITIONS = {"always": kv.PUT_IF_ALWAYS, "absent": kv.PUT_IF_ABSENT, "present": kv.PUT_IF_PRESENT}
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


_SHOW_CHARS_MAX = 80


def _show(value: Any, depth: int = 2) -> str:
    """A client's value for an error message, in bounded work and length: the
    repr of a huge int raises (over 4300 digits), of a huge string is as long
    as the string."""
    t = type(value)
    if t is int:
        bits = value.bit_length()
        text = repr(value) if bits <= 64 else f"an integer of {bits} bits"
    elif t is str or t is bytes:
        text = repr(value[:_SHOW_CHARS_MAX])
    elif (t is list or t is dict) and depth > 0 and len(value) <= 4:
        items = value.items() if t is dict else value
        parts = [
            f"{_show(k, 0)}: {_show(v, depth - 1)}" if t is dict else _show(k, depth - 1)
            for k, v in (items if t is dict else ((x, None) for x in items))
        ]
        text = ("{%s}" if t is dict else "[%s]") % ", ".join(parts)
    elif t is list or t is dict:
        text = f"a {'list' if t is list else 'map'} of {len(value)} items"
    elif value is None or t is bool or t is float:
        text = repr(value)
    else:
        text = f"a {t.__name__}"
    return text if len(text) <= _SHOW_CHARS_MAX else text[: _SHOW_CHARS_MAX - 3] + "..."


def _req_id(frame: list) -> Any:
    rid = frame[0]
    # Echo anything plain back; a map or list as req_id is refused.
    if rid is None or type(rid) in (int, str, bytes):
        return rid
    return None


def _group(rid: Any, value: Any) -> int:
    if type(value) is not int or not 0 <= value < _U64:
        raise BadRequest(rid, f"group must be an int in [0, 2**64), got {_show(value)}")
    return value


def _bytes(rid: Any, what: str, value: Any) -> bytes:
    if type(value) is not bytes:
        raise BadRequest(rid, f"{what} must be bytes, got {type(value).__name__}")
    return value


def _opt_bytes(rid: Any, what: str, value: Any) -> bytes | None:
    return None if value is None else _bytes(rid, what, value)


def _u64(rid: Any, what: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value < _U64:
        raise BadRequest(rid, f"{what} must be an int in [0, 2**64), got {_show(value)}")
    return value


def parse_request(frame: list, *, scan_items_max: int = 10_000) -> PingRequest | WriteRequest | ReadRequest:
    """One decoded client frame -> a typed request; BadRequest if malformed."""
    rid = _req_id(frame)
    if frame[0] is not rid:
        raise BadRequest(None, "req_id must be an int, a string, bytes or null")
    if len(frame) < 2 or type(frame[1]) is not str:
        raise BadRequest(rid, "a request is [req_id, op, *args] with op a string")
    op = frame[1]
    if op == "ping":
        return PingRequest(rid)
    if op in ADMIN_OPS:
        return _parse_admin(rid, op, frame[2:])
    arity = _ARITY.get(op)
    if arity is None:
        raise BadRequest(rid, f"unknown op {_show(op)}")
    args = frame[2:]
    if op == "get" and len(args) == 2:
        args = [*args, protocol.READ_LINEARIZABLE]  # read_mode may be left out
    if len(args) != arity:
        raise BadRequest(rid, f"{op} takes {arity} arguments after the op, got {len(args)}")
    g = _group(rid, args[0])
    if op == "register":
        return WriteRequest(rid, op, g, kv.Register())
    if op == "put":
        key = _bytes(rid, "key", args[1])
        value = _bytes(rid, "value", args[2])
        cmd: Any = kv.Put(key, value, _u64(rid, "client_id", args[3]), _u64(rid, "seq", args[4]))
        return WriteRequest(rid, op, g, cmd)
    if op == "delete":
        key = _bytes(rid, "key", args[1])
        cmd = kv.Delete(key, _u64(rid, "client_id", args[2]), _u64(rid, "seq", args[3]))
        return WriteRequest(rid, op, g, cmd)
    if op == "cas":
        key = _bytes(rid, "key", args[1])
        expected = _opt_bytes(rid, "expected", args[2])
        new = _opt_bytes(rid, "new", args[3])
        cmd = kv.Cas(key, expected, new, _u64(rid, "client_id", args[4]), _u64(rid, "seq", args[5]))
        return WriteRequest(rid, op, g, cmd)
    if op in ("mput", "incr", "append", "putif", "keys", "count"):
        return _parse_more(rid, op, g, args, scan_items_max)
    if op == "get":
        key = _bytes(rid, "key", args[1])
        mode = args[2]
        if mode not in (protocol.READ_LINEARIZABLE, protocol.READ_LEASE):
            raise BadRequest(rid, f"read_mode must be 'linearizable' or 'lease', got {_show(mode)}")
        return ReadRequest(rid, op, g, kv.Get(key), mode == protocol.READ_LEASE)
    # scan
    start = _bytes(rid, "start", args[1])
    prefix = _bytes(rid, "prefix", args[2])
    limit = args[3]
    if limit is None:
        limit = scan_items_max
    elif type(limit) is not int or not 0 <= limit < _U64:
        raise BadRequest(rid, f"limit must be null or an int in [0, 2**64), got {_show(limit)}")
    return ReadRequest(rid, op, g, kv.Scan(start, prefix, min(limit, scan_items_max)), False)


def _parse_more(rid: Any, op: str, g: int, args: list, scan_items_max: int) -> WriteRequest | ReadRequest:
    """The ops added for the Redis front-end (see multiraft.protocol)."""
    if op == "count":
        return ReadRequest(rid, op, g, kv.Count(), False)
    if op == "keys":
        start = _bytes(rid, "start", args[1])
        prefix = _bytes(rid, "prefix", args[2])
        limit = args[3]
        if limit is None:
            limit = scan_items_max
        elif type(limit) is not int or not 0 <= limit < _U64:
            raise BadRequest(rid, f"limit must be null or an int in [0, 2**64), got {_show(limit)}")
        return ReadRequest(rid, op, g, kv.ScanKeys(start, prefix, min(limit, scan_items_max)), False)
    cid, seq = _u64(rid, "client_id", args[-2]), _u64(rid, "seq", args[-1])
    if op == "mput":
        items = args[1]
        if type(items) is not list or not items:
            raise BadRequest(rid, "items must be a non-empty list of [key, value or null]")
        pairs = []
        for item in items:
            if type(item) is not list or len(item) != 2:
                raise BadRequest(rid, f"an item must be [key, value or null], got {_show(item)}")
            pairs.append((_bytes(rid, "key", item[0]), _opt_bytes(rid, "value", item[1])))
        return WriteRequest(rid, op, g, kv.PutMany(tuple(pairs), cid, seq))
    key = _bytes(rid, "key", args[1])
    if op == "incr":
        delta = args[2]
        if type(delta) is not int or not _I64_MIN <= delta <= _I64_MAX:
            raise BadRequest(rid, f"delta must be an int in [-2**63, 2**63), got {_show(delta)}")
        return WriteRequest(rid, op, g, kv.Incr(key, delta, cid, seq))
    if op == "append":
        return WriteRequest(rid, op, g, kv.Append(key, _bytes(rid, "suffix", args[2]), cid, seq))
    value = _bytes(rid, "value", args[2])
    condition = _CONDITIONS.get(args[3]) if type(args[3]) is str else None
    if condition is None:
        raise BadRequest(rid, f"condition must be 'always', 'absent' or 'present', got {_show(args[3])}")
    return WriteRequest(rid, op, g, kv.PutIf(key, value, condition, cid, seq))


_INCR_ERRORS = {kv.INCR_NOT_INTEGER: "not_integer", kv.INCR_OVERFLOW: "overflow"}


def _node(rid: Any, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise BadRequest(rid, f"a node id must be a non-empty string, got {_show(value)}")
    return value


def _parse_admin(rid: Any, op: str, args: list) -> AdminRequest:
    """["conf_change", group, [[kind, node], ...], joint], ["transfer_leader",
    group, node], ["group_status", group]."""
    arity = {"conf_change": 3, "transfer_leader": 2, "group_status": 1}[op]
    if len(args) != arity:
        raise BadRequest(rid, f"{op} takes {arity} arguments after the op, got {len(args)}")
    g = _group(rid, args[0])
    if op == "group_status":
        return AdminRequest(rid, op, g)
    if op == "transfer_leader":
        return AdminRequest(rid, op, g, node=_node(rid, args[1]))
    changes = args[1]
    if type(changes) is not list or not changes or len(changes) > 16:
        raise BadRequest(rid, "changes must be a list of 1 to 16 [kind, node] pairs")
    out = []
    for c in changes:
        if type(c) is not list or len(c) != 2 or c[0] not in CONF_CHANGE_KINDS:
            raise BadRequest(
                rid, f"a change is [kind, node] with kind one of {', '.join(CONF_CHANGE_KINDS)}, got {_show(c)}"
            )
        out.append((c[0], _node(rid, c[1])))
    if type(args[2]) is not bool:
        raise BadRequest(rid, f"joint must be true or false, got {_show(args[2])}")
    return AdminRequest(rid, op, g, changes=tuple(out), joint=args[2])


def write_payload(result: object) -> tuple[str, Any]:
    """A KV apply result -> (status, payload) for the client."""
    kind = type(result)
    if kind is kv.PutResult:
        return protocol.OK, result.prev_existed
    if kind is kv.DeleteResult:
        return protocol.OK, result.existed
    if kind is kv.CasResult:
        return protocol.OK, [result.ok, result.current]
    if kind is kv.PutManyResult:
        return protocol.OK, result.existed
    if kind is kv.IncrResult:
        return protocol.OK, [result.value, _INCR_ERRORS.get(result.error)]
    if kind is kv.AppendResult:
        return protocol.OK, result.length
    if kind is kv.PutIfResult:
        return protocol.OK, [result.done, result.previous]
    if kind is kv.Registered:
        return protocol.OK, result.client_id
    if kind is kv.SessionExpired:
        return protocol.SESSION_EXPIRED, (
            f"session expired: client {result.client_id} is not a session of this group "
            f"(evicted, or never registered); seq {result.seq} was not applied"
        )
    if kind is kv.StaleRequest:
        return protocol.ERROR, (
            f"stale request: seq {result.seq} of client {result.client_id} is older than "
            f"its last applied seq {result.last_seq}"
        )
    if kind is kv.InvalidCommand:
        return protocol.ERROR, f"invalid command: {result.reason}"
    return protocol.ERROR, f"unexpected result {_show(result)}"
