"""Workers in-process: three Workers in one trio run on an in-memory raft
network, storage in tmp_path, clients over real loopback TCP, and a virtual
clock (pytest-trio's `autojump_clock`: MockClock(autojump_threshold=0)), so
elections and timeouts happen in virtual time with no real sleeps."""

from __future__ import annotations

import trio
from conftest import put

from multiraft import protocol
from multiraft.raft.types import StateRole
from workers.testing import open_cluster

BOUND = 120  # virtual seconds: generous upper bound for anything below


async def test_three_workers_elect_a_leader_and_replicate_puts(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, groups=2) as cluster:
            for g in (0, 1):
                leader = await cluster.wait_leader(g)
                async with cluster.client(leader) as c:
                    status, cid = await c.call("register", g)
                    assert status == "ok" and cid >= 1
                    for i in range(20):
                        assert await put(c, g, b"k%d" % i, b"v%d" % i, cid, i + 1) == ["ok", False]
                    assert await put(c, g, b"k0", b"again", cid, 21) == ["ok", True]
                    assert await c.call("delete", g, b"k1", cid, 22) == ["ok", True]
                    assert await c.call("delete", g, b"k1", cid, 23) == ["ok", False]
                    assert await c.call("cas", g, b"k2", b"nope", b"x", cid, 24) == ["ok", [False, b"v2"]]
                    assert await c.call("cas", g, b"k2", b"v2", b"x", cid, 25) == ["ok", [True, b"x"]]
                    # A retry with the same (client_id, seq) applies once, same answer.
                    assert await c.call("cas", g, b"k2", b"v2", b"x", cid, 25) == ["ok", [True, b"x"]]
                    # A session the group never registered: refused, not applied.
                    status, message = await put(c, g, b"k3", b"lost", cid + 10**6, 1)
                    assert status == "session_expired" and "not applied" in message
                    assert await c.call("ping") == ["ok", f"{leader}/w0"]
                index = cluster.workers[leader].groups[g].raft.log.applied
                await cluster.wait_applied(g, index)
                images = {n: w.groups[g].kv.snapshot() for n, w in cluster.workers.items()}
                assert len(set(images.values())) == 1, "replicas differ"
                kv = cluster.workers["n1"].groups[g].kv
                assert kv.get(b"k0") == b"again" and kv.get(b"k1") is None and kv.get(b"k2") == b"x"
            for w in cluster.workers.values():
                w.check_invariants()
                stats = w.stats()
                assert stats["fsyncs"] >= 1 and stats["pending_requests"] == 0
                assert stats["dropped_unknown_group"] == 0


async def test_reads_see_writes_readindex_and_lease(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, lease_reads=True) as cluster:
            leader = await cluster.wait_leader(0)
            raft = cluster.workers[leader].groups[0].raft
            async with cluster.client(leader) as c:
                assert await c.call("get", 0, b"missing", "linearizable") == ["ok", None]
                for i in range(10):
                    assert (await put(c, 0, b"k", b"v%d" % i))[0] == "ok"
                    assert await c.call("get", 0, b"k", "linearizable") == ["ok", b"v%d" % i]
                    assert await c.call("get", 0, b"k", "lease") == ["ok", b"v%d" % i]
                assert await c.call("get", 0, b"k") == ["ok", b"v9"]  # read_mode defaults
                for i in range(5):
                    await put(c, 0, b"p/%d" % i, b"%d" % i)
                assert await c.call("scan", 0, b"", b"p/", None) == [
                    "ok", [[b"p/%d" % i, b"%d" % i] for i in range(5)]
                ]
                assert await c.call("scan", 0, b"p/2", b"p/", 2) == ["ok", [[b"p/2", b"2"], [b"p/3", b"3"]]]
            assert raft.counters["lease_reads"] >= 1
            assert raft.counters["readindex_reads"] >= 11


async def test_lease_mode_falls_back_to_readindex_when_disabled(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path) as cluster:
            leader = await cluster.wait_leader(0)
            async with cluster.client(leader) as c:
                await put(c, 0, b"k", b"v")
                assert await c.call("get", 0, b"k", "lease") == ["ok", b"v"]
            assert cluster.workers[leader].groups[0].raft.counters["lease_reads"] == 0


async def test_followers_answer_not_leader_with_a_hint(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path) as cluster:
            leader = await cluster.wait_leader(0)
            # Followers learn the leader from its first heartbeat.
            await trio.sleep(1)
            for node in cluster.workers:
                if node == leader:
                    continue
                async with cluster.client(node) as c:
                    assert await put(c, 0, b"k", b"v") == ["not_leader", leader]
                    assert await c.call("get", 0, b"k", "linearizable") == ["not_leader", leader]
                    assert await c.call("get", 1, b"k", "linearizable") == ["no_group", None]


async def test_malformed_requests_get_error_and_garbage_closes_only_that_connection(
    tmp_path, autojump_clock
):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path) as cluster:
            leader = await cluster.wait_leader(0)
            worker = cluster.workers[leader]
            async with cluster.client(leader) as good, cluster.client(leader) as bad:
                for req in (
                    ["put", 0, "text key", b"v", 0, 0],  # key must be bytes
                    ["put", 0, b"k"],  # too few arguments
                    ["frobnicate", 0],
                    ["get", 0, b"k", "eventually"],
                    ["put", -1, b"k", b"v", 0, 0],
                    ["put", 0, b"k", b"v", 0, 2**64],
                    ["scan", 0, b"", b"", -3],
                ):
                    status, payload = await good.call(*req)
                    assert status == "error" and isinstance(payload, str), (req, status, payload)
                # A list with no op, a request that is not a list, a map as req_id.
                for raw in ([5], "hello", [{"a": 1}, "ping"]):
                    await good.send_raw(protocol.encode(raw if isinstance(raw, list) else [raw]))
                assert await good.call("ping") == ["ok", f"{leader}/w0"]
                assert worker.counters["client_errors"] >= 9

                assert await put(bad, 0, b"k", b"v") == ["ok", False]
                await bad.send_raw(b"\x00\x00\x00\x05\xff\xff\xff\xff\xff")  # not CBOR
                await bad.closed.wait()
                assert worker.counters["client_bad_frames"] == 1
                # An oversized frame header closes that connection too.
                async with cluster.client(leader) as big:
                    await big.send_raw(b"\x7f\xff\xff\xff")
                    await big.closed.wait()
                assert worker.counters["client_bad_frames"] == 2
                # The other connection never noticed.
                assert await put(good, 0, b"k", b"w") == ["ok", True]
                assert await good.call("get", 0, b"k", "linearizable") == ["ok", b"w"]


async def test_busy_under_overload_and_everything_answered(tmp_path, autojump_clock):
    limits = {"pending_requests_max": 8}
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, limits=limits) as cluster:
            leader = await cluster.wait_leader(0)
            worker = cluster.workers[leader]
            async with cluster.client(leader) as c:
                # One TCP write: the worker reads them all before its next round.
                results = await c.call_many([["put", 0, b"k%d" % i, b"v", 0, 0] for i in range(100)])
            statuses = [r[0] for r in results]
            assert len(statuses) == 100
            assert set(statuses) == {"ok", "busy"}, statuses
            assert statuses.count("ok") == 8
            assert worker.counters["client_busy"] == statuses.count("busy")
            assert worker.pending_requests == 0
            # Accepted writes went out in batches: fewer proposals calls than writes.
            assert worker.counters["proposal_batch_max"] > 1
            worker.check_invariants()


async def test_a_write_that_cannot_commit_times_out(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, limits={"request_timeout_ms": 1500}) as cluster:
            leader = await cluster.wait_leader(0)
            async with cluster.client(leader) as c:
                assert (await put(c, 0, b"a", b"1"))[0] == "ok"
                cluster.net.isolate(f"{leader}/w0")
                t0 = trio.current_time()
                assert await put(c, 0, b"b", b"2") == ["timeout", None]
                assert 1.4 <= trio.current_time() - t0 <= 1.8
            assert cluster.workers[leader].counters["client_timeouts"] == 1
            assert cluster.workers[leader].pending_requests == 0


async def test_a_deposed_leader_answers_its_lost_write_with_not_leader(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, limits={"request_timeout_ms": 60_000}) as cluster:
            old = await cluster.wait_leader(0)
            async with cluster.client(old) as c:
                assert (await put(c, 0, b"a", b"1"))[0] == "ok"
                cluster.net.isolate(f"{old}/w0")
                async with trio.open_nursery() as nursery:
                    answer = []

                    async def lost_write():
                        answer.append(await put(c, 0, b"lost", b"x"))

                    nursery.start_soon(lost_write)
                    new = await cluster.wait_leader(0, exclude=(old,))
                    # The new leader commits its own entries at the same indexes.
                    async with cluster.client(new) as c2:
                        assert (await put(c2, 0, b"b", b"2"))[0] == "ok"
                    cluster.net.heal()
                assert answer == [["not_leader", new]]
            w = cluster.workers[old]
            assert w.counters["writes_overwritten"] == 1
            await cluster.wait_applied(0, cluster.workers[new].groups[0].raft.log.applied)
            assert w.groups[0].kv.get(b"lost") is None and w.groups[0].kv.get(b"b") == b"2"


async def test_pending_reads_fail_with_not_leader_when_the_leader_steps_down(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, limits={"request_timeout_ms": 60_000}) as cluster:
            old = await cluster.wait_leader(0)
            async with cluster.client(old) as c:
                assert (await put(c, 0, b"a", b"1"))[0] == "ok"
                cluster.net.isolate(f"{old}/w0")
                t0 = trio.current_time()
                # The heartbeat round confirming this read never completes; the
                # leader steps down (CheckQuorum) and the read fails promptly.
                status, _ = await c.call("get", 0, b"a", "linearizable")
                assert status == "not_leader"
                assert trio.current_time() - t0 < 5
            assert cluster.workers[old].groups[0].raft.role != StateRole.LEADER


async def test_a_restarted_worker_recovers_its_data(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, groups=2) as cluster:
            for g in (0, 1):
                leader = await cluster.wait_leader(g)
                async with cluster.client(leader) as c:
                    for i in range(30):
                        assert (await put(c, g, b"k%d" % i, b"g%d-%d" % (g, i)))[0] == "ok"
                await cluster.wait_applied(g, cluster.workers[leader].groups[g].raft.log.applied)
            before = {g: cluster.workers["n2"].groups[g].kv.snapshot() for g in (0, 1)}
            term_before = cluster.workers["n2"].groups[0].raft.term
            # Restart every worker: a whole-cluster restart from disk alone.
            for n in ("n1", "n2", "n3"):
                await cluster.stop(n)
            for n in ("n1", "n2", "n3"):
                await cluster.start(n)
            w = cluster.workers["n2"]
            assert w.groups[0].raft.term >= term_before
            for g in (0, 1):
                leader = await cluster.wait_leader(g)
                async with cluster.client(leader) as c:
                    assert await c.call("get", g, b"k29", "linearizable") == ["ok", b"g%d-29" % g]
                    assert (await put(c, g, b"after", b"restart"))[0] == "ok"
                await cluster.wait_applied(g, cluster.workers[leader].groups[g].raft.log.applied)
                after = cluster.workers["n2"].groups[g].kv
                for i in range(30):
                    assert after.get(b"k%d" % i) == b"g%d-%d" % (g, i)
                assert before[g] != after.snapshot()  # it moved on, from the same data


async def test_snapshots_compact_the_log_and_a_lagging_replica_catches_up(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(
            tmp_path, snapshot_threshold_entries=40, compact_lag_entries=5
        ) as cluster:
            leader = await cluster.wait_leader(0)
            lagging = next(n for n in cluster.nodes if n != leader)
            cluster.net.isolate(f"{lagging}/w0")
            answers = []

            async def one(c, i):
                # Its own client id: concurrent requests of one client with
                # increasing seqs may arrive out of order (and be stale).
                status, cid = await c.call("register", 0)
                assert status == "ok"
                answers.append(await put(c, 0, b"k%03d" % i, b"v%d" % i, cid, 1))

            async with cluster.client(leader) as c, trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(one, c, i)
            assert answers == [["ok", False]] * 200
            lw = cluster.workers[leader]
            assert lw.counters["snapshots_taken"] >= 3
            assert lw.groups[0].raft.log.snapshot_index > 100  # compacted
            assert cluster.workers[lagging].groups[0].raft.log.applied < 10
            cluster.net.heal()
            await cluster.wait_applied(0, lw.groups[0].raft.log.applied)
            lag = cluster.workers[lagging]
            assert lag.counters["snapshots_installed"] >= 1
            assert lag.groups[0].kv.snapshot() == lw.groups[0].kv.snapshot()
            # The installed snapshot survives a restart of the lagging worker
            # (the entries after it are applied again from the log).
            applied = lag.groups[0].raft.log.applied
            await cluster.stop(lagging)
            await cluster.start(lagging)
            lag = cluster.workers[lagging]
            assert lag.groups[0].raft.snapshot is not None
            await cluster.wait_applied(0, applied, nodes=(lagging,))
            assert lag.groups[0].kv.get(b"k150") == b"v150"
            assert len(lag.groups[0].kv) == 200
            for w in cluster.workers.values():
                w.check_invariants()


async def test_messages_for_unknown_groups_are_counted_and_dropped(tmp_path, autojump_clock):
    from multiraft.raft.types import Message, MessageType

    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path) as cluster:
            await cluster.wait_leader(0)
            t = cluster.net.transport("stranger/w0")
            async with trio.open_nursery() as nursery:
                await nursery.start(t.run)
                t.add_peer("n1/w0", "mem://n1/w0")
                t.send("n1/w0", 42, Message(MessageType.HEARTBEAT, "stranger", "n1", 99))
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()
            assert cluster.workers["n1"].counters["dropped_unknown_group"] == 1


async def test_storage_on_worker_threads_with_the_real_clock(tmp_path):
    # The production path (storage on a worker thread) under the real clock,
    # with short ticks so that it takes well under a second.
    with trio.fail_after(30):
        async with open_cluster(tmp_path, io_inline=False, tick_ms=10) as cluster:
            leader = await cluster.wait_leader(0)
            async with cluster.client(leader) as c:
                assert await put(c, 0, b"k", b"v") == ["ok", False]
                assert await c.call("get", 0, b"k", "linearizable") == ["ok", b"v"]


async def test_status_reports_the_protocol_fields(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path) as cluster:
            leader = await cluster.wait_leader(0)
            st = cluster.workers[leader].status()[0]
            for key in ("role", "leader", "term", "commit", "applied", "last_index",
                        "voters", "learners", "voters_outgoing"):
                assert key in st
            assert st["role"] == "leader" and st["leader"] == leader
            assert st["voters"] == ["n1", "n2", "n3"]
            stats = cluster.workers[leader].stats()
            protocol.encode(["status", cluster.workers[leader].status(), stats])  # encodable
            assert stats["leaders"] == 1 and "transport" in stats and "storage" in stats


# ---- lease reads in real time (issue 9) --------------------------------------------------


def _freeze_ticks(worker):
    """The worker's process stalls: its ticker does not run (the instance
    attribute shadows RaftState.tick until deleted)."""
    for g in worker.groups.values():
        g.raft.tick = lambda now=None: None


def _thaw_ticks(worker):
    for g in worker.groups.values():
        del g.raft.tick


async def _wait_other_leader(cluster, group, old):
    """The leader among the nodes other than `old` (which may still think it leads)."""
    while True:
        for n, w in cluster.workers.items():
            if n != old and w.groups[group].raft.role == StateRole.LEADER:
                return n
        await trio.sleep(0.05)


async def test_a_leader_stalled_past_its_lease_never_answers_a_lease_read_with_the_old_value(
    tmp_path, autojump_clock
):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, lease_reads=True, limits={"request_timeout_ms": 60_000}) as cluster:
            old = await cluster.wait_leader(0)
            async with cluster.client(old) as c:
                assert (await put(c, 0, b"k", b"v1"))[0] == "ok"
                await trio.sleep(0.5)  # acknowledged heartbeat rounds: a lease
                assert await c.call("get", 0, b"k", "lease") == ["ok", b"v1"]
                t0 = trio.current_time()
                _freeze_ticks(cluster.workers[old])
                cluster.net.isolate(f"{old}/w0")
                new = await _wait_other_leader(cluster, 0, old)
                async with cluster.client(new) as c2:
                    assert (await put(c2, 0, b"k", b"v2"))[0] == "ok"
                await trio.sleep_until(t0 + 1.3)
                cluster.net.heal()
                # It wakes up with a lease read before its ticker catches up.
                status, payload = await c.call("get", 0, b"k", "lease")
                _thaw_ticks(cluster.workers[old])
            assert [status, payload] != ["ok", b"v1"]
            assert status == "not_leader" or payload == b"v2"
            assert cluster.workers[old].groups[0].raft.counters["lease_reads"] == 1  # only the first


async def test_a_lease_read_whose_lease_ran_out_before_its_answer_is_asked_again(tmp_path, autojump_clock):
    # The ReadState came with a lease that ended before the worker got to
    # answer it (a long apply batch, an fsync): it must not be answered on
    # that lease, but confirmed by a heartbeat round.
    from multiraft.raft.types import ReadState, Ready
    from workers.group import Request

    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, lease_reads=True) as cluster:
            leader = await cluster.wait_leader(0)
            async with cluster.client(leader) as c:
                assert (await put(c, 0, b"k", b"v1"))[0] == "ok"
            w = cluster.workers[leader]
            g = w.groups[0]
            answers = []

            class Conn:
                def respond(self, req_id, status, payload):
                    answers.append([status, payload])

            req = Request(Conn(), 1, trio.current_time() + 60, 0)
            req.ctx, req.query = b"late-read", __import__("multiraft.kv", fromlist=["Get"]).Get(b"k")
            g.reads[req.ctx] = req
            g.reads_term = g.raft.term
            w._pending += 1
            expired = ReadState(g.raft.log.applied, req.ctx, lease_expiry=trio.current_time() - 0.001)
            w._apply(g, Ready(None, None, (), None, (), (), (), (expired,), False))
            assert answers == [] and w.counters["reads_lease_expired"] == 1
            w._notify()
            while not answers:
                await trio.sleep(0.01)
            assert answers == [["ok", b"v1"]]
            assert g.raft.counters["readindex_reads"] >= 1


async def test_lease_reads_fall_back_to_readindex_while_a_peer_runs_other_timing(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, lease_reads=True) as cluster:
            leader = await cluster.wait_leader(0)
            w = cluster.workers[leader]
            raft = w.groups[0].raft
            async with cluster.client(leader) as c:
                assert (await put(c, 0, b"k", b"v"))[0] == "ok"
                await trio.sleep(0.5)
                w.set_timing_ok(False, "n9 runs election_tick=20")
                assert await c.call("get", 0, b"k", "lease") == ["ok", b"v"]
                assert raft.counters["lease_reads"] == 0
                w.set_timing_ok(True)
                assert await c.call("get", 0, b"k", "lease") == ["ok", b"v"]
                assert raft.counters["lease_reads"] == 1


def test_worker_lease_is_the_election_timeout_less_drift_and_a_tick():
    from workers.config import WorkerConfig

    base = dict(node_id="n1", worker_index=0, data_dir="/tmp/x", raft_listen_url="mem://n1/w0",
                client_listen_address="127.0.0.1:0", groups={}, groups_total=1)
    assert WorkerConfig.from_dict({**base, "tick_ms": 100, "election_tick": 10}).lease_s == 0.7
    assert WorkerConfig.from_dict({**base, "max_clock_drift_ms": 0}).lease_s == 0.9
    assert WorkerConfig.from_dict({**base, "tick_ms": 50, "election_tick": 4}).lease_s is None
