"""The plain values that flow in and out of one group's Raft.

Hot-path values (Entry, HardState, Message) are NamedTuples: they are cheap to
create, immutable, and cbor2 encodes them as plain arrays with no hook. Rarer,
richer values (ConfState, SnapshotMeta, Ready) are attrs classes.

Node ids are short strings ("n1"). Indexes and terms are ints >= 0; index 0 and
term 0 mean "nothing", so the first real entry has index 1.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, NamedTuple

import attrs

NodeId = str


class EntryType(enum.IntEnum):
    NORMAL = 0
    # data is a ConfChange encoded by multiraft.raft.confchange.encode_conf_change.
    CONF_CHANGE = 1


# What flow control and batching count per entry besides its payload.
ENTRY_OVERHEAD_BYTES = 24


class Entry(NamedTuple):
    term: int
    index: int  # type: ignore[assignment]  # shadows tuple.index() on purpose: the name raft-lite and the wire use
    type: int  # an EntryType value; a plain int on the wire and on disk
    data: bytes

    def size_bytes(self) -> int:
        # What flow control and batching count: payload plus a fixed header.
        return len(self.data) + ENTRY_OVERHEAD_BYTES


class HardState(NamedTuple):
    """What must be durable before a node answers a vote or an append (§5.1)."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


EMPTY_HARD_STATE = HardState()


@attrs.frozen
class ConfState:
    """The membership of one group.

    Invariants (checked by check_invariants):
    - voters, learners are disjoint; voters_outgoing and learners are disjoint;
    - learners_next is a subset of voters_outgoing (voters being demoted to
      learners, who become learners when the joint config is left);
    - voters_outgoing non-empty <=> the config is joint (thesis §4.3).
    """

    voters: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()
    voters_outgoing: frozenset[NodeId] = frozenset()
    learners_next: frozenset[NodeId] = frozenset()
    auto_leave: bool = False

    @property
    def joint(self) -> bool:
        return bool(self.voters_outgoing)

    def all_nodes(self) -> frozenset[NodeId]:
        return self.voters | self.voters_outgoing | self.learners | self.learners_next

    def all_voters(self) -> frozenset[NodeId]:
        return self.voters | self.voters_outgoing

    def check_invariants(self) -> None:
        assert not (self.voters & self.learners), self
        assert not (self.voters_outgoing & self.learners), self
        assert self.learners_next <= self.voters_outgoing, self
        assert not (self.learners_next & self.learners), self
        if not self.joint:
            assert not self.auto_leave and not self.learners_next, self

    def to_plain(self) -> tuple:
        """A tuple of sorted lists: stable for hashing, JSON and CBOR."""
        return (
            sorted(self.voters),
            sorted(self.learners),
            sorted(self.voters_outgoing),
            sorted(self.learners_next),
            self.auto_leave,
        )

    @classmethod
    def from_plain(cls, plain: Sequence[Any]) -> ConfState:
        voters, learners, outgoing, learners_next, auto_leave = plain
        return cls(
            frozenset(voters),
            frozenset(learners),
            frozenset(outgoing),
            frozenset(learners_next),
            bool(auto_leave),
        )


@attrs.frozen
class SnapshotMeta:
    index: int
    term: int
    conf_state: ConfState


@attrs.frozen
class Snapshot:
    """A state machine image covering every entry up to meta.index."""

    meta: SnapshotMeta
    data: bytes


EMPTY_SNAPSHOT = Snapshot(SnapshotMeta(0, 0, ConfState()), b"")


class MessageType(enum.IntEnum):
    # Local inputs never travel; they exist so tests can read transcripts.
    APPEND = 1  # MsgApp: entries (possibly none) after (index, log_term)
    APPEND_RESPONSE = 2  # MsgAppResp: index = last matching index, or reject + hint
    VOTE = 3  # MsgVote: index/log_term = candidate's last entry
    VOTE_RESPONSE = 4
    PRE_VOTE = 5  # term = the term the candidate *would* use (§9.6 thesis)
    PRE_VOTE_RESPONSE = 6
    HEARTBEAT = 7  # commit = min(follower match, leader commit); context = read round
    HEARTBEAT_RESPONSE = 8
    SNAPSHOT = 9  # one chunk: snapshot meta, offset, data, done
    SNAPSHOT_RESPONSE = 10  # chunk ack or restore result (reject => go back to probe)
    TIMEOUT_NOW = 11  # leader transfer: campaign at once, ignoring the lease
    READ_INDEX = 12  # follower -> leader: please confirm a read index (context)
    READ_INDEX_RESPONSE = 13  # leader -> follower: index to wait for (context)


class Message(NamedTuple):
    """One Raft message. Unused fields keep their defaults.

    `context` carries opaque bytes: the read request id for READ_INDEX traffic and
    the leader's round number for heartbeats. `snapshot` is (SnapshotMeta, offset,
    chunk bytes, done) for SNAPSHOT messages.
    """

    type: int
    frm: NodeId
    to: NodeId
    term: int
    log_term: int = 0
    index: int = 0  # type: ignore[assignment]  # shadows tuple.index() on purpose, as in Entry
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes | int | None = None
    snapshot: tuple | None = None


class StateRole(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@attrs.frozen
class SoftState:
    """Volatile state worth reporting: who leads, and what we are."""

    leader: NodeId | None
    role: StateRole


@attrs.frozen
class ReadState:
    """A read request `context` may be answered once applied >= index (§6.4).

    `lease_expiry` is set on a read the leader confirmed by its lease, not by
    a heartbeat round: the driver must answer it only while its clock (the
    `now` it passes to the core) is below this, and otherwise ask again with
    read_index(context, lease=False). The answer may come long after the
    Ready (an apply batch, an fsync, a stalled process): the lease is judged
    at the moment of answering. In the core's clock unit (ticks when
    Config.lease_duration is None)."""

    index: int
    context: bytes
    lease_expiry: float | None = None


class ReadOnlyOption(enum.Enum):
    # Confirm leadership with a heartbeat round started after the request.
    SAFE = "safe"
    # Trust the leader lease (requires check_quorum). Faster, relies on bounded
    # clock drift between nodes; see Config.lease_ticks.
    LEASE_BASED = "lease"


@attrs.frozen
class Ready:
    """Work the driver must do, in order, then hand back with advance(ready).

    1. Persist `hard_state` (if not None), `entries` (replacing any persisted
       entries at index >= entries[0].index), and `snapshot` (if not None:
       also drop every persisted entry up to snapshot.meta.index and restore the
       state machine from it before applying anything below). Durably if
       `must_sync`.
    2. Send `messages` (these may be sent before step 1 completes: they are a
       leader's appends and heartbeats) and then `messages_after_persist`
       (votes and acknowledgements: only after step 1 is durable).
    3. Apply `committed_entries` in order; answer `read_states` once the applied
       index reaches their index.
    """

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    committed_entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    messages_after_persist: tuple[Message, ...]
    read_states: tuple[ReadState, ...]
    must_sync: bool

    def is_empty(self) -> bool:
        return (
            self.soft_state is None
            and self.hard_state is None
            and not self.entries
            and self.snapshot is None
            and not self.committed_entries
            and not self.messages
            and not self.messages_after_persist
            and not self.read_states
        )
