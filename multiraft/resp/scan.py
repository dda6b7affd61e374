"""Walking the key space for KEYS, SCAN and FLUSHDB: glob patterns and cursors.

Keys live in G groups (crc32(key) % G), each a sorted map on its leader. A
walk visits groups 0 .. G-1 and, in each, pages through its keys in byte
order with the worker's "keys" op (linearizable, like a GET). The literal
prefix of a MATCH pattern ("user:*" -> "user:") is pushed down to the
workers; the rest of the pattern is matched here.

SCAN cursors (docs/resp.md): "0" starts and ends a walk. A cursor 1 <= c < G
is stateless: "group c, from its first key". Any other cursor is a random
63-bit handle (>= 2**32) to a position (group, next key) this RESP server
remembers in a bounded table (`CursorTable`, least recently used out): keys
may be up to 64 KiB long, and clients (redis-cli, Go, Java) take cursors as
unsigned 64-bit integers, so a position cannot travel in the cursor itself.
An unknown handle (evicted, or from another RESP server or before a restart)
gets "ERR invalid cursor". As in Redis, a key present for the whole walk is
returned at least once; one created or deleted meanwhile may or may not be;
COUNT is a hint (the number of keys examined per call).
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = [
    "compile_glob", "literal_prefix", "CursorTable", "parse_cursor", "scan_page", "group_keys",
    "all_keys", "gather", "InvalidCursor",
]

# A SCAN call stops after this many "keys" requests even if it examined
# fewer than COUNT keys (empty groups cost a round trip each).
SCAN_REQUESTS_PER_CALL_MAX = 16
CURSOR_HANDLE_MIN = 1 << 32


class InvalidCursor(ValueError):
    pass


def literal_prefix(pattern: bytes) -> bytes:
    """The bytes every key matching the Redis glob `pattern` starts with."""
    out = bytearray()
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c in b"*?[":
            break
        if c == 92 and i + 1 < n:  # backslash escapes the next byte
            i += 1
            c = pattern[i]
        out.append(c)
        i += 1
    return bytes(out)


def _byte(c: int) -> bytes:
    return b"\\x%02x" % c


def compile_glob(pattern: bytes) -> Callable[[bytes], bool]:
    """A predicate matching whole keys against a Redis glob pattern, with the
    semantics of Redis's stringmatchlen: * ? [abc] [^a-z] (reversed ranges
    swap, an unclosed [ takes the rest of the pattern, [] matches nothing),
    \\ escapes (a trailing \\ is a literal backslash)."""
    if pattern == b"*":
        return lambda key: True
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # *
            while i + 1 < n and pattern[i + 1] == 42:
                i += 1
            out.append(b".*")
        elif c == 63:  # ?
            out.append(b".")
        elif c == 91:  # [
            i += 1
            negate = i < n and pattern[i] == 94  # ^
            if negate:
                i += 1
            members = []
            while i < n:
                c = pattern[i]
                if c == 92 and i + 1 < n:
                    i += 1
                    members.append(_byte(pattern[i]))
                elif c == 93:  # ]
                    break
                elif i + 2 < n and pattern[i + 1] == 45:  # a-z
                    lo, hi = sorted((c, pattern[i + 2]))
                    members.append(_byte(lo) + b"-" + _byte(hi))
                    i += 2
                else:
                    members.append(_byte(c))
                i += 1
            if members:
                out.append(b"[" + (b"^" if negate else b"") + b"".join(members) + b"]")
            else:
                out.append(b"." if negate else b"(?!)")
        elif c == 92:  # \
            if i + 1 < n:
                i += 1
            out.append(_byte(pattern[i]))
        else:
            out.append(_byte(c))
        i += 1
    regex = re.compile(b"".join(out), re.DOTALL)
    return lambda key: regex.fullmatch(key) is not None


class CursorTable:
    """SCAN positions by cursor handle: at most `entries_max` of them and
    `bytes_max` bytes of keys, least recently used out."""

    def __init__(self, entries_max: int = 16384, bytes_max: int = 32 << 20) -> None:
        self.entries_max = entries_max
        self.bytes_max = bytes_max
        self._entries: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, group: int, start: bytes) -> int:
        while True:
            handle = secrets.randbits(63)
            if handle >= CURSOR_HANDLE_MIN and handle not in self._entries:
                break
        self._entries[handle] = (group, start)
        self._bytes += len(start)
        while len(self._entries) > self.entries_max or self._bytes > self.bytes_max:
            _, (_, old) = self._entries.popitem(last=False)
            self._bytes -= len(old)
        return handle

    def get(self, handle: int) -> tuple[int, bytes] | None:
        entry = self._entries.get(handle)
        if entry is not None:
            self._entries.move_to_end(handle)
        return entry


def parse_cursor(text: bytes) -> int:
    """A SCAN cursor argument: an unsigned 64-bit decimal integer."""
    if not text.isdigit() or len(text) > 20 or int(text) >= 1 << 64:
        raise InvalidCursor(text)
    return int(text)


async def scan_page(
    backend: Any,
    table: CursorTable,
    cursor: int,
    *,
    match: bytes | None = None,
    count: int = 10,
) -> tuple[int, list[bytes]]:
    """One SCAN step: (next cursor, keys). Raises InvalidCursor."""
    groups = backend.groups_total
    if cursor == 0:
        group, start = 0, b""
    elif cursor < min(groups, CURSOR_HANDLE_MIN):
        group, start = cursor, b""
    else:
        entry = table.get(cursor)
        if entry is None or entry[0] >= groups:
            raise InvalidCursor(str(cursor))
        group, start = entry
    prefix = literal_prefix(match) if match is not None else b""
    matches = compile_glob(match) if match is not None else None
    out: list[bytes] = []
    examined = 0
    requests = 0
    while examined < count and requests < SCAN_REQUESTS_PER_CALL_MAX:
        keys, nxt = await backend.scan_keys(group, start, prefix, count - examined)
        requests += 1
        examined += len(keys)
        out.extend(keys if matches is None else [k for k in keys if matches(k)])
        if nxt is None:
            group, start = group + 1, b""
            if group >= groups:
                return 0, out
        else:
            start = nxt
    if not start and group < CURSOR_HANDLE_MIN:
        return group, out
    return table.put(group, start), out


async def group_keys(backend: Any, group: int, prefix: bytes = b"") -> list[bytes]:
    """Every key of `group` with `prefix`, page by page."""
    out: list[bytes] = []
    start = b""
    while True:
        keys, nxt = await backend.scan_keys(group, start, prefix, None)
        out.extend(keys)
        if nxt is None:
            return out
        start = nxt


async def all_keys(backend: Any, match: bytes = b"*", *, keys_max: int | None = None) -> list[bytes]:
    """Every key matching `match`, group by group (all groups at once).
    Raises OverflowError past `keys_max` matching keys."""
    prefix = literal_prefix(match)
    matches = compile_glob(match)
    total = 0

    async def one(g: int) -> list[bytes]:
        nonlocal total
        keys = [k for k in await group_keys(backend, g, prefix) if matches(k)]
        total += len(keys)
        if keys_max is not None and total > keys_max:
            raise OverflowError(total)
        return keys

    pages = await gather([lambda g=g: one(g) for g in range(backend.groups_total)])
    return [k for page in pages for k in page]


async def gather(fns: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run every fn() concurrently; their results in order. If any raised,
    the first exception is raised (unwrapped) once all are done."""
    results: list[Any] = [None] * len(fns)
    errors: list[Exception] = []

    async def one(i: int) -> None:
        try:
            results[i] = await fns[i]()
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)

    if len(fns) == 1:
        await one(0)
    else:
        async with trio.open_nursery() as nursery:
            for i in range(len(fns)):
                nursery.start_soon(one, i)
    if errors:
        raise errors[0]
    return results
