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

from collections.abc import Callable
from typing import Any, NamedTuple

import attrs

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


class Pinned(NamedTuple):
    plant: Callable[[Setattr], None]
    text: str  # what the violation must say
    seeds: tuple[int, ...]
    # Options forced on top of each seed's drawn ones (the draw itself is
    # unchanged, so the seed's random stream is too): a tilt toward the
    # faults the bug needs, where plain draws reach it too rarely.
    tilt: dict[str, Any] = {}


PINNED: dict[str, Pinned] = {
    "lease_in_ticks": Pinned(
        plant_lease_in_ticks,
        "linearizab",
        (15,),
        {"lease_reads": True, "check_quorum": True, "pause_rate": 0.002, "read_fraction": 0.5},
    ),
    "restart_without_finishing_the_round": Pinned(
        plant_restart_without_finishing_the_round, "LogDoesNotFollowSnapshot", (13, 17)
    ),
    "restart_without_resetting_the_base": Pinned(
        plant_restart_without_resetting_the_base, "a gap in the log", (21, 29)
    ),
    "reused_replica_ids": Pinned(plant_reused_replica_ids, "leader completeness", (49,)),
}


def run_pinned_seed(name: str, seed: int, setattr: Setattr):
    """Run `seed` with PINNED[name]'s tilt (through `setattr`, which the
    caller undoes); the SimResult."""
    from multiraft.sim.options import SimOptions
    from multiraft.sim.run import run_seed

    tilt = PINNED[name].tilt
    if tilt:
        draw = SimOptions.draw.__func__  # type: ignore[attr-defined]

        def tilted(cls, rng, chaos_steps=6000):
            return attrs.evolve(draw(cls, rng, chaos_steps), **tilt)

        setattr(SimOptions, "draw", classmethod(tilted))
    return run_seed(seed)
