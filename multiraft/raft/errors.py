"""Typed errors of the core. Each says whose fault it is.

Assertions inside the core catch *our* bugs. These exceptions are for callers:
a client proposing to a follower, an operator asking for an unsafe change.
Bad messages from peers are not errors at all: Raft ignores stale or
nonsensical messages and counts them (RaftState.counters: dropped_malformed,
dropped_stale_term, dropped_unexpected, ...).
"""

from __future__ import annotations


class RaftError(Exception):
    """Base of every error the core raises to its caller."""


class ProposalDropped(RaftError):
    """The proposal was not appended; the client may retry (possibly elsewhere).

    `leader` is a hint: the leader this node believes in, or None.
    """

    def __init__(self, reason: str, leader: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.leader = leader


class NotLeader(ProposalDropped):
    """This node is not the leader: the caller's fault; retry at `leader`."""


class Busy(ProposalDropped):
    """A limit was reached (uncommitted bytes, a transfer in progress): retry later."""


class ConfChangeRejected(RaftError):
    """The membership change is unsafe or malformed: the operator's fault."""


class LogDoesNotFollowSnapshot(RaftError):
    """The durable log does not continue the durable snapshot: the disk's fault
    (a lost or emptied log segment, a snapshot older than the log's compaction,
    a log that conflicts with the snapshot). The core refuses to start from it
    rather than guess; `group` names the group when the driver gave it."""

    def __init__(self, reason: str, group: int | None = None) -> None:
        super().__init__(reason if group is None else f"group {group}: {reason}")
        self.reason = reason
        self.group = group
