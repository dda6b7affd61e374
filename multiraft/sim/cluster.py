"""Simulated nodes: each node has workers, each worker a disk and some groups.

A Replica drives one RaftState the way a worker does: take a Ready, send the
leader's messages at once, persist (taking `disk latency` steps), then send the
acknowledgements, apply committed entries to the KV state machine, answer
reads, advance, and take snapshots when the log grows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from multiraft import kv
from multiraft.raft.config import Config
from multiraft.raft.errors import RaftError
from multiraft.raft.log import follow_snapshot, reset_needed
from multiraft.raft.state import RaftState
from multiraft.raft.types import EntryType, ReadOnlyOption, Ready, StateRole
from multiraft.replica import incarnation_of, replica_id

from .disk import SimDisk
from .options import SimOptions

if TYPE_CHECKING:
    from .run import Sim


@attrs.define
class Waiter:
    client: int
    op_id: int
    term: int


@attrs.define
class ReadWaiter:
    client: int
    op_id: int
    key: bytes
    index: int = -1  # set when the ReadState arrives
    lease_expiry: float | None = None  # a lease read: answer only before this (node clock)


class Replica:
    def __init__(
        self,
        node: SimNode,
        group: int,
        raft: RaftState,
        sm: kv.KVStateMachine,
    ) -> None:
        self.node = node
        self.group = group
        self.raft = raft
        self.kv = sm
        self.inflight: Ready | None = None
        self.inflight_done_at = 0
        self.waiters: dict[int, Waiter] = {}
        self.read_waiters: dict[bytes, ReadWaiter] = {}
        self.last_role = raft.role
        self.last_commit = raft.log.committed

    def step_ready(self, sim: Sim, now: int) -> None:
        """Move this replica's Ready pipeline forward; persistence takes time."""
        for _ in range(8):  # bounded work per step, like a real worker's batch
            if self.inflight is not None:
                if now < self.inflight_done_at:
                    return
                rd, self.inflight = self.inflight, None
                self._finish(sim, now, rd)
                if sim.midround_crash is not None:
                    return
                continue
            if not self.raft.has_ready():
                return
            rd = self.raft.ready()
            for m in rd.messages:
                sim.network.send(now, self.group, m)
            latency = self.node.disk_latency(sim.rng)
            if latency and (rd.entries or rd.snapshot is not None or rd.hard_state is not None):
                self.inflight = rd
                self.inflight_done_at = now + latency
                return
            self._finish(sim, now, rd)
            if sim.midround_crash is not None:
                return

    def _midround_crash_point(self, sim: Sim, rd: Ready) -> str | None:
        """Maybe crash inside this round: after the snapshot is saved and
        before the log reset, or after the write and before the fsync."""
        rate = sim.options.midround_crash_rate
        if not rate or not (rd.entries or rd.snapshot is not None) or not sim.may_crash_midround():
            return None
        if rd.snapshot is not None:
            if sim.rng.random() < 0.3:
                return sim.rng.choice(["after_snapshot_save", "before_fsync"])
        elif sim.rng.random() < rate:
            return "before_fsync"
        return None

    def _finish(self, sim: Sim, now: int, rd: Ready) -> None:
        raft = self.raft
        if rd.entries:
            sim.safety.on_persist(self.group, self.raft.id, rd.entries, self._prev_term_of(rd))
        if rd.snapshot is not None and rd.snapshot.meta.conf_state.joint:
            sim.counters["joint_snapshots"] += 1
        stop = self._midround_crash_point(sim, rd)
        self.node.worker_disk(self.group).write(self.group, rd, stop)
        if stop is not None:
            # The worker dies here: nothing acknowledged, applied or advanced.
            sim.midround_crash = (self.node, self.node.worker_of(self.group))
            return
        for m in rd.messages_after_persist:
            sim.network.send(now, self.group, m)
        if rd.snapshot is not None:
            self.kv.restore(rd.snapshot.data)
            # Reads waiting for an index the snapshot covers can be served now.
        for e in rd.committed_entries:
            sim.safety.on_apply(self.group, self.raft.id, e)
            result = None
            if e.type == EntryType.NORMAL and e.index > self.kv.applied_index:
                result = self.kv.apply(e.index, e.data)
            w = self.waiters.pop(e.index, None)
            if w is not None:
                if w.term == e.term:
                    sim.workload.complete_write(w.client, w.op_id, result, now)
                # else: our entry was overwritten; the client times out and retries
        for rs in rd.read_states:
            w = self.read_waiters.get(rs.context)
            if w is not None:
                w.index = rs.index
                w.lease_expiry = rs.lease_expiry
        raft.advance(rd)
        if rd.read_states and sim.options.pause_rate and not self.node.paused_until:
            if sim.rng.random() < 0.05:
                # The process stalls between taking the read indexes and
                # answering them (a long apply batch, GC): the answers wait.
                sim.pause(self.node, self.node.worker_of(self.group) if sim.options.workers_per_node > 1 else None)
                sim.counters["pauses_mid_apply"] += 1
                return
        self._serve_reads(sim, now)
        self._maybe_snapshot(sim)

    def _prev_term_of(self, rd: Ready) -> Callable[[int], int | None]:
        batch = {e.index: e.term for e in rd.entries}
        log = self.raft.log

        def prev_term(index: int) -> int | None:
            if index in batch:
                return batch[index]
            return log.term(index)

        return prev_term

    def _serve_reads(self, sim: Sim, now: int) -> None:
        if not self.read_waiters:
            return
        applied = self.raft.log.applied
        clock = self.node.clock(now)
        for ctx, w in list(self.read_waiters.items()):
            if 0 <= w.index <= applied:
                if w.lease_expiry is not None and clock >= w.lease_expiry:
                    # The worker's rule: the lease is judged when the read is
                    # answered; expired, it is asked again by ReadIndex.
                    sim.counters["lease_reads_expired"] += 1
                    w.index, w.lease_expiry = -1, None
                    try:
                        self.raft.read_index(ctx, lease=False, now=clock)
                    except RaftError:
                        del self.read_waiters[ctx]  # the client times out and retries
                    continue
                del self.read_waiters[ctx]
                result = self.kv.read(kv.Get(w.key))
                sim.workload.complete_read(w.client, w.op_id, result.value, now)

    def _maybe_snapshot(self, sim: Sim) -> None:
        log = self.raft.log
        o = sim.options
        interval = o.snapshot_interval_entries
        if self.raft.conf.joint and o.joint_snapshot_interval_entries:
            interval = min(interval, o.joint_snapshot_interval_entries)
        if log.applied - log.snapshot_index < interval:
            return
        if self.inflight is not None:
            return
        snap = self.raft.create_snapshot(self.kv.snapshot(), o.compact_lag_entries)
        self.node.worker_disk(self.group).save_local_snapshot(
            self.group, snap, (log.snapshot_index, log.snapshot_term)
        )
        sim.counters["snapshots_taken"] += 1
        if snap.meta.conf_state.joint:
            sim.counters["joint_snapshots"] += 1
        if o.midround_crash_rate and sim.may_crash_midround() and sim.rng.random() < 0.05:
            # Between the snapshot save and the compaction record's fsync.
            sim.midround_crash = (self.node, self.node.worker_of(self.group))

    def observe(self, sim: Sim) -> None:
        """Feed the safety checker what changed since the last look."""
        raft = self.raft
        if raft.role == StateRole.LEADER:
            sim.safety.on_leader(self.group, raft.term, raft.id, raft.log)
            if raft.log.committed > self.last_commit:
                sim.safety.on_commit(self.group, raft.log, self.last_commit, raft.log.committed, raft.term)
        self.last_commit = raft.log.committed
        self.last_role = raft.role


class SimNode:
    def __init__(self, node_id: str, options: SimOptions, rng: random.Random) -> None:
        self.id = node_id
        self.options = options
        self.disks = [SimDisk() for _ in range(options.workers_per_node)]
        self.replicas: dict[int, Replica] = {}
        # What the node's coordinator persists (placement.json): the replica id
        # it hosts per group, and the highest incarnation it retired.
        self.replica_ids: dict[int, str] = {}
        self.tombstones: dict[int, int] = {}
        self.down_until: int | None = None
        self.disk_latency_max = rng.choice([0, options.disk_latency_steps_max])
        self._rng_seed = rng.random()
        # This node's monotonic clock: clock(step) = origin + step * rate. It
        # runs on while the node is paused (as CLOCK_MONOTONIC does under
        # SIGSTOP); the node just does not look at it. Rates differ by at most
        # max_clock_drift_steps over an election timeout between two nodes.
        self.clock_origin = 0.0
        self.clock_rate = 1.0
        if options.clock_drift:
            timeout = options.election_tick * options.steps_per_tick
            rho = options.max_clock_drift_steps / timeout / 2.5
            self.clock_rate = 1.0 + rng.uniform(-rho, rho)
            self.clock_origin = float(rng.randint(0, 10_000))
        self.next_tick_at = self.clock_origin + options.steps_per_tick
        # Paused workers (None: the whole node): step at which they resume,
        # and what reached them meanwhile (client requests, then messages).
        self.paused_until: dict[int | None, int] = {}
        self.backlog_requests: list[tuple[int | None, Callable[[], None]]] = []
        self.backlog_messages: list[tuple[int | None, int, object]] = []

    @property
    def up(self) -> bool:
        return self.down_until is None

    def worker_of(self, group: int) -> int:
        return group % self.options.workers_per_node

    def clock(self, step: int) -> float:
        return self.clock_origin + step * self.clock_rate

    def paused(self, group: int) -> bool:
        p = self.paused_until
        return bool(p) and (None in p or self.worker_of(group) in p)

    def pause_key(self, group: int) -> int | None:
        return None if None in self.paused_until else self.worker_of(group)

    def queue_request(self, group: int, deliver: Callable[[], None]) -> None:
        self.backlog_requests.append((self.pause_key(group), deliver))

    def queue_message(self, group: int, m) -> None:
        self.backlog_messages.append((self.pause_key(group), group, m))

    def resume(self, key: int | None, sim: Sim) -> None:
        """The paused process runs again: it answers the reads it had
        indexed, then handles its backlog of client requests and messages
        (in either order) before its next tick."""
        rng = sim.rng
        del self.paused_until[key]
        reqs = [d for k, d in self.backlog_requests if k == key]
        msgs = [(g, m) for k, g, m in self.backlog_messages if k == key]
        self.backlog_requests = [b for b in self.backlog_requests if b[0] != key]
        self.backlog_messages = [b for b in self.backlog_messages if b[0] != key]

        for g, r in list(self.replicas.items()):
            if key is None or self.worker_of(g) == key:
                r._serve_reads(sim, sim.now)

        def deliver_messages() -> None:
            for g, m in msgs:
                r = self.replicas.get(g)
                if r is not None and r.raft.id == m.to:
                    r.raft.step(m)

        def deliver_requests() -> None:
            for d in reqs:
                d()

        if rng.random() < 0.5:
            deliver_requests()
            deliver_messages()
        else:
            deliver_messages()
            deliver_requests()

    def lease_duration(self) -> float:
        """Election timeout - max drift - one tick, in this node's clock."""
        o = self.options
        return float(o.election_tick * o.steps_per_tick - o.max_clock_drift_steps - o.steps_per_tick)

    def worker_disk(self, group: int) -> SimDisk:
        return self.disks[self.worker_of(group)]

    def disk_latency(self, rng: random.Random) -> int:
        if not self.disk_latency_max:
            return 0
        return rng.randint(0, self.disk_latency_max)

    def make_config(self, rid: str) -> Config:
        o = self.options
        return Config(
            id=rid,
            election_tick=o.election_tick,
            heartbeat_tick=1,
            pre_vote=o.pre_vote,
            check_quorum=o.check_quorum,
            read_only=ReadOnlyOption.LEASE_BASED if o.lease_reads else ReadOnlyOption.SAFE,
            lease_duration=self.lease_duration(),
            msg_size_bytes_max=512,  # small: exercise multi-message catch-up
            snapshot_chunk_bytes_max=256,  # small: exercise chunked snapshots
            inflight_msgs_max=4,
        )

    def new_replica_id(self, group: int) -> str:
        """The id a new replica of `group` here gets: one past the tombstone
        (and past a stale replica still hosted, which is deleted first)."""
        retired = self.tombstones.get(group, -1)
        if group in self.replica_ids:
            retired = max(retired, incarnation_of(self.replica_ids[group]))
        return replica_id(self.id, retired + 1)

    def wipe_replica(self, group: int) -> bool:
        """Delete this node's replica of `group` (memory and disk) and retire
        its id; True if there was one."""
        rid = self.replica_ids.pop(group, None)
        if rid is None:
            return False
        self.tombstones[group] = max(self.tombstones.get(group, -1), incarnation_of(rid))
        self.replicas.pop(group, None)
        # As the worker: a DROP record written and synced (the fsync makes the
        # worker's other pending records durable too).
        disk = self.worker_disk(group)
        disk.flush()
        disk.groups.pop(group, None)
        return True

    def create_replica(self, group: int, initial_voters, sim_rng: random.Random, rid: str | None = None) -> Replica:
        rid = rid or self.id
        assert group not in self.replica_ids, (group, self.replica_ids)
        assert incarnation_of(rid) > self.tombstones.get(group, -1), (rid, self.tombstones)
        self.replica_ids[group] = rid
        raft = RaftState(
            self.make_config(rid),
            random.Random(sim_rng.random()),
            initial_voters=initial_voters,
        )
        r = Replica(self, group, raft, kv.KVStateMachine(sessions_max=self.options.sessions_max))
        self.replicas[group] = r
        self.worker_disk(group).group(group)  # the replica exists on disk from now on
        return r

    def restart_replica(self, group: int, sim_rng: random.Random, counters=None) -> Replica:
        gd = self.worker_disk(group).group(group)
        # The worker's recovery (storage/recovery.py): finish what a crash
        # inside a round left, durably; the core refuses anything else.
        meta = gd.snapshot.meta if gd.snapshot is not None else None
        hs, entries, repaired = follow_snapshot(meta, gd.hard_state, list(gd.entries))
        if reset_needed(meta, gd.base, entries):
            assert meta is not None
            gd.apply(("base", meta.index, meta.term))
            repaired = repaired or "reset"
        if repaired is not None:
            gd.hard_state, gd.entries = hs, entries
            if counters is not None:
                counters["recovery_repairs"] += 1
        raft = RaftState(
            self.make_config(self.replica_ids[group]),
            random.Random(sim_rng.random()),
            hard_state=gd.hard_state,
            snapshot=gd.snapshot,
            entries=list(gd.entries),
            group=group,
        )
        sm = kv.KVStateMachine(sessions_max=self.options.sessions_max)
        if gd.snapshot is not None:
            sm.restore(gd.snapshot.data)
        r = Replica(self, group, raft, sm)
        self.replicas[group] = r
        return r

    def crash_worker(self, worker: int, counters, torn_rng: random.Random | None = None) -> list[int]:
        """Lose the worker's memory and its unsynced writes (with `torn_rng`,
        a torn write keeps a prefix of them); return its groups."""
        if self.disks[worker].crash(torn_rng):
            counters["torn_writes"] += 1
        # A paused process that crashes loses its backlog with its memory.
        self.paused_until.pop(worker, None)
        if None in self.paused_until:
            self.paused_until.clear()
        self.backlog_requests = [b for b in self.backlog_requests if b[0] not in (worker, None)]
        self.backlog_messages = [b for b in self.backlog_messages if b[0] not in (worker, None)]
        lost = [g for g in self.replicas if self.worker_of(g) == worker]
        for g in lost:
            counters.update(self.replicas[g].raft.counters)
            del self.replicas[g]
        return lost

