"""One replica of one group inside a worker, and the client requests waiting on it.

Plain objects (no tasks, nothing async): the worker's loops drive them. A
group costs a RaftState, a KVStateMachine and a few empty containers, so that
thousands of mostly idle groups per worker stay cheap (DESIGN §7).
"""

from __future__ import annotations

from typing import Any

from multiraft import kv
from multiraft.raft.state import RaftState
from multiraft.raft.types import NodeId, Snapshot, StateRole
from multiraft.replica import node_of

__all__ = ["Group", "Request", "leader_hint"]


def leader_hint(leader: NodeId | None) -> str | None:
    """A leader's replica id as the node clients and coordinators route to."""
    return None if leader is None else node_of(leader)


def _nodes(rids: frozenset[NodeId]) -> list[str]:
    return sorted(node_of(r) for r in rids)


class Request:
    """A client request in flight: answered exactly once (`done`).

    Writes: `data` (the encoded command) until proposed, then `index`/`term`
    of their entry. Reads: `ctx` (the ReadIndex context) until their ReadState
    arrives, then `index` (the read index to wait for) and, for a read the
    leader confirmed by its lease, `lease_expiry` (the monotonic time after
    which it must not be answered without a heartbeat round).
    """

    __slots__ = ("conn", "req_id", "deadline", "group", "data", "query", "ctx", "index", "lease_expiry", "term", "done")

    def __init__(self, conn: Any, req_id: Any, deadline: float, group: int) -> None:
        self.conn = conn
        self.req_id = req_id
        self.deadline = deadline
        self.group = group
        self.data: bytes = b""
        self.query: kv.Get | kv.Scan | None = None
        self.ctx: bytes = b""
        self.index = -1
        self.lease_expiry: float | None = None
        self.term = 0
        self.done = False


class Group:
    """One replica: the Raft core, its state machine, routes and waiting clients."""

    __slots__ = (
        "gid",
        "raft",
        "kv",
        "peers",
        "proposals",
        "waiters",
        "reads",
        "reads_indexed",
        "reads_term",
        "snapshot_to_save",
        "compact_to",
        "failed",
        "saved_term",
        "saved_vote",
        "peer_incarnations",
    )

    def __init__(self, gid: int, raft: RaftState, sm: kv.KVStateMachine) -> None:
        self.gid = gid
        self.raft = raft
        self.kv = sm
        # node id -> transport address of that node's replica (from routing).
        self.peers: dict[NodeId, str] = {}
        # Writes accepted since the last round, proposed together (propose_many).
        self.proposals: list[Request] = []
        # Proposed writes by log index.
        self.waiters: dict[int, Request] = {}
        # Reads waiting for their ReadState, by context.
        self.reads: dict[bytes, Request] = {}
        # The term in which every read in `reads` was asked (as leader).
        self.reads_term = 0
        # Reads with a read index, waiting for applied >= index.
        self.reads_indexed: list[Request] = []
        # A local snapshot taken but not yet durable, and the log compaction
        # that must follow it (both go into the next persist round).
        self.snapshot_to_save: Snapshot | None = None
        self.compact_to: tuple[int, int] | None = None
        # Set when this replica cannot go on (a corrupt snapshot from a peer):
        # it is then left alone and reported, never driven again.
        self.failed: str | None = None
        # The term and vote last written to the log: a Ready whose hard state
        # changes only the commit index needs no write of its own.
        self.saved_term = 0
        self.saved_vote: NodeId | None = None
        # node -> the incarnation of its current replica of this group, for
        # the peers whose incarnation is above 0 (from routing): a message
        # from an older incarnation of that node's replica is dropped.
        self.peer_incarnations: dict[str, int] = {}

    @property
    def is_leader(self) -> bool:
        return self.raft.role == StateRole.LEADER

    def last_snapshot_index(self) -> int:
        snap = self.raft.snapshot
        return snap.meta.index if snap is not None else 0

    def status(self) -> dict:
        """The group status of multiraft.protocol (plus a few extra fields)."""
        raft = self.raft
        log = raft.log
        conf = raft.conf
        return {
            "role": "failed" if self.failed else raft.role.name.lower(),
            # The control plane reasons in nodes (one replica per node and
            # group): configs are reported by node, the raw ids beside them.
            "leader": leader_hint(raft.leader),
            "replica_id": raft.id,
            "replicas": sorted(conf.all_nodes()),
            "term": raft.term,
            "commit": log.committed,
            "applied": log.applied,
            "last_index": log.last_index(),
            "snapshot_index": self.last_snapshot_index(),
            "voters": _nodes(conf.voters),
            "learners": _nodes(conf.learners | conf.learners_next),
            "voters_outgoing": _nodes(conf.voters_outgoing),
            # A proposed membership change not yet applied (on a leader: the
            # config above may be about to change).
            "conf_change_pending": raft.conf_change_pending,
            "keys": len(self.kv),
            "pending": len(self.proposals) + len(self.waiters) + len(self.reads) + len(self.reads_indexed),
            **({"error": self.failed} if self.failed else {}),
            # the leader's view of every replica: how far its log matches ours
            **(
                {"progress": {node_of(n): p.match for n, p in raft.progress.items()}}
                if raft.role == StateRole.LEADER
                else {}
            ),
        }
