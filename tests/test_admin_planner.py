"""The membership planner of multiraft-admin (multiraft.placement): the safety
rules, drain and rebalance plans. Pure: no processes."""

from __future__ import annotations

import random

import pytest

from multiraft.placement import (
    ClusterState,
    DropReplica,
    GroupState,
    Move,
    NodeState,
    Refused,
    Transfer,
    WorkerMove,
    apply_step,
    check_new_replica,
    check_step,
    check_transfer,
    check_voters_change,
    cluster_state_from_status,
    is_balanced,
    majority,
    merge_cluster_status,
    plan_drain,
    plan_rebalance,
)


def cluster(groups: dict[int, tuple], down=(), workers: int = 2, nodes=None) -> ClusterState:
    """groups: {g: (voters, learners, leader)}; replicas placed round-robin over workers."""
    names = set(nodes or ())
    for voters, learners, _ in groups.values():
        names |= set(voters) | set(learners)
    state = {}
    counters: dict[str, int] = {}
    for g, (voters, learners, leader) in sorted(groups.items()):
        placed = {}
        for n in sorted(set(voters) | set(learners)):
            placed[n] = counters.get(n, 0) % workers
            counters[n] = counters.get(n, 0) + 1
        state[g] = GroupState(g, frozenset(voters), frozenset(learners), frozenset(), leader, placed)
    return ClusterState({n: NodeState(n, n not in down, workers) for n in sorted(names)}, state)


def test_majority() -> None:
    assert [majority(n) for n in range(1, 7)] == [1, 2, 2, 3, 3, 4]


# --- the rules -------------------------------------------------------------


def test_removing_a_voter_while_another_is_down_is_refused() -> None:
    c = cluster({0: ("abc", "", "a")}, down={"c"})
    with pytest.raises(Refused, match="without a live majority"):
        check_voters_change(c, 0, {"a", "c"})
    # removing the down voter itself leaves a live majority: allowed
    check_voters_change(c, 0, {"a", "b"})
    # with two voters down nothing can commit at all
    c2 = cluster({0: ("abc", "", "a")}, down={"b", "c"})
    with pytest.raises(Refused, match="no live majority to commit"):
        check_voters_change(c2, 0, {"a", "b"})


def test_removing_the_last_voter_is_refused() -> None:
    c = cluster({0: ("a", "", "a")})
    with pytest.raises(Refused, match="last voter"):
        check_voters_change(c, 0, set())


def test_adding_on_a_down_node_or_twice_is_refused() -> None:
    c = cluster({0: ("abc", "", "a")}, down={"d"}, nodes="abcde")
    with pytest.raises(Refused, match="d is down"):
        check_new_replica(c, 0, "d")
    with pytest.raises(Refused, match="already holds a replica"):
        check_new_replica(c, 0, "b")
    with pytest.raises(Refused, match="not a member"):
        check_new_replica(c, 0, "zz")
    check_new_replica(c, 0, "e")
    with pytest.raises(Refused, match="d is down"):
        check_step(c, Move(0, "a", "d"))


def test_nothing_changes_while_joint() -> None:
    c = cluster({0: ("abc", "", "a")}, nodes="abcd")
    gs = c.groups[0]
    from attrs import evolve

    c = c.with_group(evolve(gs, voters=frozenset("abd"), outgoing=frozenset("abc")))
    with pytest.raises(Refused, match="joint"):
        check_voters_change(c, 0, {"a", "b"})
    with pytest.raises(Refused, match="joint"):
        check_step(c, Transfer(0, "b"))


def test_transfer_only_to_a_live_voter() -> None:
    c = cluster({0: ("abc", "d", "a")}, down={"c"})
    check_transfer(c, 0, "b")
    with pytest.raises(Refused, match="not a voter"):
        check_transfer(c, 0, "d")
    with pytest.raises(Refused, match="down"):
        check_transfer(c, 0, "c")


def test_move_of_a_learner_keeps_it_a_learner() -> None:
    c = cluster({0: ("abc", "d", "a")}, nodes="abcde")
    after = apply_step(c, Move(0, "d", "e"))
    assert after.groups[0].learners == {"e"} and after.groups[0].voters == set("abc")
    after = apply_step(c, Move(0, "a", "e"))
    assert after.groups[0].voters == set("bce") and after.groups[0].leader in ("b", "c")


# --- plans -----------------------------------------------------------------


def _violations(before: ClusterState, step, after: ClusterState) -> list[str]:
    """An independent check of one step (not the planner's own code)."""
    out = []
    for g, gs in after.groups.items():
        old = before.groups[g]
        if not gs.voters:
            out.append(f"group {g} has no voter")
        if gs.voters & gs.learners:
            out.append(f"group {g}: a node is voter and learner")

        def live_majority(voters):
            return sum(1 for v in voters if before.is_up(v)) >= majority(len(voters))

        if old.voters != gs.voters:
            if not live_majority(old.voters):
                out.append(f"group {g}: changed without a live majority of {sorted(old.voters)}")
            if not live_majority(gs.voters):
                out.append(f"group {g}: left without a live majority: {sorted(gs.voters)}")
        for n in gs.members - old.members:
            if not before.is_up(n):
                out.append(f"group {g}: replica added on down node {n}")
            if n in old.placed:
                out.append(f"group {g}: node {n} got a second replica")
        if len(old.voters ^ gs.voters) > 2:
            out.append(f"group {g}: more than one voter swapped in one step")
    if isinstance(step, Transfer):
        gs = after.groups[step.group]
        if step.target not in gs.voters or not before.is_up(step.target):
            out.append(f"transfer of {step.group} to {step.target}")
    return out


def _run_plan(c: ClusterState, steps) -> ClusterState:
    for step in steps:
        check_step(c, step)
        nxt = apply_step(c, step)
        bad = _violations(c, step, nxt)
        assert not bad, (step, bad)
        c = nxt
    return c


def test_drain_moves_everything_to_the_least_loaded_nodes() -> None:
    c = cluster({g: ("abc", "", "a") for g in range(6)}, nodes="abcde")
    steps = plan_drain(c, "a")
    assert len(steps) == 6 and all(isinstance(s, Move) and s.source == "a" for s in steps)
    after = _run_plan(c, steps)
    assert after.replica_count("a") == 0
    assert sorted(after.replica_count(n) for n in "de") == [3, 3]  # spread, not piled on one
    for gs in after.groups.values():
        assert len(gs.voters) == 3 and gs.leader != "a"


def test_drain_refuses_when_a_group_has_nowhere_to_go() -> None:
    c = cluster({0: ("abc", "", "a")})
    with pytest.raises(Refused, match="nowhere to go"):
        plan_drain(c, "a")
    c = cluster({0: ("abc", "", "a")}, down={"d"}, nodes="abcd")
    with pytest.raises(Refused, match="nowhere to go"):
        plan_drain(c, "a")


def test_drain_of_a_down_node_and_of_leftovers() -> None:
    groups = {0: ("abc", "", "a"), 1: ("abc", "", "b")}
    c = cluster(groups, down={"c"}, nodes="abcd")
    after = _run_plan(c, plan_drain(c, "c"))
    assert after.replica_count("c") == 0
    # a replica placed on a node but not in the config is dropped, not moved
    gs = c.groups[0]
    from attrs import evolve

    c2 = c.with_group(evolve(gs, placed={**gs.placed, "d": 0}))
    steps = plan_drain(c2, "d")
    assert steps == [DropReplica(0, "d")]


def test_rebalance_evens_out_a_skewed_cluster() -> None:
    # 12 groups on a,b,c; d and e empty (just joined)
    c = cluster({g: ("abc", "", "abc"[g % 3]) for g in range(12)}, nodes="abcde", workers=2)
    steps = plan_rebalance(c)
    after = _run_plan(c, steps)
    counts = [after.replica_count(n) for n in "abcde"]
    assert max(counts) - min(counts) <= 1, counts
    leaders = [after.leader_count(n) for n in "abcde"]
    assert max(leaders) - min(leaders) <= 1, leaders
    assert is_balanced(after)
    assert plan_rebalance(after) == [], "a balanced cluster needs no step"


def test_rebalance_never_uses_a_down_node_or_breaks_a_majority() -> None:
    groups = {g: ("abc", "", "a") for g in range(8)}
    c = cluster(groups, down={"b", "e"}, nodes="abcdef")
    steps = plan_rebalance(c)
    after = _run_plan(c, steps)
    for s in steps:
        if isinstance(s, Move):
            assert s.target not in ("b", "e")
    # every group has one voter down: a majority of two live ones must remain
    for gs in after.groups.values():
        assert sum(1 for v in gs.voters if after.is_up(v)) >= majority(len(gs.voters))


def test_rebalance_evens_out_workers_within_a_node() -> None:
    groups = {g: ("abc", "", "a") for g in range(6)}
    c = cluster(groups, workers=3)
    gs_list = {g: c.groups[g] for g in c.groups}
    from attrs import evolve

    for gs in gs_list.values():  # everything on a's worker 0
        c = c.with_group(evolve(gs, placed={**gs.placed, "a": 0}))
    steps = plan_rebalance(c)
    worker_moves = [s for s in steps if isinstance(s, WorkerMove)]
    assert worker_moves and all(s.node == "a" for s in worker_moves)
    after = _run_plan(c, steps)
    assert after.worker_loads("a") == [2, 2, 2]


@pytest.mark.parametrize("seed", range(40))
def test_random_skewed_clusters_are_balanced_by_safe_steps(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(rng.randrange(3, 8))]
    workers = rng.randrange(1, 4)
    down = set(rng.sample(names, rng.randrange(0, 2)))
    hot = names[: rng.randrange(3, len(names) + 1)]  # groups only on some nodes: skew
    groups = {}
    for g in range(rng.randrange(1, 30)):
        r = rng.choice([1, 3, 3, 3, 5]) if len(hot) >= 5 else rng.choice([1, 3])
        members = rng.sample(hot, min(r, len(hot)))
        learners = ""
        spare = [n for n in names if n not in members]
        if spare and rng.random() < 0.2:
            learners = [rng.choice(spare)]
        groups[g] = (members, learners, rng.choice(members))
    c = cluster(groups, down=down, workers=workers, nodes=names)
    steps = plan_rebalance(c)
    after = _run_plan(c, steps)
    up = [n for n in names if n not in down]
    counts = [after.replica_count(n) for n in up]
    if max(counts) - min(counts) > 1:
        # only if no safe move could help: every remaining candidate is refused
        src = max(up, key=after.replica_count)
        dst = min(up, key=after.replica_count)
        for g, gs in after.groups.items():
            if src in gs.members and dst not in gs.holders:
                with pytest.raises(Refused):
                    check_step(after, Move(g, src, dst))
    for n in up:
        loads = after.worker_loads(n)
        assert max(loads) - min(loads) <= 1
    # drain every up node that can be drained: each step safe
    for n in up:
        try:
            steps = plan_drain(after, n)
        except Refused:
            continue
        drained = _run_plan(after, steps)
        assert drained.replica_count(n) == 0


def test_cluster_state_from_the_admin_status() -> None:
    st = {"role": "leader", "leader": "n1", "term": 2, "commit": 7, "applied": 7, "last_index": 7,
          "voters": ["n1", "n2"], "learners": ["n3"], "voters_outgoing": [], "progress": {"n1": 7, "n2": 7, "n3": 4}}
    views = {
        "n1": {
            "address": "h:1",
            "up": True,
            "workers": [{"up": True}, {"up": True}],
            "groups": {0: 1},
            "status": {0: st},
        },
        "n2": {"address": "h:2", "up": True, "workers": [{"up": True}], "groups": {0: 0}, "status": {}},
        "n3": {"address": "h:3", "up": False, "workers": [], "groups": None, "status": {}},
    }
    doc = merge_cluster_status(1, {}, views)
    g0 = doc["groups"][0]
    assert [(r["node"], r["member"], r["lag"], r["worker"]) for r in g0["replicas"]] == [
        ("n1", "voter", 0, 1), ("n2", "voter", 0, 0), ("n3", "learner", 3, None)]
    c = cluster_state_from_status(doc)
    assert c.groups[0].voters == {"n1", "n2"} and c.groups[0].learners == {"n3"} and c.groups[0].leader == "n1"
    assert c.groups[0].placed == {"n1": 1, "n2": 0}
    assert c.is_up("n1") and not c.is_up("n3") and c.nodes["n1"].workers == 2
