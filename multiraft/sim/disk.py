"""A worker's disk in the simulator: what survives a crash, and what does not.

Each worker owns one disk shared by all its groups (as in the real node).
A write becomes durable when it completes; writes still in flight, and
unsynced writes, are lost in a crash.
"""

from __future__ import annotations

import random
from itertools import pairwise

import attrs

from multiraft.raft.types import Entry, HardState, Ready, Snapshot

# A log record of the simulated disk, in the order the real worker's batch
# writes them (storage/batch.py: compact_to, entries, hard state):
#   ("base", index, term)  the log's new base after a snapshot: entries up to
#                          index go; if the log does not hold (index, term),
#                          every entry goes (the leader's snapshot replaces it)
#   ("entries", entries)   replaces every entry from entries[0].index on
#   ("hs", hard_state)


@attrs.define
class GroupDisk:
    """What is durable for one group: the snapshot file, and the log records
    that reached the disk (see SimDisk for the ones that have not yet)."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list[Entry] = attrs.field(factory=list)
    # The log's base (the last "base" record's index). Invariant: entries, if
    # any, start at base + 1.
    base: int = 0

    def save_snapshot_file(self, snap: Snapshot) -> None:
        """Durable at once: the real store fsyncs the files and renames them."""
        if self.snapshot is None or snap.meta.index > self.snapshot.meta.index:
            self.snapshot = snap

    def apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "base":
            _, index, term = op
            ents = self.entries
            if index <= self.base:
                return  # already compacted past it: a no-op, as in storage
            if ents and index <= ents[-1].index and ents[index - ents[0].index].term == term:
                self.entries = ents[index - ents[0].index + 1 :]
            else:
                self.entries = []
            self.base = index
        elif kind == "entries":
            first = op[1][0].index
            # Storage refuses a write that leaves a gap (InvalidWriteError).
            assert self.base < first <= self.last_index() + 1, ("a gap in the log", first, self.base, self.last_index())
            self.entries = [e for e in self.entries if e.index < first] + list(op[1])
        else:
            self.hard_state = op[1]

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.base

    def check(self) -> None:
        for a, b in pairwise(self.entries):
            assert b.index == a.index + 1, (a, b)
        assert not self.entries or self.entries[0].index == self.base + 1


def round_ops(rd: Ready) -> list[tuple]:
    """The log records of one Ready, in the real batch's order."""
    ops: list[tuple] = []
    if rd.snapshot is not None:
        ops.append(("base", rd.snapshot.meta.index, rd.snapshot.meta.term))
    if rd.entries:
        ops.append(("entries", list(rd.entries)))
    if rd.hard_state is not None:
        ops.append(("hs", rd.hard_state))
    return ops


@attrs.define
class SimDisk:
    groups: dict[int, GroupDisk] = attrs.field(factory=dict)
    # Records written but not yet fsynced, oldest first: (group, op). A crash
    # keeps a prefix of them (a torn write: some groups' records survive,
    # others do not; within one a prefix of its entries), possibly empty.
    pending: list[tuple[int, tuple]] = attrs.field(factory=list)

    def group(self, group: int) -> GroupDisk:
        g = self.groups.get(group)
        if g is None:
            g = self.groups[group] = GroupDisk()
        return g

    def write(self, group: int, rd: Ready, stop: str | None = None) -> None:
        """Persist a Ready in the real worker's order: the snapshot durable
        first, then its log records written, then (if the Ready must sync)
        one fsync. `stop` ends the round early, at a crash point:
        "after_snapshot_save" or "before_fsync"."""
        if rd.snapshot is not None:
            self.group(group).save_snapshot_file(rd.snapshot)
        if stop == "after_snapshot_save":
            return
        self.group(group)
        self.pending.extend((group, op) for op in round_ops(rd))
        if rd.must_sync and stop is None:
            self.flush()

    def save_local_snapshot(self, group: int, snap: Snapshot, compact_to: tuple[int, int]) -> None:
        """A snapshot of our own state: the file durable, then the compaction
        record, synced with the next fsync (as the worker's next round does)."""
        self.group(group).save_snapshot_file(snap)
        self.pending.append((group, ("base", compact_to[0], compact_to[1])))

    def flush(self) -> None:
        for group, op in self.pending:
            self.group(group).apply(op)
        self.pending.clear()

    def crash(self, rng: random.Random | None = None) -> bool:
        """Lose the unsynced records; with `rng`, a torn write keeps a random
        prefix of them. Returns whether some but not all survived."""
        pending, self.pending = self.pending, []
        if rng is None or not pending:
            return False
        keep = rng.randint(0, len(pending))
        for group, op in pending[:keep]:
            self.group(group).apply(op)
        torn = 0 < keep < len(pending)
        if keep < len(pending):
            group, op = pending[keep]
            if op[0] == "entries" and len(op[1]) > 1 and rng.random() < 0.5:
                self.group(group).apply(("entries", op[1][: rng.randint(1, len(op[1]) - 1)]))
                torn = True
        return torn
