"""The RESP glob matcher (multiraft.resp.scan.Glob): Redis semantics, bounded
work, and KEYS/SCAN matching that yields to other connections (issue 13: one
160-byte key and `KEYS *a*a*a*a*a*b` froze every RESP client for 21.8 s)."""

from __future__ import annotations

import random

import trio

from multiraft.resp.scan import all_keys, compile_glob


def redis_stringmatch(pattern: bytes, key: bytes) -> bool:
    """A line-by-line port of Redis's stringmatchlen (util.c), the reference:
    exponential, for small inputs only. Reading past the end of the pattern
    sees NUL as in C (-1 here, so that it equals no key byte)."""

    def at(i: int) -> int:
        return pattern[i] if i < len(pattern) else -1

    def match(p: int, s: int) -> bool:
        plen, slen = len(pattern) - p, len(key) - s
        while plen and slen:
            c = pattern[p]
            if c == 42:  # *
                while plen and at(p + 1) == 42:
                    p += 1
                    plen -= 1
                if plen == 1:
                    return True
                while slen:
                    if match(p + 1, s):
                        return True
                    s += 1
                    slen -= 1
                return False
            elif c == 63:  # ?
                s += 1
                slen -= 1
            elif c == 91:  # [
                p += 1
                plen -= 1
                negate = at(p) == 94
                if negate:
                    p += 1
                    plen -= 1
                found = False
                while True:
                    if at(p) == 92 and plen >= 2:
                        p += 1
                        plen -= 1
                        if pattern[p] == key[s]:
                            found = True
                    elif at(p) == 93:
                        break
                    elif plen == 0:
                        p -= 1
                        plen += 1
                        break
                    elif plen >= 3 and pattern[p + 1] == 45:
                        lo, hi = sorted((pattern[p], pattern[p + 2]))
                        p += 2
                        plen -= 2
                        if lo <= key[s] <= hi:
                            found = True
                    elif pattern[p] == key[s]:
                        found = True
                    p += 1
                    plen -= 1
                if negate:
                    found = not found
                if not found:
                    return False
                s += 1
                slen -= 1
            else:
                if c == 92 and plen >= 2:  # \
                    p += 1
                    plen -= 1
                if pattern[p] != key[s]:
                    return False
                s += 1
                slen -= 1
            p += 1
            plen -= 1
            if slen == 0:
                while at(p) == 42:
                    p += 1
                    plen -= 1
                break
        return plen == 0 and slen == 0

    return match(0, 0)


def test_glob_matches_redis_on_random_small_patterns():
    # Keys are non-empty: Redis never matches the empty key but against the
    # empty pattern (its KEYS and SCAN special-case "*" before matching);
    # ours lets "*" match it.
    rng = random.Random(13)
    pattern_bytes = b"ab*?[]^-\\"
    key_bytes = b"ab-]^\\*"
    mismatches = []
    for _ in range(30_000):
        pattern = bytes(rng.choice(pattern_bytes) for _ in range(rng.randint(0, 7)))
        key = bytes(rng.choice(key_bytes) for _ in range(rng.randint(1, 6)))
        if compile_glob(pattern)(key) is not redis_stringmatch(pattern, key):
            mismatches.append((pattern, key))
    assert mismatches == []


def test_glob_cases_table():
    cases = [
        (b"*", b"", True), (b"", b"", True), (b"", b"a", False), (b"a*b*c", b"aXbYc", True),
        (b"a*b*c", b"abcb", False), (b"*a*a*a*a*a*b", b"a" * 40 + b"b", True),
        (b"*a*a*a*a*a*b", b"a" * 40, False), (b"*?", b"x", True), (b"?*?", b"x", False),
        (b"*[0-9]", b"key7", True), (b"*\\*", b"a*", True), (b"*\\*", b"a", False),
        (b"h*llo*", b"heeeello world", True), (b"*ab", b"aab", True), (b"a*a", b"a", False),
    ]
    for pattern, key, expected in cases:
        assert compile_glob(pattern)(key) is expected, (pattern, key)


def test_pathological_glob_does_linear_work():
    pattern = b"*a*a*a*a*a*b"
    steps = {}
    for n in (160, 320, 64 << 10):
        matches = compile_glob(pattern)
        assert matches(b"a" * n) is False
        steps[n] = matches.steps
        assert matches.steps <= n * len(pattern)
    assert steps[320] <= 2.1 * steps[160]
    # the worst case for leftmost-first placement: every search runs to the end
    matches = compile_glob(b"*aaaaaaab*c")
    assert matches(b"a" * (64 << 10)) is False
    assert matches.steps <= 9 * (64 << 10)


class _Backend:
    """A KV backend for scan.all_keys that answers without yielding."""

    def __init__(self, keys: list[bytes], groups: int = 4) -> None:
        self.groups_total = groups
        self.keys = keys

    async def scan_keys(self, group, start, prefix, limit):
        return (self.keys if group == 0 else []), None


async def test_long_keys_match_yields_to_other_tasks():
    # 256 keys of 64 KiB against "*c*": 16 Mi steps of matching, which must
    # let other connections run about every GLOB_STEPS_PER_CHECKPOINT.
    backend = _Backend([b"a" * (64 << 10)] * 256)
    ticks = 0
    done = False

    async def ticker():
        nonlocal ticks
        while not done:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()
        start = ticks
        assert await all_keys(backend, b"*c*") == []
        done = True
    assert ticks - start >= 8  # 16 checkpoints at 1 Mi steps each
