"""One group's log, in memory: a compacted prefix (the snapshot) plus entries.

The driver persists what `unstable_entries()` returns and then reports it with
`stable_to()`. Entries stay in memory until compaction (the worker takes
snapshots when a group's log grows), which bounds memory per group.

Layout: `entries[k].index == offset + k`, where `offset == snapshot_index + 1`.
"""

from __future__ import annotations

import bisect
from itertools import pairwise

import attrs

from .errors import LogDoesNotFollowSnapshot
from .types import ENTRY_OVERHEAD_BYTES, Entry, HardState, Snapshot, SnapshotMeta


class LogCompacted(Exception):
    """An index at or before the compacted prefix was asked for (a snapshot is
    needed). Same word, same meaning as storage's LogCompactedError; storage's
    LogUnavailableError is the other end: past the last stored entry."""


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
            raise LogCompacted(low)
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


# ---- restart: does the durable log follow the durable snapshot? ---------------
#
# A round persists in this order (workers/worker.py, the simulator's disk): the
# snapshot file is made durable first, then one log write carries the log's new
# base (compact_to), the entries and the hard state, then one fsync. A crash can
# stop anywhere in between, and a torn write keeps only a prefix of the records.
# follow_snapshot() repairs exactly what those crash points leave behind;
# check_follows_snapshot() refuses anything else. One rule for every driver.


def follow_snapshot(
    meta: SnapshotMeta | None, hard_state: HardState, entries: list[Entry]
) -> tuple[HardState, list[Entry], str | None]:
    """Finish an interrupted round: returns (hard state, entries, reason), the
    reason None when nothing needed repair.

    - The snapshot is durable but the log reset after it was lost: the log
      holds the snapshot's index with another term, or ends before it. Every
      entry goes (entries after a conflicting index come from another history).
    - The hard state record was lost while the snapshot or entries of a newer
      term survived: the term rises to theirs, with no vote. Safe: a vote is
      sent only after its hard state is durable, so no vote was cast in a term
      the disk does not know.
    Anything else (a gap, a conflict a crash cannot cause) is left for
    check_follows_snapshot to refuse."""
    reasons = []
    if meta is not None and meta.index > 0 and entries:
        s = meta.index
        first, last = entries[0].index, entries[-1].index
        if first <= s <= last and entries[s - first].term != meta.term:
            reasons.append(
                f"entries {first}..{last} conflict with the snapshot at index {s} "
                f"(term {entries[s - first].term} there, the snapshot's is {meta.term}): "
                "the log reset after installing the snapshot was lost; dropped"
            )
            entries = []
        elif last < s:
            reasons.append(
                f"entries {first}..{last} are covered by the snapshot at index {s}: "
                "the log reset after installing the snapshot was lost; dropped"
            )
            entries = []
    last_term = entries[-1].term if entries else (meta.term if meta is not None else 0)
    emptied = hard_state.term == 0 and meta is not None and meta.index > 0
    if last_term > hard_state.term and not emptied:
        # (A snapshot with no hard state at all is no crash point: a snapshot
        # arrives only after the term it came in is durable. The log was
        # emptied or lost; refused.)
        reasons.append(
            f"the hard state (term {hard_state.term}) is older than the log's last term "
            f"{last_term}: its record was lost in a torn write; the term rises, with no vote"
        )
        hard_state = HardState(last_term, None, hard_state.commit)
    return hard_state, entries, "; ".join(reasons) or None


def reset_needed(meta: SnapshotMeta | None, log_base: int, entries: list[Entry]) -> bool:
    """After follow_snapshot: must the stored log be reset to the snapshot?
    Yes when it holds no entries and its base is behind the snapshot (the
    reset was lost): the next append, at the snapshot's index + 1, would
    otherwise leave a gap that the log refuses."""
    return meta is not None and meta.index > 0 and not entries and log_base < meta.index


def check_follows_snapshot(
    meta: SnapshotMeta | None, hard_state: HardState, entries: list[Entry] | tuple[Entry, ...]
) -> None:
    """Raise LogDoesNotFollowSnapshot unless the log continues the snapshot:
    contiguous entries that reach the snapshot's index (if any), with the
    snapshot's term there, the first entry after it at index + 1 with a term no lower, and
    a hard state term no older than the log's last term."""
    s, t = (meta.index, meta.term) if meta is not None else (0, 0)
    for a, b in pairwise(entries):
        if b.index != a.index + 1 or b.term < a.term:
            raise LogDoesNotFollowSnapshot(
                f"the log is not contiguous: entry ({a.index}, term {a.term}) "
                f"is followed by ({b.index}, term {b.term})"
            )
    if entries:
        first, last = entries[0].index, entries[-1].index
        if first > s + 1:
            what = f"the snapshot ends at index {s}" if s else "there is no snapshot"
            raise LogDoesNotFollowSnapshot(
                f"the log starts at index {first} but {what}: entries {s + 1}..{first - 1} are "
                "missing (a snapshot older than the log's compaction, or lost)"
            )
        if last < s:
            raise LogDoesNotFollowSnapshot(
                f"the log ends at index {last}, below the snapshot's index {s}: the log reset "
                "after installing the snapshot was lost (the log cannot continue from it)"
            )
        if first <= s <= last and entries[s - first].term != t:
            raise LogDoesNotFollowSnapshot(
                f"the log has term {entries[s - first].term} at index {s}, the snapshot there has term {t}"
            )
        after = s + 1 - first  # position of entry s + 1
        if 0 <= after < len(entries) and entries[after].term < t:
            raise LogDoesNotFollowSnapshot(
                f"entry {s + 1} has term {entries[after].term}, below the snapshot's term {t}"
            )
        below = min(after, len(entries)) - 1  # the last entry at or below s
        if below >= 0 and entries[below].term > t:
            raise LogDoesNotFollowSnapshot(
                f"entry {entries[below].index} has term {entries[below].term}, "
                f"above the snapshot's term {t} at index {s}"
            )
    last_term = max(t, entries[-1].term if entries else 0)
    if last_term > hard_state.term:
        raise LogDoesNotFollowSnapshot(
            f"the hard state's term {hard_state.term} is older than the log's last term {last_term} "
            "(a lost or emptied log segment?)"
        )
