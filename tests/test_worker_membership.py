"""Membership inside workers (workers.membership), in-process on a virtual clock:
conf_change / transfer_leader / group_status on the client port, and the
placement changes of the control pipe (add, remove, export, import a group)."""

from __future__ import annotations

import trio
from conftest import group_status

from multiraft.raft.types import StateRole
from workers.testing import open_cluster

BOUND = 120


async def _wait_conf(cluster, leader, predicate):
    async with cluster.client(leader) as c:
        while True:
            st = await group_status(c)
            if predicate(st):
                return st
            await trio.sleep(0.05)


async def test_conf_change_remove_and_readd_a_replica(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, groups=1) as cluster:
            leader = await cluster.wait_leader(0)
            other = next(n for n in ("n1", "n2", "n3") if n != leader)
            async with cluster.client(leader) as c:
                for i in range(30):
                    assert (await c.call("put", 0, b"k%d" % i, b"v", 0, 0))[0] == "ok"
                st = await group_status(c)
                assert st["role"] == "leader" and set(st["progress"]) == {"n1", "n2", "n3"}
                # malformed and refused requests
                assert (await c.call("conf_change", 0, [["bogus", "n9"]], False))[0] == "error"
                assert (await c.call("conf_change", 0, [["remove", "n1"], ["remove", "n2"], ["remove", "n3"]], True))[
                    0
                ] == "error"
                status, payload = await c.call("conf_change", 0, [["remove", other]], False)
                assert status == "ok" and payload["index"] > 0
            await _wait_conf(
                cluster, leader, lambda st: other not in st["voters"] and st["applied"] >= payload["index"]
            )
            w = cluster.workers[other]
            result = await w.group_op("remove_group", 0)
            assert result["ok"] and result["existed"] and 0 not in w.groups
            # a request for it now: no_group; its storage is gone
            assert w.log.last_index(0) == 0 and w.snapshots.load_snapshot(0) is None
            # back as an empty learner under a NEW replica id (multiraft.replica), then a voter
            readded = f"{other}~1"
            result = await w.group_op("add_group", 0, readded)
            assert result["ok"] and not result["existed"] and result["replica"] == readded
            assert w.groups[0].raft.log.last_index() == 0 and w.groups[0].raft.id == readded
            async with cluster.client(leader) as c:
                assert (await c.call("conf_change", 0, [["add_learner", readded]], False))[0] == "ok"
                st = await _wait_conf(
                    cluster, leader,
                    lambda st: other in st["learners"] and st["progress"].get(other, 0) >= st["last_index"],
                )
                assert readded in st["replicas"] and other not in st["replicas"]
                # promoting names the node: the worker resolves it to the member replica
                assert (await c.call("conf_change", 0, [["add_voter", other]], False))[0] == "ok"
                await _wait_conf(cluster, leader, lambda st: other in st["voters"])
                assert (await c.call("put", 0, b"after", b"x", 0, 0))[0] == "ok"
            index = cluster.workers[leader].groups[0].raft.log.applied
            await cluster.wait_applied(0, index)
            assert w.groups[0].kv.get(b"k7") == b"v" and w.groups[0].kv.get(b"after") == b"x"
            for wk in cluster.workers.values():
                wk.check_invariants()


async def test_export_and_import_keep_the_raft_state(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, groups=1) as cluster:
            leader = await cluster.wait_leader(0)
            follower = next(n for n in ("n1", "n2", "n3") if n != leader)
            async with cluster.client(leader) as c:
                for i in range(20):
                    assert (await c.call("put", 0, b"k%d" % i, b"v%d" % i, 0, 0))[0] == "ok"
            index = cluster.workers[leader].groups[0].raft.log.applied
            await cluster.wait_applied(0, index)
            w = cluster.workers[follower]
            before = w.groups[0].raft
            term, vote = before.term, before.vote
            exported = await w.group_op("export_group", 0)
            assert exported["ok"] and 0 not in w.groups
            state = exported["state"]
            assert state["hard_state"][:2] == [term, vote] and state["snapshot"][0] == index
            # the group goes on without it
            async with cluster.client(leader) as c:
                assert (await c.call("put", 0, b"during", b"x", 0, 0))[0] == "ok"
            imported = await w.group_op("import_group", 0, state)
            assert imported["ok"]
            raft = w.groups[0].raft
            assert (raft.term, raft.vote) == (term, vote) and w.groups[0].kv.get(b"k3") == b"v3"
            async with cluster.client(leader) as c:
                assert (await c.call("put", 0, b"after", b"y", 0, 0))[0] == "ok"
            index = cluster.workers[leader].groups[0].raft.log.applied
            await cluster.wait_applied(0, index)
            assert w.groups[0].kv.get(b"during") == b"x"
            # it is durable: a restart finds it
            await cluster.stop(follower)
            w = await cluster.start(follower)
            await cluster.wait_applied(0, index, nodes=(follower,))
            assert w.groups[0].kv.get(b"after") == b"y"
            # importing twice is refused; an unknown op too
            assert not (await w.group_op("import_group", 0, state))["ok"]
            assert not (await w.group_op("frobnicate", 0))["ok"]


async def test_transfer_leader_and_group_status(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, groups=1) as cluster:
            leader = await cluster.wait_leader(0)
            target = next(n for n in ("n1", "n2", "n3") if n != leader)
            async with cluster.client(target) as c:
                st = await group_status(c)
                assert st["role"] == "follower" and "progress" not in st
                assert await c.call("transfer_leader", 0, leader) == ["not_leader", leader]
                assert (await c.call("group_status", 5))[0] == "no_group"
            async with cluster.client(leader) as c:
                assert (await c.call("transfer_leader", 0, "n9"))[0] == "error"
                assert (await c.call("transfer_leader", 0, target))[0] == "ok"
            await cluster.wait_leader(0, exclude=(leader,))
            assert cluster.workers[target].groups[0].raft.role == StateRole.LEADER


async def test_messages_to_a_retired_replica_id_are_dropped_and_counted(tmp_path, autojump_clock):
    """A re-added replica has a new id: traffic for the old one (from a voter
    that still holds an old config) never reaches its Raft state."""
    from multiraft.raft.types import Message, MessageType

    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, groups=1) as cluster:
            leader = await cluster.wait_leader(0)
            other = next(n for n in ("n1", "n2", "n3") if n != leader)
            w = cluster.workers[other]
            assert (await w.group_op("remove_group", 0))["ok"]
            assert (await w.group_op("add_group", 0, f"{other}~1"))["ok"]
            raft = w.groups[0].raft
            before = w.counters["dropped_retired_replica"]
            # A stale voter's pre-vote and vote requests, addressed to the old id.
            for kind in (MessageType.PRE_VOTE, MessageType.VOTE):
                cluster.transport_of(leader).send(w.address, 0, Message(kind, leader, other, 99, 0, 0))
            await trio.sleep(1)
            # ours, and the leader's own heartbeats to the old id (its config still names it)
            assert w.counters["dropped_retired_replica"] - before >= 2
            assert raft.term == 0 and raft.vote is None  # untouched: it granted nothing


async def test_add_group_refuses_an_id_of_another_node(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, groups=1) as cluster:
            w = cluster.workers["n1"]
            for bad in ("n2~1", "n1~0", "n1~x", 7):
                result = await w.group_op("add_group", 0, bad)
                assert not result["ok"], bad


async def test_a_worker_deletes_stored_data_of_a_retired_incarnation_at_start(tmp_path, autojump_clock):
    """The coordinator placed a new incarnation while the worker was down: the
    old replica's log must not come back under the new id (workers/identity.py)."""
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, groups=1) as cluster:
            leader = await cluster.wait_leader(0)
            async with cluster.client(leader) as c:
                for i in range(5):
                    assert (await c.call("put", 0, b"k%d" % i, b"v", 0, 0))[0] == "ok"
            other = next(n for n in ("n1", "n2", "n3") if n != leader)
            await cluster.wait_applied(0, cluster.workers[leader].groups[0].raft.log.applied)
            assert cluster.workers[other].groups[0].raft.log.last_index() > 0
            await cluster.stop(other)
            await cluster.start(other, replica_ids={0: f"{other}~1"})
            raft = cluster.workers[other].groups[0].raft
            assert raft.id == f"{other}~1" and raft.log.last_index() == 0 and raft.term == 0


async def test_delayed_messages_from_a_retired_replica_id_are_dropped_and_counted(tmp_path, autojump_clock):
    """Once routing names a node's new incarnation, a late message of the old
    one (a vote or an ack it sent before it was deleted) is dropped."""
    from multiraft.raft.types import Message, MessageType

    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, groups=1) as cluster:
            leader = await cluster.wait_leader(0)
            other = next(n for n in ("n1", "n2", "n3") if n != leader)
            assert (await cluster.workers[other].group_op("remove_group", 0))["ok"]
            assert (await cluster.workers[other].group_op("add_group", 0, f"{other}~1"))["ok"]
            cluster.publish_routing()
            lw = cluster.workers[leader]
            assert lw.groups[0].peer_incarnations == {other: 1}
            before = lw.counters["dropped_from_retired_replica"]
            term = lw.groups[0].raft.term
            # A late vote of the old incarnation, for a term ahead of ours.
            cluster.transport_of(other).send(lw.address, 0, Message(MessageType.VOTE_RESPONSE, other, leader, term + 5))
            await trio.sleep(1)
            assert lw.counters["dropped_from_retired_replica"] == before + 1
            assert lw.groups[0].raft.term == term  # it never reached the core
