"""The leader's view of one follower: how far it matches, and how much is in flight.

Flow control follows etcd-raft's three states:
- PROBE: we do not know where the follower's log matches; send one append per
  heartbeat interval and wait for the answer (fast back-off via reject hints).
- REPLICATE: the follower is caught up to `match`; stream appends optimistically,
  bounded by the inflight window (count and bytes).
- SNAPSHOT: the follower needs entries we compacted; a snapshot is on its way.
"""

from __future__ import annotations

import collections
import enum

import attrs


class ProgressState(enum.IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


@attrs.define
class Inflights:
    """Appends sent but not yet acknowledged, bounded by count and by bytes."""

    count_max: int
    bytes_max: int
    # (last index of the append, its size in bytes), in increasing index order.
    _items: collections.deque = attrs.field(factory=collections.deque)
    _bytes: int = 0

    def full(self) -> bool:
        return len(self._items) >= self.count_max or self._bytes >= self.bytes_max

    def add(self, last_index: int, size_bytes: int) -> None:
        assert not self._items or self._items[-1][0] < last_index, (self._items, last_index)
        self._items.append((last_index, size_bytes))
        self._bytes += size_bytes

    def free_to(self, index: int) -> None:
        """Everything up to `index` was acknowledged."""
        items = self._items
        while items and items[0][0] <= index:
            self._bytes -= items.popleft()[1]

    def free_first(self) -> None:
        if self._items:
            self._bytes -= self._items.popleft()[1]

    def reset(self) -> None:
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


@attrs.define
class Progress:
    # Invariant: match < next_index (next is the first index we would send).
    match: int
    next_index: int
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    # PROBE: an append is outstanding; pause until a response or a heartbeat tick.
    probe_sent: bool = False
    # SNAPSHOT: the index of the snapshot in flight, and ticks spent waiting.
    pending_snapshot: int = 0
    snapshot_wait_ticks: int = 0
    # CheckQuorum: heard from this peer since the last check.
    recent_active: bool = False
    is_learner: bool = False

    def check_invariants(self) -> None:
        assert 0 <= self.match < self.next_index, self

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            # Whatever the snapshot covered is a safe place to resume from.
            self.next_index = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next_index = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next_index = self.match + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.snapshot_wait_ticks = 0
        self.probe_sent = False
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """A *successful* append response acknowledged `index`. Returns whether
        match advanced. Only successful responses ever raise match (raft-lite
        raised it on rejections too)."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        if self.next_index < index + 1:
            self.next_index = index + 1
        return updated

    def maybe_decrease_to(self, rejected: int, hint: int) -> bool:
        """An append after `rejected` was refused; `hint` is where to try next.
        Returns False for stale rejections."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale: we already know it matches there
            self.next_index = self.match + 1
            return True
        if self.next_index - 1 != rejected:
            return False  # not the probe we are waiting for
        self.next_index = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True  # SNAPSHOT: wait for the follower to restore
