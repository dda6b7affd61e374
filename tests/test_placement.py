"""The placement planner and the routing/status merge (pure functions)."""

from __future__ import annotations

import pytest

from multiraft.placement import (
    Placement,
    PlacementError,
    assign_workers,
    group_replicas,
    hosted_groups,
    leader_of,
    merge_cluster_status,
    merge_routing,
)


def test_group_replicas_follow_the_documented_rule() -> None:
    plan = group_replicas(["n3", "n1", "n2"], 5, 3)
    assert plan[0] == ["n1", "n2", "n3"]
    assert plan[1] == ["n2", "n3", "n1"]
    assert plan[2] == ["n3", "n1", "n2"]
    assert plan[3] == ["n1", "n2", "n3"]
    assert group_replicas(["a", "b", "c", "d"], 4, 2) == {0: ["a", "b"], 1: ["b", "c"], 2: ["c", "d"], 3: ["d", "a"]}


def test_every_node_computes_the_same_plan_whatever_the_order() -> None:
    assert group_replicas(["n2", "n1", "n3"], 64, 3) == group_replicas(["n1", "n3", "n2"], 64, 3)


def test_replicas_are_balanced_over_nodes() -> None:
    plan = group_replicas([f"n{i}" for i in range(5)], 100, 3)
    counts = {}
    for nodes in plan.values():
        assert len(set(nodes)) == 3
        for n in nodes:
            counts[n] = counts.get(n, 0) + 1
    assert set(counts.values()) == {60}


@pytest.mark.parametrize("groups,workers", [(64, 8), (13, 4), (3, 5), (1, 1)])
def test_workers_are_balanced_within_one(groups: int, workers: int) -> None:
    assignment = assign_workers(range(groups), workers)
    loads = [sum(1 for w in assignment.values() if w == i) for i in range(workers)]
    assert max(loads) - min(loads) <= 1
    assert sorted(assignment) == list(range(groups))


def test_placement_round_trips_and_rejects_garbage() -> None:
    p = Placement.plan("n2", ["n1", "n2", "n3"], 12, 2, 3)
    assert sorted(p.group_worker) == hosted_groups("n2", group_replicas(["n1", "n2", "n3"], 12, 2))
    assert Placement.from_plain(p.to_plain()) == p
    assert sum(len(p.worker_groups(i)) for i in range(3)) == len(p.group_worker)
    for bad in ({}, {"format": 99}, {**p.to_plain(), "groups": {"0": {"worker": 7, "voters": ["n1"]}}}):
        with pytest.raises(PlacementError):
            Placement.from_plain(bad)


@pytest.mark.parametrize("args", [([], 1, 1), (["n1"], 0, 1), (["n1"], 4, 2), (["n1", "n1"], 1, 1)])
def test_plan_rejects_impossible_layouts(args) -> None:
    with pytest.raises(PlacementError):
        group_replicas(*args)


def _st(role: str, leader, term: int, commit: int = 5) -> dict:
    return {"role": role, "leader": leader, "term": term, "commit": commit, "applied": commit,
            "last_index": commit, "voters": ["n1", "n2", "n3"], "learners": [], "voters_outgoing": []}


def test_leader_is_taken_from_the_highest_term() -> None:
    up = {"n1": True, "n2": True, "n3": True}
    assert leader_of([("n1", _st("leader", "n1", 3)), ("n2", _st("follower", "n1", 3))], up) == ("n1", 3)
    # a newer term without a known leader beats an old leader
    assert leader_of([("n1", _st("leader", "n1", 3)), ("n2", _st("candidate", None, 4))], up) == (None, 4)
    # a leader on a node known to be down is not reported
    assert leader_of([("n2", _st("follower", "n1", 3))], {"n1": False, "n2": True}) == (None, 3)
    assert leader_of([], up) == (None, 0)


def _views() -> dict:
    return {
        "n1": {
            "address": "h:1",
            "up": True,
            "workers": [{"raft_url": "tcp://h:2", "client_address": "h:52", "up": True}],
            "groups": {0: 0, 1: 0},
            "status": {0: _st("leader", "n1", 2, 7), 1: _st("follower", "n2", 2, 3)},
        },
        "n2": {
            "address": "h:101",
            "up": True,
            "workers": [{"raft_url": "tcp://h:102", "client_address": "h:152", "up": True}],
            "groups": {0: 0, 1: 0},
            "status": {0: _st("follower", "n1", 2, 6), 1: _st("leader", "n2", 2, 4)},
        },
        "n3": {"address": "h:201", "up": False, "workers": [], "groups": None, "status": {}},
    }


def test_merge_routing_table_shape() -> None:
    plan = group_replicas(["n1", "n2", "n3"], 2, 2)  # g0: n1,n2  g1: n2,n3
    plan[1] = ["n1", "n2"]
    table = merge_routing(5, 2, plan, _views())
    assert table["version"] == 5 and table["groups_total"] == 2
    assert table["nodes"]["n3"] == {"address": "h:201", "up": False, "workers": []}
    assert table["nodes"]["n1"]["workers"][0] == {"raft_url": "tcp://h:2", "client_address": "h:52", "up": True}
    assert table["groups"][0] == {"replicas": {"n1": 0, "n2": 0}, "leader": "n1", "term": 2}
    assert table["groups"][1]["leader"] == "n2"


def test_merge_cluster_status_shape() -> None:
    plan = {0: ["n1", "n2", "n3"], 1: ["n1", "n2", "n3"]}
    doc = merge_cluster_status(2, plan, _views())
    assert [n["id"] for n in doc["nodes"]] == ["n1", "n2", "n3"]
    assert [n["up"] for n in doc["nodes"]] == [True, True, False]
    g0 = doc["groups"][0]
    assert g0["leader"] == "n1" and g0["commit"] == 7 and g0["term"] == 2
    assert g0["voters"] == ["n1", "n2", "n3"] and g0["learners"] == [] and g0["voters_outgoing"] == []
    assert [(r["node"], r["applied"], r["up"]) for r in g0["replicas"]] == [
        ("n1", 7, True),
        ("n2", 6, True),
        ("n3", None, False),
    ]


def test_merge_routing_names_later_incarnations_so_receivers_drop_retired_senders() -> None:
    """multiraft.replica: once a node hosts a later incarnation of a group,
    routing says so (workers drop late messages of the earlier one)."""
    plan = {0: ["n1", "n2"], 1: ["n1", "n2"]}
    views = _views()
    views["n2"]["status"][0] = {**_st("follower", "n1", 2, 6), "replica_id": "n2~3"}
    views["n1"]["status"][0] = {**_st("leader", "n1", 2, 7), "replica_id": "n1"}
    views["n1"]["status"][1] = {**_st("follower", "n2", 2, 3), "replica_id": "n2~1"}  # not n1's: ignored
    table = merge_routing(1, 2, plan, views)
    assert table["groups"][0]["replica_ids"] == {"n1": "n1", "n2": "n2~3"}
    assert "replica_ids" not in table["groups"][1]  # every replica incarnation 0: nothing to say
