"""One group's log, in memory: a compacted prefix (the snapshot) plus entries.

The driver persists what `unstable_entries()` returns and then reports it with
`stable_to()`. Entries stay in memory until compaction (the worker takes
snapshots when a group's log grows), which bounds memory per group.

Layout: `entries[k].index == offset + k`, where `offset == snapshot_index + 1`.
"""

from __future__ import annotations

import bisect

import attrs

from .types import ENTRY_OVERHEAD_BYTES, Entry, Snapshot


class LogUnavailable(Exception):
    """An index before the compacted prefix was asked for (a snapshot is needed)."""


@attrs.define
class RaftLog:
    snapshot_index: int = 0
    snapshot_term: int = 0
    entries: list[Entry] = attrs.field(factory=list)
    # Running byte totals: entries[k:j] weigh _cum[j] - _cum[k] bytes (what
    # flow control and batching count). Invariant: len(_cum) == len(entries)+1.
    # Keeps slicing and size accounting O(1) instead of a Python loop per entry.
    _cum: list[int] = attrs.field(factory=lambda: [0])
    # Invariants: snapshot_index <= applied <= committed <= last_index();
    # snapshot_index <= stable_index <= last_index().
    committed: int = 0
    applied: int = 0
    stable_index: int = 0
    # An incoming snapshot not yet handed to the driver / persisted.
    pending_snapshot: Snapshot | None = None
    # Highest index handed out for applying (applied trails it until advance()).
    applying: int = 0

    def check_invariants(self) -> None:
        last = self.last_index()
        assert self.snapshot_index <= self.applied <= self.applying <= self.committed <= last, (
            self.snapshot_index,
            self.applied,
            self.applying,
            self.committed,
            last,
        )
        assert self.snapshot_index <= self.stable_index <= last, (
            self.snapshot_index,
            self.stable_index,
            last,
        )
        assert len(self._cum) == len(self.entries) + 1
        if self.entries:
            assert self.entries[0].index == self.snapshot_index + 1
            assert self.entries[-1].index == last

    # ---- reads ---------------------------------------------------------------

    def first_index(self) -> int:
        return self.snapshot_index + 1

    def last_index(self) -> int:
        if self.entries:
            return self.entries[-1].index
        return self.snapshot_index

    def last_term(self) -> int:
        if self.entries:
            return self.entries[-1].term
        return self.snapshot_term

    def term(self, index: int) -> int | None:
        """Term of `index`, or None if it is compacted away or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        k = index - self.snapshot_index - 1
        if k < 0 or k >= len(self.entries):
            return None
        return self.entries[k].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction (§5.4.1): is a candidate's log at least as new?"""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, low: int, high: int, size_bytes_max: int) -> list[Entry]:
        """Entries [low, high), at least one, then up to size_bytes_max bytes."""
        if low <= self.snapshot_index:
            raise LogUnavailable(low)
        start = low - self.snapshot_index - 1
        stop = min(high, self.last_index() + 1) - self.snapshot_index - 1
        if stop <= start:
            return []
        cum = self._cum
        if cum[stop] - cum[start] > size_bytes_max:
            # The first position whose running total passes the budget.
            stop = max(start + 1, bisect.bisect_right(cum, cum[start] + size_bytes_max, start, stop) - 1)
        return self.entries[start:stop]

    def size_bytes(self, low: int, high: int) -> int:
        """The weight of entries [low, high) (both within the log)."""
        base = self.snapshot_index + 1
        return self._cum[high - base] - self._cum[low - base]

    def unstable_entries(self) -> list[Entry]:
        k = self.stable_index - self.snapshot_index
        return self.entries[k:] if k < len(self.entries) else []

    def has_next_committed(self) -> bool:
        return self.committed > self.applying

    def next_committed(self, size_bytes_max: int) -> list[Entry]:
        if self.committed <= self.applying:
            return []
        return self.slice(self.applying + 1, self.committed + 1, size_bytes_max)

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= `index` whose term is <= `term` (fast back-off):
        a leader whose entry at `index` has term `term` need not probe any index
        between the result and `index`, since those entries certainly differ."""
        index = min(index, self.last_index())
        while index > self.snapshot_index:
            t = self.term(index)
            if t is not None and t <= term:
                break
            index -= 1
        return index

    # ---- writes --------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append after the last entry, or replace a conflicting suffix."""
        if not entries:
            return
        first = entries[0].index
        assert first > self.committed, ("would overwrite committed entries", first, self.committed)
        assert first <= self.last_index() + 1, (first, self.last_index())
        keep = first - self.snapshot_index - 1
        if keep < len(self.entries):
            del self.entries[keep:]
            del self._cum[keep + 1 :]
            # Replaced entries are no longer stable, whatever was persisted.
            self.stable_index = min(self.stable_index, first - 1)
        self.entries.extend(entries)
        cum = self._cum
        total = cum[-1]
        for e in entries:
            total += len(e.data) + ENTRY_OVERHEAD_BYTES
            cum.append(total)

    def maybe_append(
        self, prev_index: int, prev_term: int, committed: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """A follower's AppendEntries consistency check and append (§5.3).

        Returns the index of the last entry known to match the leader, or None
        when the check fails. Existing entries that agree are kept (an old,
        reordered append must never truncate newer matching entries).
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        for pos, e in enumerate(entries):
            t = self.term(e.index)
            if t is None and e.index <= self.snapshot_index:
                continue  # already compacted: committed, so it matches
            if t != e.term:
                assert e.index > self.committed, ("conflict with a committed entry", e)
                self.append(list(entries[pos:]))
                break
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            assert index <= self.last_index(), (index, self.last_index())
            self.committed = index

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to (index, term) are durable, if they are still ours."""
        if self.term(index) == term and index > self.stable_index:
            self.stable_index = index

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            assert index <= self.committed, (index, self.committed)
            self.applied = index
            self.applying = max(self.applying, index)

    def restore(self, snapshot: Snapshot) -> None:
        """Install a snapshot: the whole log becomes its compacted prefix."""
        meta = snapshot.meta
        self.snapshot_index = meta.index
        self.snapshot_term = meta.term
        self.entries = []
        self._cum = [0]
        self.committed = meta.index
        self.applied = meta.index
        self.applying = meta.index
        self.stable_index = meta.index
        self.pending_snapshot = snapshot

    def compact(self, index: int) -> None:
        """Forget entries up to `index` (a snapshot covers them)."""
        if index <= self.snapshot_index:
            return
        assert index <= self.applied, (index, self.applied)
        term = self.term(index)
        assert term is not None
        drop = index - self.snapshot_index
        del self.entries[:drop]
        del self._cum[:drop]  # differences stay right: totals are relative
        self.snapshot_index = index
        self.snapshot_term = term
        self.stable_index = max(self.stable_index, index)
