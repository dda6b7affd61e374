"""The default replicated state machine: a byte-string key-value store.

`KVStateMachine` implements `multiraft.statemachine.StreamingStateMachine`.
Keys and values are `bytes`. Every replica of a group applies the same
committed commands in the same order and must reach the same state, so
everything here is deterministic and total (see the contract in
`multiraft.statemachine`).

Layering (DESIGN §3): stdlib, attrs, and the stdlib-only
`multiraft.statemachine` protocol module; never cbor2 or trio. Commands are
therefore encoded here with `struct`.

Commands
--------
`Put(key, value)`, `Delete(key)`, `Cas(key, expected, new)` are writes and
carry `(client_id, seq)` for exactly-once application (Raft thesis §6.3), as do
the writes added for the Redis front-end (docs/resp.md): `PutMany(items)`
(several puts and deletes of one group in one entry: MSET, DEL),
`Incr(key, delta)` (INCRBY on a decimal int64 value, as Redis parses them),
`Append(key, suffix)` and `PutIf(key, value, condition)` (SET NX/XX/GET,
GETSET, SETNX). `Register()` opens a session (below).
`Get(key)` may also travel through the log (e.g. for a simulator that wants
reads ordered like writes); `Noop()` does nothing. Empty data (`b""`, a new
leader's empty entry) is also a no-op.

Command format, version 2 (all integers big-endian, unsigned)::

    u8 version (=2) | u8 op | body
    NOOP   (op 0): nothing
    PUT    (op 1): u64 client_id | u64 seq | blob key | blob value
    DELETE (op 2): u64 client_id | u64 seq | blob key
    CAS    (op 3): u64 client_id | u64 seq | blob key | opt expected | opt new
    GET    (op 4): blob key
    PUT_MANY (op 5): u64 client_id | u64 seq | u32 count (>= 1) | count x (blob key | opt value)
    INCR   (op 6): u64 client_id | u64 seq | blob key | i64 delta
    APPEND (op 7): u64 client_id | u64 seq | blob key | blob suffix
    PUT_IF (op 8): u64 client_id | u64 seq | blob key | blob value | u8 condition
                   (0 always, 1 only if absent, 2 only if present)
    REGISTER (op 9): nothing
    blob = u32 length | bytes;   opt = u8 0 (None) | u8 1, blob

A command decodes only if it is exactly this, with nothing after it, and its
key and value fit the limits. Anything else applies as `InvalidCommand` and
changes nothing but `applied_index`.

Version 1 (ops 0 to 8, the same bodies) came before registered sessions; its
client ids were random numbers the client chose. A version-1 entry still in a
log decodes with `client_id = 0`: it applies without a session, as it would
have the first time (a retry that the old table would have answered from its
cache applies again: upgrade a group while no writes are in flight).

Exactly-once sessions
---------------------
A client opens a session with `Register()`; the result `Registered(client_id)`
gives the session's id, which is **the log index of the Register entry**. Ids
are therefore unique forever: a session that was evicted is never revived, a
delayed duplicate Register opens another, empty session (harmless: it only
takes a slot until it ages out), and no old command can match a newer session.

Per session the table remembers the last applied `seq`, the index it was
applied at (the Register's index before the first write) and its result. A
write with `client_id != 0`:

- no such session (never registered, or evicted): `SessionExpired`, nothing
  applies. The client cannot know whether an earlier attempt applied (see
  multiraft.client: it re-registers, and reports "unknown outcome" for a write
  it had sent before);
- `seq == last seq`: a retry; the cached result is returned, nothing applies;
- `seq <  last seq`: a stale, delayed request; `StaleRequest` is returned,
  nothing applies, the session is unchanged;
- `seq >  last seq`: the command applies; the session records it.

`client_id == 0` means "no session": the command always applies, once per log
entry. The client (and so the Redis front-end) never sends it; tests, tools
and version-1 entries do.

The table holds at most `sessions_max` sessions. A `Register` at a full table
evicts the session with the oldest last-applied index (indexes are unique per
entry: no ties, every replica evicts the same one). Expiry is thus by log
position only, never by a replica's clock. `sessions_max == 0` keeps no
session: every session write is refused.

Memory: a cached result keeps what a retry needs and no more. A successful
CAS keeps no value (a retry carries `new` again); a failed CAS keeps the value
it found and a `PutIf` the previous value. The values cached by all sessions
together are at most `session_values_bytes_max` bytes (>= the value size
limit): caching one beyond it evicts the oldest other sessions until it fits.
So a group's session table holds at most `sessions_max` entries of about 200
bytes plus `session_values_bytes_max` bytes of values (2 MB + 16 MiB by
default).

Configuration (`sessions_max`, `session_values_bytes_max`,
`key_size_bytes_max`, `value_size_bytes_max`) decides results, so it must be
the same on every replica of a group.

Snapshot format, version 2 (big-endian, no checksum: the snapshot store and
the transport checksum it; every length and count is checked, the encoding is
canonical and nothing may follow it)::

    b"MRKV" | u8 version (=2) | u64 applied_index
    u32 session_count, then per session in increasing last_index:
        u64 client_id (!= 0, <= last_index) | u64 last_seq | u64 last_index
        (<= applied_index) | result: u8 tag, then
            tag 0 none (a registered session with no write yet; last_seq 0)
            tag 1 PutResult:    u8 prev_existed (0/1)
            tag 2 DeleteResult: u8 existed (0/1)
            tag 3 CasResult:    u8 ok (0/1) | opt current (None when ok)
            tag 4 PutManyResult: u32 existed
            tag 5 IncrResult:   u8 error (0 ok, 1 not an integer, 2 overflow) | i64 value (0 on error)
            tag 6 AppendResult: u8 ok (0/1) | u64 length (0 when not ok)
            tag 7 PutIfResult:  u8 done (0/1) | opt previous
    u64 key_count, then per key in strictly increasing byte order:
        blob key | blob value

Version 1 images (the same layout, without tag 0; sessions keyed by the
client's random ids) are read with their sessions dropped: dropping a session
is always safe now (its writes are refused, never applied twice).
"""

from __future__ import annotations

import bisect
import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from itertools import pairwise

import attrs

from multiraft.statemachine import ApplyOrderError

__all__ = [
    "COMMAND_FORMAT_VERSION",
    "KEY_SIZE_BYTES_MAX",
    "SESSIONS_MAX",
    "SNAPSHOT_FORMAT_VERSION",
    "SNAPSHOT_MAGIC",
    "VALUE_SIZE_BYTES_MAX",
    "ApplyOrderError",
    "Append",
    "AppendResult",
    "Cas",
    "CasResult",
    "Command",
    "CommandDecodeError",
    "Count",
    "CountResult",
    "Delete",
    "DeleteResult",
    "Get",
    "GetResult",
    "INCR_NOT_INTEGER",
    "INCR_OVERFLOW",
    "Incr",
    "IncrResult",
    "InvalidCommand",
    "KVCommandError",
    "KVError",
    "KVStateMachine",
    "Noop",
    "PUT_IF_ABSENT",
    "PUT_IF_ALWAYS",
    "PUT_IF_PRESENT",
    "Put",
    "PutIf",
    "Register",
    "Registered",
    "SESSION_VALUES_BYTES_MAX",
    "SessionExpired",
    "PutIfResult",
    "PutMany",
    "PutManyResult",
    "PutResult",
    "Scan",
    "ScanKeys",
    "ScanKeysResult",
    "ScanResult",
    "SnapshotFormatError",
    "StaleRequest",
    "decode_command",
    "encode_command",
    "parse_int64",
]

KEY_SIZE_BYTES_MAX = 64 * 1024
VALUE_SIZE_BYTES_MAX = 1024 * 1024
SESSIONS_MAX = 10_000
SESSION_VALUES_BYTES_MAX = 16 * 1024 * 1024

COMMAND_FORMAT_VERSION = 2
SNAPSHOT_FORMAT_VERSION = 2
_COMMAND_FORMAT_V1 = 1  # before registered sessions: read, never written
_SNAPSHOT_FORMAT_V1 = 1
SNAPSHOT_MAGIC = b"MRKV"

_U64_LIMIT = 1 << 64

OP_NOOP = 0
OP_PUT = 1
OP_DELETE = 2
OP_CAS = 3
OP_GET = 4
OP_PUT_MANY = 5
OP_INCR = 6
OP_APPEND = 7
OP_PUT_IF = 8
OP_REGISTER = 9
_KEYED_WRITES = (OP_PUT, OP_DELETE, OP_CAS, OP_INCR, OP_APPEND, OP_PUT_IF)

PUT_IF_ALWAYS = 0
PUT_IF_ABSENT = 1  # Redis SET NX
PUT_IF_PRESENT = 2  # Redis SET XX

INCR_NOT_INTEGER = 1
INCR_OVERFLOW = 2
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_HEAD = struct.Struct(">BB")
_WRITE_HEAD = struct.Struct(">BBQQI")  # version, op, client_id, seq, key length
_SESSION_IDS = struct.Struct(">QQ")
_SNAP_HEAD = struct.Struct(">4sBQI")  # magic, version, applied_index, session_count
_SNAP_SESSION = struct.Struct(">QQQB")  # client_id, last_seq, last_index, result tag

_RESULT_NONE = 0
_RESULT_PUT = 1
_RESULT_DELETE = 2
_RESULT_CAS = 3
_RESULT_PUT_MANY = 4
_RESULT_INCR = 5
_RESULT_APPEND = 6
_RESULT_PUT_IF = 7


# --- errors ---------------------------------------------------------------


class KVError(Exception):
    """Base of the KV state machine's typed errors."""


class KVCommandError(KVError, ValueError):
    """The caller built or encoded a command wrongly (the caller's fault):
    wrong types, integers out of range, a key or value over its limit."""


class CommandDecodeError(KVCommandError):
    """Bytes that are not a valid command (the sender's fault).

    `apply` never lets this escape: it returns `InvalidCommand` instead.
    """


class SnapshotFormatError(KVError, ValueError):
    """Bytes that are not a valid KV snapshot (the snapshot's producer's or the
    transport's fault). Raised by `restore`, which then changes nothing."""


# --- commands -------------------------------------------------------------


@attrs.frozen
class Noop:
    """Does nothing; applies as `None`."""


@attrs.frozen
class Get:
    """Read `key` through the log (or, via `KVStateMachine.read`, outside it)."""

    key: bytes


@attrs.frozen
class Put:
    """Set `key` to `value`."""

    key: bytes
    value: bytes
    client_id: int = 0
    seq: int = 0


@attrs.frozen
class Delete:
    """Remove `key` (absent is not an error)."""

    key: bytes
    client_id: int = 0
    seq: int = 0


@attrs.frozen
class Cas:
    """Compare-and-set: if the key's value is `expected` (None: the key must be
    absent), set it to `new` (None: delete it)."""

    key: bytes
    expected: bytes | None
    new: bytes | None
    client_id: int = 0
    seq: int = 0


@attrs.frozen
class PutMany:
    """Apply `items`, pairs (key, value or None), in order, as one command:
    a value sets its key, None deletes it. All or nothing (one log entry), so
    every key should belong to the same group (Redis MSET and DEL per group)."""

    items: tuple[tuple[bytes, bytes | None], ...]
    client_id: int = 0
    seq: int = 0


@attrs.frozen
class Incr:
    """Add `delta` (a signed 64-bit int) to the integer stored at `key` (absent:
    0). The value must be a decimal int64 written as Redis writes one (no sign
    but '-', no leading zeros, no spaces); the result must fit in an int64."""

    key: bytes
    delta: int
    client_id: int = 0
    seq: int = 0


@attrs.frozen
class Append:
    """Append `suffix` to the value at `key` (absent: the empty value)."""

    key: bytes
    suffix: bytes
    client_id: int = 0
    seq: int = 0


@attrs.frozen
class PutIf:
    """Set `key` to `value` if `condition` holds (PUT_IF_ALWAYS, PUT_IF_ABSENT:
    the key is absent, PUT_IF_PRESENT: it exists); the result carries the
    previous value either way."""

    key: bytes
    value: bytes
    condition: int = PUT_IF_ALWAYS
    client_id: int = 0
    seq: int = 0


@attrs.frozen
class Register:
    """Open an exactly-once session; applies as `Registered` (the session id is
    this entry's log index)."""


Command = Noop | Get | Put | Delete | Cas | PutMany | Incr | Append | PutIf | Register


# --- read-only queries (KVStateMachine.read only; never in the log) -------


@attrs.frozen
class Scan:
    """Up to `limit` pairs (None: all) with key >= `start` and key starting with
    `prefix`, in increasing key order."""

    start: bytes = b""
    prefix: bytes = b""
    limit: int | None = None


@attrs.frozen
class Count:
    """The number of keys."""


@attrs.frozen
class ScanKeys:
    """Keys only: up to `limit` keys (None: all) >= `start` starting with
    `prefix`, in increasing order, and at most `bytes_max` bytes of them (None:
    no bound; always at least one key). The result says where to go on."""

    start: bytes = b""
    prefix: bytes = b""
    limit: int | None = None
    bytes_max: int | None = None


# --- results --------------------------------------------------------------


@attrs.frozen
class PutResult:
    prev_existed: bool


@attrs.frozen
class DeleteResult:
    existed: bool


@attrs.frozen
class CasResult:
    """`ok`: whether the swap happened. `current`: the key's value after the
    command (the new value when ok, the unexpected value found when not)."""

    ok: bool
    current: bytes | None


@attrs.frozen
class GetResult:
    value: bytes | None


@attrs.frozen
class ScanResult:
    items: tuple[tuple[bytes, bytes], ...]


@attrs.frozen
class CountResult:
    count: int


@attrs.frozen
class ScanKeysResult:
    """`next`: the first key left out (start the next page there), or None when
    no key of the range is left."""

    keys: tuple[bytes, ...]
    next: bytes | None


@attrs.frozen
class PutManyResult:
    """How many of the items found their key present when they applied (for a
    DEL, the number of keys deleted)."""

    existed: int


@attrs.frozen
class IncrResult:
    """`value`: the new value, or None when nothing changed; then `error` is
    INCR_NOT_INTEGER or INCR_OVERFLOW."""

    value: int | None
    error: int = 0


@attrs.frozen
class AppendResult:
    """`length`: the value's new length, or None when it would have exceeded the
    value size limit (nothing changed)."""

    length: int | None


@attrs.frozen
class PutIfResult:
    """`done`: whether the value was set; `previous`: the value before."""

    done: bool
    previous: bytes | None


@attrs.frozen
class StaleRequest:
    """`seq` is older than the client's last applied `last_seq`: a delayed
    duplicate. Nothing was applied; the client has already had its answer."""

    client_id: int
    seq: int
    last_seq: int


@attrs.frozen
class Registered:
    """A session was opened: use `client_id` (the Register entry's index) with
    seq 1, 2, ... for its writes."""

    client_id: int


@attrs.frozen
class SessionExpired:
    """The write's session is unknown (evicted, or never registered). Nothing
    was applied; whether an earlier attempt of it applied cannot be told."""

    client_id: int
    seq: int


@attrs.frozen
class InvalidCommand:
    """The entry's bytes were not a valid command. Nothing was applied."""

    reason: str


WriteResult = PutResult | DeleteResult | CasResult | PutManyResult | IncrResult | AppendResult | PutIfResult


# --- command codec --------------------------------------------------------


def _check_blob(value: object, what: str, size_bytes_max: int) -> bytes:
    if type(value) is not bytes:
        raise KVCommandError(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) > size_bytes_max:
        raise KVCommandError(
            f"{what} of {len(value)} bytes exceeds the limit of {size_bytes_max} bytes"
        )
    return value


def _check_u64(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value < _U64_LIMIT:
        raise KVCommandError(f"{what} must be an int in [0, 2**64), not {value!r}")
    return value


def _opt_blob(value: bytes | None) -> bytes:
    if value is None:
        return b"\x00"
    return b"\x01" + _U32.pack(len(value)) + value


def encode_command(
    cmd: Command,
    *,
    key_size_bytes_max: int = KEY_SIZE_BYTES_MAX,
    value_size_bytes_max: int = VALUE_SIZE_BYTES_MAX,
) -> bytes:
    """Encode a command for the log. Deterministic: equal commands give equal
    bytes. Raises `KVCommandError` for a malformed or oversized command."""
    kind = type(cmd)
    if kind is Put:
        key = _check_blob(cmd.key, "key", key_size_bytes_max)
        value = _check_blob(cmd.value, "value", value_size_bytes_max)
        head = _WRITE_HEAD.pack(
            COMMAND_FORMAT_VERSION,
            OP_PUT,
            _check_u64(cmd.client_id, "client_id"),
            _check_u64(cmd.seq, "seq"),
            len(key),
        )
        return b"".join((head, key, _U32.pack(len(value)), value))
    if kind is Delete:
        key = _check_blob(cmd.key, "key", key_size_bytes_max)
        head = _WRITE_HEAD.pack(
            COMMAND_FORMAT_VERSION,
            OP_DELETE,
            _check_u64(cmd.client_id, "client_id"),
            _check_u64(cmd.seq, "seq"),
            len(key),
        )
        return head + key
    if kind is Cas:
        key = _check_blob(cmd.key, "key", key_size_bytes_max)
        expected = cmd.expected
        if expected is not None:
            _check_blob(expected, "expected value", value_size_bytes_max)
        new = cmd.new
        if new is not None:
            _check_blob(new, "new value", value_size_bytes_max)
        head = _WRITE_HEAD.pack(
            COMMAND_FORMAT_VERSION,
            OP_CAS,
            _check_u64(cmd.client_id, "client_id"),
            _check_u64(cmd.seq, "seq"),
            len(key),
        )
        return b"".join((head, key, _opt_blob(expected), _opt_blob(new)))
    if kind is Get:
        key = _check_blob(cmd.key, "key", key_size_bytes_max)
        return b"".join((_HEAD.pack(COMMAND_FORMAT_VERSION, OP_GET), _U32.pack(len(key)), key))
    if kind is Noop:
        return _HEAD.pack(COMMAND_FORMAT_VERSION, OP_NOOP)
    if kind is Register:
        return _HEAD.pack(COMMAND_FORMAT_VERSION, OP_REGISTER)
    if kind is PutMany:
        return _encode_put_many(cmd, key_size_bytes_max, value_size_bytes_max)
    if kind is Incr:
        key = _check_blob(cmd.key, "key", key_size_bytes_max)
        delta = cmd.delta
        if type(delta) is not int or not _I64_MIN <= delta <= _I64_MAX:
            raise KVCommandError(f"delta must be an int in [-2**63, 2**63), not {delta!r}")
        return b"".join((_write_head(OP_INCR, cmd, key), key, _I64.pack(delta)))
    if kind is Append:
        key = _check_blob(cmd.key, "key", key_size_bytes_max)
        suffix = _check_blob(cmd.suffix, "suffix", value_size_bytes_max)
        return b"".join((_write_head(OP_APPEND, cmd, key), key, _U32.pack(len(suffix)), suffix))
    if kind is PutIf:
        key = _check_blob(cmd.key, "key", key_size_bytes_max)
        value = _check_blob(cmd.value, "value", value_size_bytes_max)
        if cmd.condition not in (PUT_IF_ALWAYS, PUT_IF_ABSENT, PUT_IF_PRESENT) or type(cmd.condition) is not int:
            raise KVCommandError(f"condition must be 0, 1 or 2, not {cmd.condition!r}")
        return b"".join(
            (_write_head(OP_PUT_IF, cmd, key), key, _U32.pack(len(value)), value, _U8.pack(cmd.condition))
        )
    raise KVCommandError(f"not a KV command: {cmd!r}")


def _write_head(op: int, cmd: Incr | Append | PutIf, key: bytes) -> bytes:
    return _WRITE_HEAD.pack(
        COMMAND_FORMAT_VERSION,
        op,
        _check_u64(cmd.client_id, "client_id"),
        _check_u64(cmd.seq, "seq"),
        len(key),
    )


def _encode_put_many(cmd: PutMany, key_size_bytes_max: int, value_size_bytes_max: int) -> bytes:
    items = cmd.items
    if type(items) not in (tuple, list) or not items:
        raise KVCommandError("PutMany items must be a non-empty tuple of (key, value or None)")
    if len(items) >= 1 << 32:
        raise KVCommandError(f"PutMany of {len(items)} items is too many")
    parts = [
        _WRITE_HEAD.pack(
            COMMAND_FORMAT_VERSION,
            OP_PUT_MANY,
            _check_u64(cmd.client_id, "client_id"),
            _check_u64(cmd.seq, "seq"),
            len(items),
        )
    ]
    pack = _U32.pack
    for item in items:
        if type(item) not in (tuple, list) or len(item) != 2:
            raise KVCommandError(f"a PutMany item is (key, value or None), not {item!r}")
        key, value = item
        _check_blob(key, "key", key_size_bytes_max)
        parts.append(pack(len(key)))
        parts.append(key)
        if value is None:
            parts.append(b"\x00")
        else:
            _check_blob(value, "value", value_size_bytes_max)
            parts.append(b"\x01" + pack(len(value)))
            parts.append(value)
    return b"".join(parts)


def parse_int64(data: bytes) -> int | None:
    """The int64 that `data` spells in decimal as Redis writes one (string2ll:
    an optional '-', no '+', no leading zeros, no spaces, "-0" refused), or None."""
    n = len(data)
    if not 0 < n <= 20:
        return None
    if n == 1:
        c = data[0]
        return c - 48 if 48 <= c <= 57 else None
    digits = data[1:] if data[0] == 45 else data  # b"-"
    if not digits or not 49 <= digits[0] <= 57 or not digits.isdigit():
        return None  # bytes.isdigit is ASCII-only
    value = int(digits)
    if data[0] == 45:
        value = -value
    return value if _I64_MIN <= value <= _I64_MAX else None


def _read_blob(data: bytes, pos: int, what: str, size_bytes_max: int) -> tuple[bytes, int]:
    end = pos + 4
    if end > len(data):
        raise CommandDecodeError(f"truncated: no length for {what} at offset {pos}")
    (length,) = _U32.unpack_from(data, pos)
    if length > size_bytes_max:
        raise CommandDecodeError(
            f"{what} of {length} bytes exceeds the limit of {size_bytes_max} bytes"
        )
    stop = end + length
    if stop > len(data):
        raise CommandDecodeError(
            f"truncated: {what} of {length} bytes at offset {end}, "
            f"only {len(data) - end} bytes left"
        )
    return data[end:stop], stop


def _read_opt_blob(
    data: bytes, pos: int, what: str, size_bytes_max: int
) -> tuple[bytes | None, int]:
    if pos >= len(data):
        raise CommandDecodeError(f"truncated: no presence flag for {what} at offset {pos}")
    flag = data[pos]
    if flag == 0:
        return None, pos + 1
    if flag == 1:
        return _read_blob(data, pos + 1, what, size_bytes_max)
    raise CommandDecodeError(f"bad presence flag {flag} for {what} at offset {pos}")


def _expect_end(data: bytes, pos: int) -> None:
    if pos != len(data):
        raise CommandDecodeError(f"{len(data) - pos} trailing bytes after the command")


def decode_command(
    data: bytes,
    *,
    key_size_bytes_max: int = KEY_SIZE_BYTES_MAX,
    value_size_bytes_max: int = VALUE_SIZE_BYTES_MAX,
) -> Command:
    """Decode bytes from `encode_command`. Strict: raises `CommandDecodeError`
    for anything `encode_command` could not have produced under these limits.
    Error messages depend only on `data` and the limits (they are results that
    replicas must agree on)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CommandDecodeError(f"a command is bytes, not {type(data).__name__}")
    data = bytes(data)
    size = len(data)
    if size < 2:
        raise CommandDecodeError(f"truncated: {size} bytes, a command has at least 2")
    version = data[0]
    if version != COMMAND_FORMAT_VERSION:
        if version != _COMMAND_FORMAT_V1 or data[1] == OP_REGISTER:
            raise CommandDecodeError(f"unsupported command format version {version}")
        # A version-1 entry: its client id was the client's own random number,
        # which means nothing to the registered session table (module docstring).
        cmd = decode_command(
            bytes((COMMAND_FORMAT_VERSION,)) + data[1:],
            key_size_bytes_max=key_size_bytes_max,
            value_size_bytes_max=value_size_bytes_max,
        )
        return attrs.evolve(cmd, client_id=0, seq=0) if hasattr(cmd, "client_id") else cmd
    op = data[1]
    if op in _KEYED_WRITES:
        if size < 18:
            raise CommandDecodeError(f"truncated: {size} bytes, a write has at least 18")
        client_id, seq = _SESSION_IDS.unpack_from(data, 2)
        key, pos = _read_blob(data, 18, "key", key_size_bytes_max)
        if op >= OP_INCR:
            return _decode_keyed(op, data, pos, key, client_id, seq, value_size_bytes_max)
        if op == OP_PUT:
            value, pos = _read_blob(data, pos, "value", value_size_bytes_max)
            _expect_end(data, pos)
            return Put(key, value, client_id, seq)
        if op == OP_DELETE:
            _expect_end(data, pos)
            return Delete(key, client_id, seq)
        expected, pos = _read_opt_blob(data, pos, "expected value", value_size_bytes_max)
        new, pos = _read_opt_blob(data, pos, "new value", value_size_bytes_max)
        _expect_end(data, pos)
        return Cas(key, expected, new, client_id, seq)
    if op == OP_GET:
        key, pos = _read_blob(data, 2, "key", key_size_bytes_max)
        _expect_end(data, pos)
        return Get(key)
    if op == OP_NOOP:
        _expect_end(data, 2)
        return Noop()
    if op == OP_REGISTER:
        _expect_end(data, 2)
        return Register()
    if op == OP_PUT_MANY:
        return _decode_put_many(data, key_size_bytes_max, value_size_bytes_max)
    raise CommandDecodeError(f"unknown command op {op}")


def _decode_keyed(
    op: int, data: bytes, pos: int, key: bytes, client_id: int, seq: int, value_size_bytes_max: int
) -> Command:
    if op == OP_INCR:
        if len(data) - pos < 8:
            raise CommandDecodeError(f"truncated: no delta at offset {pos}")
        (delta,) = _I64.unpack_from(data, pos)
        _expect_end(data, pos + 8)
        return Incr(key, delta, client_id, seq)
    if op == OP_APPEND:
        suffix, pos = _read_blob(data, pos, "suffix", value_size_bytes_max)
        _expect_end(data, pos)
        return Append(key, suffix, client_id, seq)
    value, pos = _read_blob(data, pos, "value", value_size_bytes_max)
    if pos >= len(data):
        raise CommandDecodeError(f"truncated: no condition at offset {pos}")
    condition = data[pos]
    if condition > PUT_IF_PRESENT:
        raise CommandDecodeError(f"bad PutIf condition {condition}")
    _expect_end(data, pos + 1)
    return PutIf(key, value, condition, client_id, seq)


def _decode_put_many(data: bytes, key_size_bytes_max: int, value_size_bytes_max: int) -> PutMany:
    if len(data) < 22:
        raise CommandDecodeError(f"truncated: {len(data)} bytes, a PutMany has at least 22")
    client_id, seq = _SESSION_IDS.unpack_from(data, 2)
    (count,) = _U32.unpack_from(data, 18)
    if count == 0:
        raise CommandDecodeError("PutMany of no items")
    if count * 5 > len(data) - 22:  # every item takes at least 5 bytes
        raise CommandDecodeError(f"truncated: {count} PutMany items cannot fit in {len(data)} bytes")
    pos = 22
    items = []
    for _ in range(count):
        key, pos = _read_blob(data, pos, "key", key_size_bytes_max)
        value, pos = _read_opt_blob(data, pos, "value", value_size_bytes_max)
        items.append((key, value))
    _expect_end(data, pos)
    return PutMany(tuple(items), client_id, seq)


# --- snapshot reading -----------------------------------------------------


class _ChunkReader:
    """Reads exact-size fields from an iterable of byte chunks; running out of
    data is a SnapshotFormatError."""

    __slots__ = ("_chunks", "_buf", "_pos")

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self._pos = 0

    def _pull(self, size: int, what: str) -> None:
        # Make at least `size` bytes available at self._pos.
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        while len(self._buf) < size:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                raise SnapshotFormatError(
                    f"truncated: {what} needs {size} bytes, {len(self._buf)} left"
                ) from None
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise SnapshotFormatError(
                    f"snapshot chunks are bytes, not {type(chunk).__name__}"
                )
            self._buf += chunk

    def take(self, size: int, what: str) -> bytes:
        pos = self._pos
        if len(self._buf) - pos < size:
            self._pull(size, what)
            pos = 0
        self._pos = pos + size
        return bytes(self._buf[pos : pos + size])

    def unpack(self, st: struct.Struct, what: str) -> tuple:
        pos = self._pos
        if len(self._buf) - pos < st.size:
            self._pull(st.size, what)
            pos = 0
        self._pos = pos + st.size
        return st.unpack_from(self._buf, pos)

    def blob(self, what: str) -> bytes:
        (length,) = self.unpack(_U32, f"{what} length")
        return self.take(length, what)

    def flag(self, what: str) -> bool:
        (value,) = self.unpack(_U8, what)
        if value > 1:
            raise SnapshotFormatError(f"{what} is {value}, expected 0 or 1")
        return value == 1

    def opt_blob(self, what: str) -> bytes | None:
        return self.blob(what) if self.flag(f"{what} presence") else None

    def at_end(self) -> bool:
        if len(self._buf) > self._pos:
            return False
        for chunk in self._chunks:
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise SnapshotFormatError(
                    f"snapshot chunks are bytes, not {type(chunk).__name__}"
                )
            if len(chunk):
                return False
        return True


def _encode_result(result: WriteResult | None) -> bytes:
    if result is None:
        return b"\x00"
    kind = type(result)
    if kind is PutResult:
        return b"\x01\x01" if result.prev_existed else b"\x01\x00"
    if kind is DeleteResult:
        return b"\x02\x01" if result.existed else b"\x02\x00"
    if kind is CasResult:
        return (b"\x03\x01" if result.ok else b"\x03\x00") + _opt_blob(result.current)
    if kind is PutManyResult:
        return _U8.pack(_RESULT_PUT_MANY) + _U32.pack(result.existed)
    if kind is IncrResult:
        value = 0 if result.value is None else result.value
        return _U8.pack(_RESULT_INCR) + _U8.pack(result.error) + _I64.pack(value)
    if kind is AppendResult:
        if result.length is None:
            return _U8.pack(_RESULT_APPEND) + b"\x00" + _U64.pack(0)
        return _U8.pack(_RESULT_APPEND) + b"\x01" + _U64.pack(result.length)
    if kind is PutIfResult:
        return _U8.pack(_RESULT_PUT_IF) + (b"\x01" if result.done else b"\x00") + _opt_blob(result.previous)
    raise AssertionError(f"not a cacheable result: {result!r}")


def _decode_result(tag: int, reader: _ChunkReader) -> WriteResult | None:
    if tag == _RESULT_NONE:
        return None
    if tag == _RESULT_PUT:
        return PutResult(reader.flag("PutResult.prev_existed"))
    if tag == _RESULT_DELETE:
        return DeleteResult(reader.flag("DeleteResult.existed"))
    if tag == _RESULT_CAS:
        ok = reader.flag("CasResult.ok")
        current = reader.opt_blob("CasResult.current")
        if ok and current is not None:
            raise SnapshotFormatError("a cached successful CasResult keeps no value")
        return CasResult(ok, current)
    if tag == _RESULT_PUT_MANY:
        (existed,) = reader.unpack(_U32, "PutManyResult.existed")
        return PutManyResult(existed)
    if tag == _RESULT_INCR:
        (error,) = reader.unpack(_U8, "IncrResult.error")
        (value,) = reader.unpack(_I64, "IncrResult.value")
        if error > INCR_OVERFLOW or (error and value):
            raise SnapshotFormatError(f"bad IncrResult ({error}, {value})")
        return IncrResult(None if error else value, error)
    if tag == _RESULT_APPEND:
        ok = reader.flag("AppendResult.ok")
        (length,) = reader.unpack(_U64, "AppendResult.length")
        if not ok and length:
            raise SnapshotFormatError(f"bad AppendResult length {length}")
        return AppendResult(length if ok else None)
    if tag == _RESULT_PUT_IF:
        done = reader.flag("PutIfResult.done")
        return PutIfResult(done, reader.opt_blob("PutIfResult.previous"))
    raise SnapshotFormatError(f"unknown session result tag {tag}")


# Session: (last_seq, last_index, result); result None until the first write
# (then last_seq is 0 and last_index the Register entry's index).
_Session = tuple[int, int, WriteResult | None]


def _cached(result: WriteResult) -> WriteResult:
    """What a session keeps of a result: a successful CAS's `current` is the
    command's `new`, which a retry carries again."""
    if type(result) is CasResult and result.ok and result.current is not None:
        return CasResult(True, None)
    return result


def _value_bytes(result: WriteResult | None) -> int:
    """The bytes of values a cached result holds (session_values_bytes_max)."""
    kind = type(result)
    if kind is CasResult:
        return len(result.current or b"")
    if kind is PutIfResult:
        return len(result.previous or b"")
    return 0


def _image_pieces(
    applied_index: int,
    sessions: list[tuple[int, _Session]],
    keys: list[bytes],
    data: dict[bytes, bytes],
) -> Iterator[bytes]:
    """The snapshot image, as many small pieces (see the module docstring)."""
    yield _SNAP_HEAD.pack(SNAPSHOT_MAGIC, SNAPSHOT_FORMAT_VERSION, applied_index, len(sessions))
    for client_id, (last_seq, last_index, result) in sessions:
        yield _SESSION_IDS.pack(client_id, last_seq) + _U64.pack(last_index)
        yield _encode_result(result)
    yield _U64.pack(len(keys))
    pack = _U32.pack
    for key in keys:
        value = data[key]
        yield pack(len(key))
        yield key
        yield pack(len(value))
        yield value


# --- the state machine ----------------------------------------------------


class KVStateMachine:
    """A deterministic byte-string KV store with exactly-once client sessions.

    Implements `multiraft.statemachine.StreamingStateMachine`. Not thread-safe;
    one owner (a group's apply loop) calls it.
    """

    def __init__(
        self,
        *,
        sessions_max: int = SESSIONS_MAX,
        session_values_bytes_max: int = SESSION_VALUES_BYTES_MAX,
        key_size_bytes_max: int = KEY_SIZE_BYTES_MAX,
        value_size_bytes_max: int = VALUE_SIZE_BYTES_MAX,
    ) -> None:
        for name, value in (
            ("sessions_max", sessions_max),
            ("session_values_bytes_max", session_values_bytes_max),
            ("key_size_bytes_max", key_size_bytes_max),
            ("value_size_bytes_max", value_size_bytes_max),
        ):
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be an int >= 0, not {value!r}")
        # One result's value must fit alone, so caching it never has to evict
        # its own session.
        if session_values_bytes_max < value_size_bytes_max:
            raise ValueError(
                f"session_values_bytes_max ({session_values_bytes_max}) must be >= "
                f"value_size_bytes_max ({value_size_bytes_max})"
            )
        self.sessions_max = sessions_max
        self.session_values_bytes_max = session_values_bytes_max
        self.key_size_bytes_max = key_size_bytes_max
        self.value_size_bytes_max = value_size_bytes_max

        self._applied_index = 0
        self._data: dict[bytes, bytes] = {}
        # client_id -> (last_seq, last_index, result), ordered by last_index
        # ascending: indexes only grow, so moving an updated session to the end
        # keeps the order, and the first item is the one to evict.
        self._sessions: OrderedDict[int, _Session] = OrderedDict()
        self._session_value_bytes = 0  # sum of _value_bytes over the sessions
        # Sorted key view, maintained lazily (scans and snapshots are rare,
        # writes are not): set(_sorted) - _removed | _added == set(_data), with
        # _removed a subset of set(_sorted) and _added disjoint from it.
        self._sorted: list[bytes] = []
        self._added: set[bytes] = set()
        self._removed: set[bytes] = set()

    # --- StateMachine ---

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def apply(self, index: int, data: bytes) -> object:
        """Apply the committed entry `index`; return the client's result.

        Results: `PutResult`, `DeleteResult`, `CasResult`, `PutManyResult`,
        `IncrResult`, `AppendResult`, `PutIfResult`, `GetResult`,
        `Registered`, `None` (Noop or empty data), `SessionExpired`,
        `StaleRequest` or `InvalidCommand`. Raises only
        `ApplyOrderError` (index <= applied_index: a driver bug).
        """
        if index <= self._applied_index:
            raise ApplyOrderError(index, self._applied_index)
        self._applied_index = index
        if not data:
            return None
        try:
            cmd = decode_command(
                data,
                key_size_bytes_max=self.key_size_bytes_max,
                value_size_bytes_max=self.value_size_bytes_max,
            )
        except CommandDecodeError as exc:
            return InvalidCommand(str(exc))
        kind = type(cmd)
        if kind is Get:
            return GetResult(self._data.get(cmd.key))
        if kind is Noop:
            return None
        if kind is Register:
            return self._register(index)

        client_id = cmd.client_id
        session = None
        if client_id:
            session = self._sessions.get(client_id)
            if session is None:
                return SessionExpired(client_id, cmd.seq)
            last_seq = session[0]
            if cmd.seq == last_seq and session[2] is not None:
                cached = session[2]
                if kind is Cas and type(cached) is CasResult and cached.ok:
                    return CasResult(True, cmd.new)
                return cached
            if cmd.seq <= last_seq:
                return StaleRequest(client_id, cmd.seq, last_seq)

        if kind is Put:
            result: WriteResult = self._put(cmd.key, cmd.value)
        elif kind is Delete:
            result = DeleteResult(self._delete(cmd.key))
        elif kind is Cas:
            result = self._cas(cmd.key, cmd.expected, cmd.new)
        else:
            result = self._apply_more(cmd)

        if session is not None:
            sessions = self._sessions
            sessions.move_to_end(client_id)
            cached = _cached(result)
            size = _value_bytes(cached)
            self._session_value_bytes += size - _value_bytes(session[2])
            sessions[client_id] = (cmd.seq, index, cached)
            while self._session_value_bytes > self.session_values_bytes_max:
                self._evict_oldest()
        return result

    def _register(self, index: int) -> Registered:
        sessions = self._sessions
        while sessions and len(sessions) >= self.sessions_max:
            self._evict_oldest()
        if self.sessions_max:
            sessions[index] = (0, index, None)
        return Registered(index)

    def _evict_oldest(self) -> None:
        _client_id, (_seq, _index, result) = self._sessions.popitem(last=False)
        self._session_value_bytes -= _value_bytes(result)

    def read(self, query: object) -> object:
        """Answer a read-only query from the current state, outside the log.

        `query` is a `Get`, `Scan`, `ScanKeys` or `Count`, or the encoded bytes
        of a `Get`. Returns `GetResult`, `ScanResult`, `ScanKeysResult` or
        `CountResult`; `InvalidCommand`
        for bytes that are not an encoded `Get`. Raises `KVCommandError` for
        any other object (a caller bug).
        """
        kind = type(query)
        if kind is Get:
            return GetResult(self._data.get(query.key))
        if kind is Scan:
            return ScanResult(tuple(self.scan(query.start, query.limit, prefix=query.prefix)))
        if kind is Count:
            return CountResult(len(self._data))
        if kind is ScanKeys:
            return self.scan_keys(query.start, query.limit, prefix=query.prefix, bytes_max=query.bytes_max)
        if isinstance(query, (bytes, bytearray, memoryview)):
            try:
                cmd = decode_command(
                    query,
                    key_size_bytes_max=self.key_size_bytes_max,
                    value_size_bytes_max=self.value_size_bytes_max,
                )
            except CommandDecodeError as exc:
                return InvalidCommand(str(exc))
            if type(cmd) is not Get:
                return InvalidCommand(f"read accepts only Get, not {type(cmd).__name__}")
            return GetResult(self._data.get(cmd.key))
        raise KVCommandError(f"not a KV read query: {query!r}")

    def snapshot(self) -> bytes:
        """The whole state as deterministic bytes (see the module docstring)."""
        self._sync_sorted()
        return b"".join(
            _image_pieces(
                self._applied_index, list(self._sessions.items()), self._sorted, self._data
            )
        )

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot image. Raises
        `SnapshotFormatError` (and changes nothing) if `data` is not one."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SnapshotFormatError(f"a snapshot is bytes, not {type(data).__name__}")
        self.restore_chunks((data,))

    def snapshot_chunks(self, chunk_size_bytes: int) -> Iterator[bytes]:
        """`snapshot()` as chunks of exactly `chunk_size_bytes` (the last one
        shorter, never empty).

        The image is captured when this is called (a shallow copy: O(keys) time,
        values are shared), so the owner may keep applying while a consumer
        drains the iterator.
        """
        if type(chunk_size_bytes) is not int or chunk_size_bytes < 1:
            raise ValueError(f"chunk_size_bytes must be an int >= 1, not {chunk_size_bytes!r}")
        self._sync_sorted()
        pieces = _image_pieces(
            self._applied_index,
            list(self._sessions.items()),
            list(self._sorted),
            dict(self._data),
        )
        return _rechunk(pieces, chunk_size_bytes)

    def restore_chunks(self, chunks: Iterable[bytes]) -> None:
        """`restore` from an iterable of byte chunks (any split of the image).

        The new state is built aside and installed only once the whole image
        has been read and checked: on `SnapshotFormatError` nothing changes.
        If the image holds more sessions than `sessions_max` (or more cached
        value bytes than `session_values_bytes_max`), the oldest are dropped,
        as `apply` would have evicted them.
        """
        reader = _ChunkReader(chunks)
        magic, version, applied_index, session_count = reader.unpack(_SNAP_HEAD, "header")
        if magic != SNAPSHOT_MAGIC:
            raise SnapshotFormatError(f"bad magic {magic!r}, expected {SNAPSHOT_MAGIC!r}")
        if version not in (SNAPSHOT_FORMAT_VERSION, _SNAPSHOT_FORMAT_V1):
            raise SnapshotFormatError(f"unsupported snapshot format version {version}")

        sessions: OrderedDict[int, _Session] = OrderedDict()
        previous_index = 0
        for _ in range(session_count):
            client_id, last_seq, last_index, tag = reader.unpack(_SNAP_SESSION, "session")
            if client_id == 0:
                raise SnapshotFormatError("session for client_id 0")
            if client_id in sessions:
                raise SnapshotFormatError(f"duplicate session for client_id {client_id}")
            if not previous_index < last_index <= applied_index:
                raise SnapshotFormatError(
                    f"session last_index {last_index} not in ({previous_index}, "
                    f"{applied_index}]: sessions must be in increasing index order"
                )
            previous_index = last_index
            if version == _SNAPSHOT_FORMAT_V1:
                if tag == _RESULT_NONE:
                    raise SnapshotFormatError("a version-1 session without a result")
                _decode_result(tag, reader)  # checked, then dropped (module docstring)
                continue
            result = _decode_result(tag, reader)
            if client_id > last_index or (result is None) != (last_seq == 0) or (
                result is None and client_id != last_index
            ):
                raise SnapshotFormatError(
                    f"session {client_id} (last seq {last_seq} at {last_index}) is not one "
                    "that Register and writes could have left"
                )
            sessions[client_id] = (last_seq, last_index, result)

        (key_count,) = reader.unpack(_U64, "key count")
        data: dict[bytes, bytes] = {}
        keys: list[bytes] = []
        previous_key: bytes | None = None
        for _ in range(key_count):
            key = reader.blob("key")
            if previous_key is not None and key <= previous_key:
                raise SnapshotFormatError(
                    "keys not in strictly increasing order "
                    f"({len(keys)}th key after its predecessor)"
                )
            data[key] = reader.blob("value")
            keys.append(key)
            previous_key = key
        if not reader.at_end():
            raise SnapshotFormatError("trailing bytes after the snapshot")

        value_bytes = sum(_value_bytes(session[2]) for session in sessions.values())
        while sessions and (
            len(sessions) > self.sessions_max or value_bytes > self.session_values_bytes_max
        ):
            value_bytes -= _value_bytes(sessions.popitem(last=False)[1][2])
        self._applied_index = applied_index
        self._sessions = sessions
        self._session_value_bytes = value_bytes
        self._data = data
        self._sorted = keys
        self._added = set()
        self._removed = set()

    # --- local queries (not linearizable by themselves; see read) ---

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(
        self, start: bytes = b"", limit: int | None = None, *, prefix: bytes = b""
    ) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (None: no limit) (key, value) pairs with key >= start
        and key.startswith(prefix), in increasing key order.

        To page (Redis SCAN), pass `last_key + b"\\x00"` as the next start.
        The first call after writes that created or deleted keys costs O(keys)
        to bring the sorted view up to date.
        """
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError(f"limit must be None or an int >= 0, not {limit!r}")
        self._sync_sorted()
        keys = self._sorted
        data = self._data
        i = bisect.bisect_left(keys, max(start, prefix))
        out: list[tuple[bytes, bytes]] = []
        n = len(keys)
        while i < n and (limit is None or len(out) < limit):
            key = keys[i]
            if not key.startswith(prefix):
                break
            out.append((key, data[key]))
            i += 1
        return out

    def scan_keys(
        self,
        start: bytes = b"",
        limit: int | None = None,
        *,
        prefix: bytes = b"",
        bytes_max: int | None = None,
    ) -> ScanKeysResult:
        """Up to `limit` keys (None: no limit) >= start with `prefix`, in
        increasing order, at most `bytes_max` bytes of keys (but at least one
        key); `next` is the first key left out, or None if none is."""
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError(f"limit must be None or an int >= 0, not {limit!r}")
        self._sync_sorted()
        keys = self._sorted
        i = bisect.bisect_left(keys, max(start, prefix))
        n = len(keys)
        stop = n if limit is None else min(n, i + limit)
        out: list[bytes] = []
        budget = bytes_max
        while i < stop:
            key = keys[i]
            if not key.startswith(prefix):
                return ScanKeysResult(tuple(out), None)
            if budget is not None:
                budget -= len(key)
                if budget < 0 and out:
                    break
            out.append(key)
            i += 1
        if i < n and keys[i].startswith(prefix):
            return ScanKeysResult(tuple(out), keys[i])
        return ScanKeysResult(tuple(out), None)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def check_invariants(self) -> None:
        """Assert the internal invariants (tests and the simulator call this)."""
        assert 0 <= len(self._sessions) <= self.sessions_max, len(self._sessions)
        previous = 0
        value_bytes = 0
        for client_id, (seq, last_index, result) in self._sessions.items():
            assert 0 < client_id <= last_index, (client_id, last_index)
            assert previous < last_index <= self._applied_index, (previous, last_index)
            assert (result is None) == (seq == 0), (seq, result)
            assert result is not None or client_id == last_index
            assert not (type(result) is CasResult and result.ok and result.current is not None)
            value_bytes += _value_bytes(result)
            previous = last_index
        assert value_bytes == self._session_value_bytes <= self.session_values_bytes_max, value_bytes
        sorted_set = set(self._sorted)
        assert len(sorted_set) == len(self._sorted)
        assert self._removed <= sorted_set
        assert not (self._added & sorted_set)
        assert (sorted_set - self._removed) | self._added == self._data.keys()
        assert all(a < b for a, b in pairwise(self._sorted))

    # --- internals ---

    def _put(self, key: bytes, value: bytes) -> PutResult:
        data = self._data
        existed = key in data
        data[key] = value
        if not existed:
            self._created(key)
        return PutResult(existed)

    def _delete(self, key: bytes) -> bool:
        data = self._data
        if key not in data:
            return False
        del data[key]
        if key in self._added:
            self._added.discard(key)
        else:
            self._removed.add(key)
        return True

    def _cas(self, key: bytes, expected: bytes | None, new: bytes | None) -> CasResult:
        current = self._data.get(key)
        if current != expected:
            return CasResult(False, current)
        if new is None:
            self._delete(key)
        else:
            self._put(key, new)
        return CasResult(True, new)

    def _apply_more(self, cmd: PutMany | Incr | Append | PutIf) -> WriteResult:
        kind = type(cmd)
        data = self._data
        if kind is PutMany:
            existed = 0
            for key, value in cmd.items:
                if value is None:
                    existed += self._delete(key)
                else:
                    existed += self._put(key, value).prev_existed
            return PutManyResult(existed)
        if kind is Incr:
            old = data.get(cmd.key)
            number = 0 if old is None else parse_int64(old)
            if number is None:
                return IncrResult(None, INCR_NOT_INTEGER)
            number += cmd.delta
            if not _I64_MIN <= number <= _I64_MAX:
                return IncrResult(None, INCR_OVERFLOW)
            self._put(cmd.key, b"%d" % number)
            return IncrResult(number)
        if kind is Append:
            old = data.get(cmd.key, b"")
            if len(old) + len(cmd.suffix) > self.value_size_bytes_max:
                return AppendResult(None)
            self._put(cmd.key, old + cmd.suffix)
            return AppendResult(len(old) + len(cmd.suffix))
        assert kind is PutIf
        previous = data.get(cmd.key)
        condition = cmd.condition
        if (condition == PUT_IF_ABSENT and previous is not None) or (
            condition == PUT_IF_PRESENT and previous is None
        ):
            return PutIfResult(False, previous)
        self._put(cmd.key, cmd.value)
        return PutIfResult(True, previous)

    def _created(self, key: bytes) -> None:
        if key in self._removed:
            self._removed.discard(key)
        else:
            self._added.add(key)

    def _sync_sorted(self) -> None:
        if self._removed:
            removed = self._removed
            self._sorted = [k for k in self._sorted if k not in removed]
            self._removed = set()
        if self._added:
            # Two sorted runs: timsort merges them in linear time.
            self._sorted.extend(sorted(self._added))
            self._sorted.sort()
            self._added = set()


def _rechunk(pieces: Iterator[bytes], chunk_size_bytes: int) -> Iterator[bytes]:
    buf = bytearray()
    for piece in pieces:
        buf += piece
        if len(buf) >= chunk_size_bytes:
            end = len(buf) - len(buf) % chunk_size_bytes
            for pos in range(0, end, chunk_size_bytes):
                yield bytes(buf[pos : pos + chunk_size_bytes])
            del buf[:end]
    if buf:
        yield bytes(buf)
