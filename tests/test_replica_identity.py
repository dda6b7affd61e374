"""Replica identity: a replica removed from a group never comes back under its
old id (multiraft.replica; issue "Safety" part 1).

The scenario of the review, on the pure core: group {A, B, C}; B is cut off;
C is moved to D through a joint change that commits on {A, C} of the old and
{A, D} of the new voters;
C's replica is deleted and the node hosts the group again. B still holds the
old config, which names C. If the new, empty replica answered to C's old id,
B would win an election with C's vote ("your log is at least as long as my
empty one") and commit a different entry at an index A already committed.
"""

from __future__ import annotations

import pytest
from raftnet import Net

from multiraft.placement import Placement, PlacementError
from multiraft.raft.confchange import ChangeKind, ConfChange, SingleChange, add_learner
from multiraft.raft.types import HardState, StateRole
from multiraft.replica import ReplicaIdError, incarnation_of, node_of, replica_id


def _move_c_to_d_while_b_is_cut_off(readd_as: str) -> Net:
    net = Net(["a", "b", "c"], learners=["d"])
    net.boot("a")
    a = net.nodes["a"]
    net.propose("a", b"x1")
    net.isolated.add("b")
    a.propose_conf_change(add_learner("d"))
    net.tick(times=3)
    a.propose_conf_change(
        ConfChange((SingleChange(ChangeKind.ADD_VOTER, "d"), SingleChange(ChangeKind.REMOVE_NODE, "c")))
    )
    net.tick(times=5)
    assert a.conf.voters == {"a", "b", "d"} and not a.conf.joint  # B never heard of it
    net.propose("a", b"committed-by-a-and-d")
    committed = a.log.committed
    # C's replica is deleted, and node c hosts the group again, empty.
    del net.nodes["c"]
    net.durable.pop("c")
    net.applied.pop("c")
    net.configs[readd_as] = net.configs["a"].__class__(id=readd_as)
    net._start(readd_as, initial_voters=None, hard_state=HardState())
    # A and D are out of reach; B comes back and campaigns in its old config.
    net.isolated = {"a", "d"}
    net.elect("b")
    net.tick(times=3)
    net.committed_by_a = committed  # type: ignore[attr-defined]
    return net


def test_an_empty_replica_under_a_reused_id_elects_a_stale_leader():
    """The hazard is real: this is what a reused id allows (the old worker code)."""
    net = _move_c_to_d_while_b_is_cut_off(readd_as="c")
    b = net.nodes["b"]
    assert b.role == StateRole.LEADER
    net.propose("b", b"diverges")
    # B commits, at an index A already committed, a different entry.
    a = net.nodes["a"]
    both = min(b.log.committed, net.committed_by_a)  # type: ignore[attr-defined]
    assert [i for i in range(1, both + 1) if b.log.term(i) != a.log.term(i)]


def test_a_readded_replica_with_a_new_id_cannot_help_an_old_config_win():
    net = _move_c_to_d_while_b_is_cut_off(readd_as="c~1")
    b = net.nodes["b"]
    assert b.role != StateRole.LEADER
    assert b.log.committed < net.committed_by_a  # type: ignore[attr-defined]
    # Everything B sent to c went to a replica that no longer exists.
    assert net.sent(frm="b", to="c") and not net.sent(frm="b", to="c~1")
    assert net.nodes["c~1"].term == 0


def test_replica_ids_name_the_node_and_the_incarnation():
    assert replica_id("n3", 0) == "n3" and replica_id("n3", 2) == "n3~2"
    assert node_of("n3~2") == "n3" and node_of("n3") == "n3"
    assert incarnation_of("n3") == 0 and incarnation_of("n3~12") == 12
    for bad in ("n3~", "n3~0", "n3~01", "n3~x", "~1"):
        with pytest.raises(ReplicaIdError):
            incarnation_of(bad)


def test_placement_never_reuses_a_retired_replica_id():
    p = Placement.plan("n1", ["n1", "n2", "n3"], 3, 3, 1)
    assert p.replica_of(0) == "n1"
    p = p.without_group(0)
    assert p.tombstones == {0: 0}
    p = p.with_group(0, 0)
    assert p.replica_of(0) == "n1~1"
    p = p.without_group(0).with_group(0, 0)
    assert p.replica_of(0) == "n1~2"
    # the tombstone survives a restart (placement.json round trip)
    again = Placement.from_plain(p.to_plain())
    assert again == p and again.without_group(0).next_replica_id(0) == "n1~3"


def test_placement_refuses_a_document_that_revives_a_retired_id():
    doc = Placement.plan("n1", ["n1"], 1, 1, 1).to_plain()
    doc["tombstones"] = {"0": 0}
    with pytest.raises(PlacementError, match="retired"):
        Placement.from_plain(doc)


def test_a_format_1_placement_is_migrated_conservatively():
    """Format 1 had only incarnation 0: groups not placed here may have had one."""
    doc = Placement.plan("n1", ["n1", "n2", "n3"], 6, 2, 1).to_plain()
    doc["format"] = 1
    doc.pop("tombstones")
    for item in doc["groups"].values():
        item.pop("replica")
    p = Placement.from_plain(doc)
    placed = set(p.group_worker)
    assert all(p.replica_of(g) == "n1" for g in placed)
    assert set(p.tombstones) == set(range(6)) - placed
    missing = min(set(range(6)) - placed)
    assert p.with_group(missing, 0).replica_of(missing) == "n1~1"


def test_check_replica_id_refuses_what_is_not_an_id_of_the_node():
    from multiraft.replica import check_replica_id

    assert check_replica_id("n3~2", "n3") == "n3~2" and check_replica_id("n3") == "n3"
    for bad, node in ((7, None), ("n3~0", None), ("n3~x", "n3"), ("n2~1", "n3"), (None, "n3")):
        with pytest.raises(ReplicaIdError):
            check_replica_id(bad, node)
