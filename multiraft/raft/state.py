"""RaftState: one group's Raft, as a plain object with no I/O (etcd's RawNode).

Inputs: tick(), step(message), propose(data), propose_conf_change(change),
read_index(context), transfer_leader(target). Output: ready() returns the work
to do; the driver does it and hands it back with advance(ready). See
types.Ready for the order the driver must follow.

Section numbers refer to the Raft paper (§) and Ongaro's thesis ("thesis §").
"""

from __future__ import annotations

import collections
import random

import attrs

from . import quorum
from .confchange import (
    LEAVE_JOINT,
    ConfChange,
    add_voter,
    apply_conf_change,
    decode_conf_change,
    encode_conf_change,
)
from .config import Config
from .errors import Busy, ConfChangeRejected, LogDoesNotFollowSnapshot, NotLeader, RaftError
from .log import RaftLog, check_follows_snapshot
from .progress import Inflights, Progress, ProgressState
from .types import (
    ENTRY_OVERHEAD_BYTES,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType as MT,
    NodeId,
    ReadOnlyOption,
    ReadState,
    Ready,
    Snapshot,
    SnapshotMeta,
    SoftState,
    StateRole,
)

# Marks a campaign started by TimeoutNow: voters grant it even inside a lease.
TRANSFER_CONTEXT = b"transfer"

# Messages a node may send before its own Ready is durable (a leader's traffic:
# thesis §10.2.1). Everything else acknowledges state and waits for the fsync.
# Heartbeat and read traffic and pre-votes change no durable state either.
# (When a Ready changes the term or vote, every message waits: see ready().)
_EARLY_TYPES = frozenset(
    {
        MT.APPEND,
        MT.HEARTBEAT,
        MT.SNAPSHOT,
        MT.TIMEOUT_NOW,
        MT.HEARTBEAT_RESPONSE,
        MT.READ_INDEX,
        MT.READ_INDEX_RESPONSE,
        MT.PRE_VOTE,
        MT.PRE_VOTE_RESPONSE,
    }
)


@attrs.define
class _PendingRead:
    context: bytes
    requester: NodeId
    index: int
    round: int  # heartbeat round that must be acknowledged by a quorum
    lease_expiry: float | None = None  # answered by the lease, valid until then


@attrs.define
class _SnapshotAssembly:
    meta: SnapshotMeta
    data: bytearray


class RaftState:
    """The state of one replica of one group."""

    def __init__(
        self,
        config: Config,
        rng: random.Random,
        *,
        hard_state: HardState = HardState(),
        snapshot: Snapshot | None = None,
        entries: list[Entry] | tuple[Entry, ...] = (),
        initial_voters: tuple[NodeId, ...] | None = None,
        group: int | None = None,
    ) -> None:
        """Restart from persisted state, or bootstrap a brand-new group.

        Raises LogDoesNotFollowSnapshot (naming `group`, a label for errors
        only) when the log does not continue the snapshot: the disk's fault.
        The driver first repairs what a crash in the middle of a round leaves
        (log.follow_snapshot); anything still inconsistent is refused here.

        `snapshot` is the latest durable snapshot (its conf_state is the config
        to start from); `entries` the durable log after it. The state machine
        must hold exactly the snapshot's state: committed entries after it are
        handed out again for applying.

        `initial_voters`, for a node of a group's first configuration with an
        empty log: every such node writes the same first entry (index 1, term
        1: a conf change adding every initial voter), so later members learn the
        initial config by replicating the log like any other change.
        """
        self.config = config
        self.id = config.id
        self._rng = rng
        self.log = RaftLog()
        self.term = 0
        self.vote: NodeId | None = None
        self.leader: NodeId | None = None
        self.role = StateRole.FOLLOWER
        self.conf = ConfState()
        self.snapshot: Snapshot | None = None  # the latest, sent to lagging followers
        self.progress: dict[NodeId, Progress] = {}
        self.counters: collections.Counter[str] = collections.Counter()

        self._msgs: list[Message] = []
        self._msgs_after_persist: list[Message] = []
        self._read_states: list[ReadState] = []
        self._prev_hard_state = HardState()
        self._prev_soft_state = SoftState(None, StateRole.FOLLOWER)
        self._ready_outstanding = False

        self._ticks = 0  # ticks since construction: the election clock
        # The driver's clock, as last passed in (never read here): the lease
        # is measured in it when config.lease_duration is set. None until the
        # driver passes a time: no lease before that.
        self._now: float | None = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._randomized_election_timeout = 0
        self._votes: dict[NodeId, bool] = {}
        self._pending_conf_index = 0
        # As leader: the index of the entry we proposed that removes us from
        # the voters (0: none). Invariant: nothing is proposed after it.
        self._removing_self_at = 0
        self._uncommitted_bytes = 0
        self._bcast_pending = False
        self.lead_transferee: NodeId | None = None
        self._transfer_started_this_term = False
        self._campaign_forced = False  # this candidacy came from TimeoutNow
        self._timeout_now_term = 0  # a TimeoutNow of this term awaits an apply

        # ReadIndex state (leader): numbered heartbeat rounds.
        self._round = 0
        self._round_open: int | None = None  # round whose heartbeats are not sent yet
        # When each round's heartbeats were created, by the lease clock
        # (_clock): no later than they were sent, so a lease counted from it
        # ends no later than one counted from the sending.
        self._round_sent_at: dict[int, float] = {}
        self._acked_round: dict[NodeId, int] = {}
        self._pending_reads: collections.deque[_PendingRead] = collections.deque()
        self._reads_waiting_commit: list[tuple[bytes, NodeId, bool]] = []
        self._snap_assembly: _SnapshotAssembly | None = None

        try:
            check_follows_snapshot(snapshot.meta if snapshot is not None else None, hard_state, entries)
        except LogDoesNotFollowSnapshot as exc:
            raise LogDoesNotFollowSnapshot(exc.reason, group) from None
        if snapshot is not None and snapshot.meta.index > 0:
            self.log.restore(snapshot)
            self.log.pending_snapshot = None  # already durable
            self.snapshot = snapshot
            self.conf = snapshot.meta.conf_state
        if snapshot is not None:
            # The snapshot covers these (a log compacted with a lag keeps some).
            entries = [e for e in entries if e.index > snapshot.meta.index]
        if entries:
            self.log.append(list(entries))
            self.log.stable_index = self.log.last_index()
        self.term = hard_state.term
        self.vote = hard_state.vote
        if hard_state.commit:
            self.log.commit_to(min(hard_state.commit, self.log.last_index()))
        self._prev_hard_state = HardState(self.term, self.vote, self.log.committed)

        if initial_voters is not None and self.log.last_index() == 0 and self.term == 0:
            if not initial_voters:
                raise ConfChangeRejected("a group needs at least one initial voter")
            cc = add_voter(*sorted(set(initial_voters)))
            self.log.append([Entry(1, 1, int(EntryType.CONF_CHANGE), encode_conf_change(cc))])
            self.term = 1
            self.log.commit_to(1)
        self._rebuild_progress()
        self._reset_randomized_timeout()
        self.check_invariants()

    # ==== inputs ================================================================

    def set_time(self, now: float) -> None:
        """The driver's monotonic clock reads `now` (in the unit of
        config.lease_duration). A time earlier than one already passed is
        ignored: the core's clock never runs backwards."""
        if self._now is None or now > self._now:
            self._now = now

    def tick(self, now: float | None = None) -> None:
        if now is not None:
            self.set_time(now)
        self._ticks += 1
        if self.role == StateRole.LEADER:
            self._tick_leader()
        else:
            self.election_elapsed += 1
            # The cheap comparison first: an idle follower's tick must cost
            # next to nothing (10,000 groups tick every 100 ms).
            if self.election_elapsed >= self._randomized_election_timeout and self._promotable():
                self.election_elapsed = 0
                self._campaign(pre_vote=self.config.pre_vote, forced=False)

    def propose(self, data: bytes) -> int:
        """Append a normal entry; returns its index. Raises NotLeader or Busy."""
        return self._propose_entries([data], EntryType.NORMAL)

    def propose_many(self, datas: list[bytes]) -> int:
        """Append several entries at once; returns the index of the first."""
        return self._propose_entries(datas, EntryType.NORMAL)

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose a membership change (thesis §4). One at a time per group.

        Raises ConfChangeRejected if the change is unsafe or another change is
        not yet applied.
        """
        self._check_can_propose()
        if self.conf_change_pending:
            raise ConfChangeRejected(
                "another membership change is in progress (not yet applied)"
            )
        apply_conf_change(self.conf, cc)  # validate against the current config
        index = self._propose_entries([encode_conf_change(cc)], EntryType.CONF_CHANGE)
        self._pending_conf_index = index
        if self.id not in apply_conf_change(self.conf, cc).all_voters():  # a joint result keeps us (outgoing)
            self._removing_self_at = index
        return index

    @property
    def conf_change_pending(self) -> bool:
        """A membership change is in the log but not yet applied (as leader:
        no new one may be proposed; the config may be about to change)."""
        return self._pending_conf_index > self.log.applied

    def read_index(self, context: bytes, lease: bool | None = None, now: float | None = None) -> None:
        """Ask for a linearizable read (thesis §6.4). A ReadState with this
        context appears in a later Ready; serve the read once applied >= its
        index. Raises NotLeader on a node that knows no leader, Busy when too
        many reads wait.

        `lease` overrides the configured read mode for this request (on the
        leader only; lease reads need check_quorum). Reads a follower forwards
        always use a heartbeat round. `now`: the driver's clock (as
        set_time); a lease read's ReadState carries its lease_expiry."""
        if now is not None:
            self.set_time(now)
        if self.role == StateRole.LEADER:
            if lease is None:
                lease = self.config.read_only == ReadOnlyOption.LEASE_BASED
            self._leader_read(context, self.id, lease and self.config.check_quorum)
            return
        if self.leader is None:
            raise NotLeader("no known leader", None)
        self._send(Message(MT.READ_INDEX, self.id, self.leader, self.term, context=context))

    def transfer_leader(self, target: NodeId) -> None:
        """Hand leadership to `target` (thesis §3.10): catch it up, then
        TimeoutNow. Proposals are refused meanwhile; gives up after an election
        timeout."""
        if self.role != StateRole.LEADER:
            raise NotLeader("only the leader can transfer leadership", self.leader)
        if target == self.id:
            return
        if target not in self.conf.voters:
            raise RaftError(f"{target} is not a voter of the incoming config")
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self.election_elapsed = 0  # the transfer times out after election_tick
        pr = self.progress[target]
        if pr.match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self._send_append(target, pr)

    def step(self, m: Message) -> None:
        """Process a message from a peer. Stale or nonsensical messages are
        ignored and counted: a peer cannot make the core raise."""
        if m.to != self.id:
            self.counters["dropped_misaddressed"] += 1
            return
        if m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                forced = m.context == TRANSFER_CONTEXT
                if not forced and self._in_lease():
                    # Leader stickiness (thesis §4.2.3): a live leader is known,
                    # so this candidate cannot be needed. Do not even answer.
                    self.counters["votes_ignored_in_lease"] += 1
                    return
            if m.type == MT.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type == MT.PRE_VOTE_RESPONSE and not m.reject:
                pass  # granted pre-votes carry the term we would campaign at
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(m.term, m.frm)
            else:
                rejected_candidacy = (
                    m.type in (MT.VOTE_RESPONSE, MT.PRE_VOTE_RESPONSE)
                    and self.role in (StateRole.CANDIDATE, StateRole.PRE_CANDIDATE)
                )
                self._become_follower(m.term, None)
                if rejected_candidacy:
                    # A voter without a leader is ahead of us: campaign again
                    # at the next tick (safe at any time; only liveness rests
                    # on timeouts). Waiting a whole timeout can lose every
                    # race to a node that keeps campaigning with an old config
                    # that does not name us, rising a term per timeout while
                    # we only learn its term from its rejections (seed 1339).
                    self.election_elapsed = max(0, self._randomized_election_timeout - 1)
        elif m.term < self.term:
            if m.type in (MT.APPEND, MT.HEARTBEAT) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # A stale leader, perhaps cut off while we moved on (e.g. its
                # pre-votes lost). Tell it our term so it steps down; without
                # this it could stay leader forever under CheckQuorum.
                self._send(Message(MT.APPEND_RESPONSE, self.id, m.frm, self.term))
            elif m.type == MT.PRE_VOTE:
                self._send(
                    Message(MT.PRE_VOTE_RESPONSE, self.id, m.frm, self.term, reject=True)
                )
            elif m.type == MT.VOTE:
                # Reject with our term (§5.1), so the candidate catches up.
                # Ignoring it instead can livelock: a candidate that never
                # hears a higher term asks us again at one term more each
                # timeout, while we (campaigning with an old config that
                # does not name it) rise just as fast (simulator seed 1339).
                self._send(Message(MT.VOTE_RESPONSE, self.id, m.frm, self.term, reject=True))
            self.counters["dropped_stale_term"] += 1
            return

        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
            return
        if self.role == StateRole.LEADER:
            self._step_leader(m)
        elif self.role in (StateRole.CANDIDATE, StateRole.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    # ==== output ================================================================

    def has_ready(self) -> bool:
        if self._msgs or self._msgs_after_persist or self._read_states or self._bcast_pending:
            return True
        if self.log.unstable_entries() or self.log.pending_snapshot is not None:
            return True
        if self.log.has_next_committed():
            return True
        # Field by field: called for every group on every round, so build no
        # HardState/SoftState just to compare them.
        hs, ss = self._prev_hard_state, self._prev_soft_state
        return (
            self.term != hs.term
            or self.vote != hs.vote
            or self.log.committed != hs.commit
            or self.leader != ss.leader
            or self.role != ss.role
        )

    def ready(self) -> Ready:
        assert not self._ready_outstanding, "advance() the previous Ready first"
        if self._bcast_pending:
            self._bcast_pending = False
            if self.role == StateRole.LEADER:
                self._bcast_append()
        soft = self._soft_state()
        hard = self._hard_state()
        entries = tuple(self.log.unstable_entries())
        snapshot = self.log.pending_snapshot
        committed = tuple(
            self.log.next_committed(self.config.committed_size_per_ready_bytes_max)
        )
        term_or_vote_changed = (
            hard.term != self._prev_hard_state.term or hard.vote != self._prev_hard_state.vote
        )
        if term_or_vote_changed:
            # A leader elected within this Ready (a single voter wins at
            # once) must not speak before its term and vote are durable
            # (§5.1): after a crash it could win the same term again and
            # send different entries at the same indexes.
            early_msgs: tuple[Message, ...] = ()
            late_msgs = tuple(self._msgs) + tuple(self._msgs_after_persist)
        else:
            early: list[Message] = []
            late: list[Message] = []
            for m in self._msgs:
                (early if m.type in _EARLY_TYPES else late).append(m)
            early_msgs = tuple(early)
            late_msgs = tuple(late) + tuple(self._msgs_after_persist)
        rd = Ready(
            soft_state=soft if soft != self._prev_soft_state else None,
            hard_state=hard if hard != self._prev_hard_state else None,
            entries=entries,
            snapshot=snapshot,
            committed_entries=committed,
            messages=early_msgs,
            messages_after_persist=late_msgs,
            read_states=tuple(self._read_states),
            must_sync=bool(entries or snapshot is not None or term_or_vote_changed),
        )
        self._msgs = []
        self._msgs_after_persist = []
        self._read_states = []
        self._round_open = None  # those heartbeats leave now: later reads need a new round
        self._prev_soft_state = soft
        self._prev_hard_state = hard
        if committed:
            self.log.applying = committed[-1].index
        self._ready_outstanding = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied everything in `rd`."""
        assert self._ready_outstanding
        self._ready_outstanding = False
        if rd.snapshot is not None and self.log.pending_snapshot is rd.snapshot:
            self.log.pending_snapshot = None
        # A snapshot restored by a step() after ready() supersedes this Ready's
        # committed entries: the next Ready restores the state machine.
        restored_since = self.log.pending_snapshot is not None
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
            if self.role == StateRole.LEADER:
                # The leader counts itself only once its own copy is durable.
                self.progress[self.id].maybe_update(self.log.stable_index)
                if self._maybe_commit():
                    self._bcast_pending = True
        if rd.committed_entries and not restored_since:
            for e in rd.committed_entries:
                if e.type == EntryType.CONF_CHANGE:
                    self._apply_conf_entry(e)
            self.log.applied_to(rd.committed_entries[-1].index)
            if self.role == StateRole.LEADER:
                self._maybe_auto_leave_joint()
        if self._timeout_now_term:
            if self._timeout_now_term != self.term or self.role != StateRole.FOLLOWER:
                self._timeout_now_term = 0
            elif self._promotable():
                self._timeout_now_term = 0
                self.counters["timeout_now_received"] += 1
                self._campaign(pre_vote=False, forced=True)
        self.check_invariants()

    def create_snapshot(self, data: bytes, compact_lag_entries: int = 0) -> Snapshot:
        """Record a state machine image taken at the applied index, and compact
        the log up to it, keeping `compact_lag_entries` entries so that slightly
        lagging followers still catch up from the log."""
        index = self.log.applied
        term = self.log.term(index)
        assert term is not None
        snap = Snapshot(SnapshotMeta(index, term, self.conf), data)
        self.snapshot = snap
        self.log.compact(max(self.log.snapshot_index, index - compact_lag_entries))
        return snap

    # ==== reporting =============================================================

    def status(self) -> dict:
        return {
            "id": self.id,
            "term": self.term,
            "vote": self.vote,
            "leader": self.leader,
            "role": self.role.name.lower(),
            "commit": self.log.committed,
            "applied": self.log.applied,
            "last_index": self.log.last_index(),
            "snapshot_index": self.log.snapshot_index,
            "voters": sorted(self.conf.voters),
            "learners": sorted(self.conf.learners | self.conf.learners_next),
            "voters_outgoing": sorted(self.conf.voters_outgoing),
            "progress": {
                n: {"match": p.match, "next": p.next_index, "state": p.state.name.lower()}
                for n, p in self.progress.items()
            }
            if self.role == StateRole.LEADER
            else {},
        }

    def check_invariants(self) -> None:
        self.log.check_invariants()
        self.conf.check_invariants()
        assert self.log.last_term() <= self.term, (self.log.last_term(), self.term)
        if self._removing_self_at:
            assert self.role == StateRole.LEADER and self.log.last_index() == self._removing_self_at, (
                self._removing_self_at, self.log.last_index())
        if self.role == StateRole.LEADER:
            assert self.leader == self.id
            assert self.vote == self.id, (self.vote, self.id)
            for node, pr in self.progress.items():
                pr.check_invariants()
                assert pr.next_index <= self.log.last_index() + 1, (node, pr)
        if self.role in (StateRole.CANDIDATE, StateRole.PRE_CANDIDATE):
            assert self.leader is None

    # ==== roles =================================================================

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.role = StateRole.FOLLOWER
        self.leader = leader
        self._reset_common()

    def _become_pre_candidate(self) -> None:
        # Neither term nor vote changes: a pre-vote round is only a question.
        self.role = StateRole.PRE_CANDIDATE
        self.leader = None
        self._votes = {}
        self.election_elapsed = 0
        self._reset_randomized_timeout()

    def _become_candidate(self) -> None:
        self.term += 1
        self.vote = self.id
        self.role = StateRole.CANDIDATE
        self.leader = None
        self._reset_common()

    def _become_leader(self) -> None:
        self.role = StateRole.LEADER
        self.leader = self.id
        self._reset_common()
        self.counters["elections"] += 1
        if self._campaign_forced:
            self.counters["leader_transfers"] += 1
        for pr in self.progress.values():
            pr.recent_active = True
        # Conf changes proposed by an earlier leader may sit uncommitted in our
        # log: allow no new one until everything up to here is applied.
        self._pending_conf_index = self.log.last_index()
        # A no-op entry of our term: committing it commits everything before
        # (§5.4.2, only current-term entries commit by counting) and lets reads
        # be served (thesis §6.4).
        index = self.log.last_index() + 1
        self.log.append([Entry(self.term, index, int(EntryType.NORMAL), b"")])
        self._uncommitted_bytes += ENTRY_OVERHEAD_BYTES
        self._bcast_pending = True

    def _reset_common(self) -> None:
        self._removing_self_at = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self._votes = {}
        self.lead_transferee = None
        self._transfer_started_this_term = False
        self._uncommitted_bytes = 0
        self._pending_reads.clear()
        self._reads_waiting_commit.clear()
        self._round_open = None
        self._round_sent_at.clear()
        self._acked_round.clear()
        last = self.log.last_index()
        for pr in self.progress.values():
            pr.match = 0
            pr.next_index = last + 1
            pr.state = ProgressState.PROBE
            pr.probe_sent = False
            pr.pending_snapshot = 0
            pr.inflights.reset()
            pr.recent_active = False
        if self.id in self.progress:
            self.progress[self.id].match = self.log.stable_index

    def _reset_randomized_timeout(self) -> None:
        et = self.config.election_tick
        self._randomized_election_timeout = et + self._rng.randrange(et)

    # ==== elections =============================================================

    def _promotable(self) -> bool:
        """May this node campaign? Only voters with no unapplied config."""
        if self.id not in self.conf.all_voters():
            return False
        if self.log.pending_snapshot is not None:
            return False
        # Config changes apply when applied; campaigning on a stale config
        # could count the wrong voters.
        if self.log.committed > self.log.applied:
            lo = self.log.applied + 1
            if lo > self.log.snapshot_index:
                for e in self.log.slice(lo, self.log.committed + 1, 1 << 62):
                    if e.type == EntryType.CONF_CHANGE:
                        return False
        return True

    def _in_lease(self) -> bool:
        """True while this node trusts a live leader (and must refuse votes)."""
        if not self.config.check_quorum:
            return False
        if self._ticks < self.config.election_tick:
            # Just (re)started: we may have acknowledged a leader's heartbeat
            # right before crashing, and that leader may count on us.
            return True
        return self.leader is not None and self.election_elapsed < self.config.election_tick

    def _campaign(self, pre_vote: bool, forced: bool) -> None:
        """Start an election; `forced` (TimeoutNow) asks voters to ignore the
        leader lease."""
        if pre_vote:
            self._become_pre_candidate()
            vote_type, term = MT.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, term = MT.VOTE, self.term
        self._votes[self.id] = True
        self._campaign_forced = forced
        if self._tally() == quorum.VoteResult.WON:
            self._won_poll(vote_type)
            return
        self._campaign_forced = forced
        ctx = TRANSFER_CONTEXT if forced else None
        li, lt = self.log.last_index(), self.log.last_term()
        for node in sorted(self.conf.all_voters()):
            if node != self.id:
                self._send(Message(vote_type, self.id, node, term, lt, li, context=ctx))

    def _won_poll(self, vote_type: int) -> None:
        if vote_type == MT.PRE_VOTE:
            self._campaign(pre_vote=False, forced=False)  # the real election
        else:
            self._become_leader()

    def _tally(self) -> quorum.VoteResult:
        return quorum.joint_vote(self.conf.voters, self.conf.voters_outgoing, self._votes)

    def _handle_vote_request(self, m: Message) -> None:
        resp_type = MT.VOTE_RESPONSE if m.type == MT.VOTE else MT.PRE_VOTE_RESPONSE
        can_vote = (
            self.vote == m.frm
            or (self.vote is None and self.leader is None)
            or (m.type == MT.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A pre-vote answer carries the term asked about, so the asker can
            # tell it apart from answers to older rounds.
            self._send(Message(resp_type, self.id, m.frm, m.term))
            if m.type == MT.VOTE:
                self.vote = m.frm  # persisted before the response leaves (Ready)
                self.election_elapsed = 0
        else:
            if m.type == MT.PRE_VOTE:
                self.counters["prevote_rejections"] += 1
            self._send(Message(resp_type, self.id, m.frm, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        expected = MT.PRE_VOTE_RESPONSE if self.role == StateRole.PRE_CANDIDATE else MT.VOTE_RESPONSE
        if m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            # A leader exists for our term (§5.2): follow it.
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
        elif m.type == expected:
            if m.type == MT.PRE_VOTE_RESPONSE and not m.reject and m.term != self.term + 1:
                return  # an answer to an older pre-vote round
            self._votes[m.frm] = not m.reject
            result = self._tally()
            if result == quorum.VoteResult.WON:
                self._won_poll(m.type - 1)  # response type - 1 == request type
            elif result == quorum.VoteResult.LOST:
                self._become_follower(self.term, None)
        elif m.type == MT.TIMEOUT_NOW:
            pass  # already campaigning
        else:
            self.counters["dropped_unexpected"] += 1

    # ==== follower ==============================================================

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.APPEND:
            self.election_elapsed = 0
            self.leader = m.frm
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.leader = m.frm
            self.log.commit_to(min(m.commit, self.log.last_index()))
            self._send(Message(MT.HEARTBEAT_RESPONSE, self.id, m.frm, self.term, context=m.context))
        elif t == MT.SNAPSHOT:
            self.election_elapsed = 0
            self.leader = m.frm
            self._handle_snapshot_chunk(m)
        elif t == MT.TIMEOUT_NOW:
            if self._promotable():
                self.counters["timeout_now_received"] += 1
                self._campaign(pre_vote=False, forced=True)
            elif self.log.committed > self.log.applied:
                # Perhaps only a committed conf change is not applied yet (a
                # leader handing off after its own removal commits just that):
                # campaign as soon as advance() has applied it.
                self._timeout_now_term = self.term
        elif t == MT.READ_INDEX_RESPONSE:
            if type(m.context) is not bytes:  # read ids are bytes: a buggy or corrupt peer
                self.counters["dropped_malformed"] += 1
                return
            self._read_states.append(ReadState(m.index, m.context))
        elif t == MT.READ_INDEX:
            self.counters["dropped_unexpected"] += 1  # we are not the leader
        else:
            self.counters["dropped_unexpected"] += 1

    def _handle_append(self, m: Message) -> None:
        ents = m.entries
        if ents and not (
            ents[0].index == m.index + 1
            and ents[-1].index == m.index + len(ents)
            and m.log_term <= ents[0].term
            and ents[-1].term <= m.term
        ):
            self.counters["dropped_malformed"] += 1  # a buggy or corrupt peer
            return
        if m.index < self.log.committed:
            # Everything up to our commit index certainly matches the leader.
            self._send(
                Message(MT.APPEND_RESPONSE, self.id, m.frm, self.term, index=self.log.committed)
            )
            return
        last = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last is not None:
            self._send(Message(MT.APPEND_RESPONSE, self.id, m.frm, self.term, index=last))
            return
        # Fast back-off (§5.3, thesis §5.? optimisation): tell the leader the
        # last index whose term is <= the term it asked about.
        hint = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        hint_term = self.log.term(hint) or 0
        self._send(
            Message(
                MT.APPEND_RESPONSE,
                self.id,
                m.frm,
                self.term,
                log_term=hint_term,
                index=m.index,
                reject=True,
                reject_hint=hint,
            )
        )

    def _handle_snapshot_chunk(self, m: Message) -> None:
        if not isinstance(m.snapshot, tuple) or len(m.snapshot) != 4:
            self.counters["dropped_malformed"] += 1
            return
        meta, offset, chunk, done = m.snapshot
        if not isinstance(meta, SnapshotMeta) or meta.term > m.term or meta.index <= 0:
            self.counters["dropped_malformed"] += 1
            return
        asm = self._snap_assembly
        if offset == 0:
            asm = self._snap_assembly = _SnapshotAssembly(meta, bytearray())
        elif asm is None or asm.meta != meta or offset != len(asm.data):
            self.counters["snapshot_chunks_out_of_order"] += 1
            return  # the leader retries the whole snapshot after a timeout
        asm.data += chunk
        if not done:
            return
        self._snap_assembly = None
        snap = Snapshot(meta, bytes(asm.data))
        if self._restore(snap):
            self.counters["snapshots_installed"] += 1
            index = self.log.last_index()
        else:
            index = self.log.committed
        self._send(Message(MT.APPEND_RESPONSE, self.id, m.frm, self.term, index=index))

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.meta
        if meta.index <= self.log.committed:
            return False
        if self.log.match_term(meta.index, meta.term):
            # We already have that prefix: just learn that it is committed.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snap)
        self.snapshot = snap
        self.conf = meta.conf_state
        self._rebuild_progress()
        return True

    # ==== leader ================================================================

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            if self.config.check_quorum:
                active = {self.id} | {n for n, p in self.progress.items() if p.recent_active}
                for n, p in self.progress.items():
                    if n != self.id:
                        p.recent_active = False
                if not quorum.has_quorum(self.conf.voters, self.conf.voters_outgoing, active):
                    self.counters["checkquorum_stepdowns"] += 1
                    self._become_follower(self.term, None)
                    return
            if self.lead_transferee is not None:
                self.counters["leader_transfers_aborted"] += 1
                self.lead_transferee = None
            if self.id not in self.conf.all_voters():
                self._hand_off_leadership()  # try again, perhaps another voter
        timeout = self.config.effective_snapshot_timeout_ticks
        for pr in self.progress.values():
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_wait_ticks += 1
                if pr.snapshot_wait_ticks >= timeout:
                    pr.become_probe()
        if self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()
        # Normally the leave is proposed as soon as the joint config applies;
        # retry here in case a leader transfer was pending at that moment.
        self._maybe_auto_leave_joint()

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.READ_INDEX:
            if not isinstance(m.context, bytes):
                self.counters["dropped_malformed"] += 1
                return
            try:
                self._leader_read(m.context, m.frm)
            except Busy:
                self.counters["reads_dropped_busy"] += 1
            return
        pr = self.progress.get(m.frm)
        if pr is None:
            self.counters["dropped_unknown_peer"] += 1
            return
        if t == MT.APPEND_RESPONSE:
            pr.recent_active = True
            self._handle_append_response(m, pr)
        elif t == MT.HEARTBEAT_RESPONSE:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first()
            if isinstance(m.context, int) and m.context > self._acked_round.get(m.frm, 0):
                self._acked_round[m.frm] = m.context
                self._confirm_reads()
            if pr.match < self.log.last_index():
                # Even with nothing new to send (an append was lost in
                # REPLICATE), an empty append makes the follower reject and
                # us fall back to probing: without it a lost append stalls
                # the follower until the next proposal.
                self._send_append(m.frm, pr, send_empty=True)
        else:
            self.counters["dropped_unexpected"] += 1

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.index > self.log.last_index():
            self.counters["dropped_malformed"] += 1  # acks what we never sent
            return
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decrease_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm, pr, send_empty=True)
            return
        if not pr.maybe_update(m.index):
            return  # a duplicate or reordered acknowledgement
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT:
            if pr.match >= pr.pending_snapshot:
                pr.become_replicate()
        else:
            pr.inflights.free_to(m.index)
        if self._maybe_commit():
            self._bcast_pending = True  # ready() tells every follower at once
        else:
            self._send_appends(m.frm, pr)
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.frm)

    def _maybe_commit(self) -> bool:
        acked = {n: p.match for n, p in self.progress.items()}
        index = quorum.joint_index(self.conf.voters, self.conf.voters_outgoing, acked)
        if index <= self.log.committed:
            return False
        # Only entries of the current term commit by counting replicas (§5.4.2).
        if self.log.term(index) != self.term:
            return False
        first_commit_in_term = self.log.term(self.log.committed) != self.term
        old = self.log.committed
        self.log.commit_to(index)
        if old + 1 > self.log.snapshot_index:
            self._uncommitted_bytes -= self.log.size_bytes(old + 1, index + 1)
        self._uncommitted_bytes = max(0, self._uncommitted_bytes)
        if first_commit_in_term and self._reads_waiting_commit:
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for ctx, requester, lease in waiting:
                self._leader_read(ctx, requester, lease)
        return True

    def _check_can_propose(self) -> None:
        if self.role != StateRole.LEADER:
            raise NotLeader("not the leader", self.leader)
        if self.lead_transferee is not None:
            raise Busy("leadership transfer in progress", self.lead_transferee)
        if self._removing_self_at:
            # Nothing may follow the entry that removes us (thesis §4.2.2):
            # the voters that remain have that entry (it commits with them),
            # but not necessarily what we appended after it, and if our
            # hand-off then fails (we crash or lose our quorum), a voter that
            # still counts us in its joint config needs our vote, which our
            # longer log would refuse: no one could ever be elected.
            raise Busy("this leader is leaving the group: leadership is being handed off", None)

    def _propose_entries(self, datas: list[bytes], entry_type: int, internal: bool = False) -> int:
        """Append entries as leader. `internal` proposals (leaving a joint
        config) skip the uncommitted-bytes limit: they must never fail."""
        self._check_can_propose()
        size = sum(map(len, datas)) + ENTRY_OVERHEAD_BYTES * len(datas)
        if (
            not internal
            and self._uncommitted_bytes
            and self._uncommitted_bytes + size > self.config.uncommitted_size_bytes_max
        ):
            raise Busy("too many uncommitted bytes", self.id)
        first = self.log.last_index() + 1
        term, kind = self.term, int(entry_type)
        self.log.append([Entry(term, first + k, kind, d) for k, d in enumerate(datas)])
        self._uncommitted_bytes += size
        self._bcast_pending = True
        return first

    def _bcast_append(self) -> None:
        for node, pr in self.progress.items():
            if node != self.id:
                self._send_append(node, pr, send_empty=True)
                self._send_appends(node, pr)

    def _send_appends(self, to: NodeId, pr: Progress) -> None:
        """Send as many appends as the flow-control window allows."""
        while pr.next_index <= self.log.last_index() and self._send_append(to, pr):
            if pr.state != ProgressState.REPLICATE:
                break

    def _bcast_heartbeat(self) -> None:
        self._round += 1
        starts = self._round_sent_at
        now = self._clock()
        if now is not None:
            starts[self._round] = now
            # Rounds older than the lease can never make a lease valid again,
            # and reads only compare round numbers: forget them (oldest
            # first, since the dict is in round order).
            cutoff = now - self._lease_length() - 1
            while starts:
                first = next(iter(starts))
                if starts[first] >= cutoff:
                    break
                del starts[first]
        self._round_open = self._round
        for node, pr in self.progress.items():
            if node != self.id:
                commit = min(pr.match, self.log.committed)
                self._send(
                    Message(MT.HEARTBEAT, self.id, node, self.term, commit=commit, context=self._round)
                )

    def _send_append(self, to: NodeId, pr: Progress, send_empty: bool = False) -> bool:
        """Send what `to` needs next; False if nothing was sent."""
        if pr.is_paused():
            return False
        prev = pr.next_index - 1
        prev_term = self.log.term(prev)
        if prev_term is None or prev < self.log.snapshot_index:
            return self._send_snapshot(to, pr)
        entries: list[Entry] = []
        if pr.next_index <= self.log.last_index():
            entries = self.log.slice(pr.next_index, self.log.last_index() + 1, self.config.msg_size_bytes_max)
        if not entries and not send_empty and pr.state == ProgressState.REPLICATE:
            return False
        self._send(
            Message(
                MT.APPEND,
                self.id,
                to,
                self.term,
                prev_term,
                prev,
                tuple(entries),
                self.log.committed,
            )
        )
        if pr.state == ProgressState.REPLICATE:
            if entries:
                last = entries[-1].index
                pr.next_index = last + 1
                pr.inflights.add(last, self.log.size_bytes(entries[0].index, last + 1))
        elif pr.state == ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        snap = self.snapshot
        if snap is None or snap.meta.index < self.log.snapshot_index:
            # Our log is compacted past our snapshot: cannot happen (compaction
            # only follows create_snapshot or a restore).
            raise AssertionError("log compacted without a snapshot")
        if not pr.recent_active:
            return False  # do not stream a snapshot into the void
        pr.become_snapshot(snap.meta.index)
        chunk = self.config.snapshot_chunk_bytes_max
        data = snap.data
        offsets = range(0, max(len(data), 1), chunk)
        for off in offsets:
            part = data[off : off + chunk]
            done = off + chunk >= len(data)
            self._send(
                Message(MT.SNAPSHOT, self.id, to, self.term, snapshot=(snap.meta, off, part, done))
            )
        self.counters["snapshots_sent"] += 1
        return True

    def _send_timeout_now(self, to: NodeId) -> None:
        # From now on a forced election may happen at any time this term: our
        # lease can no longer be trusted (voters may grant it inside the lease).
        self._transfer_started_this_term = True
        self.counters["timeout_now_sent"] += 1
        self._send(Message(MT.TIMEOUT_NOW, self.id, to, self.term))

    # ==== reads =================================================================

    def _leader_read(self, context: bytes, requester: NodeId, lease: bool = False) -> None:
        if len(self._pending_reads) + len(self._reads_waiting_commit) >= self.config.read_requests_max:
            raise Busy("too many pending reads", self.id)
        if self.log.term(self.log.committed) != self.term:
            # Our commit index may be stale until an entry of our term commits
            # (thesis §6.4 step 1): wait for the no-op.
            self._reads_waiting_commit.append((context, requester, lease))
            return
        index = self.log.committed
        expiry = self._lease_expiry() if lease else None
        if expiry is not None:
            self.counters["lease_reads"] += 1
            self._answer_read(_PendingRead(context, requester, index, 0, expiry))
            return
        if len(self.conf.all_voters()) == 1 and self.id in self.conf.all_voters():
            self.counters["readindex_reads"] += 1
            self._answer_read(_PendingRead(context, requester, index, 0))
            return
        if self._round_open is None:
            # Start a heartbeat round after this request (thesis §6.4 step 2).
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()
        assert self._round_open is not None
        self._pending_reads.append(_PendingRead(context, requester, index, self._round_open))

    def _quorum_round(self) -> int:
        acked = dict(self._acked_round)
        acked[self.id] = self._round
        return quorum.joint_index(self.conf.voters, self.conf.voters_outgoing, acked)

    def _confirm_reads(self) -> None:
        if not self._pending_reads:
            return
        confirmed = self._quorum_round()
        while self._pending_reads and self._pending_reads[0].round <= confirmed:
            self.counters["readindex_reads"] += 1
            self._answer_read(self._pending_reads.popleft())

    def _answer_read(self, r: _PendingRead) -> None:
        if r.requester == self.id:
            self._read_states.append(ReadState(r.index, r.context, r.lease_expiry))
        else:
            self._send(
                Message(MT.READ_INDEX_RESPONSE, self.id, r.requester, self.term, index=r.index, context=r.context)
            )

    def _clock(self) -> float | None:
        """The clock the lease runs on: the driver's (lease_duration set) or
        the tick count."""
        if self.config.lease_duration is None:
            return self._ticks
        return self._now

    def _lease_length(self) -> float:
        d = self.config.lease_duration
        return d if d is not None else self.config.effective_lease_ticks

    def _lease_expiry(self) -> float | None:
        """When the lease ends (by _clock), or None if it is not valid now.
        It runs from the creation of the latest heartbeat round a quorum
        acknowledged: every voter of that quorum refuses votes for an
        election timeout after it heard that round (_in_lease)."""
        if self._transfer_started_this_term or self.lead_transferee is not None:
            return None
        now = self._clock()
        if now is None:
            return None
        confirmed = self._quorum_round()
        start = self._round_sent_at.get(confirmed)
        if start is None:
            return None
        # Forget rounds that can no longer matter.
        for r in [r for r in self._round_sent_at if r < confirmed]:
            del self._round_sent_at[r]
        expiry = start + self._lease_length()
        return expiry if now < expiry else None

    # ==== membership ============================================================

    def _apply_conf_entry(self, e: Entry) -> None:
        try:
            cc = decode_conf_change(e.data)
            new = apply_conf_change(self.conf, cc)
        except ConfChangeRejected:
            # Deterministic on every replica: the same entry is skipped everywhere.
            self.counters["conf_changes_skipped"] += 1
            return
        if self.role == StateRole.LEADER:
            if new.joint and not self.conf.joint:
                self.counters["joint_changes"] += 1
            promoted = (self.conf.learners & new.all_voters())
            self.counters["learners_promoted"] += len(promoted)
        self.conf = new
        self._rebuild_progress()
        if self.role == StateRole.LEADER:
            if self.lead_transferee is not None and self.lead_transferee not in self.conf.voters:
                self.lead_transferee = None
            if self.id not in self.conf.all_voters():
                # Removed from the group (thesis §4.2.2). Stepping down at once
                # can wedge the group: the remaining voters may not know the
                # change committed (they still count us in a joint config) and
                # may lack entries only we have, so no one could be elected.
                # Instead, keep leading (we no longer count in any quorum) until
                # a voter is caught up, and hand leadership to it.
                self._hand_off_leadership()
            # The quorum changed: something may now be committed.
            if self._maybe_commit():
                self._bcast_pending = True

    def _hand_off_leadership(self) -> None:
        """A leader that is no longer a voter transfers to the most caught-up
        voter; proposals are refused meanwhile (the transfer is pending)."""
        voters = sorted(self.conf.voters, key=lambda n: (-self.progress[n].match, n))
        if not voters or self.lead_transferee is not None:
            return
        self.counters["removed_leader_handoffs"] += 1
        target = voters[0]
        self.lead_transferee = target
        self.election_elapsed = 0
        pr = self.progress[target]
        if pr.match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self._send_append(target, pr, send_empty=True)

    def _maybe_auto_leave_joint(self) -> None:
        if (
            self.conf.joint
            and self.conf.auto_leave
            and self.log.applied >= self._pending_conf_index
            and self.lead_transferee is None
        ):
            self._pending_conf_index = self._propose_entries(
                [encode_conf_change(LEAVE_JOINT)], EntryType.CONF_CHANGE, internal=True
            )
            if self.id not in self.conf.voters:  # leaving the joint config removes us
                self._removing_self_at = self._pending_conf_index

    def _rebuild_progress(self) -> None:
        nodes = self.conf.all_nodes()
        if self.role == StateRole.LEADER:
            # A leader removed from the config keeps leading until it has
            # handed off (see _hand_off_leadership); it never counts itself.
            nodes = nodes | {self.id}
        last = self.log.last_index()
        for n in list(self.progress):
            if n not in nodes:
                del self.progress[n]
                self._acked_round.pop(n, None)
        for n in sorted(nodes):  # sorted: set order varies with PYTHONHASHSEED
            pr = self.progress.get(n)
            if pr is None:
                pr = Progress(
                    match=0,
                    next_index=last + 1,
                    inflights=Inflights(self.config.inflight_msgs_max, self.config.inflight_bytes_max),
                    recent_active=True,  # give a new member one timeout to show up
                )
                self.progress[n] = pr
            pr.is_learner = n not in self.conf.all_voters()
        if self.id in self.progress and self.role == StateRole.LEADER:
            self.progress[self.id].match = self.log.stable_index

    # ==== helpers ===============================================================

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role)
