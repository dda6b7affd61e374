"""A tiny deterministic network of RaftState nodes for unit tests.

Persistence is immediate, delivery is synchronous and in order, unless a test
drops or isolates nodes. The full simulator (multiraft.sim) adds faults.
"""

from __future__ import annotations

import random

from multiraft.raft.config import Config
from multiraft.raft.state import RaftState
from multiraft.raft.types import EntryType, HardState, Message, ReadState


class Net:
    def __init__(self, ids, *, seed=1, learners=(), **config_kwargs):
        self.ids = list(ids)
        self.configs = {i: Config(id=i, **config_kwargs) for i in list(ids) + list(learners)}
        self.nodes: dict[str, RaftState] = {}
        self.rng = random.Random(seed)
        self.applied: dict[str, list] = {}
        self.reads: dict[str, list[ReadState]] = {}
        self.durable: dict[str, dict] = {}
        self.cut: set[frozenset] = set()  # pairs that cannot talk
        self.isolated: set[str] = set()
        self.drop_types: set[int] = set()
        # Optional predicate: a message for which it returns True is dropped.
        self.drop_if = None
        self.log: list[Message] = []
        for i in ids:
            self._start(i, initial_voters=tuple(ids))
        for i in learners:
            self._start(i, initial_voters=None)

    def _start(self, i, initial_voters, hard_state=HardState(), snapshot=None, entries=()):
        self.nodes[i] = RaftState(
            self.configs[i],
            random.Random(self.rng.random()),
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
            initial_voters=initial_voters,
        )
        self.applied.setdefault(i, [])
        self.reads.setdefault(i, [])
        self.durable.setdefault(i, {"hs": HardState(), "entries": [], "snapshot": None})

    def add_node(self, i, **config_kwargs):
        self.configs[i] = Config(id=i, **config_kwargs)
        self._start(i, initial_voters=None)

    def restart(self, i):
        d = self.durable[i]
        self.applied[i] = []
        self._start(i, None, d["hs"], d["snapshot"], list(d["entries"]))

    def blocked(self, m: Message) -> bool:
        if m.type in self.drop_types:
            return True
        if self.drop_if is not None and self.drop_if(m):
            return True
        if m.frm in self.isolated or m.to in self.isolated:
            return True
        return frozenset((m.frm, m.to)) in self.cut

    def process(self, i) -> list[Message]:
        n = self.nodes[i]
        out = []
        while n.has_ready():
            rd = n.ready()
            d = self.durable[i]
            if rd.snapshot is not None:
                d["snapshot"] = rd.snapshot
                d["entries"] = [e for e in d["entries"] if e.index > rd.snapshot.meta.index]
                self.applied[i] = [("snapshot", rd.snapshot.meta.index)]
            if rd.entries:
                first = rd.entries[0].index
                d["entries"] = [e for e in d["entries"] if e.index < first] + list(rd.entries)
            if rd.hard_state is not None:
                d["hs"] = rd.hard_state
            for e in rd.committed_entries:
                if e.type == EntryType.NORMAL and e.data:
                    self.applied[i].append(e.data)
            self.reads[i].extend(rd.read_states)
            out.extend(rd.messages)
            out.extend(rd.messages_after_persist)
            n.advance(rd)
        return out

    def deliver_all(self, max_rounds=10_000):
        """Process every node and deliver messages until quiet."""
        pending: list[Message] = []
        for _ in range(max_rounds):
            for i in list(self.nodes):
                pending.extend(self.process(i))
            if not pending:
                return
            batch, pending = pending, []
            for m in batch:
                self.log.append(m)
                if not self.blocked(m) and m.to in self.nodes:
                    self.nodes[m.to].step(m)
            for n in self.nodes.values():
                n.check_invariants()
        raise AssertionError("network did not go quiet")

    def tick(self, i=None, times=1):
        for _ in range(times):
            for j in [i] if i else list(self.nodes):
                self.nodes[j].tick()
            self.deliver_all()

    def leader(self):
        leaders = [i for i, n in self.nodes.items() if n.role.name == "LEADER" and i not in self.isolated]
        return leaders[0] if len(leaders) == 1 else None

    def elect(self, i):
        """Make `i` campaign now (as if its election timer fired)."""
        self.deliver_all()  # apply the bootstrap config first
        for other in self.nodes.values():
            # Past the start-up window in which a (re)started node refuses
            # votes (RaftState._in_lease), as if the nodes had run a while.
            other._ticks = max(other._ticks, other.config.election_tick)
        n = self.nodes[i]
        n.election_elapsed = 0
        n._campaign(pre_vote=n.config.pre_vote, forced=False)
        self.deliver_all()

    def tick_until_leader(self, max_ticks=200):
        for _ in range(max_ticks):
            if self.leader():
                return self.leader()
            self.tick()
        raise AssertionError("no leader elected")

    # ---- helpers for the core's unit tests (tests/test_raft_*.py) -------------

    def boot(self, leader=None):
        """Apply the bootstrap config everywhere and elect `leader` (default:
        the first voter). A node refuses votes for election_tick ticks after it
        starts (it may have acked a leader just before a crash); a test network
        has no such past, so that guard is skipped by advancing each node's
        clock. Returns the leader's id."""
        leader = leader or self.ids[0]
        self.deliver_all()
        for n in self.nodes.values():
            n._ticks = max(n._ticks, n.config.election_tick)
        self.elect(leader)
        assert self.nodes[leader].role.name == "LEADER", self.nodes[leader].status()
        return leader

    def sent(self, type=None, frm=None, to=None):
        """Messages handed to the network so far (delivered or not)."""
        return [
            m
            for m in self.log
            if (type is None or m.type == type)
            and (frm is None or m.frm == frm)
            and (to is None or m.to == to)
        ]

    def propose(self, i, *datas):
        """Propose on `i` and deliver; returns the index of the first entry."""
        first = self.nodes[i].propose_many([d for d in datas])
        self.deliver_all()
        return first

    def heal(self):
        self.cut.clear()
        self.isolated.clear()
        self.drop_types.clear()
        self.drop_if = None
