"""Bugs planted in the real code, which the simulator must catch.

Each `plant_*` takes a `setattr`-like callable (pytest's `monkeypatch.setattr`
in tests, which undoes it; plain `setattr` in tools/planted_seeds.py) and
plants one old or hypothetical bug. `PINNED` lists, for the planted bugs that
only some seeds reach, the text the violation must contain and the seeds
tests/test_sim.py pins. The seeds depend on the simulator's random stream: a
new option drawn in `SimOptions.draw` shifts it, and then
`python tools/planted_seeds.py` finds new ones.
"""

from __future__ import annotations

from typing import Any, Callable

from multiraft.raft import state as raft_state
from multiraft.sim import cluster

Setattr = Callable[[Any, str, Any], None]


def plant_lease_in_ticks(setattr: Setattr) -> None:
    """The lease before issue 9: counted in ticks (which stop while a process
    is paused) and handed out with no expiry the driver could re-check."""
    bcast = raft_state.RaftState._bcast_heartbeat

    def bcast_noting_ticks(self):
        bcast(self)
        self.__dict__.setdefault("_round_ticks", {})[self._round] = self._ticks

    def lease_in_ticks(self):
        if self._transfer_started_this_term or self.lead_transferee is not None:
            return None
        start = self.__dict__.get("_round_ticks", {}).get(self._quorum_round())
        if start is None or self._ticks >= start + self.config.effective_lease_ticks:
            return None
        return float("inf")

    setattr(raft_state.RaftState, "_bcast_heartbeat", bcast_noting_ticks)
    setattr(raft_state.RaftState, "_lease_expiry", lease_in_ticks)


def plant_restart_without_finishing_the_round(setattr: Setattr) -> None:
    """The old recovery: the log a mid-round crash left goes to the core as is."""
    setattr(cluster, "follow_snapshot", lambda meta, hs, entries: (hs, entries, None))


def plant_restart_without_resetting_the_base(setattr: Setattr) -> None:
    """Recovery that leaves the log's base behind its snapshot."""
    setattr(cluster, "reset_needed", lambda meta, base, entries: False)


def plant_reused_replica_ids(setattr: Setattr) -> None:
    """The old re-add: a node's new, empty replica reuses the node id (no
    incarnation, no tombstone), as workers/membership.py did before issue 9."""
    wipe = cluster.SimNode.wipe_replica

    def wipe_forgetting(self, group):
        existed = wipe(self, group)
        self.tombstones.pop(group, None)
        return existed

    setattr(cluster.SimNode, "new_replica_id", lambda self, group: self.id)
    setattr(cluster.SimNode, "wipe_replica", wipe_forgetting)


# name -> (plant, text the violation contains, pinned seeds)
PINNED: dict[str, tuple[Callable[[Setattr], None], str, tuple[int, ...]]] = {
    "lease_in_ticks": (plant_lease_in_ticks, "linearizab", (72,)),
    "restart_without_finishing_the_round": (plant_restart_without_finishing_the_round, "LogDoesNotFollowSnapshot", (13, 16)),
    "restart_without_resetting_the_base": (plant_restart_without_resetting_the_base, "a gap in the log", (0, 9)),
    "reused_replica_ids": (plant_reused_replica_ids, "leader completeness", (131,)),
}
