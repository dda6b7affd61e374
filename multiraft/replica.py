"""Replica ids: every incarnation of a group's replica on a node has its own id.

A Raft configuration names replica ids, never bare nodes. The first replica
of group g that node n ever hosts is called plainly ``n`` (incarnation 0);
when that replica is deleted and node n later hosts g again, the new, empty
replica is ``n~1``, then ``n~2`` and so on (etcd's member ids, CockroachDB's
ReplicaID, TiKV's peer id play the same part).

Why: a replica that was removed from a group and deleted must never take
part in that group's elections or quorums again. An empty replica created
under its old id would answer a voter that still holds an old configuration
naming that id ("my log is empty, so yours is at least as up to date") and
could help it win with a log that lacks committed entries. With a new id the
old configurations name a replica that no longer exists anywhere: messages
addressed to it are dropped (and counted) by whoever receives them.

The node that hosts a replica allocates its incarnation and remembers the
highest retired one per group (its tombstone, in placement.json), so that a
restart cannot revive an id. Node ids cannot contain ``~`` (nodeconfig's
node-id pattern), so the split is unambiguous.

Pure and stdlib-only: the simulator, the workers and the control plane share it.
"""

from __future__ import annotations

__all__ = ["SEPARATOR", "ReplicaIdError", "check_replica_id", "incarnation_of", "node_of", "replica_id"]

SEPARATOR = "~"


class ReplicaIdError(ValueError):
    """A replica id that does not have the documented shape (the sender's fault)."""


def replica_id(node: str, incarnation: int) -> str:
    """The id of `node`'s replica number `incarnation` of some group."""
    assert SEPARATOR not in node, node
    assert type(incarnation) is int and incarnation >= 0, incarnation
    return node if incarnation == 0 else f"{node}{SEPARATOR}{incarnation}"


def node_of(rid: str) -> str:
    """The node that hosts (or hosted) replica `rid`."""
    return rid.partition(SEPARATOR)[0]


def incarnation_of(rid: str) -> int:
    """The incarnation number of `rid` (0 for a bare node id)."""
    node, sep, number = rid.partition(SEPARATOR)
    if not sep:
        return 0
    if not number.isdigit() or number.startswith("0") or not node:
        raise ReplicaIdError(f"malformed replica id {rid!r}: expected NODE or NODE~N (N >= 1)")
    return int(number)


def check_replica_id(value: object, node: str | None = None) -> str:
    """`value` if it is a well-formed replica id (of `node`, when given);
    ReplicaIdError otherwise. For ids that arrive from outside: a config,
    a routing table, a control frame, a file."""
    if not isinstance(value, str):
        raise ReplicaIdError(f"a replica id must be a string, not {type(value).__name__}")
    incarnation_of(value)
    if node is not None and node_of(value) != node:
        raise ReplicaIdError(f"{value!r} is not a replica id of node {node}")
    return value
