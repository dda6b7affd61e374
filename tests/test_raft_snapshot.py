"""Log compaction and snapshots (§7, thesis §5), and restarting from durable
state (§5.1: term, vote and log survive; nothing committed is overwritten)."""

from __future__ import annotations

from raftnet import Net

from multiraft.raft.confchange import add_learner
from multiraft.raft.types import (
    HardState,
    Message,
    MessageType as MT,
    Snapshot,
    SnapshotMeta,
    StateRole,
)

IDS = ["n1", "n2", "n3"]


def entries_of(net, i):
    return [(e.index, e.term, e.data) for e in net.nodes[i].log.entries]


def lagging_follower_net(chunk=10, data=b"X" * 95, **kw):
    """n3 misses ten entries; n1 then compacts its whole log into a snapshot."""
    net = Net(IDS, snapshot_chunk_bytes_max=chunk, **kw)
    net.boot("n1")
    net.isolated.add("n3")
    for k in range(10):
        net.propose("n1", b"e%d" % k)
    snap = net.nodes["n1"].create_snapshot(data)
    net.heal()
    return net, snap


# ---- compaction ------------------------------------------------------------------------


def test_create_snapshot_compacts_the_log_up_to_the_applied_index_7():
    net = Net(IDS)
    net.boot("n1")
    for k in range(6):
        net.propose("n1", b"e%d" % k)
    n1 = net.nodes["n1"]
    applied = n1.log.applied
    snap = n1.create_snapshot(b"image")
    assert (snap.meta.index, snap.meta.term) == (applied, n1.term)
    assert snap.meta.conf_state == n1.conf and snap.data == b"image"
    assert n1.log.snapshot_index == applied and n1.log.entries == []
    assert n1.log.term(applied) == n1.term and n1.log.term(applied - 1) is None
    net.propose("n1", b"after")  # the log continues after the snapshot
    assert n1.log.entries[0].index == applied + 1
    assert net.applied["n2"][-1] == b"after"


def test_create_snapshot_with_lag_keeps_recent_entries_7():
    net = Net(IDS)
    net.boot("n1")
    for k in range(6):
        net.propose("n1", b"e%d" % k)
    n1 = net.nodes["n1"]
    snap = n1.create_snapshot(b"image", compact_lag_entries=3)
    assert snap.meta.index == n1.log.applied == 8
    assert n1.log.snapshot_index == 5
    assert [e.index for e in n1.log.entries] == [6, 7, 8]
    n1.check_invariants()


# ---- sending and installing snapshots ---------------------------------------------------


def test_follower_behind_compacted_log_gets_snapshot_in_chunks_7():
    net, snap = lagging_follower_net(chunk=10, data=b"X" * 95)
    net.tick(times=2)
    chunks = net.sent(MT.SNAPSHOT, to="n3")
    assert len(chunks) == 10  # ceil(95 / 10)
    assert [c.snapshot[1] for c in chunks] == list(range(0, 95, 10))
    assert [c.snapshot[3] for c in chunks] == [False] * 9 + [True]
    assert b"".join(c.snapshot[2] for c in chunks) == snap.data
    n3 = net.nodes["n3"]
    assert n3.counters["snapshots_installed"] == 1
    assert n3.log.snapshot_index == snap.meta.index and n3.log.committed == snap.meta.index
    assert n3.conf == snap.meta.conf_state
    assert net.durable["n3"]["snapshot"] == snap  # handed to the driver to persist
    assert net.applied["n3"] == [("snapshot", snap.meta.index)]
    # Then it replicates normally, from the log.
    net.propose("n1", b"after")
    assert net.applied["n3"] == [("snapshot", snap.meta.index), b"after"]
    assert net.nodes["n1"].counters["snapshots_sent"] == 1


def test_empty_snapshot_is_sent_as_one_chunk_7():
    net, snap = lagging_follower_net(data=b"")
    net.tick(times=2)
    (chunk,) = net.sent(MT.SNAPSHOT, to="n3")
    assert chunk.snapshot[1:] == (0, b"", True)
    assert net.nodes["n3"].log.snapshot_index == snap.meta.index


def test_out_of_order_snapshot_chunk_is_ignored_and_the_leader_retries_7():
    net, snap = lagging_follower_net(chunk=10, data=b"X" * 95)
    dropped = []

    def drop_second_chunk_once(m):
        if m.type == MT.SNAPSHOT and m.snapshot[1] == 10 and not dropped:
            dropped.append(m)
            return True
        return False

    net.drop_if = drop_second_chunk_once
    net.tick(times=2)
    n3 = net.nodes["n3"]
    assert dropped
    assert n3.counters["snapshot_chunks_out_of_order"] == 8  # offsets 20 .. 90
    assert n3.counters["snapshots_installed"] == 0
    assert n3.log.snapshot_index == 0
    # The leader gives up waiting after its snapshot timeout and sends again.
    net.tick(times=net.nodes["n1"].config.effective_snapshot_timeout_ticks + 2)
    assert n3.counters["snapshots_installed"] == 1
    assert n3.log.snapshot_index == snap.meta.index
    net.propose("n1", b"after")
    assert net.applied["n3"][-1] == b"after"


def test_chunk_of_another_snapshot_does_not_corrupt_an_assembly_7():
    net = Net(IDS)
    net.boot("n1")
    n3 = net.nodes["n3"]
    conf = n3.conf
    meta_a = SnapshotMeta(50, 2, conf)
    meta_b = SnapshotMeta(60, 2, conf)
    n3.step(Message(MT.SNAPSHOT, "n1", "n3", 2, snapshot=(meta_a, 0, b"aaaa", False)))
    n3.step(Message(MT.SNAPSHOT, "n1", "n3", 2, snapshot=(meta_b, 4, b"bbbb", True)))
    assert n3.counters["snapshot_chunks_out_of_order"] == 1
    assert n3.log.snapshot_index == 0
    n3.step(Message(MT.SNAPSHOT, "n1", "n3", 2, snapshot=(meta_a, 4, b"aaaa", True)))
    rd = n3.ready()
    assert rd.snapshot == Snapshot(meta_a, b"aaaaaaaa")
    n3.advance(rd)


def test_snapshot_at_or_below_commit_is_not_installed_7():
    net = Net(IDS)
    net.boot("n1")
    net.propose("n1", b"a")
    n3 = net.nodes["n3"]
    old = SnapshotMeta(2, 2, n3.conf)
    n3.step(Message(MT.SNAPSHOT, "n1", "n3", 2, snapshot=(old, 0, b"", True)))
    net.deliver_all()
    assert n3.counters["snapshots_installed"] == 0
    assert n3.log.snapshot_index == 0 and n3.log.last_index() == 3
    resp = net.sent(MT.APPEND_RESPONSE, frm="n3")[-1]
    assert not resp.reject and resp.index == n3.log.committed == 3


def test_new_member_learns_the_config_from_a_snapshot_when_the_log_is_compacted_7():
    net = Net(IDS, learners=["n4"])
    net.boot("n1")
    net.propose("n1", b"a")
    net.nodes["n1"].propose_conf_change(add_learner("n4"))
    net.deliver_all()
    net.nodes["n1"].create_snapshot(b"img")  # the bootstrap entry is gone
    net.tick(times=3)
    n4 = net.nodes["n4"]
    assert n4.counters["snapshots_installed"] == 1
    assert n4.conf.voters == set(IDS) and n4.conf.learners == {"n4"}
    net.propose("n1", b"b")
    assert net.applied["n4"][-1] == b"b"


# ---- restart (§5.1) -----------------------------------------------------------------------


def test_term_vote_and_log_survive_restart_5_1():
    net = Net(IDS)
    net.boot("n1")
    for k in range(3):
        net.propose("n1", b"e%d" % k)
    before = {i: (n.term, n.vote, entries_of(net, i), n.log.committed) for i, n in net.nodes.items()}
    for i in IDS:
        net.restart(i)
    after = {i: (n.term, n.vote, entries_of(net, i), n.log.committed) for i, n in net.nodes.items()}
    assert after == before
    assert all(n.role == StateRole.FOLLOWER and n.leader is None for n in net.nodes.values())
    net.deliver_all()  # committed entries are applied again from the log
    assert all(net.applied[i] == [b"e0", b"e1", b"e2"] for i in IDS)


def test_appending_after_restart_continues_the_log_raft_lite_bug_5_3():
    net = Net(["n1"])
    net.tick_until_leader()
    net.propose("n1", b"a", b"b")
    old = entries_of(net, "n1")
    net.restart("n1")
    net.tick_until_leader()
    net.propose("n1", b"c")
    new = entries_of(net, "n1")
    assert new[: len(old)] == old  # nothing committed was overwritten
    assert [i for i, _, _ in new] == list(range(1, len(new) + 1))
    assert net.applied["n1"] == [b"a", b"b", b"c"]
    assert net.durable["n1"]["entries"] == net.nodes["n1"].log.entries


def test_appending_after_whole_cluster_restart_keeps_committed_entries_5_3():
    net = Net(IDS)
    net.boot("n1")
    net.propose("n1", b"a", b"b")
    old = {i: entries_of(net, i) for i in IDS}
    for i in IDS:
        net.restart(i)
    leader = net.tick_until_leader()
    net.propose(leader, b"c")
    net.tick(times=2)
    for i in IDS:
        assert entries_of(net, i)[: len(old[i])] == old[i]
        assert net.applied[i] == [b"a", b"b", b"c"]
    assert net.nodes[leader].term == 3


def test_restart_from_snapshot_and_entries_skips_entries_the_snapshot_covers_7():
    net = Net(IDS)
    net.boot("n1")
    for k in range(8):
        net.propose("n1", b"e%d" % k)
    n2 = net.nodes["n2"]
    snap = n2.create_snapshot(b"image", compact_lag_entries=3)
    # The store kept every entry (including those at and below the snapshot).
    d = net.durable["n2"]
    d["snapshot"] = snap
    assert d["entries"][0].index == 1 <= snap.meta.index
    net.restart("n2")
    n2 = net.nodes["n2"]
    n2.check_invariants()
    assert n2.log.snapshot_index == snap.meta.index == 10
    assert n2.log.last_index() == 10 and n2.log.committed == 10
    assert n2.conf == snap.meta.conf_state
    net.deliver_all()
    assert net.applied["n2"] == []  # the snapshot holds the state: nothing to re-apply
    net.propose("n1", b"after")
    assert net.applied["n2"] == [b"after"]


def test_restart_from_snapshot_reapplies_committed_entries_after_it_7():
    net = Net(IDS)
    net.boot("n1")
    for k in range(4):
        net.propose("n1", b"e%d" % k)
    n2 = net.nodes["n2"]
    snap = SnapshotMeta(4, 2, n2.conf)  # covers e0, e1; e2, e3 follow
    d = net.durable["n2"]
    d["snapshot"] = Snapshot(snap, b"img")
    net.isolated.add("n2")
    net.restart("n2")
    net.deliver_all()
    assert net.applied["n2"] == [b"e2", b"e3"]
    assert net.nodes["n2"].log.snapshot_index == 4


def test_restarted_follower_rejoins_and_catches_up_5_1():
    net = Net(IDS)
    net.boot("n1")
    net.propose("n1", b"a")
    net.isolated.add("n3")
    net.propose("n1", b"b")
    net.restart("n3")
    net.heal()
    net.tick(times=3)
    assert net.applied["n3"] == [b"a", b"b"]
    assert net.nodes["n3"].term == 2 and net.nodes["n3"].leader == "n1"


def test_uncommitted_tail_persisted_before_restart_is_replaced_if_it_conflicts_5_3():
    net = Net(IDS, check_quorum=False)
    net.boot("n1")
    net.isolated.add("n1")
    net.nodes["n1"].propose(b"lost")
    net.deliver_all()
    new = net.tick_until_leader()
    net.propose(new, b"won")
    net.restart("n1")  # restarts with the stale entry on disk
    assert any(e.data == b"lost" for e in net.nodes["n1"].log.entries)
    net.heal()
    net.tick(times=3)
    assert not any(e.data == b"lost" for e in net.durable["n1"]["entries"])
    assert net.applied["n1"] == [b"won"]
    assert net.durable["n1"]["hs"].term == net.nodes[new].term
    assert net.durable["n1"]["hs"] == HardState(
        net.nodes["n1"].term, net.nodes["n1"].vote, net.nodes["n1"].log.committed
    )


# ---- restarting from a log that does not follow its snapshot (the disk's fault) ------------


import random  # noqa: E402

import pytest  # noqa: E402

from multiraft.raft.config import Config  # noqa: E402
from multiraft.raft.errors import LogDoesNotFollowSnapshot  # noqa: E402
from multiraft.raft.log import follow_snapshot  # noqa: E402
from multiraft.raft.state import RaftState  # noqa: E402
from multiraft.raft.types import ConfState, Entry  # noqa: E402

_CONF = ConfState(voters=frozenset(IDS))


def _restart(snap_index, snap_term, entries, hs=HardState(5, None, 0), group=7):
    snap = Snapshot(SnapshotMeta(snap_index, snap_term, _CONF), b"img") if snap_index else None
    ents = [Entry(t, i, 0, b"") for i, t in entries]
    return RaftState(Config("n1"), random.Random(1), hard_state=hs, snapshot=snap, entries=ents, group=group)


def test_restart_refuses_a_log_that_starts_after_the_snapshot_with_a_typed_error_naming_the_group_7():
    with pytest.raises(LogDoesNotFollowSnapshot, match="group 7: .*missing") as info:
        _restart(10, 2, [(13, 2), (14, 2)])  # entries 11, 12 are gone
    assert info.value.group == 7


def test_restart_refuses_a_compacted_log_without_a_snapshot_7():
    with pytest.raises(LogDoesNotFollowSnapshot, match="no snapshot"):
        _restart(0, 0, [(5, 1), (6, 1)])


def test_restart_refuses_a_log_whose_term_at_the_snapshot_index_conflicts_7():
    with pytest.raises(LogDoesNotFollowSnapshot, match="term 1 at index 10"):
        _restart(10, 3, [(9, 1), (10, 1), (11, 1)])


def test_restart_refuses_entries_after_the_snapshot_of_an_older_term_7():
    with pytest.raises(LogDoesNotFollowSnapshot, match="entry 11 has term 1"):
        _restart(10, 3, [(11, 1), (12, 1)])


def test_restart_refuses_a_hard_state_older_than_the_snapshot_emptied_log_7():
    """A log emptied (or lost) under a snapshot: no hard state survives."""
    with pytest.raises(LogDoesNotFollowSnapshot, match="hard state"):
        _restart(10, 3, [], hs=HardState())


def test_restart_accepts_a_log_compacted_with_a_lag_below_the_snapshot_7():
    r = _restart(10, 2, [(8, 2), (9, 2), (10, 2), (11, 3)])
    assert r.log.snapshot_index == 10 and [e.index for e in r.log.entries] == [11]


def test_follow_snapshot_drops_a_log_the_lost_reset_left_conflicting_7():
    """Crash after the leader's snapshot was saved, before the log reset."""
    meta = SnapshotMeta(10, 3, _CONF)
    ents = [Entry(1, i, 0, b"") for i in range(5, 13)]
    hs, kept, reason = follow_snapshot(meta, HardState(3, "n2", 4), ents)
    assert kept == [] and hs == HardState(3, "n2", 4) and "conflict" in reason
    r = RaftState(Config("n1"), random.Random(1), hard_state=hs, snapshot=Snapshot(meta, b""), entries=kept)
    assert r.log.last_index() == 10


def test_follow_snapshot_raises_a_term_whose_hard_state_record_was_torn_off_7():
    meta = SnapshotMeta(10, 3, _CONF)
    hs, kept, reason = follow_snapshot(meta, HardState(2, "n2", 4), [])
    assert hs == HardState(3, None, 4) and "torn" in reason


def test_follow_snapshot_leaves_a_consistent_log_alone_7():
    meta = SnapshotMeta(10, 3, _CONF)
    ents = [Entry(3, i, 0, b"") for i in range(8, 13)]
    assert follow_snapshot(meta, HardState(3, None, 12), ents) == (HardState(3, None, 12), ents, None)


def test_restart_refuses_a_log_that_ends_below_the_snapshot_it_should_have_been_reset_to_7():
    """The store refuses to append after a gap; the core refuses first."""
    with pytest.raises(LogDoesNotFollowSnapshot, match="ends at index 6, below"):
        _restart(10, 2, [(5, 1), (6, 1)])


def test_follow_snapshot_drops_entries_the_snapshot_covers_when_the_reset_was_lost_7():
    meta = SnapshotMeta(10, 2, _CONF)
    hs, kept, reason = follow_snapshot(meta, HardState(2, None, 4), [Entry(1, 5, 0, b""), Entry(1, 6, 0, b"")])
    assert kept == [] and "covered" in reason
