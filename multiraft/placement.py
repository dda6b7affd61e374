"""Placement planning and routing-table merging: pure functions, no I/O.

Cluster layout (every node computes the same, from the same --peers):
    nodes are sorted by node id (plain string order); group g (0 .. G-1) has
    the R replicas ``nodes[(g + k) % N] for k in range(R)``.
Node layout: the groups a node hosts, in increasing order, are dealt to its W
    workers round-robin (group number i of the node's list goes to worker
    i % W), so the workers' loads differ by at most one group. The result is
    persisted (placement.json) and read back on restart, never recomputed:
    a later issue moves groups between workers.

The routing table and the admin's cluster status are merged here from what a
coordinator knows about each node (its "view", see `NodeView` below), so that
the merge rules can be tested without processes:

- a node is *up* when its coordinator answered the last poll;
- a group's leader is read from the replica status with the highest term
  (a replica that says it is the leader wins a tie); a leader on a node known
  to be down is reported as None;
- a replica is listed in the table once its node's placement is known.

Layering (DESIGN §3): stdlib, attrs, the core and multiraft.sharding only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from multiraft.sharding import KEY_HASH_NAME

__all__ = [
    "PLACEMENT_FORMAT",
    "Placement",
    "PlacementError",
    "group_replicas",
    "hosted_groups",
    "assign_workers",
    "leader_of",
    "merge_routing",
    "merge_cluster_status",
]

PLACEMENT_FORMAT = 1


class PlacementError(ValueError):
    """A placement document or a plan request that does not make sense."""


def group_replicas(node_ids: Iterable[str], groups: int, replicas: int) -> dict[int, list[str]]:
    """{g: [node ids]}: group g's replicas are nodes[(g + k) % N], k < R."""
    nodes = sorted(node_ids)
    n = len(nodes)
    if len(set(nodes)) != n:
        raise PlacementError("duplicate node ids")
    if n == 0:
        raise PlacementError("a cluster needs at least one node")
    if type(groups) is not int or groups < 1:
        raise PlacementError(f"groups must be an int >= 1, not {groups!r}")
    if type(replicas) is not int or not 1 <= replicas <= n:
        raise PlacementError(f"replicas must be an int in 1..{n}, not {replicas!r}")
    return {g: [nodes[(g + k) % n] for k in range(replicas)] for g in range(groups)}


def hosted_groups(node_id: str, plan: Mapping[int, Sequence[str]]) -> list[int]:
    """The groups with a replica on `node_id`, in increasing order."""
    return sorted(g for g, nodes in plan.items() if node_id in nodes)


def assign_workers(groups: Iterable[int], workers: int) -> dict[int, int]:
    """{g: worker index}: the sorted groups dealt round-robin to `workers` workers."""
    if type(workers) is not int or workers < 1:
        raise PlacementError(f"workers must be an int >= 1, not {workers!r}")
    return {g: i % workers for i, g in enumerate(sorted(groups))}


@attrs.frozen
class Placement:
    """This node's replicas and which worker hosts each one."""

    node_id: str
    workers: int
    groups_total: int
    # g -> worker index, for the groups this node hosts
    group_worker: Mapping[int, int]
    # g -> initial voters (node ids), for the groups this node hosts
    group_voters: Mapping[int, Sequence[str]]

    @classmethod
    def plan(
        cls, node_id: str, node_ids: Iterable[str], groups: int, replicas: int, workers: int
    ) -> "Placement":
        full = group_replicas(node_ids, groups, replicas)
        if node_id not in {n for ns in full.values() for n in ns} and node_id not in set(node_ids):
            raise PlacementError(f"node {node_id} is not in the cluster")
        mine = hosted_groups(node_id, full)
        return cls(
            node_id=node_id,
            workers=workers,
            groups_total=groups,
            group_worker=assign_workers(mine, workers),
            group_voters={g: list(full[g]) for g in mine},
        )

    def worker_groups(self, index: int) -> dict[int, list[str]]:
        """{g: initial voters} for the groups worker `index` hosts."""
        return {g: list(self.group_voters[g]) for g, w in sorted(self.group_worker.items()) if w == index}

    def to_plain(self) -> dict:
        return {
            "format": PLACEMENT_FORMAT,
            "node_id": self.node_id,
            "workers": self.workers,
            "groups_total": self.groups_total,
            "groups": {
                str(g): {"worker": w, "voters": list(self.group_voters[g])}
                for g, w in sorted(self.group_worker.items())
            },
        }

    @classmethod
    def from_plain(cls, doc: Any) -> "Placement":
        try:
            if doc["format"] != PLACEMENT_FORMAT:
                raise PlacementError(f"unsupported placement format {doc['format']!r}")
            workers = doc["workers"]
            total = doc["groups_total"]
            group_worker: dict[int, int] = {}
            voters: dict[int, list[str]] = {}
            for key, item in doc["groups"].items():
                g = int(key)
                w = item["worker"]
                if type(w) is not int or not 0 <= w < workers or not 0 <= g < total:
                    raise PlacementError(f"bad placement of group {key}")
                vs = item["voters"]
                if not isinstance(vs, list) or not all(isinstance(v, str) for v in vs):
                    raise PlacementError(f"bad voters of group {key}")
                group_worker[g] = w
                voters[g] = list(vs)
            return cls(
                node_id=str(doc["node_id"]),
                workers=int(workers),
                groups_total=int(total),
                group_worker=group_worker,
                group_voters=voters,
            )
        except PlacementError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PlacementError(f"malformed placement document: {exc!r}") from None


# ---------------------------------------------------------------------------
# Merging views into the routing table and the cluster status
#
# A NodeView is a plain dict:
#   {"address": "h:p", "up": bool,
#    "workers": [{"raft_url", "client_address", "up", ...}, ...] or [],
#    "groups": {g: worker_index} or None (placement not known yet),
#    "status": {g: group status} (may be partial or empty)}


def leader_of(statuses: Sequence[tuple[str, Mapping[str, Any]]], up: Mapping[str, bool]) -> tuple[str | None, int]:
    """(leader, term) from (node, group status) pairs of one group's replicas."""
    best = None
    best_key = None
    for _node, st in statuses:
        try:
            key = (int(st.get("term", 0)), st.get("role") == "leader")
        except (TypeError, ValueError):
            continue
        if best_key is None or key > best_key:
            best, best_key = st, key
    if best is None:
        return None, 0
    leader = best.get("leader")
    if not isinstance(leader, str) or not up.get(leader, False):
        leader = None
    return leader, best_key[0]


def _replica_statuses(
    g: int, nodes: Sequence[str], views: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, Mapping[str, Any]]]:
    out = []
    for node in nodes:
        view = views.get(node)
        if not view or not view.get("up"):
            continue
        st = (view.get("status") or {}).get(g)
        if isinstance(st, Mapping):
            out.append((node, st))
    return out


def merge_routing(
    version: int,
    groups_total: int,
    plan: Mapping[int, Sequence[str]],
    views: Mapping[str, Mapping[str, Any]],
) -> dict:
    """The routing table (multiraft.protocol) from the views of every node."""
    up = {n: bool(v.get("up")) for n, v in views.items()}
    nodes = {}
    for n in sorted(views):
        v = views[n]
        nodes[n] = {
            "address": v.get("address"),
            "up": up[n],
            "workers": [
                {
                    "raft_url": w.get("raft_url"),
                    "client_address": w.get("client_address"),
                    "up": bool(w.get("up")) and up[n],
                }
                for w in (v.get("workers") or [])
            ],
        }
    groups = {}
    for g in range(groups_total):
        replicas_nodes = plan.get(g, ())
        replicas = {}
        for n in replicas_nodes:
            placed = (views.get(n) or {}).get("groups")
            if placed is not None and g in placed:
                replicas[n] = placed[g]
        leader, term = leader_of(_replica_statuses(g, replicas_nodes, views), up)
        groups[g] = {"replicas": replicas, "leader": leader, "term": term}
    return {
        "version": version,
        "groups_total": groups_total,
        "key_hash": KEY_HASH_NAME,
        "nodes": nodes,
        "groups": groups,
    }


def merge_cluster_status(
    groups_total: int,
    plan: Mapping[int, Sequence[str]],
    views: Mapping[str, Mapping[str, Any]],
) -> dict:
    """The admin's view: {"nodes": [...], "groups": [...]} (docs/operations.md)."""
    up = {n: bool(v.get("up")) for n, v in views.items()}
    nodes = []
    for n in sorted(views):
        v = views[n]
        nodes.append(
            {
                "id": n,
                "address": v.get("address"),
                "up": up[n],
                "workers": [
                    {
                        "index": i,
                        "up": bool(w.get("up")) and up[n],
                        "pid": w.get("pid"),
                        "restarts": w.get("restarts", 0),
                        "raft_url": w.get("raft_url"),
                        "client_address": w.get("client_address"),
                        "groups": w.get("groups"),
                    }
                    for i, w in enumerate(v.get("workers") or [])
                ],
            }
        )
    groups = []
    for g in range(groups_total):
        replicas_nodes = sorted(plan.get(g, ()))
        statuses = _replica_statuses(g, replicas_nodes, views)
        leader, term = leader_of(statuses, up)
        by_node = dict(statuses)
        main = by_node.get(leader) if leader else None
        if main is None and statuses:
            main = max((st for _, st in statuses), key=lambda st: (st.get("term", 0), st.get("commit", 0)))
        main = main or {}
        replicas = []
        for n in replicas_nodes:
            st = by_node.get(n)
            placed = (views.get(n) or {}).get("groups") or {}
            replicas.append(
                {
                    "node": n,
                    "worker": placed.get(g),
                    "up": up.get(n, False),
                    "role": st.get("role") if st else None,
                    "term": st.get("term") if st else None,
                    "commit": st.get("commit") if st else None,
                    "applied": st.get("applied") if st else None,
                    "last_index": st.get("last_index") if st else None,
                    "keys": st.get("keys") if st else None,
                }
            )
        groups.append(
            {
                "id": g,
                "leader": leader,
                "term": term,
                "commit": main.get("commit", 0),
                "applied": main.get("applied", 0),
                "voters": list(main.get("voters") or replicas_nodes),
                "learners": list(main.get("learners") or []),
                "voters_outgoing": list(main.get("voters_outgoing") or []),
                "replicas": replicas,
            }
        )
    return {"nodes": nodes, "groups": groups}
