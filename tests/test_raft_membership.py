"""Membership changes in a running group: learners (thesis §4.2.1), single
changes and joint consensus (thesis §4.1, §4.3), removing the leader (thesis
§4.2.2), and leadership transfer (thesis §3.10)."""

from __future__ import annotations

import pytest
from raftnet import Net

from multiraft.raft.confchange import (
    LEAVE_JOINT,
    ChangeKind,
    ConfChange,
    SingleChange,
    add_learner,
    add_voter,
    decode_conf_change,
    remove_node,
)
from multiraft.raft.errors import Busy, ConfChangeRejected, NotLeader, RaftError
from multiraft.raft.types import EntryType, MessageType as MT, StateRole

IDS = ["n1", "n2", "n3"]


def replace(out, inn):
    return ConfChange(
        tuple(SingleChange(ChangeKind.ADD_VOTER, n) for n in inn)
        + tuple(SingleChange(ChangeKind.REMOVE_NODE, n) for n in out)
    )


def conf_entries(node):
    return [decode_conf_change(e.data) for e in node.log.entries if e.type == EntryType.CONF_CHANGE]


def with_learner(voters=("n1", "n2"), learner="n3"):
    net = Net(list(voters), learners=[learner])
    net.boot(voters[0])
    net.nodes[voters[0]].propose_conf_change(add_learner(learner))
    net.tick(times=2)  # a new member is contacted at the next heartbeat
    assert net.nodes[learner].conf.learners == {learner}
    return net


# ---- thesis §4.2.1 learners -------------------------------------------------------------


def test_learner_receives_and_applies_entries_thesis_4_2_1():
    net = with_learner()
    net.propose("n1", b"a", b"b")
    assert net.applied["n3"] == [b"a", b"b"]
    assert net.nodes["n3"].log.entries == net.nodes["n1"].log.entries


def test_learner_never_counts_toward_commit_raft_lite_bug_thesis_4_2_1():
    net = with_learner()
    n1 = net.nodes["n1"]
    net.cut = {frozenset(("n1", "n2"))}
    index = n1.propose(b"a")
    net.tick("n1", times=3)
    # {n1, n3} would be "2 of 3 members"; but the voters are {n1, n2}.
    assert n1.progress["n3"].match == index
    assert n1.log.committed == index - 1
    assert net.applied["n3"] == []
    net.heal()
    net.tick("n1", times=2)
    assert n1.log.committed == index
    assert net.applied["n3"] == [b"a"]


def test_learner_is_not_counted_by_check_quorum_thesis_4_2_1():
    net = with_learner()
    net.cut = {frozenset(("n1", "n2"))}
    net.tick("n1", times=25)  # n3 keeps answering heartbeats
    assert net.nodes["n1"].role == StateRole.FOLLOWER
    assert net.nodes["n1"].counters["checkquorum_stepdowns"] == 1


def test_learner_promotion_makes_it_count_thesis_4_2_1():
    net = with_learner()
    net.nodes["n1"].propose_conf_change(add_voter("n3"))
    net.deliver_all()
    assert all(n.conf.voters == {"n1", "n2", "n3"} for n in net.nodes.values())
    assert net.nodes["n1"].counters["learners_promoted"] == 1
    net.cut = {frozenset(("n1", "n2"))}
    index = net.propose("n1", b"a")
    assert net.nodes["n1"].log.committed == index  # n1 + n3 is now a majority


# ---- one change at a time -------------------------------------------------------------------


def test_only_one_pending_conf_change_at_a_time_thesis_4_1():
    net = Net(IDS)
    net.boot("n1")
    n1 = net.nodes["n1"]
    net.isolated |= {"n2", "n3"}
    n1.propose_conf_change(add_learner("n4"))
    with pytest.raises(ConfChangeRejected):
        n1.propose_conf_change(add_learner("n5"))
    net.heal()
    net.tick("n1", times=2)
    assert n1.conf.learners == {"n4"}
    n1.propose_conf_change(add_learner("n5"))  # applied: the next one is fine
    net.deliver_all()
    assert n1.conf.learners == {"n4", "n5"}


def test_unsafe_conf_change_is_rejected_at_proposal():
    net = Net(IDS)
    net.boot("n1")
    n1 = net.nodes["n1"]
    with pytest.raises(ConfChangeRejected):
        n1.propose_conf_change(remove_node("n1", "n2", "n3"))
    with pytest.raises(ConfChangeRejected):
        n1.propose_conf_change(LEAVE_JOINT)
    with pytest.raises(NotLeader):
        net.nodes["n2"].propose_conf_change(add_learner("n4"))
    assert conf_entries(n1) == [add_voter(*IDS)]  # nothing reached the log


def test_new_leader_refuses_conf_changes_until_an_inherited_one_is_applied_thesis_4_1():
    net = Net(IDS)
    net.boot("n1")
    # n1's conf change reaches n2 and n3 but is never acknowledged: n1 crashes.
    net.drop_types.add(MT.APPEND_RESPONSE)
    net.nodes["n1"].propose_conf_change(add_learner("n4"))
    net.deliver_all()
    net.isolated.add("n1")
    new = net.tick_until_leader()
    leader = net.nodes[new]
    assert conf_entries(leader)[-1] == add_learner("n4")  # inherited, uncommitted
    with pytest.raises(ConfChangeRejected):
        leader.propose_conf_change(add_learner("n5"))
    net.drop_types.clear()
    net.tick(times=2)
    assert leader.conf.learners == {"n4"}
    leader.propose_conf_change(add_learner("n5"))


# ---- thesis §4.3 joint consensus ----------------------------------------------------------


def joint_net():
    """n1, n2, n3 voters; n4, n5 started empty, to be added."""
    net = Net(IDS, learners=["n4", "n5"])
    net.boot("n1")
    return net


def test_joint_change_enters_and_leaves_joint_automatically_thesis_4_3():
    net = joint_net()
    n1 = net.nodes["n1"]
    seen_joint = []
    net.drop_if = lambda m: seen_joint.append(n1.conf.joint) and False
    n1.propose_conf_change(replace(["n2", "n3"], ["n4", "n5"]))
    net.tick(times=3)
    assert True in seen_joint  # it was joint for a while ...
    for i in ("n1", "n4", "n5"):
        c = net.nodes[i].conf
        assert (c.voters, c.voters_outgoing, c.joint) == ({"n1", "n4", "n5"}, frozenset(), False)
    assert conf_entries(n1)[-1] == LEAVE_JOINT  # ... and left it by itself
    assert n1.counters["joint_changes"] == 1
    net.isolated |= {"n2", "n3"}  # the old members are no longer needed
    net.propose("n1", b"a")
    assert net.applied["n5"] == [b"a"]


@pytest.mark.parametrize("half", [("n2", "n3"), ("n4", "n5")], ids=["outgoing", "incoming"])
def test_joint_config_commits_only_with_both_majorities_thesis_4_3(half):
    net = joint_net()
    n1 = net.nodes["n1"]
    # From the moment n1 applies C_old,new, one half's majority is unreachable.
    net.drop_if = lambda m: n1.conf.joint and bool({m.frm, m.to} & set(half))
    n1.propose_conf_change(replace(["n2", "n3"], ["n4", "n5"]))
    net.deliver_all()
    assert n1.conf.joint
    index = n1.propose(b"a")
    net.tick("n1", times=5)
    assert n1.conf.joint
    others = {"n2", "n3", "n4", "n5"} - set(half)
    # The reachable half fully acknowledged everything, to no avail.
    assert all(n1.progress[i].match == index for i in others)
    assert n1.log.committed < index - 1  # neither the leave entry nor "a"
    assert net.applied["n1"] == []
    net.drop_if = None
    net.tick(times=3)
    assert not n1.conf.joint and n1.conf.voters == {"n1", "n4", "n5"}
    assert net.applied["n1"] == [b"a"]


def test_new_leader_finishes_a_pending_leave_joint_thesis_4_3():
    net = joint_net()
    n1 = net.nodes["n1"]
    # n1 crashes right after applying C_old,new: nobody else applied it.
    net.drop_if = lambda m: n1.conf.joint and "n1" in (m.frm, m.to)
    n1.propose_conf_change(add_voter("n4", "n5"))
    net.deliver_all()
    assert n1.conf.joint
    assert not net.nodes["n2"].conf.joint
    net.isolated.add("n1")
    new = net.tick_until_leader()
    assert new in ("n2", "n3")
    net.tick(times=3)
    leader = net.nodes[new]
    assert conf_entries(leader)[-1] == LEAVE_JOINT
    assert not leader.conf.joint and leader.conf.voters == {"n1", "n2", "n3", "n4", "n5"}
    assert net.nodes["n4"].conf == leader.conf


def test_joint_demotion_turns_voter_into_learner_on_leave_thesis_4_3():
    net = joint_net()
    n1 = net.nodes["n1"]
    n1.propose_conf_change(
        ConfChange((SingleChange(ChangeKind.ADD_LEARNER, "n3"), SingleChange(ChangeKind.ADD_VOTER, "n4")))
    )
    net.tick(times=3)
    c = n1.conf
    assert (c.voters, c.learners, c.joint) == ({"n1", "n2", "n4"}, {"n3"}, False)
    net.propose("n1", b"a")
    assert net.applied["n3"] == [b"a"]  # a learner still replicates
    net.cut = {frozenset(("n1", "n2")), frozenset(("n1", "n4"))}
    index = n1.propose(b"b")
    net.tick("n1", times=3)
    assert n1.log.committed < index  # n1 + learner n3 is not a quorum


def test_removed_leader_steps_down_thesis_4_2_2():
    net = Net(IDS)
    net.boot("n1")
    n1 = net.nodes["n1"]
    n1.propose_conf_change(remove_node("n1"))
    net.deliver_all()
    # It hands leadership to a caught-up voter first (TimeoutNow), refusing
    # proposals meanwhile, and steps down once it hears of the newer term.
    assert "n1" not in n1.conf.voters
    assert n1.counters["timeout_now_sent"] == 1
    net.tick(times=n1.config.election_tick + 1)
    assert n1.role == StateRole.FOLLOWER
    new = net.tick_until_leader()
    assert new in ("n2", "n3")
    net.propose(new, b"a")
    assert net.applied["n2"] == net.applied["n3"] == [b"a"]
    start = len(net.log)
    net.tick(times=50)
    assert not [m for m in net.log[start:] if m.frm == "n1" and m.type in (MT.PRE_VOTE, MT.VOTE)]


def test_removed_follower_stops_receiving_and_cannot_disrupt_thesis_4_2_3():
    net = Net(IDS)
    net.boot("n1")
    net.nodes["n1"].propose_conf_change(remove_node("n3"))
    net.deliver_all()
    start = len(net.log)
    net.tick(times=50)
    assert not [m for m in net.log[start:] if m.to == "n3"]
    assert net.leader() == "n1"
    assert {net.nodes[i].term for i in ("n1", "n2")} == {2}  # n3's pre-votes changed nothing


# ---- thesis §3.10 leadership transfer ----------------------------------------------------


def test_leader_transfer_completes_to_an_up_to_date_follower_thesis_3_10():
    net = Net(IDS)
    net.boot("n1")
    net.propose("n1", b"a")
    net.nodes["n1"].transfer_leader("n3")
    net.deliver_all()
    assert net.leader() == "n3"
    assert net.nodes["n3"].term == 3 and net.nodes["n1"].leader == "n3"
    assert net.nodes["n3"].counters["leader_transfers"] == 1
    net.propose("n3", b"b")
    assert all(net.applied[i] == [b"a", b"b"] for i in IDS)


def test_leader_transfer_catches_up_a_lagging_target_first_thesis_3_10():
    net = Net(IDS)
    net.isolated.add("n3")
    net.boot("n1")  # n3 never heard of this leader: its progress is PROBE
    for k in range(5):
        net.propose("n1", b"e%d" % k)
    net.heal()
    n1 = net.nodes["n1"]
    n1.transfer_leader("n3")
    net.deliver_all()
    assert n1.role == StateRole.LEADER  # not yet: n3 is behind
    net.tick(times=3)
    assert net.leader() == "n3"
    (tn,) = [k for k, m in enumerate(net.log) if m.type == MT.TIMEOUT_NOW]
    caught_up = [
        k
        for k, m in enumerate(net.log)
        if m.type == MT.APPEND_RESPONSE and m.frm == "n3" and not m.reject and m.index == 7
    ]
    assert caught_up and caught_up[0] < tn  # TimeoutNow only once n3 matched the log
    assert net.applied["n3"] == [b"e%d" % k for k in range(5)]


def test_leader_transfer_to_a_target_that_lost_appends_completes_thesis_3_10():
    """Same root as the lost-append test in test_raft_replication.py."""
    net = Net(IDS)
    net.boot("n1")
    net.isolated.add("n3")
    net.propose("n1", b"a")
    net.heal()
    net.nodes["n1"].transfer_leader("n3")
    net.tick(times=5)
    assert net.leader() == "n3"


def test_proposals_refused_during_leader_transfer_thesis_3_10():
    net = Net(IDS)
    net.boot("n1")
    net.isolated.add("n3")
    n1 = net.nodes["n1"]
    n1.transfer_leader("n3")
    with pytest.raises(Busy) as ei:
        n1.propose(b"a")
    assert ei.value.leader == "n3"
    with pytest.raises(Busy):
        n1.propose_conf_change(add_learner("n4"))


def test_leader_transfer_aborted_after_election_timeout_if_target_unreachable_thesis_3_10():
    net = Net(IDS)
    net.boot("n1")
    net.isolated.add("n3")
    n1 = net.nodes["n1"]
    n1.transfer_leader("n3")
    net.tick(times=n1.config.election_tick - 1)
    assert n1.lead_transferee == "n3"
    net.tick()
    assert n1.lead_transferee is None and n1.role == StateRole.LEADER
    assert n1.counters["leader_transfers_aborted"] == 1
    net.propose("n1", b"a")  # proposals are accepted again
    assert net.applied["n2"] == [b"a"]


def test_leader_transfer_argument_checks_thesis_3_10():
    net = with_learner()
    with pytest.raises(NotLeader):
        net.nodes["n2"].transfer_leader("n1")
    with pytest.raises(RaftError):
        net.nodes["n1"].transfer_leader("n3")  # a learner cannot lead
    with pytest.raises(RaftError):
        net.nodes["n1"].transfer_leader("n9")
    net.nodes["n1"].transfer_leader("n1")  # to itself: nothing to do
    assert net.nodes["n1"].lead_transferee is None


def test_leader_outside_the_new_config_leads_until_leave_joint_then_steps_down_thesis_4_2_2():
    net = joint_net()
    n1 = net.nodes["n1"]
    n1.propose_conf_change(replace(["n1"], ["n4"]))  # two voters change: joint
    seen = []
    net.drop_if = lambda m: seen.append((n1.role, n1.conf.joint)) and False
    net.tick(times=3)
    assert (StateRole.LEADER, True) in seen  # it led C_old,new without being in C_new
    assert n1.role == StateRole.FOLLOWER
    assert n1.conf.voters == {"n2", "n3", "n4"} and not n1.conf.joint
    new = net.tick_until_leader()
    assert new in ("n2", "n3", "n4")
    net.propose(new, b"a")
    assert net.applied["n4"] == [b"a"]


def test_joint_config_is_left_even_if_a_transfer_was_pending_when_it_applied_thesis_4_3():
    net = joint_net()
    n1 = net.nodes["n1"]
    net.isolated.add("n3")
    n1.propose_conf_change(add_voter("n4", "n5"))
    n1.transfer_leader("n3")  # n3 is unreachable: the transfer will be abandoned
    net.deliver_all()
    assert n1.conf.joint
    net.tick(times=n1.config.election_tick + 1)
    assert n1.lead_transferee is None and n1.role == StateRole.LEADER
    net.heal()
    net.tick(times=30)
    assert not n1.conf.joint


def test_auto_leave_joint_never_makes_advance_raise_thesis_4_3():
    net = Net(IDS, learners=["n4", "n5"], uncommitted_size_bytes_max=200)
    net.boot("n1")
    n1 = net.nodes["n1"]
    n1.propose_conf_change(add_voter("n4", "n5"))
    for m in net.process("n1"):  # the leader persists C_old,new and sends it
        net.nodes[m.to].step(m)
    acks = net.process("n2") + net.process("n3")
    for m in acks:
        n1.step(m)  # C_old,new commits (not yet applied)
    assert n1.log.committed > n1.log.applied
    n1.propose(b"x" * 190)  # a client write arrives before the next Ready
    net.process("n1")  # applies C_old,new; must not raise
    net.deliver_all()
    net.tick(times=5)
    assert not n1.conf.joint and n1.conf.voters == {"n1", "n2", "n3", "n4", "n5"}
    assert net.applied["n4"] == [b"x" * 190]


def test_a_leader_proposes_nothing_after_the_entry_that_removes_it_thesis_4_2_2():
    """A one-voter group moves from n1 to n2. Nothing may follow the leave
    entry in n1's log: if n1's hand-off then fails, n2 (which still counts n1
    in its joint config until it learns the leave committed) needs n1's vote,
    and a longer log on n1 would refuse it forever (found by the simulator:
    seed 1218 of 2,000 after the issue 9 merges)."""
    net = Net(["n1"], learners=["n2"])
    net.boot("n1")
    n1 = net.nodes["n1"]
    n1.propose_conf_change(add_learner("n2"))
    net.tick(times=3)
    # Hold back n1's appends so the joint config is applied on n1 first.
    n1.propose_conf_change(replace(["n1"], ["n2"]))
    net.deliver_all()
    leave_seen = False
    for _ in range(20):
        if n1._removing_self_at:
            leave_seen = True
            with pytest.raises(Busy):
                n1.propose(b"after the leave")
            break
        net.tick()
    assert leave_seen
    assert all(e.data != b"after the leave" for e in n1.log.entries)


def test_a_removed_leader_that_crashes_before_handing_off_does_not_wedge_the_group_thesis_4_2_2():
    net = Net(["n1"], learners=["n2"])
    net.boot("n1")
    n1 = net.nodes["n1"]
    n1.propose_conf_change(add_learner("n2"))
    net.tick(times=3)
    net.propose("n1", b"x")
    # n1 never tells n2 that the leave committed, nor hands off: it dies.
    net.drop_types |= {MT.TIMEOUT_NOW}
    n1.propose_conf_change(replace(["n1"], ["n2"]))
    # Whatever n1 might append after the leave never reaches n2.
    net.drop_if = lambda m: m.type == MT.APPEND and any(e.data == b"late" for e in m.entries)
    refused = 0
    for _ in range(10):
        net.tick()
        try:
            n1.propose(b"late")
        except (Busy, NotLeader):
            refused += 1
    assert refused and not [e for e in n1.log.entries if e.data == b"late"]
    net.drop_types.clear()
    net.drop_if = None
    net.restart("n1")  # as a follower that is no voter of its config
    net.tick(times=60)
    assert net.nodes["n2"].role == StateRole.LEADER
    net.propose("n2", b"after")
    assert net.applied["n2"][-1] == b"after"
