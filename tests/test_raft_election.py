"""Leader election (§5.2, §5.4.1), Pre-Vote (thesis §9.6), CheckQuorum and
leader stickiness (thesis §6.2, §4.2.3), and votes surviving restarts (§5.1)."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from raftnet import Net

from multiraft.raft.confchange import add_learner, add_voter, encode_conf_change
from multiraft.raft.config import Config
from multiraft.raft.state import TRANSFER_CONTEXT, RaftState
from multiraft.raft.types import (
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType as MT,
    StateRole,
)

IDS = ["n1", "n2", "n3"]


def roles(net):
    return {i: n.role for i, n in net.nodes.items()}


def terms(net):
    return {i: n.term for i, n in net.nodes.items()}


def drain(node: RaftState) -> list:
    """Run a lone node's Ready loop (persist = no-op); return its messages."""
    out = []
    while node.has_ready():
        rd = node.ready()
        out += list(rd.messages) + list(rd.messages_after_persist)
        node.advance(rd)
    return out


def lone_node(seed, election_tick=10, **kw) -> RaftState:
    node = RaftState(
        Config(id="a", election_tick=election_tick, **kw),
        random.Random(seed),
        initial_voters=("a", "b", "c"),
    )
    drain(node)  # apply the bootstrap config
    return node


# ---- §5.2 randomized election timeouts ------------------------------------------


def test_election_timeout_is_randomized_in_et_to_2et_5_2():
    et = 10
    waits = []
    for seed in range(200):
        node = lone_node(seed, et)
        ticks = 0
        while node.role == StateRole.FOLLOWER:
            node.tick()
            ticks += 1
            assert ticks < 2 * et, "a follower waited 2*election_tick without campaigning"
        waits.append(ticks)
    assert min(waits) == et and max(waits) == 2 * et - 1
    assert len(set(waits)) == et  # every value of the range occurs


def test_failed_campaign_retries_after_a_new_randomized_timeout_5_2():
    et = 10
    gaps = set()
    for seed in range(50):
        node = lone_node(seed, et)
        starts, t = [], 0
        while len(starts) < 4:
            node.tick()
            t += 1
            msgs = drain(node)
            if any(m.type == MT.PRE_VOTE for m in msgs):
                starts.append(t)
            assert node.term == 1  # nobody answers: pre-votes never raise the term
        gaps.update(b - a for a, b in pairwise(starts))
    assert min(gaps) >= et and max(gaps) < 2 * et and len(gaps) > 1


# ---- §5.2 one vote per term ------------------------------------------------------


def vote(frm, to, term, index=1, log_term=1, pre=False, context=None):
    return Message(MT.PRE_VOTE if pre else MT.VOTE, frm, to, term, log_term, index, context=context)


def responses(net, frm, typ=MT.VOTE_RESPONSE):
    return [m for m in net.sent(typ, frm=frm)]


def test_one_vote_per_term_first_come_first_served_5_2():
    net = Net(IDS, pre_vote=False, check_quorum=False)
    net.deliver_all()
    n3 = net.nodes["n3"]
    n3.step(vote("n1", "n3", 2))
    net.deliver_all()
    n3.step(vote("n2", "n3", 2))
    net.deliver_all()
    got = responses(net, "n3")
    assert [(m.to, m.reject) for m in got] == [("n1", False), ("n2", True)]
    assert (n3.term, n3.vote) == (2, "n1")
    # A repeated request from the same candidate is granted again (idempotent).
    n3.step(vote("n1", "n3", 2))
    net.deliver_all()
    assert responses(net, "n3")[-1].reject is False


def test_vote_is_persisted_before_the_response_is_sent_5_1():
    node = lone_node(0, pre_vote=False, check_quorum=False)
    node.step(vote("b", "a", 2))
    rd = node.ready()
    assert rd.hard_state == HardState(2, "b", 1)
    assert rd.must_sync
    assert not rd.messages  # nothing may leave before the fsync ...
    assert [(m.type, m.reject) for m in rd.messages_after_persist] == [(MT.VOTE_RESPONSE, False)]
    node.advance(rd)


def test_vote_is_never_forgotten_within_a_term_across_restart_5_1_raft_lite_bug():
    net = Net(IDS, pre_vote=False, check_quorum=False)
    net.deliver_all()
    net.nodes["n3"].step(vote("n1", "n3", 2))
    net.deliver_all()
    net.restart("n3")
    n3 = net.nodes["n3"]
    assert (n3.term, n3.vote) == (2, "n1")
    n3.step(vote("n2", "n3", 2))
    net.deliver_all()
    assert responses(net, "n3")[-1].to == "n2" and responses(net, "n3")[-1].reject
    assert n3.vote == "n1"


# ---- §5.4.1 election restriction -------------------------------------------------


def voter_with_log(log_terms, term=5, **kw):
    """Node 'v' of {a, b, v}: bootstrap entry at 1 then entries of `log_terms`."""
    boot = Entry(1, 1, EntryType.CONF_CHANGE, encode_conf_change(add_voter("a", "b", "v")))
    entries = [boot] + [Entry(t, i + 2, EntryType.NORMAL, b"") for i, t in enumerate(log_terms)]
    node = RaftState(
        Config(id="v", pre_vote=False, check_quorum=False, **kw),
        random.Random(0),
        hard_state=HardState(term, None, 1),
        entries=entries,
    )
    drain(node)
    return node


RESTRICTION = [
    # voter's log terms after the bootstrap entry (indexes 2..), candidate (index, term), granted
    ([2, 2, 3], (4, 3), True),
    ([2, 2, 3], (5, 3), True),
    ([2, 2, 3], (3, 3), False),
    ([2, 2, 3], (2, 4), True),
    ([2, 2, 3], (9, 2), False),
    ([], (1, 1), True),
    ([2], (1, 1), False),
]


@pytest.mark.parametrize("log_terms, cand, granted", RESTRICTION)
def test_vote_denied_to_candidate_with_less_up_to_date_log_5_4_1(log_terms, cand, granted):
    for pre in (False, True):
        node = voter_with_log(log_terms)
        node.step(vote("a", "v", 6, index=cand[0], log_term=cand[1], pre=pre))
        (resp,) = drain(node)
        assert resp.reject is (not granted), (pre, resp)
        assert node.vote == ("a" if granted and not pre else None)


def test_node_missing_committed_entries_cannot_become_leader_5_4_1():
    for seed in range(5):
        net = Net(IDS, seed=seed)
        net.boot("n1")
        net.isolated.add("n3")
        net.propose("n1", b"x", b"y")
        assert net.nodes["n1"].log.committed == 4
        net.isolated = {"n1"}  # the leader crashes; n3 comes back
        for _ in range(100):
            net.tick()
            assert net.nodes["n3"].role != StateRole.LEADER
            if net.leader():
                break
        assert net.leader() == "n2"
        net.tick(times=2)
        assert net.applied["n3"] == [b"x", b"y"]


# ---- §5.2 candidates and leaders follow higher terms / current leaders ----------


def test_candidate_steps_down_when_it_sees_a_leader_of_its_term_5_2():
    net = Net(IDS, pre_vote=False, check_quorum=False)
    net.deliver_all()
    for i in ("n1", "n2"):  # both time out together
        net.nodes[i]._campaign(pre_vote=False, forced=False)
    assert net.nodes["n1"].term == net.nodes["n2"].term == 2
    net.deliver_all()
    assert roles(net) == {
        "n1": StateRole.LEADER,
        "n2": StateRole.FOLLOWER,
        "n3": StateRole.FOLLOWER,
    }
    assert terms(net) == {"n1": 2, "n2": 2, "n3": 2}
    assert net.nodes["n2"].leader == "n1"


def test_candidate_receiving_append_of_its_term_becomes_follower_5_2():
    node = lone_node(0, pre_vote=False, check_quorum=False)
    node._campaign(pre_vote=False, forced=False)
    drain(node)
    assert node.role == StateRole.CANDIDATE and node.term == 2
    node.step(Message(MT.APPEND, "b", "a", 2, 1, 1, (), 1))
    assert node.role == StateRole.FOLLOWER and node.leader == "b" and node.term == 2


def test_leader_steps_down_on_seeing_a_higher_term_5_1():
    net = Net(IDS, check_quorum=False)
    net.boot("n1")
    net.isolated.add("n1")
    new = net.tick_until_leader()
    assert new != "n1" and net.nodes[new].term == 3
    assert net.nodes["n1"].role == StateRole.LEADER  # it does not know yet
    net.nodes["n1"].propose(b"lost")  # never committed
    net.heal()
    net.tick(times=3)
    old = net.nodes["n1"]
    assert old.role == StateRole.FOLLOWER and old.term == 3 and old.leader == new
    net.propose(new, b"kept")
    assert all(net.applied[i] == [b"kept"] for i in IDS)


def test_split_vote_is_resolved_by_randomized_timeouts_5_2():
    ids = ["n1", "n2", "n3", "n4"]
    for seed in range(5):
        net = Net(ids, seed=seed, pre_vote=False, check_quorum=False)
        net.deliver_all()
        net.cut = {frozenset(("n1", "n4")), frozenset(("n2", "n3"))}
        for i in ("n1", "n2"):
            net.nodes[i]._campaign(pre_vote=False, forced=False)
        net.deliver_all()
        assert net.leader() is None  # 2 of 4 votes each: a split vote
        assert {net.nodes[i].role for i in ("n1", "n2")} == {StateRole.CANDIDATE}
        net.heal()
        leader = net.tick_until_leader(max_ticks=100)
        net.tick(times=2)
        assert net.nodes[leader].term >= 3
        assert {n.leader for n in net.nodes.values()} == {leader}


# ---- thesis §9.6 Pre-Vote ----------------------------------------------------------


def test_partitioned_node_prevotes_do_not_raise_its_term_thesis_9_6():
    net = Net(IDS)
    net.boot("n1")
    net.isolated.add("n3")
    net.tick(times=100)
    n3 = net.nodes["n3"]
    assert n3.term == 2
    assert len(net.sent(MT.PRE_VOTE, frm="n3")) >= 4  # it kept trying
    assert not net.sent(MT.VOTE, frm="n3")


def test_rejoining_node_does_not_disrupt_the_leader_with_prevote_thesis_9_6():
    net = Net(IDS)
    net.boot("n1")
    net.isolated.add("n3")
    net.tick(times=100)
    net.propose("n1", b"a")
    net.heal()
    net.tick(times=30)
    assert net.leader() == "n1"
    assert terms(net) == {"n1": 2, "n2": 2, "n3": 2}
    assert net.nodes["n1"].counters["elections"] == 1
    assert net.nodes["n3"].leader == "n1"
    assert net.applied["n3"] == [b"a"]


def test_without_prevote_a_rejoining_node_does_disrupt_the_leader_thesis_9_6():
    """The contrast that motivates Pre-Vote: without it the isolated node's term
    climbs, and when it rejoins the leader must step down."""
    net = Net(IDS, pre_vote=False, check_quorum=False)
    net.boot("n1")
    net.isolated.add("n3")
    net.tick(times=100)
    assert net.nodes["n3"].term > 5
    net.heal()
    net.tick(times=30)
    assert net.nodes["n1"].term > 2  # the old term is gone: leader was disrupted


def test_granting_a_prevote_changes_neither_term_nor_vote_thesis_9_6():
    node = lone_node(0)
    node._ticks = node.config.election_tick  # past the restart guard
    before = (node.term, node.vote)
    node.step(vote("b", "a", node.term + 1, pre=True))
    rd = node.ready()
    (resp,) = rd.messages + rd.messages_after_persist  # a pre-vote changes nothing durable
    assert resp.type == MT.PRE_VOTE_RESPONSE and not resp.reject
    assert resp.term == before[0] + 1  # it echoes the term asked about
    assert rd.hard_state is None and not rd.must_sync
    node.advance(rd)
    assert (node.term, node.vote) == before
    # And the node can still grant a real vote to someone else in that term.
    node.step(vote("c", "a", node.term + 1))
    (resp,) = drain(node)
    assert resp.type == MT.VOTE_RESPONSE and not resp.reject and node.vote == "c"


def test_prevote_rejection_with_higher_term_makes_precandidate_follow_it_thesis_9_6():
    node = lone_node(0)
    node._campaign(pre_vote=True, forced=False)
    drain(node)
    assert node.role == StateRole.PRE_CANDIDATE and node.term == 1
    node.step(Message(MT.PRE_VOTE_RESPONSE, "b", "a", 7, reject=True))
    assert node.role == StateRole.FOLLOWER and node.term == 7


def test_stale_granted_prevote_from_an_older_round_is_ignored_thesis_9_6():
    node = lone_node(0)
    node._campaign(pre_vote=True, forced=False)
    drain(node)
    # A grant for a term other than term + 1 answers some older round.
    node.step(Message(MT.PRE_VOTE_RESPONSE, "b", "a", node.term + 5))
    assert node.role == StateRole.PRE_CANDIDATE and node.term == 1
    node.step(Message(MT.PRE_VOTE_RESPONSE, "b", "a", node.term + 1))
    assert node.role == StateRole.CANDIDATE and node.term == 2


# ---- thesis §6.2 CheckQuorum and leader stickiness -------------------------------


def test_leader_steps_down_without_quorum_check_quorum_thesis_6_2():
    et = 10
    net = Net(IDS, election_tick=et)
    net.boot("n1")
    net.isolated.add("n1")
    n1 = net.nodes["n1"]
    for _ in range(et - 1):
        net.tick("n1")
    assert n1.role == StateRole.LEADER
    # The check runs every election timeout; the first window that saw no
    # quorum at all ends at most 2 * et after the isolation.
    for _ in range(et + 1):
        net.tick("n1")
    assert n1.role == StateRole.FOLLOWER and n1.leader is None
    assert n1.counters["checkquorum_stepdowns"] == 1
    assert n1.term == 2  # stepping down alone never raises the term


def test_leader_without_check_quorum_stays_leader_when_isolated_thesis_6_2():
    net = Net(IDS, check_quorum=False)
    net.boot("n1")
    net.isolated.add("n1")
    net.tick("n1", times=100)
    assert net.nodes["n1"].role == StateRole.LEADER


def test_leader_with_a_quorum_keeps_leading_check_quorum_thesis_6_2():
    net = Net(IDS + ["n4", "n5"])
    net.boot("n1")
    net.isolated |= {"n4", "n5"}
    net.tick(times=100)
    assert net.leader() == "n1" and net.nodes["n1"].counters["checkquorum_stepdowns"] == 0
    assert net.nodes["n1"].counters["elections"] == 1


def test_votes_ignored_while_a_live_leader_is_known_leader_stickiness_thesis_4_2_3():
    net = Net(IDS, pre_vote=False)  # no Pre-Vote: only stickiness protects the leader
    net.boot("n1")
    net.tick(times=3)
    net.elect("n3")  # n3 times out spuriously and asks for real votes
    assert net.nodes["n3"].term == 3
    assert net.nodes["n2"].term == 2 and net.nodes["n2"].vote == "n1"
    assert net.nodes["n2"].counters["votes_ignored_in_lease"] == 1
    assert net.nodes["n1"].role == StateRole.LEADER and net.nodes["n1"].term == 2
    assert not net.sent(MT.VOTE_RESPONSE, to="n3")  # ignored, not even answered


def test_prevotes_ignored_while_a_live_leader_is_known_thesis_6_2():
    net = Net(IDS)
    net.boot("n1")
    net.tick(times=3)
    net.elect("n3")
    assert terms(net) == {"n1": 2, "n2": 2, "n3": 2}
    assert net.nodes["n2"].counters["votes_ignored_in_lease"] == 1
    assert net.leader() == "n1"


def test_votes_granted_once_the_leader_is_silent_for_an_election_timeout_thesis_6_2():
    net = Net(IDS)
    net.boot("n1")
    net.isolated.add("n1")
    leader = net.tick_until_leader()
    assert leader in ("n2", "n3") and net.nodes[leader].term == 3


def test_timeout_now_campaign_bypasses_leader_stickiness_thesis_3_10():
    net = Net(IDS)
    net.boot("n1")
    net.tick(times=3)
    n3 = net.nodes["n3"]
    n3.step(Message(MT.TIMEOUT_NOW, "n1", "n3", 2))
    net.deliver_all()
    assert net.leader() == "n3" and n3.term == 3
    vote_msgs = net.sent(MT.VOTE, frm="n3")
    assert vote_msgs and all(m.context == TRANSFER_CONTEXT for m in vote_msgs)
    assert net.nodes["n2"].counters["votes_ignored_in_lease"] == 0


def test_restarted_node_refuses_votes_for_an_election_timeout_lease_safety():
    """A node that restarts may have acknowledged a heartbeat just before the
    crash, so it cannot know the leader's lease expired: it refuses
    (non-forced) votes for one election timeout after starting."""
    net = Net(IDS, pre_vote=False)
    net.boot("n1")
    net.restart("n2")
    net.isolated.add("n1")
    n2 = net.nodes["n2"]
    n2.step(vote("n3", "n2", 3, index=2, log_term=2))
    net.deliver_all()
    assert n2.term == 2 and n2.counters["votes_ignored_in_lease"] == 1
    net.tick("n2", times=n2.config.election_tick)
    n2.step(vote("n3", "n2", 3, index=2, log_term=2))
    net.deliver_all()
    assert n2.term == 3 and n2.vote == "n3"


def test_learner_never_campaigns_and_its_vote_never_counts_thesis_4_2_1():
    net = Net(["n1", "n2"], learners=["n3"])
    net.boot("n1")
    net.nodes["n1"].propose_conf_change(add_learner("n3"))
    net.tick(times=2)  # the new member is contacted at the next heartbeat
    assert net.nodes["n3"].conf.learners == {"n3"}
    net.isolated = {"n1"}
    net.tick(times=200)
    assert not net.sent(MT.PRE_VOTE, frm="n3") and not net.sent(MT.VOTE, frm="n3")
    # n2 campaigns but cannot win: n1 is gone; a learner's grant would not help.
    assert net.nodes["n2"].role != StateRole.LEADER
    assert not net.sent(MT.PRE_VOTE, frm="n2", to="n3")  # learners are not asked
    n2 = net.nodes["n2"]
    n2._campaign(pre_vote=False, forced=False)
    net.deliver_all()
    n2.step(Message(MT.VOTE_RESPONSE, "n3", "n2", n2.term))
    assert n2.role == StateRole.CANDIDATE


# ---- a leader's term must be durable before it acts on it (§5.1) ------------------------


def single_voter_with_learner():
    net = Net(["n1"], learners=["n2"])
    net.tick_until_leader()
    net.nodes["n1"].propose_conf_change(add_learner("n2"))
    net.tick(times=3)
    net.propose("n1", b"a")
    assert net.applied["n2"] == [b"a"]
    return net


def campaign_until_leader(net, i):
    n = net.nodes[i]
    for _ in range(10 * n.config.election_tick):
        if n.role == StateRole.LEADER:
            return n
        n.tick()
    raise AssertionError("did not become leader")


def test_no_message_leaves_before_a_changed_term_or_vote_is_durable_5_1():
    net = single_voter_with_learner()
    net.restart("n1")
    net.deliver_all()
    n1 = campaign_until_leader(net, "n1")
    rd = n1.ready()
    assert rd.hard_state is not None and rd.hard_state.term == n1.term
    assert rd.messages == ()  # all of them must wait for the fsync


def test_crash_before_term_is_durable_never_makes_two_leaders_of_one_term_5_2():
    net = single_voter_with_learner()
    net.restart("n1")
    net.deliver_all()
    n1 = campaign_until_leader(net, "n1")  # leader of term 3 (not yet durable)
    n1.propose(b"X")
    rd = n1.ready()
    for m in rd.messages:  # sent before the fsync, as Ready allows
        net.nodes[m.to].step(m)
    net.process("n2")
    net.restart("n1")  # crash: rd was never persisted
    net.deliver_all()
    n1 = campaign_until_leader(net, "n1")  # leader of term 3 again
    n1.propose(b"Y")
    net.deliver_all()
    net.tick(times=3)
    assert net.applied["n2"] == net.applied["n1"]


def test_heartbeats_prevent_elections_in_a_healthy_group_5_2():
    net = Net(IDS + ["n4", "n5"])
    net.boot("n1")
    net.tick(times=300)
    assert net.leader() == "n1"
    assert {n.term for n in net.nodes.values()} == {2}
    assert not [m for m in net.log if m.type in (MT.PRE_VOTE, MT.VOTE) and m.frm != "n1"]


def test_election_transcript_prevote_then_vote_then_noop_5_2_thesis_9_6():
    net = Net(IDS)
    net.deliver_all()
    for n in net.nodes.values():
        n._ticks = n.config.election_tick  # past the restart guard
    net.elect("n2")

    def line(m):
        extra = ""
        if m.type in (MT.PRE_VOTE, MT.VOTE):
            extra = f" last=({m.index},{m.log_term})"
        elif m.type == MT.APPEND:
            extra = f" prev=({m.index},{m.log_term}) n={len(m.entries)} commit={m.commit}"
        elif m.type == MT.APPEND_RESPONSE:
            extra = f" index={m.index}"
        elif m.reject:
            extra = " reject"
        return f"{m.frm}->{m.to} {m.type.name} t{m.term}{extra}"

    assert [line(m) for m in net.log] == [
        "n2->n1 PRE_VOTE t2 last=(1,1)",
        "n2->n3 PRE_VOTE t2 last=(1,1)",
        "n1->n2 PRE_VOTE_RESPONSE t2",  # granted at the term asked about ...
        "n3->n2 PRE_VOTE_RESPONSE t2",
        "n2->n1 VOTE t2 last=(1,1)",  # ... and only then is the term raised
        "n2->n3 VOTE t2 last=(1,1)",
        "n1->n2 VOTE_RESPONSE t2",
        "n3->n2 VOTE_RESPONSE t2",
        "n2->n1 APPEND t2 prev=(1,1) n=1 commit=1",  # the no-op
        "n2->n3 APPEND t2 prev=(1,1) n=1 commit=1",
        "n1->n2 APPEND_RESPONSE t2 index=2",
        "n3->n2 APPEND_RESPONSE t2 index=2",
        "n2->n1 APPEND t2 prev=(2,2) n=0 commit=2",  # the new commit index
        "n2->n3 APPEND t2 prev=(2,2) n=0 commit=2",
        "n1->n2 APPEND_RESPONSE t2 index=2",
        "n3->n2 APPEND_RESPONSE t2 index=2",
    ]


def test_a_vote_request_with_a_stale_term_is_rejected_with_our_term_paper_5_1():
    """§5.1: a server rejects a request with a stale term, and the reply
    carries its term, so the candidate catches up. Ignoring it can livelock
    a group (simulator seed 1339 after issue 9): the candidate never learns
    the higher term and asks again one term higher each timeout, while the
    voter, campaigning with an old config that does not name the candidate,
    rises just as fast."""
    net = Net(["n1", "n2", "n3"], pre_vote=False)
    net.boot("n1")
    n2 = net.nodes["n2"]
    # As if it had campaigned on its own for a long time: a high term, no leader.
    n2.term, n2.vote, n2.leader = 80, None, None
    n2.election_elapsed = n2.config.election_tick
    net.isolated.add("n3")
    candidate = net.nodes["n1"]
    candidate.election_elapsed = 0
    candidate._campaign(pre_vote=False, forced=False)
    net.deliver_all()
    replies = net.sent(type=MT.VOTE_RESPONSE, frm="n2", to="n1")
    assert replies and replies[-1].reject and replies[-1].term == 80
    assert candidate.term == 80 and candidate.role == StateRole.FOLLOWER
    # ... and campaigns again at its next tick, before n2 (whose timer runs
    # from its own last campaign) rises again: it wins n2's vote.
    net.tick("n1")
    assert candidate.role == StateRole.LEADER and candidate.term == 81
