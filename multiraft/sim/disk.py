"""A worker's disk in the simulator: what survives a crash, and what does not.

Each worker owns one disk shared by all its groups (as in the real node).
A write becomes durable when it completes; writes still in flight, and
unsynced writes, are lost in a crash.
"""

from __future__ import annotations

import attrs

from multiraft.raft.types import Entry, HardState, Ready, Snapshot


@attrs.define
class GroupDisk:
    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list[Entry] = attrs.field(factory=list)

    def persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            # The log restarts after the snapshot: nothing before or after it
            # survives (entries after it might conflict with the leader's).
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            keep = [e for e in self.entries if e.index < first]
            self.entries = keep + list(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def save_snapshot(self, snap: Snapshot, compacted_to: int) -> None:
        if self.snapshot is None or snap.meta.index > self.snapshot.meta.index:
            self.snapshot = snap
        self.entries = [e for e in self.entries if e.index > compacted_to]

    def check(self) -> None:
        for a, b in zip(self.entries, self.entries[1:]):
            assert b.index == a.index + 1, (a, b)
        if self.snapshot is not None and self.entries:
            assert self.entries[0].index <= self.snapshot.meta.index + 1


@attrs.define
class SimDisk:
    groups: dict[int, GroupDisk] = attrs.field(factory=dict)
    # Commit-only hard states written without fsync: lost in a crash.
    unsynced_hard_states: dict[int, HardState] = attrs.field(factory=dict)

    def group(self, group: int) -> GroupDisk:
        g = self.groups.get(group)
        if g is None:
            g = self.groups[group] = GroupDisk()
        return g

    def write(self, group: int, rd: Ready) -> None:
        g = self.group(group)
        if rd.must_sync:
            g.persist(rd)
            self.flush()
        else:
            # Only the commit index can change without a sync: keep it aside.
            if rd.hard_state is not None:
                self.unsynced_hard_states[group] = rd.hard_state
            rest = attrs.evolve(rd, hard_state=None)
            g.persist(rest)

    def flush(self) -> None:
        for group, hs in self.unsynced_hard_states.items():
            g = self.group(group)
            if hs.term == g.hard_state.term and hs.vote == g.hard_state.vote:
                g.hard_state = hs
        self.unsynced_hard_states.clear()

    def crash(self) -> None:
        self.unsynced_hard_states.clear()
