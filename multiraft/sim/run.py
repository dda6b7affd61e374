"""One simulation run: chaos, then heal, then liveness; safety after every step."""

from __future__ import annotations

import collections
import random
import time
import traceback

import attrs

from multiraft import lincheck
from multiraft.raft import confchange
from multiraft.raft.errors import RaftError
from multiraft.raft.types import StateRole
from multiraft.replica import incarnation_of, node_of

from .cluster import Replica, SimNode
from .hostile import check_hostile_frame, hostile_frame
from .network import SimNetwork
from .options import SimOptions
from .safety import SafetyChecker, SafetyViolation
from .workload import Workload

# Counters the summary reports (each counted from what actually happened).
REPORTED_COUNTERS = (
    "elections",
    "prevote_rejections",
    "checkquorum_stepdowns",
    "leader_transfers",
    "joint_changes",
    "learners_promoted",
    "snapshots_installed",
    "readindex_reads",
    "lease_reads",
    "crashes",
    "partitions",
    "ops_checked",
    "replicas_readded",
    "frames_corrupted",
    "sessions_expired",
    "midround_crashes",
    "torn_writes",
    "joint_snapshots",
    "pauses",
    "drifting_nodes",
    "hostile_frames_refused",
)


@attrs.define
class SimResult:
    seed: int
    options: SimOptions
    ok: bool
    violation: str | None
    step: int
    counters: dict[str, int]
    linearizable: str
    seconds: float


class Sim:
    def __init__(self, seed: int, options: SimOptions | None = None, chaos_steps: int = 6000) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.options = options or SimOptions.draw(self.rng, chaos_steps)
        o = self.options
        self.network = SimNetwork(
            self.rng, o.drop_rate, o.dup_rate, o.delay_steps_max, corrupt_rate=o.corrupt_rate
        )
        self.safety = SafetyChecker()
        self.counters: collections.Counter[str] = collections.Counter()
        self.nodes = {f"n{i + 1}": SimNode(f"n{i + 1}", o, self.rng) for i in range(o.nodes)}
        self.healed = False
        self.now = 0
        # Set by a replica whose worker dies inside a round: (node, worker).
        self.midround_crash: tuple[SimNode, int] | None = None
        node_ids = sorted(self.nodes)
        for g in range(o.groups):
            members = self.rng.sample(node_ids, o.replicas)
            for n in members:
                self.nodes[n].create_replica(g, tuple(members), self.rng)
        self.workload = Workload(self)
        self.counters["drifting_nodes"] = sum(1 for n in self.nodes.values() if n.clock_rate != 1.0)

    # ---- the loop ----------------------------------------------------------------

    def run(self) -> SimResult:
        started = time.monotonic()
        violation = None
        o = self.options
        try:
            for _ in range(o.chaos_steps):
                self.step(chaos=True)
            self.heal()
            self._liveness()
            verdict = self._check_history()
        except SafetyViolation as e:
            violation = f"step {self.now}: {e}"
            verdict = "not checked"
        except AssertionError as e:
            violation = f"step {self.now}: assertion failed: {e!r}"
            verdict = "not checked"
        except Exception as e:  # a crash of the code under test is a finding too
            violation = f"step {self.now}: {type(e).__name__}: {e!r}\n{traceback.format_exc()}"
            verdict = "not checked"
        self._collect_counters()
        counters = {k: self.counters.get(k, 0) for k in REPORTED_COUNTERS}
        counters.update({k: v for k, v in self.counters.items() if k not in counters})
        return SimResult(
            seed=self.seed,
            options=o,
            ok=violation is None,
            violation=violation,
            step=self.now,
            counters=counters,
            linearizable=verdict,
            seconds=time.monotonic() - started,
        )

    def step(self, chaos: bool) -> None:
        self.now += 1
        now = self.now
        o = self.options
        if chaos:
            self._inject_faults()
        self._restart_due()
        self._resume_due()
        for group, m in self.network.due(now):
            node = self.nodes.get(node_of(m.to))
            if node is None or not node.up:
                continue
            if node.paused(group):
                node.queue_message(group, m)
                continue
            r = node.replicas.get(group)
            if r is not None:
                if r.raft.id != m.to:
                    # For a retired incarnation (an old config names it): as the worker does.
                    self.counters["dropped_retired_replica"] += 1
                    continue
                if self._from_retired(group, m.frm):
                    # A delayed message of a retired incarnation (the worker
                    # learns the sender's current id from routing; the
                    # simulator knows it at once).
                    self.counters["dropped_from_retired_replica"] += 1
                    continue
                r.raft.step(m)
        for node in self.nodes.values():
            # Each node ticks by its own clock (at most once a step: ticks
            # never run ahead of its time); a paused process misses its ticks.
            clock = node.clock(now)
            if node.up and clock >= node.next_tick_at:
                node.next_tick_at += o.steps_per_tick
                for g, r in node.replicas.items():
                    if not node.paused(g):
                        r.raft.tick(now=clock)
        if chaos:
            self._admin_actions()
            if o.hostile_client_rate and self.rng.random() < o.hostile_client_rate:
                self._hostile_client_frame()
        self.workload.step(now)
        for node in self.nodes.values():
            if node.up:
                for r in list(node.replicas.values()):
                    if node.replicas.get(r.group) is not r:
                        continue  # lost in a crash inside this step's round
                    if node.paused(r.group):
                        continue
                    r.step_ready(self, now)
                    if self.midround_crash is not None:
                        self._crash_midround()
                        continue
                    r.raft.check_invariants()
                    r.observe(self)

    def _higher_term_anywhere(self, group: int, term: int) -> bool:
        """Does any replica of `group`, running or only on disk, know a term
        above `term`? (A newer leader's voters persisted its term.)"""
        for node in self.nodes.values():
            r = node.replicas.get(group)
            if r is not None:
                if r.raft.term > term:
                    return True
                continue
            gd = node.worker_disk(group).groups.get(group)
            if gd is not None and gd.hard_state.term > term:
                return True
        return False

    def _from_retired(self, group: int, sender: str) -> bool:
        node = self.nodes.get(node_of(sender))
        current = node.replica_ids.get(group) if node is not None else None
        return current is not None and incarnation_of(sender) < incarnation_of(current)

    # ---- faults ------------------------------------------------------------------

    def _inject_faults(self) -> None:
        o = self.options
        rng = self.rng
        if o.partition_rate and rng.random() < o.partition_rate:
            if self.network.blocked and rng.random() < 0.5:
                self.network.blocked.clear()
            else:
                ids = sorted(self.nodes)
                rng.shuffle(ids)
                cut = rng.randint(1, len(ids) - 1)
                self.network.partition(set(ids[:cut]), set(ids[cut:]), o.one_way_partition and rng.random() < 0.5)
                self.counters["partitions"] += 1
        if o.crash_rate and rng.random() < o.crash_rate:
            up = [n for n in self.nodes.values() if n.up]
            # Keep a majority of nodes up most of the time, so work continues.
            if up and (len(up) > (len(self.nodes) + 1) // 2 or rng.random() < 0.2):
                node = rng.choice(up)
                if o.worker_crash and o.workers_per_node > 1 and rng.random() < 0.5:
                    self._crash_worker(node, rng.randrange(o.workers_per_node))
                else:
                    self._crash_node(node)
        if o.pause_rate and rng.random() < o.pause_rate:
            self._pause()

    def _pause(self) -> None:
        """Stop a node or one worker (often a leader's) for longer than an
        election timeout; it keeps its memory and queues what reaches it."""
        o = self.options
        rng = self.rng
        leaders = [r.node for g in range(o.groups) for r in [self._leader_of(g)] if r is not None]
        candidates = [n for n in (leaders if leaders and rng.random() < 0.7 else self.nodes.values()) if n.up]
        if not candidates:
            return
        node = rng.choice(candidates)
        if node.paused_until:
            return
        key = None if o.workers_per_node == 1 or rng.random() < 0.5 else rng.randrange(o.workers_per_node)
        self.pause(node, key)

    def pause(self, node: SimNode, key: int | None) -> None:
        """Pause the node (key None) or one of its workers."""
        o = self.options
        timeout = o.election_tick * o.steps_per_tick
        node.paused_until[key] = self.now + self.rng.randint(timeout + 10, 12 * timeout)
        self.counters["pauses"] += 1

    def _resume_due(self) -> None:
        for node in self.nodes.values():
            for key, until in list(node.paused_until.items()):
                if self.now >= until or self.healed:
                    node.resume(key, self)

    def _crash_node(self, node: SimNode, torn: bool = False) -> None:
        for w in range(len(node.disks)):
            node.crash_worker(w, self.counters, self.rng if torn else None)
        node.down_until = self.now + self.rng.randint(50, 1500)
        self.counters["crashes"] += 1

    def _crash_worker(self, node: SimNode, worker: int, torn: bool = False) -> None:
        for g in node.crash_worker(worker, self.counters, self.rng if torn else None):
            # The coordinator restarts a crashed worker right away.
            node.restart_replica(g, self.rng, self.counters)
        self.counters["crashes"] += 1
        self.counters["worker_crashes"] += 1

    def _majority_up_after_a_crash(self) -> bool:
        return sum(n.up for n in self.nodes.values()) > (len(self.nodes) + 1) // 2

    def may_crash_midround(self) -> bool:
        """Only during chaos, and leaving a majority of nodes up (a worker
        crash restarts at once)."""
        return not self.healed and (self.options.workers_per_node > 1 or self._majority_up_after_a_crash())

    def _crash_midround(self) -> None:
        """A crash inside a round (power loss: a torn write keeps a prefix)."""
        assert self.midround_crash is not None
        node, worker = self.midround_crash
        self.midround_crash = None
        self.counters["midround_crashes"] += 1
        o = self.options
        if o.workers_per_node > 1 and (self.rng.random() < 0.5 or not self._majority_up_after_a_crash()):
            self._crash_worker(node, worker, torn=True)
        else:
            self._crash_node(node, torn=True)

    def _restart_due(self) -> None:
        for node in self.nodes.values():
            if node.down_until is not None and self.now >= node.down_until:
                self._restart_node(node)

    def _restart_node(self, node: SimNode) -> None:
        node.down_until = None
        for disk in node.disks:
            for g in disk.groups:
                node.restart_replica(g, self.rng, self.counters)

    def heal(self) -> None:
        self.healed = True
        self.network.heal()
        for node in self.nodes.values():
            if not node.up:
                self._restart_node(node)

    # ---- admin: membership and leadership ------------------------------------------

    def _leader_of(self, group: int) -> Replica | None:
        best = None
        for node in self.nodes.values():
            r = node.replicas.get(group) if node.up else None
            if r is not None and r.raft.role == StateRole.LEADER:
                if best is None or r.raft.term > best.raft.term:
                    best = r
        return best

    def _admin_actions(self) -> None:
        o = self.options
        rng = self.rng
        if o.transfer_rate and rng.random() < o.transfer_rate:
            g = rng.randrange(o.groups)
            leader = self._leader_of(g)
            if leader is not None:
                others = sorted(leader.raft.conf.voters - {leader.raft.id})
                if others:
                    try:
                        leader.raft.transfer_leader(rng.choice(others))
                        self.counters["transfers_requested"] += 1
                    except RaftError:
                        pass
        if o.membership_rate and rng.random() < o.membership_rate:
            g = rng.randrange(o.groups)
            leader = self._leader_of(g)
            if leader is not None:
                self._change_membership(leader)
        if o.membership_rate and o.wipe_removed and rng.random() < o.membership_rate:
            self._wipe_removed_replica()

    def _change_membership(self, leader: Replica) -> None:
        rng = self.rng
        conf = leader.raft.conf
        if conf.joint:
            return
        members = conf.all_nodes()
        member_nodes = {node_of(m) for m in members}
        outsiders = sorted(n for n in self.nodes if n not in member_nodes and self.nodes[n].up)
        voters = sorted(conf.voters)
        learners = sorted(conf.learners)
        choices = []
        if outsiders:
            choices.append("add_learner")
        if learners:
            choices += ["promote", "promote", "remove_learner", "swap"]
        if len(voters) > 3:
            choices.append("remove_voter")
        if len(voters) >= 3 and learners:
            choices.append("demote")
        if not choices:
            return
        action = rng.choice(choices)
        new_replica: tuple[SimNode, str] | None = None
        if action == "add_learner":
            node = self.nodes[rng.choice(outsiders)]
            # The node allocates a new incarnation (multiraft.replica); a stale
            # replica it still hosts (removed from the config) is deleted first.
            rid = node.new_replica_id(leader.group)
            new_replica = (node, rid)
            cc = confchange.add_learner(rid)
        elif action == "promote":
            cc = confchange.add_voter(rng.choice(learners))
        elif action == "remove_learner":
            cc = confchange.remove_node(rng.choice(learners))
        elif action == "remove_voter":
            cc = confchange.remove_node(rng.choice(voters))
        elif action == "demote":
            cc = confchange.add_learner(rng.choice(voters))
        else:
            # Replace a voter by a learner in one joint change (thesis §4.3).
            new = rng.choice(learners)
            old = rng.choice(voters)
            cc = confchange.ConfChange(
                (
                    confchange.SingleChange(confchange.ChangeKind.ADD_VOTER, new),
                    confchange.SingleChange(confchange.ChangeKind.REMOVE_NODE, old),
                )
            )
        try:
            leader.raft.propose_conf_change(cc)
        except RaftError:
            return
        self.counters["conf_changes_proposed"] += 1
        if new_replica is not None and new_replica[0].up:
            # The coordinator creates the empty replica before it is added.
            node, rid = new_replica
            if node.wipe_replica(leader.group):
                self.counters["replicas_readded"] += 1
            node.create_replica(leader.group, None, self.rng, rid)

    def _wipe_removed_replica(self) -> None:
        """Delete a replica its group's leader no longer has in its config, as
        multiraft-admin does after a removal (drop_replica). Voters cut off
        during the removal may still name it: that is the point."""
        g = self.rng.randrange(self.options.groups)
        leader = self._leader_of(g)
        if leader is None or leader.raft.conf.joint:
            return
        log = leader.raft.log
        if log.applied < log.last_index() or log.term(log.committed) != leader.raft.term:
            return  # a conf change may be in flight: the admin waits for it
        if self._higher_term_anywhere(g, leader.raft.term):
            # A stale leader (a newer one is paused, cut off or down) may not
            # know the replica was added again: deleting it could delete a voter.
            return
        members = leader.raft.conf.all_nodes()
        stale = [n for n in sorted(self.nodes) if self.nodes[n].up and g in self.nodes[n].replicas
                 and self.nodes[n].replicas[g].raft.id not in members]
        if stale:
            self.nodes[self.rng.choice(stale)].wipe_replica(g)
            self.counters["replicas_wiped"] += 1

    def _hostile_client_frame(self) -> None:
        """A client's request with one hostile part, through the real decoder."""
        rng = self.rng
        key = rng.choice(self.workload.keys).encode()
        request = rng.choice([
            [rng.randrange(1 << 20), "put", 0, key, b"v", 1, 1],
            [rng.randrange(1 << 20), "get", 0, key, "linearizable"],
            [b"id", "cas", 0, key, None, b"v", 1, 2],
            [None, "ping"],
        ])
        kind, body = hostile_frame(rng, request)
        if check_hostile_frame(body):
            self.counters["hostile_frames_refused"] += 1
        else:
            self.counters["hostile_frames_decoded"] += 1

    # ---- the end ---------------------------------------------------------------------

    def _liveness(self) -> None:
        """After healing, every client op completes and every group has a
        leader with no joint config left, within a bounded number of steps."""
        o = self.options
        deadline = self.now + o.liveness_steps
        settle = 0
        while self.now < deadline:
            self.step(chaos=False)
            if self.now % 50:
                continue
            if self._settled():
                settle += 1
                if settle >= 2:
                    self.workload.paused = True
                    if not self.workload.busy():
                        return
            else:
                settle = 0
        pending = [c.op for c in self.workload.clients if c.op is not None]
        states = {
            g: [
                (n.id, r.raft.role.name, r.raft.term, r.raft.log.committed)
                for n in self.nodes.values()
                for r in [n.replicas.get(g)]
                if r
            ]
            for g in range(o.groups)
        }
        raise SafetyViolation(
            f"liveness: not settled {o.liveness_steps} steps after healing; pending ops {pending}; groups {states}"
        )

    def _settled(self) -> bool:
        for g in range(self.options.groups):
            leader = self._leader_of(g)
            if leader is None or leader.raft.conf.joint:
                return False
            if leader.raft.log.term(leader.raft.log.committed) != leader.raft.term:
                return False
        return True

    def _check_history(self) -> str:
        events = self.workload.events
        self.counters["ops_checked"] = sum(1 for e in events if e["type"] != "invoke")
        result = lincheck.check_events(events, timeout_s=60.0)
        if result.verdict == lincheck.Verdict.NOT_LINEARIZABLE:
            raise SafetyViolation(f"linearizability: history not linearizable (key {result.failed_key})")
        return result.verdict.value

    def _collect_counters(self) -> None:
        for node in self.nodes.values():
            for r in node.replicas.values():
                self.counters.update(r.raft.counters)
        self.counters["messages_sent"] = self.network.sent
        self.counters["messages_dropped"] = self.network.dropped
        self.counters["frames_corrupted"] = self.network.corrupted


def run_seed(seed: int, chaos_steps: int = 6000) -> SimResult:
    return Sim(seed, chaos_steps=chaos_steps).run()
