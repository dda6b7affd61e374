"""GroupWrite, the unit of the batch API, and its validation (shared by every engine).

A GroupWrite is applied in this order: remove, compact_to, truncate_from,
entries, conf_state, hard_state. plan_group_write() checks it against the
group's current state and resolves it into context-free operations (the
records of the log), so that every engine applies the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

from multiraft.raft.types import ConfState, Entry, HardState

from .errors import InvalidWriteError

U64 = 1 << 63  # indexes and terms are kept in signed 64-bit arrays
_BYTES_TYPES = {bytes, bytearray}

# Operations (tuples, first item the kind; the same numbers as RecordType).
OP_ENTRIES = 1  # (OP_ENTRIES, first, entries, terms, types, datas)
OP_HARD_STATE = 2  # (OP_HARD_STATE, hard_state)
OP_CONF_STATE = 3  # (OP_CONF_STATE, conf_state)
OP_TRUNCATE = 4  # (OP_TRUNCATE, index): remove entries >= index
OP_COMPACT = 5  # (OP_COMPACT, index, term): remove entries <= index, base = (index, term)
OP_RESET = 6  # (OP_RESET, index, term): remove all entries, base = (index, term)
OP_DROP = 7  # (OP_DROP,): forget the group


@attrs.frozen
class GroupWrite:
    """What one group persists in one batch.

    - remove: forget the group entirely (its replica left this worker) before
      applying the other fields.
    - compact_to=(index, term): entries <= index are dropped and (index, term)
      becomes the log's base (term(group, index) still answers). If the log
      holds index with that term, later entries are kept (compaction after a
      local snapshot); otherwise the whole log is dropped (a snapshot from the
      leader replaces it). A no-op if index <= the current base.
    - truncate_from=i: entries with index >= i are removed (i must be above the base).
    - entries: written at entries[0].index, which REPLACES every stored entry
      at index >= entries[0].index (the suffix truncation implied by Raft's
      append). Indexes must be contiguous and start in (base, last_index + 1];
      terms must not decrease.
    - conf_state / hard_state: replace the stored value.
    """

    group: int
    hard_state: HardState | None = None
    entries: Sequence[Entry] = ()
    conf_state: ConfState | None = None
    compact_to: tuple[int, int] | None = None
    truncate_from: int | None = None
    remove: bool = False


class GroupView(Protocol):
    """What plan_group_write needs to know of a group's current state."""

    base_index: int
    base_term: int

    @property
    def last_index(self) -> int: ...

    def term(self, index: int) -> int: ...


class EmptyGroup:
    """The state of a group the store has never heard of."""

    base_index = 0
    base_term = 0
    last_index = 0

    def term(self, index: int) -> int:
        assert index == 0, index
        return 0


EMPTY_GROUP = EmptyGroup()


def _check_u64(what: str, value) -> None:
    if type(value) is not int or not 0 <= value < U64:
        raise InvalidWriteError(f"{what} must be an int in [0, 2**63), got {value!r}")


def check_entries(g: int, ents, base: int, base_term: int, last: int, last_term: int | None, view) -> tuple:
    """Validate entries to be written to group g, whose log holds base+1..last.

    last_term is term(last) when known (None: ask view.term). Returns
    (first, n, terms, types, datas): the columns of the entries, as tuples.
    The rules (docs/storage.md): indexes are ints, contiguous, and start in
    (base, last + 1]; terms are ints that do not decrease from term(first - 1);
    types are ints in [0, 256); datas are bytes or bytearray.
    """
    n = len(ents)
    if n == 1:
        t0, first, ty, d = check_entry(g, ents[0], base, base_term, last, last_term, view)
        return first, 1, (t0,), (ty,), (d,)
    try:
        terms, idxs, types, datas = zip(*ents, strict=True)
    except (TypeError, ValueError):
        raise InvalidWriteError(f"group {g}: entries must be Entry(term, index, type, data)") from None
    first = idxs[0]
    if type(first) is not int:
        raise InvalidWriteError(f"group {g}: entry index must be an int, got {first!r}")
    if first <= base:
        raise InvalidWriteError(f"group {g}: entries start at {first}, at or below the compacted index {base}")
    if first > last + 1:
        raise InvalidWriteError(f"group {g}: entries start at {first}, leaving a gap after the last index {last}")
    if idxs != tuple(range(first, first + n)) or type(sum(idxs)) is not int:
        raise InvalidWriteError(f"group {g}: entry indexes are not contiguous ints from {first}")
    if first - 1 == last and last_term is not None:
        prev_term = last_term
    elif first - 1 == base:
        prev_term = base_term
    else:
        prev_term = view.term(first - 1)
    t0 = terms[0]
    if type(t0) is not int or t0 < prev_term:
        raise InvalidWriteError(f"group {g}: entry {first} has term {t0!r} below the previous term {prev_term}")
    if terms.count(t0) != n:
        if not all(type(t) is int for t in terms) or list(terms) != sorted(terms):
            raise InvalidWriteError(f"group {g}: entry terms must be ints that do not decrease")
    elif type(sum(terms)) is not int:  # equal to t0 but not all ints (5.0 == 5)
        raise InvalidWriteError(f"group {g}: entry terms must be ints that do not decrease")
    if terms[-1] >= U64 or first + n > U64:
        raise InvalidWriteError(f"group {g}: entry term or index out of range")
    if list(map(type, datas)).count(bytes) != n and not set(map(type, datas)) <= _BYTES_TYPES:
        raise InvalidWriteError(f"group {g}: entry data must be bytes")
    # All zero (the common case): the same verdict as the loop below, cheaper.
    if types.count(0) != n or type(types[0]) is not int:
        for ty in set(types):
            if type(ty) is not int or not 0 <= ty < 256:
                raise InvalidWriteError(f"group {g}: entry type must be an int in [0, 256), got {ty!r}")
    return first, n, terms, types, datas


def check_entry(g: int, e, base: int, base_term: int, last: int, last_term: int | None, view) -> tuple:
    """check_entries for a single entry; returns (term, index, type, data)."""
    try:
        t0, first, ty, d = e
    except (TypeError, ValueError):
        raise InvalidWriteError(f"group {g}: entries must be Entry(term, index, type, data)") from None
    if type(first) is not int:
        raise InvalidWriteError(f"group {g}: entry index must be an int, got {first!r}")
    if first <= base:
        raise InvalidWriteError(f"group {g}: entries start at {first}, at or below the compacted index {base}")
    if first > last + 1:
        raise InvalidWriteError(f"group {g}: entries start at {first}, leaving a gap after the last index {last}")
    if first - 1 == last and last_term is not None:
        prev_term = last_term
    elif first - 1 == base:
        prev_term = base_term
    else:
        prev_term = view.term(first - 1)
    if type(t0) is not int or t0 < prev_term:
        raise InvalidWriteError(f"group {g}: entry {first} has term {t0!r} below the previous term {prev_term}")
    if t0 >= U64 or first >= U64:
        raise InvalidWriteError(f"group {g}: entry term or index out of range")
    if type(d) not in _BYTES_TYPES:
        raise InvalidWriteError(f"group {g}: entry data must be bytes")
    if type(ty) is not int or not 0 <= ty < 256:
        raise InvalidWriteError(f"group {g}: entry type must be an int in [0, 256), got {ty!r}")
    return e if type(e) is Entry else (t0, first, ty, d)


def check_hard_state(g: int, hs) -> None:
    """Validate a hard state: a HardState of ints in [0, 2**63) and a short str (or None) vote."""
    if type(hs) is not HardState and not isinstance(hs, HardState):
        raise InvalidWriteError(f"group {g}: hard_state must be a HardState")
    term, vote, commit = hs
    if type(term) is not int or type(commit) is not int or not (0 <= term < U64 and 0 <= commit < U64):
        _check_u64("hard_state.term", term)
        _check_u64("hard_state.commit", commit)
    if vote is None or type(vote) is str and vote.isascii() and len(vote) < 0xFFFF:
        return  # (an ASCII str encodes to as many bytes as it has characters)
    try:
        if not isinstance(vote, str) or len(vote.encode()) >= 0xFFFF:
            raise InvalidWriteError(f"group {g}: hard_state.vote must be None or a short str")
    except UnicodeEncodeError:
        raise InvalidWriteError(f"group {g}: hard_state.vote cannot be encoded as UTF-8") from None


def plan_group_write(gw: GroupWrite, view: GroupView) -> list[tuple]:
    """Validate gw against the group's state; return the operations to apply."""
    _check_u64("group", gw.group)
    g = gw.group
    ops: list[tuple] = []
    if gw.remove:
        ops.append((OP_DROP,))
        view = EMPTY_GROUP
    base, base_term, last = view.base_index, view.base_term, view.last_index
    if gw.compact_to is not None:
        try:
            i, t = gw.compact_to
        except (TypeError, ValueError):
            raise InvalidWriteError(f"group {g}: compact_to must be (index, term), got {gw.compact_to!r}") from None
        _check_u64("compact_to index", i)
        _check_u64("compact_to term", t)
        if i > base:
            if i <= last and view.term(i) == t:
                ops.append((OP_COMPACT, i, t))
                base, base_term = i, t
            else:
                ops.append((OP_RESET, i, t))
                base, base_term, last = i, t, i
    if gw.truncate_from is not None:
        i = gw.truncate_from
        _check_u64("truncate_from", i)
        if i <= base:
            raise InvalidWriteError(f"group {g}: cannot truncate from {i}: entries up to {base} are compacted")
        if i <= last:
            ops.append((OP_TRUNCATE, i))
            last = i - 1
    ents = gw.entries
    if ents:
        first, n, terms, types, datas = check_entries(g, ents, base, base_term, last, None, view)
        ops.append((OP_ENTRIES, first, ents, terms, types, datas))
    if gw.conf_state is not None:
        if not isinstance(gw.conf_state, ConfState):
            raise InvalidWriteError(f"group {g}: conf_state must be a ConfState")
        ops.append((OP_CONF_STATE, gw.conf_state))
    hs = gw.hard_state
    if hs is not None:
        check_hard_state(g, hs)
        ops.append((OP_HARD_STATE, hs))
    return ops
