"""A peer cannot make the core raise: misaddressed, unknown, stale and
nonsensical messages are ignored and counted (RaftState.step's contract).

Structurally malformed messages (entries out of sequence, entry terms above
the message term) are rejected by the wire codec before they reach step();
the fuzz test below therefore generates only messages the codec would pass.
"""

from __future__ import annotations

import random

from raftnet import Net

from multiraft.raft.types import (
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType as MT,
    SnapshotMeta,
    StateRole,
)

IDS = ["n1", "n2", "n3"]


def state(node):
    return (node.term, node.vote, node.role, node.leader, node.log.committed,
            node.log.last_index(), {n: (p.match, p.next_index) for n, p in node.progress.items()})


def booted():
    net = Net(IDS)
    net.boot("n1")
    net.propose("n1", b"a")
    return net


def test_message_to_the_wrong_id_is_ignored_and_counted():
    net = booted()
    n2 = net.nodes["n2"]
    before = state(n2)
    for t in (MT.APPEND, MT.VOTE, MT.HEARTBEAT, MT.TIMEOUT_NOW):
        n2.step(Message(t, "n1", "n3", n2.term + 1))
    assert state(n2) == before and not n2.has_ready()
    assert n2.counters["dropped_misaddressed"] == 4


def test_leader_ignores_responses_from_unknown_peers():
    net = booted()
    n1 = net.nodes["n1"]
    before = state(n1)
    n1.step(Message(MT.APPEND_RESPONSE, "zz", "n1", n1.term, index=1))
    n1.step(Message(MT.HEARTBEAT_RESPONSE, "zz", "n1", n1.term, context=99))
    n1.step(Message(MT.APPEND_RESPONSE, "zz", "n1", n1.term, index=2, reject=True))
    assert state(n1) == before
    assert n1.counters["dropped_unknown_peer"] == 3
    net.deliver_all()
    assert not net.sent(to="zz")


def test_stale_term_messages_are_ignored_and_counted_5_1():
    net = booted()
    n2 = net.nodes["n2"]
    stale = n2.term - 1
    before = state(n2)
    n2.step(Message(MT.APPEND, "n3", "n2", stale, 1, 1, (Entry(stale, 2, 0, b"evil"),), 2))
    n2.step(Message(MT.VOTE, "n3", "n2", stale, 9, 99))
    n2.step(Message(MT.TIMEOUT_NOW, "n1", "n2", stale))
    n2.step(Message(MT.SNAPSHOT, "n3", "n2", stale, snapshot=(SnapshotMeta(9, 1, ConfState()), 0, b"", True)))
    assert state(n2) == before
    assert n2.counters["dropped_stale_term"] == 4
    assert n2.log.entries[-1].data == b"a"


def test_stale_leader_is_told_the_newer_term_so_it_steps_down_thesis_6_2():
    net = booted()
    n2 = net.nodes["n2"]
    n2.step(Message(MT.HEARTBEAT, "n3", "n2", n2.term - 1, commit=0, context=1))
    net.deliver_all()
    resp = net.sent(MT.APPEND_RESPONSE, frm="n2", to="n3")[-1]
    assert resp.term == n2.term and not resp.reject
    n2.step(Message(MT.PRE_VOTE, "n3", "n2", n2.term - 1, 1, 1))
    net.deliver_all()
    resp = net.sent(MT.PRE_VOTE_RESPONSE, frm="n2", to="n3")[-1]
    assert resp.reject and resp.term == n2.term


def test_append_response_acking_beyond_the_last_index_is_ignored():
    net = booted()
    n1 = net.nodes["n1"]
    last = n1.log.last_index()
    before = state(n1)
    n1.step(Message(MT.APPEND_RESPONSE, "n2", "n1", n1.term, index=last + 5))
    n1.step(Message(MT.APPEND_RESPONSE, "n3", "n1", n1.term, index=last + 1))
    assert state(n1) == before
    assert n1.log.committed == last
    assert n1.counters["dropped_malformed"] == 2


def test_rejected_append_response_never_raises_match_raft_lite_bug():
    net = booted()
    n1 = net.nodes["n1"]
    pr = n1.progress["n2"]
    match = pr.match
    n1.step(Message(MT.APPEND_RESPONSE, "n2", "n1", n1.term, index=n1.log.last_index(),
                    reject=True, reject_hint=n1.log.last_index()))
    assert pr.match == match
    net.deliver_all()
    assert pr.match == match  # the re-probe confirms what was already known


def test_malformed_payloads_are_counted_not_raised():
    net = booted()
    n1, n2 = net.nodes["n1"], net.nodes["n2"]
    n2.step(Message(MT.SNAPSHOT, "n1", "n2", n2.term, snapshot=None))
    n2.step(Message(MT.SNAPSHOT, "n1", "n2", n2.term, snapshot=(1, 2)))
    assert n2.counters["dropped_malformed"] == 2
    n1.step(Message(MT.READ_INDEX, "n2", "n1", n1.term, context=None))
    assert n1.counters["dropped_malformed"] == 1
    n1.step(Message(MT.HEARTBEAT_RESPONSE, "n2", "n1", n1.term, context=b"not a round"))
    assert not n1.has_ready() or not n1.ready().read_states


def test_unexpected_message_types_per_role_are_counted():
    net = booted()
    n1, n2 = net.nodes["n1"], net.nodes["n2"]
    c1, c2 = n1.counters["dropped_unexpected"], n2.counters["dropped_unexpected"]
    n1.step(Message(MT.APPEND, "n2", "n1", n1.term))  # a second leader of our term?
    n1.step(Message(MT.VOTE_RESPONSE, "n2", "n1", n1.term))
    assert n1.role == StateRole.LEADER and n1.counters["dropped_unexpected"] == c1 + 2
    n2.step(Message(MT.APPEND_RESPONSE, "n3", "n2", n2.term, index=1))
    n2.step(Message(MT.READ_INDEX, "n3", "n2", n2.term, context=b"r"))
    assert n2.counters["dropped_unexpected"] == c2 + 2


def test_invariants_hold_after_every_delivery_under_random_plausible_messages():
    """Fuzz: messages the wire codec accepts (entries contiguous after prev,
    entry terms <= message term), from members and strangers, at stale,
    current and future terms, into every role. Net checks every node's
    invariants after each delivery; nothing may raise."""
    rng = random.Random(20240601)
    types = list(MT)
    for trial in range(120):
        net = Net(IDS, seed=trial)
        net.boot("n1")
        net.propose("n1", b"a", b"b")
        if trial % 3 == 1:
            net.isolated.add("n1")
            net.tick_until_leader()
            net.heal()
        target = rng.choice(IDS)
        node = net.nodes[target]
        for _ in range(25):
            t = rng.choice(types)
            last = node.log.last_index()
            term = max(0, node.term + rng.choice([-1, 0, 0, 1]))
            index = rng.randint(0, last + 3)
            entries = ()
            if t == MT.APPEND and rng.random() < 0.7:
                entries = tuple(
                    Entry(rng.randint(1, max(1, term)), index + 1 + j, 0, b"x")
                    for j in range(rng.randint(1, 3))
                )
            snap = None
            if t == MT.SNAPSHOT:
                meta = SnapshotMeta(rng.randint(0, last + 5), rng.randint(0, term), node.conf)
                snap = (meta, rng.choice([0, 0, 4]), b"abcd", rng.random() < 0.7)
            m = Message(
                t, rng.choice(IDS + ["zz"]), target, term, rng.randint(0, term), index,
                entries, rng.randint(0, last + 3), rng.random() < 0.3,
                rng.randint(0, last + 3), rng.choice([None, b"ctx", 1, 10**6]), snap,
            )
            node.step(m)
            net.deliver_all()  # checks every node's invariants after each batch
            net.tick(target)
        hs = net.durable[target]["hs"]
        assert hs == HardState(node.term, node.vote, node.log.committed)
