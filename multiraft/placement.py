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

from multiraft.replica import ReplicaIdError, check_replica_id, incarnation_of, node_of, replica_id
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
    "Refused",
    "majority",
    "NodeState",
    "GroupState",
    "ClusterState",
    "cluster_state_from_status",
    "check_voters_change",
    "check_new_replica",
    "check_transfer",
    "check_not_joint",
    "Move",
    "Transfer",
    "WorkerMove",
    "DropReplica",
    "check_step",
    "apply_step",
    "plan_drain",
    "plan_rebalance",
    "is_balanced",
]

# 2: replica ids and tombstones (multiraft.replica). A format-1 document is
# read as: every placed replica is incarnation 0 (format 1 had only those), and
# every group not placed here may have had one, so incarnation 0 of it counts
# as retired (a later replica of it here is n~1: never a reused id).
PLACEMENT_FORMAT = 2


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
    # g -> this node's replica id of g (multiraft.replica), for the groups it hosts
    group_replica: Mapping[int, str] = attrs.field(factory=dict)
    # g -> the highest incarnation of g this node has retired (deleted): a
    # new replica of g here gets a higher one, so no id is ever reused.
    tombstones: Mapping[int, int] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        assert set(self.group_replica) <= set(self.group_worker), (self.group_replica, self.group_worker)
        for g, rid in self.group_replica.items():
            assert node_of(rid) == self.node_id, rid
            assert incarnation_of(rid) > self.tombstones.get(g, -1), (g, rid, self.tombstones)

    def replica_of(self, g: int) -> str:
        """This node's replica id of group g (placed here)."""
        return self.group_replica.get(g, self.node_id)

    def next_replica_id(self, g: int) -> str:
        """The id a new replica of g on this node gets: one past the tombstone."""
        return replica_id(self.node_id, self.tombstones.get(g, -1) + 1)

    @classmethod
    def plan(
        cls, node_id: str, node_ids: Iterable[str], groups: int, replicas: int, workers: int
    ) -> Placement:
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
            group_replica={g: node_id for g in mine},
        )

    def worker_loads(self) -> list[int]:
        """The number of replicas on each worker."""
        loads = [0] * self.workers
        for w in self.group_worker.values():
            loads[w] += 1
        return loads

    def least_loaded_worker(self) -> int:
        """Where a new replica goes: the worker with the fewest (lowest index on a tie)."""
        loads = self.worker_loads()
        return loads.index(min(loads))

    def with_group(self, g: int, worker: int, voters: Sequence[str] = (), replica: str | None = None) -> Placement:
        """This placement with group g on `worker` as replica `replica` (by
        default the one already placed, else a new id past the tombstone). A
        replica added by a membership change has no initial voters: it starts
        empty and learns everything from its leader."""
        if not 0 <= g < self.groups_total or not 0 <= worker < self.workers:
            raise PlacementError(f"cannot place group {g} on worker {worker}")
        if replica is None:
            replica = self.replica_of(g) if g in self.group_worker else self.next_replica_id(g)
        gw = dict(self.group_worker)
        gv = dict(self.group_voters)
        gr = dict(self.group_replica)
        gw[g] = worker
        gv[g] = list(voters)
        gr[g] = replica
        return attrs.evolve(self, group_worker=gw, group_voters=gv, group_replica=gr)

    def without_group(self, g: int) -> Placement:
        """This placement with g's replica deleted here: its id is retired."""
        gw = {k: v for k, v in self.group_worker.items() if k != g}
        gv = {k: v for k, v in self.group_voters.items() if k != g}
        gr = {k: v for k, v in self.group_replica.items() if k != g}
        tombstones = dict(self.tombstones)
        if g in self.group_worker:
            tombstones[g] = max(tombstones.get(g, -1), incarnation_of(self.replica_of(g)))
        return attrs.evolve(self, group_worker=gw, group_voters=gv, group_replica=gr, tombstones=tombstones)

    def worker_replicas(self, index: int) -> dict[int, str]:
        """{g: this node's replica id} for the groups worker `index` hosts."""
        return {g: self.replica_of(g) for g, w in sorted(self.group_worker.items()) if w == index}

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
                str(g): {"worker": w, "voters": list(self.group_voters[g]), "replica": self.replica_of(g)}
                for g, w in sorted(self.group_worker.items())
            },
            "tombstones": {str(g): t for g, t in sorted(self.tombstones.items())},
        }

    @classmethod
    def from_plain(cls, doc: Any) -> Placement:
        try:
            fmt = doc["format"]
            if fmt not in (1, PLACEMENT_FORMAT):
                raise PlacementError(
                    f"unsupported placement format {fmt!r} (this version reads 1 and {PLACEMENT_FORMAT})"
                )
            node_id = str(doc["node_id"])
            workers = doc["workers"]
            total = doc["groups_total"]
            group_worker: dict[int, int] = {}
            voters: dict[int, list[str]] = {}
            replicas: dict[int, str] = {}
            tombstones: dict[int, int] = {}
            if fmt == 1:
                # See PLACEMENT_FORMAT: incarnation 0 of every group not placed here is retired.
                tombstones = {g: 0 for g in range(int(total)) if str(g) not in doc["groups"]}
            else:
                for key, t in doc["tombstones"].items():
                    if type(t) is not int or t < 0 or not 0 <= int(key) < total:
                        raise PlacementError(f"bad tombstone of group {key}: {t!r}")
                    tombstones[int(key)] = t
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
                try:
                    rid = check_replica_id(item.get("replica", node_id) if fmt == 1 else item["replica"], node_id)
                except ReplicaIdError as exc:
                    raise PlacementError(f"bad replica id of group {key}: {exc}") from None
                if incarnation_of(rid) <= tombstones.get(g, -1):
                    raise PlacementError(f"group {key}: replica {rid} is retired (tombstone {tombstones[g]})")
                replicas[g] = rid
            return cls(
                node_id=node_id,
                workers=int(workers),
                groups_total=int(total),
                group_worker=group_worker,
                group_voters=voters,
                group_replica=replicas,
                tombstones=tombstones,
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


def _placed_nodes(g: int, views: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """{node: worker index} of every node whose placement holds group g."""
    out = {}
    for n in sorted(views):
        placed = views[n].get("groups")
        if placed is not None and g in placed:
            out[n] = placed[g]
    return out


def _config_nodes(statuses: Sequence[tuple[str, Mapping[str, Any]]], leader: str | None) -> list[str]:
    """The nodes of a group's Raft config, from the freshest replica status
    (the leader's if known, else the highest term's)."""
    st = _best_status(statuses, leader)
    if not st:
        return []
    out = set()
    for key in ("voters", "learners", "voters_outgoing"):
        for n in st.get(key) or ():
            if isinstance(n, str):
                out.add(n)
    return sorted(out)


def _best_status(statuses: Sequence[tuple[str, Mapping[str, Any]]], leader: str | None) -> Mapping[str, Any]:
    by_node = dict(statuses)
    main = by_node.get(leader) if leader else None
    if main is None and statuses:
        main = max((st for _, st in statuses), key=lambda st: (st.get("term", 0), st.get("commit", 0)))
    return main or {}


def merge_routing(
    version: int,
    groups_total: int,
    plan: Mapping[int, Sequence[str]],
    views: Mapping[str, Mapping[str, Any]],
) -> dict:
    """The routing table (multiraft.protocol) from the views of every node.

    A group's replicas are the nodes whose placement holds it (a replica
    being added, or not yet deleted after its removal from the Raft config,
    is listed too: its peers must reach it). `plan` (the bootstrap formula)
    is no longer consulted: membership changes move replicas."""
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
        replicas = _placed_nodes(g, views)
        statuses = _replica_statuses(g, list(replicas), views)
        leader, term = leader_of(statuses, up)
        groups[g] = {"replicas": replicas, "leader": leader, "term": term}
        # Each node's current replica id of g (multiraft.replica), as its
        # worker reports it: receivers drop messages from older incarnations.
        rids = {}
        for n, st in statuses:
            try:
                rids[n] = check_replica_id(st.get("replica_id"), n)
            except ReplicaIdError:
                continue  # an older worker, or garbage: no claim about n
        if any(incarnation_of(r) for r in rids.values()):
            groups[g]["replica_ids"] = rids
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
    """The admin's view: {"nodes": [...], "groups": [...]} (docs/operations.md).

    A group's replicas are the nodes of its Raft config (the leader's view)
    and the nodes whose placement holds it. Each replica says what it is in
    the config ("member": voter, learner, outgoing (a voter leaving through a
    joint config) or none (placed but not in the config: being added, or left
    over) and how far it lags behind the leader ("lag": entries, from the
    leader's progress, else from the replica's own applied index). `plan` is
    used only for a group nothing is known about."""
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
        placed = _placed_nodes(g, views)
        candidates = sorted(set(placed) | {n for n in views if (views[n].get("status") or {}).get(g) is not None})
        statuses = _replica_statuses(g, candidates, views)
        leader, term = leader_of(statuses, up)
        main = _best_status(statuses, leader)
        config = _config_nodes(statuses, leader)
        replicas_nodes = sorted(set(placed) | set(config))
        if not replicas_nodes:
            replicas_nodes = sorted(plan.get(g, ()))
        by_node = dict(statuses)
        voters = list(main.get("voters") or ([] if config else replicas_nodes))
        learners = list(main.get("learners") or [])
        outgoing = list(main.get("voters_outgoing") or [])
        progress = main.get("progress") if isinstance(main.get("progress"), Mapping) else {}
        leader_last = main.get("last_index")
        replicas = []
        for n in replicas_nodes:
            st = by_node.get(n)
            if n in voters:
                member = "voter"
            elif n in learners:
                member = "learner"
            elif n in outgoing:
                member = "outgoing"
            else:
                member = "none"
            lag = None
            if isinstance(leader_last, int):
                match = progress.get(n) if progress else None
                if isinstance(match, int):
                    lag = max(0, leader_last - match)
                elif st and isinstance(st.get("applied"), int) and isinstance(main.get("commit"), int):
                    lag = max(0, main["commit"] - st["applied"])
            replicas.append(
                {
                    "node": n,
                    "worker": placed.get(n),
                    "up": up.get(n, False),
                    "member": member,
                    "lag": lag,
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
                "voters": voters,
                "learners": learners,
                "voters_outgoing": outgoing,
                "joint": bool(outgoing),
                "replicas": replicas,
            }
        )
    return {"nodes": nodes, "groups": groups}


# ---------------------------------------------------------------------------
# The membership planner (multiraft-admin): pure, unit-tested without processes
#
# A ClusterState is what the admin knows: each node (up or down, how many
# workers) and each group's Raft config (voters, learners, the outgoing voters
# of a joint config), leader and placement (node -> worker index, the nodes
# that hold the group's data). Steps are checked against the rules below and
# applied to a ClusterState to plan the next one, so that a whole plan is
# checked before anything runs; the executor checks each step again against
# the live cluster just before it runs it.
#
# The rules (each refusal says which one and why):
# - a replica is added only on a node that is a member, up, and holds no
#   replica of the group yet;
# - a change of voters must commit on a live majority of the current voters,
#   and must leave a live majority of the new voters (nodes that are down do
#   not count); a change that removes every voter is refused;
# - nothing is changed while the group is joint (it leaves by itself);
# - leadership goes only to a voter on a node that is up.


class Refused(PlacementError):
    """A change that would break a rule: the message says which and why."""


def majority(n: int) -> int:
    return n // 2 + 1


@attrs.frozen
class NodeState:
    id: str
    up: bool
    workers: int = 1


@attrs.frozen
class GroupState:
    id: int
    voters: frozenset[str]
    learners: frozenset[str] = frozenset()
    outgoing: frozenset[str] = frozenset()  # voters_outgoing: non-empty while joint
    leader: str | None = None
    placed: Mapping[str, int] = attrs.field(factory=dict)  # node -> worker index

    @property
    def joint(self) -> bool:
        return bool(self.outgoing)

    @property
    def members(self) -> frozenset[str]:
        """The nodes of the Raft config."""
        return self.voters | self.learners | self.outgoing

    @property
    def holders(self) -> frozenset[str]:
        """Every node that holds (or is about to hold) a replica."""
        return self.members | frozenset(self.placed)

    def member_kind(self, node: str) -> str:
        if node in self.voters:
            return "voter"
        if node in self.learners:
            return "learner"
        if node in self.outgoing:
            return "outgoing voter"
        return "none"


@attrs.frozen
class ClusterState:
    nodes: Mapping[str, NodeState]
    groups: Mapping[int, GroupState]

    def is_up(self, node: str) -> bool:
        n = self.nodes.get(node)
        return bool(n and n.up)

    def group(self, g: int) -> GroupState:
        try:
            return self.groups[g]
        except KeyError:
            raise Refused(f"there is no group {g} (groups are 0..{len(self.groups) - 1})") from None

    def replica_count(self, node: str) -> int:
        return sum(1 for gs in self.groups.values() if node in gs.holders)

    def leader_count(self, node: str) -> int:
        return sum(1 for gs in self.groups.values() if gs.leader == node)

    def worker_loads(self, node: str) -> list[int]:
        n = self.nodes.get(node)
        loads = [0] * (n.workers if n else 0)
        for gs in self.groups.values():
            w = gs.placed.get(node)
            if w is not None and 0 <= w < len(loads):
                loads[w] += 1
        return loads

    def least_loaded_worker(self, node: str) -> int:
        loads = self.worker_loads(node)
        return loads.index(min(loads)) if loads else 0

    def with_group(self, gs: GroupState) -> ClusterState:
        groups = dict(self.groups)
        groups[gs.id] = gs
        return attrs.evolve(self, groups=groups)


def cluster_state_from_status(doc: Mapping[str, Any]) -> ClusterState:
    """A ClusterState from a cluster_status document (multiraft.protocol)."""
    nodes = {}
    for n in doc.get("nodes") or []:
        nodes[n["id"]] = NodeState(n["id"], bool(n.get("up")), len(n.get("workers") or []) or 1)
    groups = {}
    for g in doc.get("groups") or []:
        placed = {r["node"]: r["worker"] for r in g.get("replicas") or [] if r.get("worker") is not None}
        groups[int(g["id"])] = GroupState(
            int(g["id"]),
            frozenset(g.get("voters") or ()),
            frozenset(g.get("learners") or ()),
            frozenset(g.get("voters_outgoing") or ()),
            g.get("leader"),
            placed,
        )
    return ClusterState(nodes, groups)


# --- the rules -------------------------------------------------------------


def _live(cluster: ClusterState, nodes: Iterable[str]) -> list[str]:
    return sorted(n for n in nodes if cluster.is_up(n))


def _majority_problem(cluster: ClusterState, voters: frozenset[str]) -> str | None:
    live = _live(cluster, voters)
    need = majority(len(voters))
    if len(live) >= need:
        return None
    down = sorted(set(voters) - set(live))
    return (
        f"voters {','.join(sorted(voters))} would have {len(live)} live of {len(voters)} "
        f"(down: {','.join(down)}), fewer than the majority of {need}"
    )


def check_not_joint(gs: GroupState) -> None:
    if gs.joint:
        raise Refused(
            f"group {gs.id} is in a joint config (voters {','.join(sorted(gs.voters))}, outgoing "
            f"{','.join(sorted(gs.outgoing))}): it leaves it by itself; retry in a moment"
        )


def check_voters_change(cluster: ClusterState, g: int, new_voters: Iterable[str]) -> None:
    """A change from the group's voters to `new_voters` (simple or joint)."""
    gs = cluster.group(g)
    new = frozenset(new_voters)
    check_not_joint(gs)
    if not new:
        raise Refused(f"the change would remove the last voter of group {g}")
    if new == gs.voters:
        return
    problem = _majority_problem(cluster, gs.voters)
    if problem:
        raise Refused(f"group {g} has no live majority to commit the change: {problem}")
    problem = _majority_problem(cluster, new)
    if problem:
        raise Refused(f"the change would leave group {g} without a live majority: {problem}")


def check_new_replica(cluster: ClusterState, g: int, node: str) -> None:
    gs = cluster.group(g)
    if node not in cluster.nodes:
        raise Refused(f"node {node} is not a member of the cluster")
    if not cluster.is_up(node):
        raise Refused(f"node {node} is down: a replica cannot be added there")
    if node in gs.members:
        raise Refused(f"node {node} already holds a replica of group {g} (as {gs.member_kind(node)})")


def check_transfer(cluster: ClusterState, g: int, node: str) -> None:
    gs = cluster.group(g)
    if node not in gs.voters:
        raise Refused(f"node {node} is not a voter of group {g} (voters: {','.join(sorted(gs.voters))})")
    if not cluster.is_up(node):
        raise Refused(f"node {node} is down: it cannot lead group {g}")


# --- steps -----------------------------------------------------------------


@attrs.frozen
class Move:
    """Move group's replica from source to target (learner on target, catch
    up, then one joint change {+target, -source}; a learner moves as a learner)."""

    group: int
    source: str
    target: str

    def describe(self) -> str:
        return f"move-replica {self.group} {self.source} {self.target}"


@attrs.frozen
class Transfer:
    group: int
    target: str

    def describe(self) -> str:
        return f"transfer-leader {self.group} {self.target}"


@attrs.frozen
class WorkerMove:
    """Move a replica between two workers of one node (its Raft state moves
    with it: the group does not notice)."""

    node: str
    group: int
    source_worker: int
    target_worker: int

    def describe(self) -> str:
        return f"move group {self.group} on {self.node} from worker {self.source_worker} to {self.target_worker}"


@attrs.frozen
class DropReplica:
    """Delete a replica that is not in the group's config (left over)."""

    group: int
    node: str

    def describe(self) -> str:
        return f"remove-replica {self.group} {self.node}"


Step = Move | Transfer | WorkerMove | DropReplica


def check_step(cluster: ClusterState, step: Step) -> None:
    """Raise Refused if `step` breaks a rule in `cluster`."""
    if isinstance(step, Move):
        gs = cluster.group(step.group)
        check_not_joint(gs)
        if step.source == step.target:
            raise Refused(f"source and target are both {step.source}")
        if step.source not in gs.members:
            raise Refused(f"node {step.source} holds no replica of group {step.group}")
        check_new_replica(cluster, step.group, step.target)
        if step.source in gs.voters:
            check_voters_change(cluster, step.group, (gs.voters - {step.source}) | {step.target})
    elif isinstance(step, Transfer):
        check_not_joint(cluster.group(step.group))
        check_transfer(cluster, step.group, step.target)
    elif isinstance(step, WorkerMove):
        gs = cluster.group(step.group)
        if gs.placed.get(step.node) != step.source_worker:
            raise Refused(f"group {step.group} is not on {step.node}'s worker {step.source_worker}")
        node = cluster.nodes.get(step.node)
        if node is None or not node.up:
            raise Refused(f"node {step.node} is down")
        if not 0 <= step.target_worker < node.workers or step.target_worker == step.source_worker:
            raise Refused(f"node {step.node} has no other worker {step.target_worker}")
    elif isinstance(step, DropReplica):
        gs = cluster.group(step.group)
        if step.node in gs.members:
            raise Refused(f"node {step.node} is still in group {step.group}'s config")
    else:  # pragma: no cover
        raise TypeError(step)


def apply_step(cluster: ClusterState, step: Step) -> ClusterState:
    """The cluster after `step` (which must pass check_step)."""
    if isinstance(step, Move):
        gs = cluster.group(step.group)
        placed = {n: w for n, w in gs.placed.items() if n != step.source}
        placed[step.target] = cluster.least_loaded_worker(step.target)
        if step.source in gs.voters:
            voters = (gs.voters - {step.source}) | {step.target}
            learners = gs.learners - {step.target}
        else:
            voters = gs.voters
            learners = (gs.learners - {step.source}) | {step.target}
        leader = gs.leader
        if leader == step.source:
            rest = sorted(v for v in voters if v != step.target and cluster.is_up(v))
            leader = rest[0] if rest else step.target
        return cluster.with_group(attrs.evolve(gs, voters=voters, learners=learners, leader=leader, placed=placed))
    if isinstance(step, Transfer):
        return cluster.with_group(attrs.evolve(cluster.group(step.group), leader=step.target))
    if isinstance(step, WorkerMove):
        gs = cluster.group(step.group)
        placed = dict(gs.placed)
        placed[step.node] = step.target_worker
        return cluster.with_group(attrs.evolve(gs, placed=placed))
    if isinstance(step, DropReplica):
        gs = cluster.group(step.group)
        placed = {n: w for n, w in gs.placed.items() if n != step.node}
        return cluster.with_group(attrs.evolve(gs, placed=placed))
    raise TypeError(step)  # pragma: no cover


# --- plans -----------------------------------------------------------------


def plan_drain(cluster: ClusterState, node: str) -> list[Step]:
    """Move every replica off `node`, each to the least loaded up node that
    holds none of that group. Refused if some group has nowhere to go."""
    if node not in cluster.nodes:
        raise Refused(f"node {node} is not a member of the cluster")
    steps: list[Step] = []
    state = cluster
    for g in sorted(cluster.groups):
        gs = state.group(g)
        if node not in gs.holders:
            continue
        if node not in gs.members:
            step: Step = DropReplica(g, node)
        else:
            targets = sorted(
                (state.replica_count(n), n)
                for n in state.nodes
                if n != node and state.is_up(n) and n not in gs.holders
            )
            if not targets:
                raise Refused(
                    f"group {g} has nowhere to go: every other node that is up already holds a replica of it "
                    f"(join a node, or remove the replica with remove-replica {g} {node})"
                )
            step = None  # type: ignore[assignment]
            problems = []
            for _count, target in targets:
                candidate = Move(g, node, target)
                try:
                    check_step(state, candidate)
                except Refused as exc:
                    problems.append(str(exc))
                    continue
                step = candidate
                break
            if step is None:
                raise Refused(f"group {g} cannot be moved off {node}: {problems[0]}")
        check_step(state, step)
        steps.append(step)
        state = apply_step(state, step)
    return steps


def _spread(values: Iterable[int]) -> int:
    values = list(values)
    return max(values) - min(values) if values else 0


def plan_rebalance(cluster: ClusterState, *, max_steps: int = 10_000) -> list[Step]:
    """Moves that even out the replicas over the nodes that are up (at most
    one apart), then leader transfers that even out leaders, then worker
    moves that even out each node's workers. Every step passes check_step
    in the state the previous ones leave."""
    steps: list[Step] = []
    state = cluster
    up = sorted(n for n in cluster.nodes if cluster.is_up(n))
    if not up:
        return steps
    # 1. replicas over nodes
    while len(steps) < max_steps:
        counts = {n: state.replica_count(n) for n in up}
        if _spread(counts.values()) <= 1:
            break
        found = None
        for src in sorted(up, key=lambda n: (-counts[n], n)):
            for dst in sorted(up, key=lambda n: (counts[n], n)):
                if counts[src] - counts[dst] <= 1:
                    break
                loads = state.worker_loads(src)
                candidates = []
                for g, gs in sorted(state.groups.items()):
                    if src not in gs.members or dst in gs.holders:
                        continue
                    step = Move(g, src, dst)
                    try:
                        check_step(state, step)
                    except Refused:
                        continue
                    w = gs.placed.get(src)
                    busy = loads[w] if w is not None and 0 <= w < len(loads) else 0
                    candidates.append(((gs.leader == src, -busy, g), step))
                if candidates:
                    found = min(candidates, key=lambda c: c[0])[1]
                    break
            if found is not None:
                break
        if found is None:
            break
        steps.append(found)
        state = apply_step(state, found)
    # 2. leaders over nodes
    for _ in range(2 * len(state.groups) + 1):
        if len(steps) >= max_steps:
            break
        leaders = {n: state.leader_count(n) for n in up}
        found = None
        for src in sorted(up, key=lambda n: (-leaders[n], n)):
            best = None
            for g, gs in sorted(state.groups.items()):
                if gs.leader != src or gs.joint:
                    continue
                for v in sorted(gs.voters):
                    if v == src or v not in leaders or leaders[v] > leaders[src] - 2:
                        continue
                    key = (leaders[v], v, g)
                    if best is None or key < best[0]:
                        best = (key, Transfer(g, v))
            if best is not None:
                found = best[1]
                break
        if found is None:
            break
        check_step(state, found)
        steps.append(found)
        state = apply_step(state, found)
    # 3. workers within each node
    for n in up:
        while len(steps) < max_steps:
            loads = state.worker_loads(n)
            if _spread(loads) <= 1:
                break
            src_w = loads.index(max(loads))
            dst_w = loads.index(min(loads))
            mine = sorted(
                ((state.groups[g].leader == n, g) for g, gs in state.groups.items() if gs.placed.get(n) == src_w)
            )
            step = WorkerMove(n, mine[0][1], src_w, dst_w)
            check_step(state, step)
            steps.append(step)
            state = apply_step(state, step)
    return steps


def is_balanced(cluster: ClusterState) -> bool:
    """Replicas and leaders over the nodes that are up, and replicas over each
    node's workers, are at most one apart (what plan_rebalance aims at)."""
    up = [n for n in cluster.nodes if cluster.is_up(n)]
    if _spread(cluster.replica_count(n) for n in up) > 1:
        return False
    return all(_spread(cluster.worker_loads(n)) <= 1 for n in up)
