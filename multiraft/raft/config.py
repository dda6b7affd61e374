"""Options of one group's Raft, validated at construction."""

from __future__ import annotations

import attrs

from .types import NodeId, ReadOnlyOption


def _positive(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen
class Config:
    id: NodeId
    # A follower that hears nothing for a random time in
    # [election_tick, 2 * election_tick) ticks campaigns (§5.2).
    election_tick: int = attrs.field(default=10, validator=_positive)
    heartbeat_tick: int = attrs.field(default=1, validator=_positive)
    # Pre-Vote (thesis §9.6): a node first asks whether it could win, without
    # raising its term, so a partitioned node cannot disrupt a healthy leader.
    pre_vote: bool = True
    # CheckQuorum (thesis §6.2): a leader that has not heard from a quorum in an
    # election timeout steps down. Also enables leader stickiness: votes are
    # refused while a live leader is known.
    check_quorum: bool = True
    read_only: ReadOnlyOption = ReadOnlyOption.SAFE
    # Lease length for LEASE_BASED reads, counted from the start of the last
    # heartbeat round a quorum acknowledged. Must be shorter than the minimum
    # election timeout; the margin absorbs clock-rate drift between nodes.
    lease_ticks: int | None = None
    # Lease length in the unit of the `now` the driver passes to tick(),
    # set_time() and read_index() (the core never reads a clock): at most
    # election timeout - max clock drift - one tick. Set by every driver that
    # has a clock (the worker, the simulator): the lease then runs in the
    # driver's real time, so a process that stalls (GC, SIGSTOP, a long apply)
    # cannot wake up believing in a lease its ticks have not caught up with.
    # None: the lease is counted in ticks (lease_ticks), for clockless tests.
    lease_duration: float | None = None
    inflight_msgs_max: int = attrs.field(default=256, validator=_positive)
    inflight_bytes_max: int = attrs.field(default=8 << 20, validator=_positive)
    msg_size_bytes_max: int = attrs.field(default=1 << 20, validator=_positive)
    committed_size_per_ready_bytes_max: int = attrs.field(default=8 << 20, validator=_positive)
    # A leader refuses proposals (Busy) once this many bytes wait for commit.
    uncommitted_size_bytes_max: int = attrs.field(default=64 << 20, validator=_positive)
    snapshot_chunk_bytes_max: int = attrs.field(default=1 << 20, validator=_positive)
    read_requests_max: int = attrs.field(default=10_000, validator=_positive)
    # A follower in SNAPSHOT state that never answers is probed again after this.
    snapshot_timeout_ticks: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_tick >= self.election_tick:
            raise ValueError("heartbeat_tick must be smaller than election_tick")
        if self.read_only == ReadOnlyOption.LEASE_BASED and not self.check_quorum:
            raise ValueError("LEASE_BASED reads require check_quorum")
        if self.lease_ticks is not None and not 0 < self.lease_ticks < self.election_tick:
            raise ValueError("lease_ticks must be in (0, election_tick)")
        if self.lease_duration is not None and not self.lease_duration > 0:
            raise ValueError(f"lease_duration must be > 0, got {self.lease_duration}")

    @property
    def effective_lease_ticks(self) -> int:
        if self.lease_ticks is not None:
            return self.lease_ticks
        return max(1, self.election_tick - 2)

    @property
    def effective_snapshot_timeout_ticks(self) -> int:
        return self.snapshot_timeout_ticks or 2 * self.election_tick
