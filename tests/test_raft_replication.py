"""Log replication (§5.3), the commit rule (§5.4.2, figure 8), flow control,
the leader's no-op, delivery of committed entries, and the Ready contract
(persist before acknowledging: §5.1, thesis §10.2.1)."""

from __future__ import annotations

import pytest
from raftnet import Net

from multiraft.raft.errors import Busy, NotLeader, ProposalDropped
from multiraft.raft.progress import ProgressState
from multiraft.raft.types import (
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType as MT,
    StateRole,
)

IDS = ["n1", "n2", "n3"]
ACKS = {
    MT.VOTE,
    MT.VOTE_RESPONSE,
    MT.PRE_VOTE_RESPONSE,
    MT.APPEND_RESPONSE,
    MT.HEARTBEAT_RESPONSE,
}


def logs(net, ids=None):
    return {i: [(e.index, e.term, e.data) for e in net.nodes[i].log.entries] for i in ids or net.nodes}


def record_readies(net):
    """Wrap every node's ready() to keep (node id, Ready) pairs."""
    seen = []
    for i, n in net.nodes.items():
        orig = n.ready

        def wrapped(orig=orig, i=i):
            rd = orig()
            seen.append((i, rd))
            return rd

        n.ready = wrapped
    return seen


# ---- §5.3 replication ---------------------------------------------------------------


def test_single_voter_group_elects_itself_and_commits_raft_lite_bug():
    net = Net(["n1"])
    assert net.tick_until_leader() == "n1"
    net.propose("n1", b"a", b"b")
    n1 = net.nodes["n1"]
    assert n1.log.committed == n1.log.last_index() == 4
    assert net.applied["n1"] == [b"a", b"b"]


def test_log_matching_all_replicas_end_with_identical_logs_5_3():
    net = Net(IDS)
    net.boot("n1")
    net.propose("n1", b"a", b"b")
    net.isolated.add("n3")
    for k in range(5):
        net.propose("n1", b"c%d" % k)
    net.heal()
    net.propose("n1", b"d")
    net.tick(times=2)
    ls = logs(net)
    assert ls["n1"] == ls["n2"] == ls["n3"]
    assert len({n.log.committed for n in net.nodes.values()}) == 1
    assert net.applied["n3"] == [b"a", b"b"] + [b"c%d" % k for k in range(5)] + [b"d"]


def test_conflicting_follower_suffix_is_replaced_by_the_leaders_5_3():
    net = Net(IDS, check_quorum=False)
    net.boot("n1")
    net.propose("n1", b"committed")
    net.isolated.add("n1")
    for k in range(3):
        net.nodes["n1"].propose(b"stale%d" % k)  # never reaches anyone
    net.deliver_all()
    new = net.tick_until_leader()
    net.propose(new, b"x", b"y")
    net.heal()
    net.tick(times=3)
    ls = logs(net)
    assert ls["n1"] == ls[new]
    assert not any(d.startswith(b"stale") for _, _, d in ls["n1"])
    assert net.applied["n1"] == [b"committed", b"x", b"y"] == net.applied[new]


def test_fast_backoff_repairs_a_long_divergent_log_in_few_round_trips_5_3():
    net = Net(IDS)
    net.boot("n1")
    net.isolated.add("n1")
    for k in range(50):  # 50 entries of term 2 that will never commit
        net.nodes["n1"].propose(b"old%d" % k)
    net.deliver_all()
    new = net.tick_until_leader()
    for k in range(30):
        net.nodes[new].propose(b"new%d" % k)
    net.deliver_all()
    assert net.nodes["n1"].log.last_index() == 52
    start = len(net.log)
    net.heal()
    for _ in range(20):
        net.tick()
        if logs(net, ["n1"])["n1"] == logs(net, [new])[new]:
            break
    assert logs(net, ["n1"])["n1"] == logs(net, [new])[new]
    traffic = net.log[start:]
    rejections = [m for m in traffic if m.type == MT.APPEND_RESPONSE and m.frm == "n1" and m.reject]
    appends = [m for m in traffic if m.type == MT.APPEND and m.to == "n1"]
    # One probe per term boundary, not one per entry (without the hint: ~50).
    assert len(rejections) <= 2, rejections
    assert len(appends) <= 4, appends


def test_duplicate_and_reordered_appends_never_truncate_matching_entries_5_3():
    net = Net(IDS)
    net.boot("n1")
    start = len(net.log)
    for k in range(4):
        net.propose("n1", b"e%d" % k)
    old_appends = [m for m in net.log[start:] if m.type == MT.APPEND and m.to == "n3" and m.entries]
    assert len(old_appends) == 4
    n3 = net.nodes["n3"]
    before = list(n3.log.entries)
    for m in reversed(old_appends + old_appends):  # duplicated, newest first
        n3.step(m)
        net.deliver_all()
    assert n3.log.entries == before
    assert net.applied["n3"] == [b"e0", b"e1", b"e2", b"e3"]
    assert n3.counters["dropped_unexpected"] == 0


def test_stale_append_below_commit_is_acknowledged_at_the_commit_index():
    net = Net(IDS)
    net.boot("n1")
    net.propose("n1", b"a", b"b")
    n3 = net.nodes["n3"]
    n3.step(Message(MT.APPEND, "n1", "n3", 2, 1, 1, (), 0))
    net.deliver_all()
    (resp,) = [m for m in net.sent(MT.APPEND_RESPONSE, frm="n3")][-1:]
    assert not resp.reject and resp.index == n3.log.committed == 4


def test_inflight_window_bounded_by_message_count_in_replicate_state():
    net = Net(IDS, inflight_msgs_max=3, msg_size_bytes_max=1)
    net.boot("n1")
    assert net.nodes["n1"].progress["n3"].state == ProgressState.REPLICATE
    net.drop_if = lambda m: m.type == MT.APPEND_RESPONSE and m.frm == "n3"
    start = len(net.log)
    for k in range(10):
        net.propose("n1", b"e%d" % k)
    to_n3 = [m for m in net.log[start:] if m.type == MT.APPEND and m.to == "n3" and m.entries]
    assert len(to_n3) == 3
    assert net.nodes["n1"].log.committed == 12  # n2 keeps the group going
    net.drop_if = None
    net.tick(times=3)
    assert net.applied["n3"] == [b"e%d" % k for k in range(10)]


def test_inflight_window_bounded_by_bytes_in_replicate_state():
    size = 100 + 24  # Entry.size_bytes() of a 100-byte payload
    net = Net(IDS, inflight_bytes_max=3 * size - 1, msg_size_bytes_max=1)
    net.boot("n1")
    net.drop_if = lambda m: m.type == MT.APPEND_RESPONSE and m.frm == "n3"
    start = len(net.log)
    for k in range(10):
        net.propose("n1", bytes([k]) * 100)
    to_n3 = [m for m in net.log[start:] if m.type == MT.APPEND and m.to == "n3" and m.entries]
    # The window is full once bytes >= the bound: it overshoots by < one message.
    assert len(to_n3) == 3
    assert sum(e.size_bytes() for m in to_n3 for e in m.entries) < 3 * size - 1 + size
    net.drop_if = None
    net.tick(times=3)
    assert len(net.applied["n3"]) == 10


def test_probe_state_sends_one_append_per_heartbeat_until_acknowledged():
    net = Net(IDS)
    net.drop_if = lambda m: m.type == MT.APPEND_RESPONSE and m.frm == "n3"
    net.boot("n1")
    pr = net.nodes["n1"].progress["n3"]
    assert pr.state == ProgressState.PROBE
    for k in range(5):
        net.propose("n1", b"e%d" % k)

    def appends():
        return len(net.sent(MT.APPEND, frm="n1", to="n3"))

    assert appends() == 1  # only the first probe: every later one waits
    for beat in range(1, 4):
        net.tick("n1")
        assert appends() == 1 + beat
    assert pr.state == ProgressState.PROBE
    net.drop_if = None
    net.tick("n1")
    assert pr.state == ProgressState.REPLICATE and pr.match == 7


def test_lost_append_is_repaired_by_heartbeats_on_an_idle_group_5_3():
    """Found by this suite: a follower in REPLICATE whose append was lost was
    never repaired by heartbeats, only by the next proposal."""
    net = Net(IDS)
    net.boot("n1")
    net.isolated.add("n3")
    net.propose("n1", b"a")  # committed by n1 + n2; n3's copy is lost
    net.heal()
    net.tick(times=20)  # idle group: only heartbeats
    assert net.nodes["n3"].log.last_index() == 3
    assert net.applied["n3"] == [b"a"]


# ---- §5.4.2 commit rule (figure 8) --------------------------------------------------


def figure8(net):
    """Durable states of figure 8 (c): index 2 holds x (term 2) on s1, s2 and
    y (term 3) on s5; s3, s4 have only the bootstrap entry."""
    net.deliver_all()
    boot = net.durable["s1"]["entries"][0]
    x = Entry(2, 2, EntryType.NORMAL, b"x")
    y = Entry(3, 2, EntryType.NORMAL, b"y")
    states = {
        "s1": (HardState(3, None, 1), [boot, x]),
        "s2": (HardState(2, "s1", 1), [boot, x]),
        "s3": (HardState(3, "s5", 1), [boot]),
        "s4": (HardState(3, "s5", 1), [boot]),
        "s5": (HardState(3, "s5", 1), [boot, y]),
    }
    for i, (hs, entries) in states.items():
        net.durable[i] = {"hs": hs, "entries": entries, "snapshot": None}
        net.restart(i)
    net.deliver_all()


def test_old_term_entry_is_not_committed_by_counting_replicas_5_4_2_figure_8():
    ids = ["s1", "s2", "s3", "s4", "s5"]
    net = Net(ids, pre_vote=False, check_quorum=False, msg_size_bytes_max=1)
    figure8(net)
    s1, s3 = net.nodes["s1"], net.nodes["s3"]
    net.cut = {frozenset(("s1", "s4")), frozenset(("s1", "s5"))}
    # Once s3 holds x, it never receives index 3 (s1's no-op of term 4).
    net.drop_if = lambda m: (
        m.type == MT.APPEND
        and m.to == "s3"
        and s3.log.last_index() >= 2
        and any(e.index >= 3 for e in m.entries)
    )
    net.elect("s1")  # votes: s2, s3 (s4 and s5 are cut off)
    assert s1.role == StateRole.LEADER and s1.term == 4
    net.tick("s1", times=3)
    # x (term 2) is now on s1, s2, s3: a majority of five. Not committed.
    assert [net.nodes[i].log.term(2) for i in ("s1", "s2", "s3")] == [2, 2, 2]
    assert s1.progress["s3"].match == 2 and s1.progress["s2"].match == 3
    assert s1.log.committed == 1
    assert net.applied["s1"] == []
    # Once an entry of term 4 is on a majority, x commits with it.
    net.drop_if = None
    net.propose("s1", b"z")
    net.tick("s1", times=2)
    assert s1.log.committed == 4
    assert net.applied["s1"] == [b"x", b"z"]
    assert net.applied["s3"] == [b"x", b"z"]
    # And s5's conflicting y is overwritten once it hears from s1 again.
    net.heal()
    net.tick("s1", times=2)
    assert net.nodes["s5"].log.term(2) == 2 and net.applied["s5"] == [b"x", b"z"]


def test_leader_appends_a_noop_of_its_term_on_election_5_4_2():
    net = Net(IDS)
    net.boot("n1")
    n1 = net.nodes["n1"]
    last = n1.log.entries[-1]
    assert (last.term, last.type, last.data) == (n1.term, EntryType.NORMAL, b"")
    assert n1.log.committed == last.index
    assert all(n.log.committed == last.index for n in net.nodes.values())
    assert net.applied == {i: [] for i in IDS}  # the no-op applies nothing


def test_leader_counts_itself_only_after_its_own_entries_are_durable_thesis_10_2_1():
    net = Net(IDS)
    net.boot("n1")
    n1 = net.nodes["n1"]
    index = n1.propose(b"a")
    rd = n1.ready()  # the leader's appends may leave before its own fsync
    appends = [m for m in rd.messages if m.type == MT.APPEND and m.entries]
    assert {m.to for m in appends} == {"n2", "n3"}
    net.nodes["n2"].step(next(m for m in appends if m.to == "n2"))
    (ack,) = [m for m in net.process("n2") if m.type == MT.APPEND_RESPONSE]
    n1.step(ack)  # n2 + an unsynced leader: not yet a majority
    assert n1.log.committed == index - 1
    n1.advance(rd)  # now the leader's copy is durable
    assert n1.log.committed == index


def test_entry_commits_once_a_quorum_is_reachable_again_5_3():
    """Same root as the lost-append test: on an idle group the leader's own
    proposal stayed uncommitted until another proposal arrived."""
    net = Net(IDS)
    net.boot("n1")
    net.isolated |= {"n2", "n3"}
    net.nodes["n1"].propose(b"a")
    net.deliver_all()
    n1 = net.nodes["n1"]
    assert n1.log.committed == n1.log.last_index() - 1  # no quorum: no commit
    net.heal()
    net.tick("n1", times=5)
    assert n1.log.committed == n1.log.last_index()
    assert net.applied["n1"] == [b"a"]


# ---- committed entries ----------------------------------------------------------------


def test_committed_entries_are_delivered_exactly_once_and_in_order_5_3():
    net = Net(IDS, committed_size_per_ready_bytes_max=60)
    net.boot("n1")
    seen = record_readies(net)
    expected = []
    for k in range(10):
        data = b"p%02d" % k
        net.propose("n1", data)
        expected.append(data)
    net.isolated.add("n2")
    for k in range(10, 15):
        data = b"p%02d" % k
        net.propose("n1", data)
        expected.append(data)
    net.heal()
    net.tick(times=3)
    for i in IDS:
        assert net.applied[i] == expected
        indexes = [e.index for j, rd in seen if j == i for e in rd.committed_entries]
        assert indexes == sorted(set(indexes))  # strictly increasing: once each
        assert indexes == list(range(indexes[0], net.nodes[i].log.committed + 1))
    # With a 60-byte cap, the ten-entry catch-up needed several Readies.
    assert sum(1 for j, rd in seen if j == "n2" and rd.committed_entries) > 1


def test_committed_entries_reapplied_after_restart_from_the_beginning_5_3():
    net = Net(IDS)
    net.boot("n1")
    net.propose("n1", b"a", b"b")
    net.restart("n2")
    net.deliver_all()
    assert net.applied["n2"] == [b"a", b"b"]  # the state machine was empty again
    net.propose("n1", b"c")
    assert net.applied["n2"] == [b"a", b"b", b"c"]


# ---- Ready contract ---------------------------------------------------------------------


def test_ready_messages_split_leader_traffic_from_acknowledgements_5_1():
    net = Net(IDS)
    seen = record_readies(net)
    net.boot("n1")
    net.propose("n1", b"a")
    net.isolated.add("n1")
    net.tick_until_leader()
    net.heal()
    net.tick(times=3)
    types_early = {m.type for _, rd in seen for m in rd.messages}
    types_late = {m.type for _, rd in seen for m in rd.messages_after_persist}
    # Votes and append acknowledgements vouch for durable state: never early.
    # Heartbeat responses, pre-votes and read traffic change nothing durable.
    assert types_early.isdisjoint({MT.VOTE, MT.VOTE_RESPONSE, MT.APPEND_RESPONSE})
    assert types_early >= {MT.APPEND, MT.HEARTBEAT}
    assert types_late.isdisjoint({MT.APPEND, MT.HEARTBEAT})
    assert types_late >= {MT.VOTE, MT.VOTE_RESPONSE, MT.APPEND_RESPONSE}


def test_ready_hard_state_only_when_changed_and_must_sync_semantics_5_1():
    net = Net(IDS)
    seen = record_readies(net)
    net.boot("n1")
    net.propose("n1", b"a")
    net.tick(times=5)
    net.isolated.add("n1")
    net.tick_until_leader()
    prev = {i: HardState() for i in IDS}  # nothing persisted before the bootstrap
    saw_commit_only = False
    for i, rd in seen:
        if rd.hard_state is not None:
            assert rd.hard_state != prev[i]
        hs = rd.hard_state or prev[i]
        term_or_vote = (hs.term, hs.vote) != (prev[i].term, prev[i].vote)
        assert rd.must_sync == bool(rd.entries or rd.snapshot is not None or term_or_vote)
        if rd.hard_state is not None and not term_or_vote and not rd.entries:
            saw_commit_only = True
            assert not rd.must_sync  # a commit-index change alone need not fsync
        prev[i] = hs
    assert saw_commit_only
    for i in IDS:
        n = net.nodes[i]
        assert prev[i] == HardState(n.term, n.vote, n.log.committed)


def test_ready_is_empty_when_nothing_happened():
    net = Net(IDS)
    net.boot("n1")
    for n in net.nodes.values():
        assert not n.has_ready()
    net.nodes["n2"].tick()
    assert not net.nodes["n2"].has_ready()


# ---- proposals ---------------------------------------------------------------------------


def test_proposal_to_a_follower_raises_not_leader_with_a_hint():
    net = Net(IDS)
    net.boot("n1")
    with pytest.raises(NotLeader) as ei:
        net.nodes["n2"].propose(b"a")
    assert ei.value.leader == "n1"
    assert isinstance(ei.value, ProposalDropped)


def test_leader_refuses_proposals_beyond_the_uncommitted_byte_limit():
    net = Net(IDS, uncommitted_size_bytes_max=300)
    net.boot("n1")
    net.isolated |= {"n2", "n3"}
    n1 = net.nodes["n1"]
    n1.propose(b"x" * 100)
    n1.propose(b"x" * 100)
    with pytest.raises(Busy):
        n1.propose(b"x" * 100)
    net.heal()
    net.tick("n1", times=2)
    n1.propose(b"x" * 100)  # committed entries free the budget
    net.deliver_all()
    assert len(net.applied["n2"]) == 3


# ---- §5.3 figure 7: a new leader brings every kind of follower log in line -------------


FIGURE7 = {
    # node: (current term, log terms from index 1; index 1 is the bootstrap entry)
    "L": (7, [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]),
    "a": (6, [1, 1, 1, 4, 4, 5, 5, 6, 6]),  # missing one entry
    "b": (4, [1, 1, 1, 4]),  # missing many
    "c": (6, [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]),  # one extra uncommitted entry
    "d": (7, [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]),  # extra entries of a later term
    "e": (4, [1, 1, 1, 4, 4, 4, 4]),  # missing and extra
    "f": (3, [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]),  # a different history from index 4
}


def test_new_leader_makes_every_follower_log_match_its_own_5_3_figure_7():
    net = Net(list(FIGURE7), pre_vote=False, check_quorum=False)
    net.deliver_all()
    boot = net.durable["L"]["entries"][0]
    for i, (term, log_terms) in FIGURE7.items():
        entries = [boot] + [
            Entry(t, k + 2, EntryType.NORMAL, b"%s%d" % (i.encode(), k + 2))
            for k, t in enumerate(log_terms[1:])
        ]
        # Entries the leader also has carry the leader's data (log matching).
        lead = FIGURE7["L"][1]
        entries = [
            Entry(e.term, e.index, e.type, b"L%d" % e.index)
            if e.index > 1 and e.index <= len(lead) and lead[: e.index] == log_terms[: e.index]
            else e
            for e in entries
        ]
        net.durable[i] = {"hs": HardState(term, None, 1), "entries": entries, "snapshot": None}
        net.restart(i)
    net.deliver_all()
    net.elect("L")  # a, b, e, f grant; c and d have newer logs and refuse
    leader = net.nodes["L"]
    assert leader.role == StateRole.LEADER and leader.term == 8
    refused = {m.frm for m in net.sent(MT.VOTE_RESPONSE, to="L") if m.reject}
    assert refused == {"c", "d"}
    net.tick("L", times=3)
    want = logs(net, ["L"])["L"]
    assert want[-1][:2] == (11, 8)  # the no-op of term 8
    for i in FIGURE7:
        assert logs(net, [i])[i] == want, i
        assert net.nodes[i].log.committed == 11
    expected = [b"L%d" % k for k in range(2, 11)]
    assert all(net.applied[i] == expected for i in FIGURE7)
