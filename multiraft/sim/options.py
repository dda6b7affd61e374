"""Swarm-randomised options: each seed draws its own mix of faults and features,
so that across seeds every combination gets exercised (swarm testing)."""

from __future__ import annotations

import random

import attrs

from multiraft import kv


@attrs.define
class SimOptions:
    nodes: int
    workers_per_node: int
    groups: int
    replicas: int
    clients: int
    keys: int
    # The network: per-message loss, duplication, and delay (reordering).
    drop_rate: float
    dup_rate: float
    delay_steps_max: int
    # Faults, as probabilities per step.
    partition_rate: float
    one_way_partition: bool
    crash_rate: float
    worker_crash: bool
    disk_latency_steps_max: int
    # Features.
    pre_vote: bool
    check_quorum: bool
    lease_reads: bool
    follower_reads: float
    membership_rate: float
    transfer_rate: float
    snapshot_interval_entries: int
    compact_lag_entries: int
    cas_fraction: float
    read_fraction: float
    # Delete replicas removed from their group's config (multiraft-admin's
    # drop_replica), so that re-adding a node creates a new incarnation.
    wipe_removed: bool = False
    # Length.
    chaos_steps: int = 6000
    liveness_steps: int = 6000
    steps_per_tick: int = 10
    election_tick: int = 10
    # Per-message chance that a frame is damaged on the way: one bit flipped in
    # its real wire encoding, which the real decoder must reject.
    corrupt_rate: float = 0.0
    # The KV's session table: small values (below the clients' sessions)
    # make Register evict live sessions, so writes meet SessionExpired.
    sessions_max: int = kv.SESSIONS_MAX
    # Crashes inside a persist round (between the snapshot save and the log
    # reset, between the write and the fsync; torn writes), per round with
    # entries (rounds with a snapshot crash far more often).
    midround_crash_rate: float = 0.0
    # A smaller snapshot interval while a group is joint (0: the usual one),
    # so that snapshots are taken and installed with joint configs.
    joint_snapshot_interval_entries: int = 0
    # Process pauses (GC, SIGSTOP, a long synchronous apply): per step, the
    # chance that a node or one worker stops for longer than an election
    # timeout, keeping its memory and a backlog of messages and requests.
    pause_rate: float = 0.0
    # Each node's clock runs at its own rate (and from its own origin) within
    # max_clock_drift_steps per election timeout; the lease allows for that.
    clock_drift: bool = False
    max_clock_drift_steps: int = 10
    # Per-step chance that a client sends a hostile frame (a shared-reference
    # cycle or DAG, deep nesting, a bignum, a tag...; sim/hostile.py) built from
    # a workload request, which the real client-protocol decoder must refuse
    # or decode to plain data.
    hostile_client_rate: float = 0.0

    @classmethod
    def draw(cls, rng: random.Random, chaos_steps: int = 6000) -> SimOptions:
        check_quorum = rng.random() < 0.8
        nodes = rng.choice([3, 3, 4, 5, 5])
        fields = dict(
            nodes=nodes,
            workers_per_node=rng.choice([1, 2]),
            groups=rng.choice([1, 2, 3]),
            replicas=rng.choice([1, 3, 3, 3, min(5, nodes)]),
            clients=rng.choice([2, 4, 6]),
            keys=rng.choice([2, 4, 8]),
            drop_rate=rng.choice([0.0, 0.01, 0.05, 0.15]),
            dup_rate=rng.choice([0.0, 0.01, 0.05]),
            delay_steps_max=rng.choice([1, 3, 10, 30]),
            partition_rate=rng.choice([0.0, 0.0005, 0.002]),
            one_way_partition=rng.random() < 0.4,
            crash_rate=rng.choice([0.0, 0.0003, 0.001]),
            worker_crash=rng.random() < 0.4,
            disk_latency_steps_max=rng.choice([0, 0, 2, 8]),
            pre_vote=rng.random() < 0.8,
            check_quorum=check_quorum,
            lease_reads=check_quorum and rng.random() < 0.5,
            follower_reads=rng.choice([0.0, 0.3]),
            membership_rate=rng.choice([0.0, 0.002, 0.006]),
            transfer_rate=rng.choice([0.0, 0.001, 0.004]),
            snapshot_interval_entries=rng.choice([10, 40, 200]),
            compact_lag_entries=rng.choice([0, 5, 50]),
            cas_fraction=rng.choice([0.0, 0.2, 0.4]),
            read_fraction=rng.choice([0.2, 0.5]),
            wipe_removed=rng.random() < 0.6,
            chaos_steps=chaos_steps,
            corrupt_rate=rng.choice([0.0, 0.0, 0.002, 0.01]),
            midround_crash_rate=rng.choice([0.0, 0.0, 0.0005, 0.002]),
            joint_snapshot_interval_entries=rng.choice([0, 1, 3]),
            pause_rate=rng.choice([0.0, 0.0005, 0.002]),
            clock_drift=rng.random() < 0.5,
            hostile_client_rate=rng.choice([0.0, 0.0, 0.002, 0.01]),
        )
        fields["sessions_max"] = rng.choice([kv.SESSIONS_MAX, kv.SESSIONS_MAX, 2, 3, 4])
        return cls(**fields)

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in attrs.asdict(self).items())
