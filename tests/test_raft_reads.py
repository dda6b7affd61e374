"""Linearizable reads: ReadIndex (thesis §6.4) and leader-lease reads
(thesis §6.4.1), with their configuration rules."""

from __future__ import annotations

import pytest
from raftnet import Net

from multiraft.raft.confchange import add_learner
from multiraft.raft.config import Config
from multiraft.raft.errors import Busy, NotLeader
from multiraft.raft.types import Message, MessageType as MT, ReadOnlyOption, ReadState, StateRole

IDS = ["n1", "n2", "n3"]
LEASE = dict(read_only=ReadOnlyOption.LEASE_BASED)


def hb_response(frm, to, term, round_):
    return Message(MT.HEARTBEAT_RESPONSE, frm, to, term, context=round_)


def read_states(node):
    """Drain a node's Ready without sending anything; return its read states."""
    out = []
    while node.has_ready():
        rd = node.ready()
        out += rd.read_states
        node.advance(rd)
    return out


# ---- thesis §6.4 ReadIndex ------------------------------------------------------------


def test_read_on_new_leader_waits_for_its_noop_to_commit_thesis_6_4():
    net = Net(IDS)
    net.drop_types.add(MT.APPEND)  # the new leader's no-op cannot replicate yet
    net.boot("n1")
    n1 = net.nodes["n1"]
    noop = n1.log.last_index()
    assert n1.log.committed < noop
    n1.read_index(b"r")
    net.tick(times=3)  # heartbeats are acknowledged, but the no-op is not committed
    assert net.reads["n1"] == []
    net.drop_types.clear()
    net.tick()  # the next heartbeat's answer lets the probe through
    assert n1.log.committed == noop
    assert net.reads["n1"] == [ReadState(noop, b"r")]


def test_read_confirmed_only_after_quorum_acks_a_heartbeat_round_started_after_it_thesis_6_4():
    net = Net(IDS)
    net.boot("n1")
    net.tick()  # a complete heartbeat round, acknowledged by everyone
    n1 = net.nodes["n1"]
    old_round = n1._round
    n1.read_index(b"r")
    rd = n1.ready()
    beats = [m for m in rd.messages if m.type == MT.HEARTBEAT]
    assert {m.to for m in beats} == {"n2", "n3"}
    new_round = beats[0].context
    assert new_round > old_round and rd.read_states == ()
    n1.advance(rd)
    # Acks of the earlier round prove nothing about leadership at read time.
    n1.step(hb_response("n2", "n1", 2, old_round))
    n1.step(hb_response("n3", "n1", 2, old_round))
    assert read_states(n1) == []
    n1.step(hb_response("n2", "n1", 2, new_round))  # leader + n2: a quorum
    assert read_states(n1) == [ReadState(n1.log.committed, b"r")]
    assert n1.counters["readindex_reads"] == 1


def test_reads_asked_before_the_round_leaves_share_it_thesis_6_4():
    net = Net(IDS)
    net.boot("n1")
    n1 = net.nodes["n1"]
    n1.read_index(b"a")
    n1.read_index(b"b")  # same Ready: the heartbeats have not left yet
    rd = n1.ready()
    assert len([m for m in rd.messages if m.type == MT.HEARTBEAT]) == 2
    n1.advance(rd)
    n1.step(hb_response("n3", "n1", 2, n1._round))
    assert [r.context for r in read_states(n1)] == [b"a", b"b"]


def test_read_index_includes_every_write_committed_before_the_read_thesis_6_4():
    net = Net(IDS)
    net.boot("n1")
    index = net.propose("n1", b"w")
    net.nodes["n1"].read_index(b"r")
    net.deliver_all()
    (rs,) = net.reads["n1"]
    assert rs.index >= index


def test_partitioned_leader_cannot_serve_read_index_reads_thesis_6_4():
    for check_quorum in (True, False):
        net = Net(IDS, check_quorum=check_quorum)
        net.boot("n1")
        net.isolated.add("n1")
        net.nodes["n1"].read_index(b"r")
        new = net.tick_until_leader()
        net.propose(new, b"newer")
        net.tick(times=30)
        assert net.reads["n1"] == []


def test_follower_read_is_forwarded_to_the_leader_read_index_thesis_6_4():
    net = Net(IDS)
    net.boot("n1")
    index = net.propose("n1", b"w")
    net.nodes["n2"].read_index(b"f")
    net.deliver_all()
    assert len(net.sent(MT.READ_INDEX, frm="n2", to="n1")) == 1
    assert net.sent(MT.READ_INDEX_RESPONSE, frm="n1", to="n2")
    assert net.reads["n2"] == [ReadState(index, b"f")]
    assert net.nodes["n2"].log.applied >= index  # the follower may now serve it


def test_follower_without_a_known_leader_refuses_reads():
    net = Net(IDS)
    net.deliver_all()
    with pytest.raises(NotLeader):
        net.nodes["n2"].read_index(b"f")


def test_forwarded_read_is_not_confirmed_by_a_partitioned_leader_thesis_6_4():
    net = Net(IDS)
    net.boot("n1")
    net.cut = {frozenset(("n1", "n3"))}
    net.drop_if = lambda m: m.type == MT.HEARTBEAT_RESPONSE and m.frm == "n2"
    net.nodes["n3"].read_index(b"f")  # n3 -> n1 is cut: lost
    net.nodes["n2"].read_index(b"g")  # reaches n1, but n1 hears no acks
    net.tick(times=5)
    assert net.reads["n2"] == [] and net.reads["n3"] == []


def test_learner_acks_do_not_count_toward_read_index_quorum_thesis_6_4():
    net = Net(["n1", "n2"], learners=["n3"])
    net.boot("n1")
    net.nodes["n1"].propose_conf_change(add_learner("n3"))
    net.tick(times=2)
    assert net.nodes["n1"].progress["n3"].match == net.nodes["n1"].log.last_index()
    net.cut = {frozenset(("n1", "n2"))}
    net.nodes["n1"].read_index(b"r")
    net.tick(times=3)
    # Counting n3 would make {n1, n3} look like 2 of 3 nodes: no.
    assert net.reads["n1"] == []
    assert net.sent(MT.HEARTBEAT_RESPONSE, frm="n3")
    net.heal()
    net.tick()
    assert [r.context for r in net.reads["n1"]] == [b"r"]


def test_single_voter_serves_read_index_at_once_after_its_noop():
    net = Net(["n1"])
    net.tick_until_leader()
    n1 = net.nodes["n1"]
    n1.read_index(b"r")
    net.deliver_all()
    assert net.reads["n1"] == [ReadState(n1.log.committed, b"r")]


def test_too_many_pending_reads_raise_busy():
    net = Net(IDS, read_requests_max=2)
    net.boot("n1")
    net.isolated.add("n1")
    n1 = net.nodes["n1"]
    n1.read_index(b"a")
    n1.read_index(b"b")
    with pytest.raises(Busy):
        n1.read_index(b"c")


def test_pending_reads_are_dropped_when_the_leader_steps_down_thesis_6_4():
    net = Net(IDS)
    net.boot("n1")
    net.isolated.add("n1")
    net.nodes["n1"].read_index(b"r")
    net.tick(times=30)  # CheckQuorum steps it down
    assert net.nodes["n1"].role == StateRole.FOLLOWER
    net.heal()
    net.tick(times=5)
    assert net.reads["n1"] == []  # the client must retry: never a late answer


# ---- thesis §6.4.1 lease reads ---------------------------------------------------------


def heartbeats_sent(net):
    return len(net.sent(MT.HEARTBEAT))


def test_lease_read_served_without_a_heartbeat_round_while_lease_valid_thesis_6_4_1():
    net = Net(IDS, **LEASE)
    net.boot("n1")
    net.tick()  # one acknowledged round starts the lease
    before = heartbeats_sent(net)
    net.nodes["n1"].read_index(b"r")
    net.deliver_all()
    [rs] = net.reads["n1"]
    assert (rs.index, rs.context) == (net.nodes["n1"].log.committed, b"r")
    assert rs.lease_expiry is not None  # in ticks: this network has no clock
    assert heartbeats_sent(net) == before
    assert net.nodes["n1"].counters["lease_reads"] == 1


def test_lease_read_not_served_after_the_lease_expires_thesis_6_4_1():
    et, lease = 10, 6
    net = Net(IDS, election_tick=et, lease_ticks=lease, **LEASE)
    net.boot("n1")
    net.tick()  # round acknowledged: lease runs until start + lease
    n1 = net.nodes["n1"]
    net.isolated.add("n1")
    net.tick("n1", times=lease - 1)  # heartbeats go unanswered
    n1.read_index(b"in")
    net.deliver_all()
    assert [r.context for r in net.reads["n1"]] == [b"in"]
    net.tick("n1")
    n1.read_index(b"out")
    net.tick("n1", times=3)
    assert [r.context for r in net.reads["n1"]] == [b"in"]
    assert n1.counters["lease_reads"] == 1


def test_lease_expires_before_any_other_node_can_be_elected_thesis_6_4_1():
    for seed in range(10):
        net = Net(IDS, seed=seed, **LEASE)
        net.boot("n1")
        net.tick(times=1 + seed % 3)  # at least one acknowledged round
        net.isolated.add("n1")
        n1 = net.nodes["n1"]
        served_until = None
        for t in range(60):
            others = [i for i in ("n2", "n3") if net.nodes[i].role == StateRole.LEADER]
            if n1.role == StateRole.LEADER:
                served = n1.counters["lease_reads"]
                n1.read_index(b"r%d" % t)
                net.deliver_all()
                if n1.counters["lease_reads"] > served:
                    served_until = t
                    assert not others, (seed, t)
            if others:
                break
            net.tick()
        assert others and served_until is not None, seed


def test_lease_not_trusted_after_timeout_now_in_that_term_thesis_3_10():
    net = Net(IDS, **LEASE)
    net.boot("n1")
    net.tick()
    n1 = net.nodes["n1"]
    net.drop_types.add(MT.TIMEOUT_NOW)
    n1.transfer_leader("n2")  # n2 is caught up: TimeoutNow is sent (and lost)
    net.deliver_all()
    assert n1.counters["timeout_now_sent"] == 1
    net.tick(times=n1.config.election_tick)  # the transfer is abandoned
    assert n1.lead_transferee is None and n1.role == StateRole.LEADER
    before = heartbeats_sent(net)
    n1.read_index(b"r")
    net.deliver_all()
    # Served, but through a heartbeat round, not the lease: n2 may still hold
    # the TimeoutNow and win an election that ignores leases.
    assert [r.context for r in net.reads["n1"]] == [b"r"]
    assert n1.counters["lease_reads"] == 0
    assert heartbeats_sent(net) > before


def test_lease_is_trusted_again_by_a_new_leader_after_a_transfer_thesis_3_10():
    net = Net(IDS, **LEASE)
    net.boot("n1")
    net.nodes["n1"].transfer_leader("n2")
    net.deliver_all()
    assert net.leader() == "n2"
    net.tick()
    net.nodes["n2"].read_index(b"r")
    net.deliver_all()
    assert net.nodes["n2"].counters["lease_reads"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(read_only=ReadOnlyOption.LEASE_BASED, check_quorum=False),
        dict(election_tick=10, lease_ticks=10),
        dict(election_tick=10, lease_ticks=11),
        dict(lease_ticks=0),
        dict(election_tick=5, heartbeat_tick=5),
        dict(election_tick=0),
        dict(inflight_msgs_max=0),
    ],
)
def test_config_rejects_unsafe_options(kwargs):
    with pytest.raises(ValueError):
        Config(id="a", **kwargs)


def test_config_default_lease_is_shorter_than_the_election_timeout():
    for et in (2, 3, 10, 50):
        c = Config(id="a", election_tick=et, read_only=ReadOnlyOption.LEASE_BASED)
        assert 0 < c.effective_lease_ticks < et
    assert Config(id="a", election_tick=10, lease_ticks=9).effective_lease_ticks == 9


def test_per_request_lease_override_needs_check_quorum_thesis_6_4_1():
    net = Net(IDS)  # SAFE reads by default
    net.boot("n1")
    net.tick()
    n1 = net.nodes["n1"]
    before = heartbeats_sent(net)
    n1.read_index(b"l", lease=True)
    net.deliver_all()
    assert n1.counters["lease_reads"] == 1 and heartbeats_sent(net) == before
    n1.read_index(b"s", lease=False)
    net.deliver_all()
    assert n1.counters["lease_reads"] == 1 and heartbeats_sent(net) > before
    assert [r.context for r in net.reads["n1"]] == [b"l", b"s"]
    # Without CheckQuorum nothing bounds a deposed leader's belief: no lease.
    net = Net(IDS, check_quorum=False)
    net.boot("n1")
    net.tick()
    net.nodes["n1"].read_index(b"l", lease=True)
    net.deliver_all()
    assert net.nodes["n1"].counters["lease_reads"] == 0
    assert [r.context for r in net.reads["n1"]] == [b"l"]


def test_forwarded_follower_reads_always_use_a_heartbeat_round_thesis_6_4():
    net = Net(IDS, **LEASE)
    net.boot("n1")
    net.tick()
    net.nodes["n2"].read_index(b"f")
    net.deliver_all()
    assert [r.context for r in net.reads["n2"]] == [b"f"]
    assert net.nodes["n1"].counters["lease_reads"] == 0
    assert net.nodes["n1"].counters["readindex_reads"] == 1


def test_leader_read_round_bookkeeping_stays_bounded_thesis_6_4():
    net = Net(IDS)  # SAFE reads: the lease path (which prunes) never runs
    net.boot("n1")
    n1 = net.nodes["n1"]
    for k in range(500):
        net.tick("n1")
        if k % 50 == 0:
            n1.read_index(b"r%d" % k)
    net.deliver_all()
    assert len(net.reads["n1"]) == 10
    assert len(n1._round_sent_at) <= 10  # white-box: per-round state is pruned


# ---- the lease in the driver's real time (issue 9) --------------------------------------

# Time in seconds; a tick every 1.0 s, election timeout 10 s, 2 s of clock drift.
TIMED = dict(election_tick=10, lease_duration=10.0 - 2.0 - 1.0, **LEASE)


def timed_tick(net, now, ids=None):
    for i in ids or list(net.nodes):
        net.nodes[i].tick(now=now)
    net.deliver_all()


def test_lease_read_falls_back_to_readindex_when_real_time_passed_without_ticks():
    # The old leader's process stalls: it is not ticked while the others elect
    # a new leader and commit a write. It wakes up with a lease read queued,
    # before its ticker catches up: by ticks its lease looks fresh, by the
    # clock it ended long ago.
    net = Net(IDS, **TIMED)
    for n in net.nodes.values():
        n.set_time(0.0)
    net.boot("n1")
    timed_tick(net, 1.0)  # an acknowledged round: the lease runs until 1 + 7
    n1 = net.nodes["n1"]
    net.isolated.add("n1")
    now = 1.0
    while net.leader() is None and now < 100:
        now += 1.0
        timed_tick(net, now, ["n2", "n3"])
    new = net.leader()
    assert new in ("n2", "n3")
    net.propose(new, b"v2")
    assert n1.role == StateRole.LEADER  # it has not noticed: it never ran
    net.reads["n1"].clear()
    n1.read_index(b"stale?", now=now)
    net.deliver_all()
    assert net.reads["n1"] == []  # no lease answer: a heartbeat round instead
    assert n1.counters["lease_reads"] == 0
    net.heal()
    timed_tick(net, now + 1.0, ["n1"])  # its next heartbeats meet the new term
    assert n1.role != StateRole.LEADER and net.reads["n1"] == []


def test_lease_read_answered_within_the_lease_carries_its_expiry():
    net = Net(IDS, **TIMED)
    for n in net.nodes.values():
        n.set_time(0.0)
    net.boot("n1")
    timed_tick(net, 1.0)  # round created at 1.0, acknowledged by all
    n1 = net.nodes["n1"]
    n1.read_index(b"r", now=7.5)
    net.deliver_all()
    assert net.reads["n1"] == [ReadState(n1.log.committed, b"r", lease_expiry=8.0)]
    assert n1.counters["lease_reads"] == 1


def test_lease_runs_from_the_round_creation_not_from_its_acknowledgement():
    net = Net(IDS, **TIMED)
    for n in net.nodes.values():
        n.set_time(0.0)
    net.boot("n1")
    n1 = net.nodes["n1"]
    n1.tick(now=1.0)  # heartbeats created at 1.0 ...
    n1.set_time(6.0)
    net.deliver_all()  # ... acknowledged at 6.0
    n1.read_index(b"late", now=8.0)  # 1 + 7 = 8: the lease has ended
    net.deliver_all()
    assert n1.counters["lease_reads"] == 0


def test_lease_never_valid_before_the_driver_passes_a_time():
    net = Net(IDS, **TIMED)
    net.boot("n1")
    net.tick()  # acknowledged rounds, but no time was ever passed
    net.nodes["n1"].read_index(b"r")
    net.deliver_all()
    assert net.nodes["n1"].counters["lease_reads"] == 0
    assert [r.lease_expiry for r in net.reads["n1"]] == [None]


def test_core_clock_never_runs_backwards():
    net = Net(IDS, **TIMED)
    n1 = net.nodes["n1"]
    n1.set_time(5.0)
    n1.set_time(3.0)
    assert n1._now == 5.0


def test_config_rejects_a_non_positive_lease_duration():
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError):
            Config(id="a", lease_duration=bad)


@pytest.mark.parametrize("context", [7, None])
def test_a_read_index_response_without_a_bytes_context_is_dropped_as_malformed(context):
    """A read id is bytes: a buggy peer's int or null context never becomes a ReadState."""
    net = Net(IDS)
    net.boot("n1")
    n2 = net.nodes["n2"]
    read_states(n2)
    before = n2.counters["dropped_malformed"]
    n2.step(Message(MT.READ_INDEX_RESPONSE, "n1", "n2", n2.term, index=n2.log.committed, context=context))
    assert read_states(n2) == []
    assert n2.counters["dropped_malformed"] == before + 1
