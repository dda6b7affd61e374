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
    "Glob", "compile_glob", "match_keys", "literal_prefix", "CursorTable", "parse_cursor", "scan_page", "group_keys",
    "all_keys", "gather", "InvalidCursor",
]

# A SCAN call stops after this many "keys" requests even if it examined
# fewer than COUNT keys (empty groups cost a round trip each).
SCAN_REQUESTS_PER_CALL_MAX = 16
# Matching yields to trio after about this many Glob steps (key bytes a
# search may examine), so a long KEYS or SCAN never stalls other connections.
GLOB_STEPS_PER_CHECKPOINT = 1 << 20
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


def _glob_atoms(pattern: bytes) -> list[bytes | None]:
    """The pattern as regex atoms that each match exactly one byte, and None
    for each run of stars."""
    out: list[bytes | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # *
            while i + 1 < n and pattern[i + 1] == 42:
                i += 1
            out.append(None)
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
    return out


class Glob:
    """A Redis glob pattern, matched in O(len(key) * len(pattern)) at worst
    (Redis's own stringmatchlen is bounded the same way since 7.0).

    The pattern is split at its stars into segments of one-byte atoms, each
    a regex without any repetition: a regex search for it tries each start
    position once, in time linear in the segment. The first segment is
    anchored at the start, the last at the end, and each one between is taken
    at its leftmost occurrence after the previous one: if any placement of
    the segments matches, the leftmost one does (a star absorbs whatever is
    left between two segments). No backtracking across stars, so
    `*a*a*a*a*a*b` on a long key costs a few passes, not n**5.

    `steps` counts the key bytes the searches may examine (an upper bound of
    the work, for tests and limits); it grows by at most
    len(key) * (number of segments) per call.
    """

    __slots__ = ("pattern", "_head", "_middle", "_tail", "_exact", "_any", "steps")

    def __init__(self, pattern: bytes) -> None:
        self.pattern = pattern
        self.steps = 0
        atoms = _glob_atoms(pattern)
        segments: list[list[bytes]] = [[]]
        for atom in atoms:
            if atom is None:
                segments.append([])
            else:
                segments[-1].append(atom)
        compiled = [(re.compile(b"".join(seg), re.DOTALL), len(seg)) for seg in segments]
        self._any = atoms == [None]
        if len(compiled) == 1:  # no star: the whole key
            self._exact = compiled[0]
            self._head = self._tail = None
            self._middle = ()
        else:
            self._exact = None
            self._head = compiled[0]
            self._tail = compiled[-1]
            self._middle = tuple(c for c in compiled[1:-1] if c[1])

    def __call__(self, key: bytes) -> bool:
        if self._any:
            return True
        n = len(key)
        if self._exact is not None:
            regex, size = self._exact
            self.steps += size
            return size == n and regex.fullmatch(key) is not None
        regex, size = self._head
        self.steps += size
        if size > n or (size and regex.match(key) is None):
            return False
        pos = size
        tail_regex, tail_size = self._tail
        end = n - tail_size  # where the last segment must start
        if end < pos:
            return False
        for regex, size in self._middle:
            self.steps += (end - pos + 1) * size
            found = regex.search(key, pos, end)
            if found is None:
                return False
            pos = found.end()
        self.steps += tail_size
        return not tail_size or tail_regex.fullmatch(key, end) is not None


async def match_keys(keys: list[bytes], matches: Glob) -> list[bytes]:
    """The keys `matches` accepts, yielding to trio every
    GLOB_STEPS_PER_CHECKPOINT steps."""
    out = []
    checkpoint_at = matches.steps + GLOB_STEPS_PER_CHECKPOINT
    for key in keys:
        if matches(key):
            out.append(key)
        if matches.steps >= checkpoint_at:
            await trio.lowlevel.checkpoint()
            checkpoint_at = matches.steps + GLOB_STEPS_PER_CHECKPOINT
    return out


def compile_glob(pattern: bytes) -> Glob:
    """A predicate matching whole keys against a Redis glob pattern, with the
    semantics of Redis's stringmatchlen: * ? [abc] [^a-z] (reversed ranges
    swap, an unclosed [ takes the rest of the pattern, [] matches nothing),
    \\ escapes (a trailing \\ is a literal backslash). See Glob for the cost."""
    return Glob(pattern)


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
        out.extend(keys if matches is None else await match_keys(keys, matches))
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
        keys = await match_keys(await group_keys(backend, g, prefix), matches)
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
