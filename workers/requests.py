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
class WriteRequest:
    req_id: Any
    op: str
    group: int
    command: kv.Put | kv.Delete | kv.Cas


@attrs.frozen
class ReadRequest:
    req_id: Any
    op: str
    group: int
    query: kv.Get | kv.Scan
    lease: bool  # the client asked for read_mode "lease"


# op -> number of items after req_id and op
_ARITY = {"put": 5, "delete": 4, "cas": 6, "get": 3, "scan": 4}


def _req_id(frame: list) -> Any:
    rid = frame[0]
    # Echo anything plain back; a map or list as req_id is refused.
    if rid is None or type(rid) in (int, str, bytes):
        return rid
    return None


def _group(rid: Any, value: Any) -> int:
    if type(value) is not int or value < 0:
        raise BadRequest(rid, f"group must be an int >= 0, got {value!r}")
    return value


def _bytes(rid: Any, what: str, value: Any) -> bytes:
    if type(value) is not bytes:
        raise BadRequest(rid, f"{what} must be bytes, got {type(value).__name__}")
    return value


def _opt_bytes(rid: Any, what: str, value: Any) -> bytes | None:
    return None if value is None else _bytes(rid, what, value)


def _u64(rid: Any, what: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value < _U64:
        raise BadRequest(rid, f"{what} must be an int in [0, 2**64), got {value!r}")
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
    arity = _ARITY.get(op)
    if arity is None:
        raise BadRequest(rid, f"unknown op {op!r}")
    args = frame[2:]
    if op == "get" and len(args) == 2:
        args = [*args, protocol.READ_LINEARIZABLE]  # read_mode may be left out
    if len(args) != arity:
        raise BadRequest(rid, f"{op} takes {arity} arguments after the op, got {len(args)}")
    g = _group(rid, args[0])
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
    if op == "get":
        key = _bytes(rid, "key", args[1])
        mode = args[2]
        if mode not in (protocol.READ_LINEARIZABLE, protocol.READ_LEASE):
            raise BadRequest(rid, f"read_mode must be 'linearizable' or 'lease', got {mode!r}")
        return ReadRequest(rid, op, g, kv.Get(key), mode == protocol.READ_LEASE)
    # scan
    start = _bytes(rid, "start", args[1])
    prefix = _bytes(rid, "prefix", args[2])
    limit = args[3]
    if limit is None:
        limit = scan_items_max
    elif type(limit) is not int or limit < 0:
        raise BadRequest(rid, f"limit must be null or an int >= 0, got {limit!r}")
    return ReadRequest(rid, op, g, kv.Scan(start, prefix, min(limit, scan_items_max)), False)


def write_payload(result: object) -> tuple[str, Any]:
    """A KV apply result -> (status, payload) for the client."""
    kind = type(result)
    if kind is kv.PutResult:
        return protocol.OK, result.prev_existed
    if kind is kv.DeleteResult:
        return protocol.OK, result.existed
    if kind is kv.CasResult:
        return protocol.OK, [result.ok, result.current]
    if kind is kv.StaleRequest:
        return protocol.ERROR, (
            f"stale request: seq {result.seq} of client {result.client_id} is older than "
            f"its last applied seq {result.last_seq}"
        )
    if kind is kv.InvalidCommand:
        return protocol.ERROR, f"invalid command: {result.reason}"
    return protocol.ERROR, f"unexpected result {result!r}"
