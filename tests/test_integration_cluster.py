"""A real 3-node cluster (coordinators + real workers) on loopback, under faults.

One cluster serves the whole module; the tests run in file order and build on
each other: elect, read and write, check the replicas, garbage on the wire,
kill -9 a worker that leads a group, kill -9 a whole node and bring it back
through a snapshot, check the history recorded during the faults with
multiraft.lincheck, and shut down without leaving a process behind.

Everything waits on conditions with generous bounds; nothing asserts a timing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import cbor2
import pynng
import pytest
import trio
from conftest import linux_only

from multiraft import wire
from multiraft.client import ClientError, ClusterUnavailable, Timeout, coordinator_request, open_client
from multiraft.lincheck import check_events
from multiraft.localcluster import ProcessCluster, caught_up
from multiraft.sharding import group_for_key

GROUPS = 8
SNAPSHOT_THRESHOLD = 100

pytestmark = [pytest.mark.integration, linux_only]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = ProcessCluster(
        tmp_path_factory.mktemp("cluster"),
        nodes=3,
        workers=2,
        groups=GROUPS,
        tick_ms=50,
        election_tick=10,
        heartbeat_tick=2,
        poll_interval_ms=200,
        snapshot_threshold_entries=SNAPSHOT_THRESHOLD,
        compact_lag_entries=10,
    )
    c.start()
    yield c
    if c.any_process_left():
        c.stop()
        for n in c.nodes.values():
            n.kill()


class History:
    """A linearizability history (multiraft.lincheck's dict format) recorded
    by concurrent client tasks over a few shared keys."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.acked: dict[str, str] = {}  # key -> a value some acknowledged put wrote
        self.next_process = 0
        self.ok = 0

    def _process(self) -> int:
        self.next_process += 1
        return self.next_process

    async def run(self, client, stop: trio.Event, tasks: int = 6, keys: int = 4, seed: int = 0) -> None:
        async with trio.open_nursery() as nursery:
            for t in range(tasks):
                nursery.start_soon(self._task, client, stop, keys, random.Random(seed * 100 + t), t)

    async def _task(self, client, stop: trio.Event, keys: int, rng: random.Random, t: int) -> None:
        process = self._process()
        n = 0
        while not stop.is_set():
            n += 1
            key = f"lin-{rng.randrange(keys)}"
            r = rng.random()
            if r < 0.4:
                value = f"{t}.{n}"
                ev = {"process": process, "f": "put", "key": key, "value": value}
                self.events.append({**ev, "type": "invoke"})
                outcome = await self._do(client.put(key, value, timeout_s=4))
                self.events.append({**ev, "type": outcome})
            elif r < 0.8:
                ev = {"process": process, "f": "get", "key": key}
                self.events.append({**ev, "type": "invoke", "value": None})
                try:
                    got = await client.get(key, timeout_s=4)
                    self.events.append({**ev, "type": "ok", "value": None if got is None else got.decode()})
                    self.ok += 1
                except ClientError:
                    self.events.append({**ev, "type": "fail", "value": None})
            else:
                prev = [e["value"] for e in self.events if e["key"] == key and e["f"] == "put"]
                expected = rng.choice(prev) if prev and rng.random() < 0.8 else None
                value = f"{t}.{n}c"
                ev = {"process": process, "f": "cas", "key": key, "value": [expected, value]}
                self.events.append({**ev, "type": "invoke"})
                try:
                    swapped, _ = await client.cas(key, expected, value, timeout_s=4)
                    self.events.append({**ev, "type": "ok" if swapped else "fail"})
                    self.ok += 1
                except Timeout as exc:
                    self.events.append({**ev, "type": "info" if exc.outcome_unknown else "fail"})
                except ClientError as exc:
                    self.events.append({**ev, "type": "info" if exc.outcome_unknown else "fail"})
            if self.events[-1]["type"] == "info":
                process = self._process()  # Jepsen style: a crashed process never returns
            await trio.sleep(rng.random() * 0.01)

    async def _do(self, op) -> str:
        try:
            await op
        except Timeout as exc:
            return "info" if exc.outcome_unknown else "fail"
        except ClusterUnavailable:
            return "fail"
        except ClientError as exc:
            return "info" if exc.outcome_unknown else "fail"
        self.ok += 1
        return "ok"


HISTORY = History()
ACKED: dict[bytes, bytes] = {}  # every acknowledged write of the writers below


async def _writer(client, stop: trio.Event, prefix: str, rng: random.Random) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        key = f"{prefix}-{n % 300}".encode()
        value = f"{prefix}-{n}".encode()
        try:
            await client.put(key, value, timeout_s=5)
        except ClientError:
            continue  # not acknowledged: may or may not be there; a later ack overrides
        ACKED[key] = value


async def _check_acked(client) -> None:
    for key, value in sorted(ACKED.items()):
        got = await client.get(key, timeout_s=10)
        assert got == value, f"acknowledged write lost: {key!r} = {got!r}, expected {value!r}"


async def _status_of(cluster: ProcessCluster, node: str) -> dict:
    return await coordinator_request([cluster.nodes[node].address], ["status"])


# ---------------------------------------------------------------------------


async def test_every_group_elects_a_leader(cluster: ProcessCluster) -> None:
    status = await cluster.wait_healthy(timeout_s=60)
    assert len(status["groups"]) == GROUPS
    for g in status["groups"]:
        assert g["leader"] in cluster.nodes
        assert sorted(g["voters"]) == ["n1", "n2", "n3"]
        assert g["learners"] == [] and g["voters_outgoing"] == []
    for n in status["nodes"]:
        assert n["up"] and len(n["workers"]) == 2 and all(w["up"] for w in n["workers"])


async def test_puts_and_gets_through_the_client_and_the_cli(cluster: ProcessCluster) -> None:
    async with open_client(cluster.addresses) as c:
        for i in range(50):
            await c.put(f"basic-{i}", f"value-{i}")
        async with trio.open_nursery() as n:
            for i in range(50, 200):
                n.start_soon(c.put, f"basic-{i}", f"value-{i}")
        for i in range(200):
            assert await c.get(f"basic-{i}") == f"value-{i}".encode()
            ACKED[f"basic-{i}".encode()] = f"value-{i}".encode()
        assert await c.get("basic-7", lease=True) == b"value-7"
        assert await c.cas("basic-1", "value-1", "changed") == (True, b"changed")
        ACKED[b"basic-1"] = b"changed"
        assert await c.get("never-written") is None
        # every group took writes
        assert {group_for_key(f"basic-{i}".encode(), GROUPS) for i in range(200)} == set(range(GROUPS))

    env = dict(os.environ, MULTIRAFT_CLUSTER=",".join(cluster.addresses))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "multiraft.cli", *args], capture_output=True, env=env,
                              timeout=60)

    assert cli("put", "from-cli", "hello world").returncode == 0
    r = cli("get", "from-cli")
    assert (r.returncode, r.stdout) == (0, b"hello world\n")
    assert cli("del", "from-cli").returncode == 0
    r = cli("get", "from-cli")
    assert r.returncode == 1 and b"not found" in r.stderr
    r = subprocess.run([sys.executable, "-m", "multiraft.admin_cli", "status", "--json"], capture_output=True,
                       env=env, timeout=60)
    assert r.returncode == 0 and b'"groups"' in r.stdout


def _replicas_identical(status: dict) -> bool:
    # Statuses are gathered from several processes at slightly different
    # moments; a quiet cluster converges, so wait for one consistent picture.
    for g in status["groups"]:
        reps = g["replicas"]
        if not g["leader"] or any(r["applied"] is None for r in reps):
            return False
        if len({r["applied"] for r in reps} | {r["commit"] for r in reps} | {g["commit"]}) != 1:
            return False
    return True


async def test_replicas_hold_identical_data(cluster: ProcessCluster) -> None:
    await cluster.wait_caught_up(timeout_s=60)
    status = await cluster.wait_for(_replicas_identical, timeout_s=60, what="replicas to agree")
    for g in status["groups"]:
        applied = {r["applied"] for r in g["replicas"]}
        commits = {r["commit"] for r in g["replicas"]}
        keys = {r["keys"] for r in g["replicas"]}
        assert applied == {g["commit"]} and commits == {g["commit"]}, g
        assert len(keys) == 1, f"group {g['id']}: replicas hold different key counts {g['replicas']}"


async def test_garbage_and_oversized_frames_are_dropped(cluster: ProcessCluster) -> None:
    node = cluster.nodes["n1"]
    before = await _status_of(cluster, "n1")
    pid = before["workers"][0]["pid"]
    url = before["workers"][0]["raft_url"]
    dropped0 = _dropped(before["workers"][0])

    def blast() -> None:
        with pynng.Push0(dial=url, block_on_dial=True, send_timeout=2000) as sock:
            sock.send(b"\x00garbage that is not cbor")
            sock.send(cbor2.dumps([99, "x/w0", "n1/w0", 1, []]))  # unknown version
            # a truncated RAFT payload
            sock.send(wire.seal_frame(cbor2.dumps([wire.FORMAT_VERSION, "n2/w0", "n1/w0", 1, [0, 1, 2]])))
            sock.send(cbor2.dumps([1, "n2/w0", "n1/w0", 1, []]))  # the old version 1, no checksum
            sock.send(b"")  # an empty nng message (pynng cannot even recv it)
            sock.send(cbor2.dumps({"not": "a frame"}))
            sock.send(b"\xa1" * (17 << 20))  # oversized
            sock.send(os.urandom(4096))

    await trio.to_thread.run_sync(blast)
    # garbage on a client port too
    host, port = before["workers"][0]["client_address"].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(b"\xff\xff\xff\xff" + os.urandom(64))
    await stream.aclose()

    async def counted():
        st = await _status_of(cluster, "n1")
        return _dropped(st["workers"][0]) >= dropped0 + 3 and st

    with trio.fail_after(30):
        while not (st := await counted()):
            await trio.sleep(0.2)
    assert st["workers"][0]["pid"] == pid, "the worker crashed"
    assert st["workers"][0]["restarts"] == before["workers"][0]["restarts"]
    async with open_client(cluster.addresses) as c:
        await c.put("after-garbage", "fine")
        assert await c.get("after-garbage") == b"fine"
    assert node.running


def _dropped(worker: dict) -> int:
    t = (worker.get("stats") or {}).get("transport") or {}
    return sum(t.get(k, 0) for k in ("frames_malformed", "frames_oversized", "frames_bad_version",
                                     "frames_corrupted", "frames_misaddressed"))


async def test_kill_worker_hosting_a_leader(cluster: ProcessCluster) -> None:
    status = await cluster.wait_healthy(timeout_s=60)
    g = next(g for g in status["groups"] if g["leader"])
    leader = g["leader"]
    worker = next(r["worker"] for r in g["replicas"] if r["node"] == leader)
    st = await _status_of(cluster, leader)
    victim = st["workers"][worker]
    restarts0 = victim["restarts"]

    async with open_client(cluster.addresses, timeout_s=5) as c:
        stop = trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(HISTORY.run, c, stop, 6, 4, 1)
            for i in range(4):
                n.start_soon(_writer, c, stop, f"wk{i}", random.Random(i))
            await trio.sleep(1.0)
            os.kill(victim["pid"], signal.SIGKILL)

            # the group elects a leader again (on another node, or the restarted worker)
            def recovered(s: dict) -> bool:
                grp = s["groups"][g["id"]]
                return bool(grp["leader"]) and (grp["leader"] != leader or grp["term"] > g["term"])

            await cluster.wait_for(recovered, timeout_s=30, what=f"a new leader of group {g['id']}")

            async def worker_back() -> bool:
                w = (await _status_of(cluster, leader))["workers"][worker]
                return w["up"] and w["pid"] != victim["pid"] and w["restarts"] == restarts0 + 1

            with trio.fail_after(30):
                while not await worker_back():
                    await trio.sleep(0.2)
            await cluster.wait_healthy(timeout_s=60)
            await trio.sleep(1.0)
            stop.set()
        await _check_acked(c)
    assert HISTORY.ok > 0


async def test_a_stopped_leader_worker_never_answers_a_lease_read_with_the_old_value(cluster: ProcessCluster) -> None:
    # SIGSTOP the worker process leading a group for longer than an election
    # timeout; the others elect and commit a new value; a lease read sent to
    # the stopped process waits in its socket; SIGCONT: its answer must never
    # be the old value (its lease ended by the clock, whatever its ticks say).
    from workers.testing import open_client as open_worker_client

    status = await cluster.wait_healthy(timeout_s=60)
    g = next(g for g in status["groups"] if g["leader"])
    leader = g["leader"]
    worker = next(r["worker"] for r in g["replicas"] if r["node"] == leader)
    victim = (await _status_of(cluster, leader))["workers"][worker]
    key = next(f"stop-{i}" for i in range(10_000) if group_for_key(f"stop-{i}".encode(), GROUPS) == g["id"])
    async with open_client(cluster.addresses, timeout_s=10) as c:
        await c.put(key, "old")
        async with open_worker_client(victim["client_address"]) as direct:
            await trio.sleep(0.3)  # heartbeat rounds acknowledged: a live lease
            assert await direct.call("get", g["id"], key.encode(), "lease") == ["ok", b"old"]
            os.kill(victim["pid"], signal.SIGSTOP)
            try:
                def moved(s: dict) -> bool:
                    grp = s["groups"][g["id"]]
                    return bool(grp["leader"]) and grp["leader"] != leader

                await cluster.wait_for(moved, timeout_s=30, what=f"a new leader of group {g['id']}")
                await c.put(key, "new")
                answer: list = []
                async with trio.open_nursery() as n:
                    async def lease_read() -> None:
                        answer.append(await direct.call("get", g["id"], key.encode(), "lease"))

                    n.start_soon(lease_read)
                    await trio.sleep(0.2)  # the request waits in the stopped process's socket
                    os.kill(victim["pid"], signal.SIGCONT)
            finally:
                os.kill(victim["pid"], signal.SIGCONT)
        assert answer and answer[0] != ["ok", b"old"], answer
        assert answer[0] in (["ok", b"new"], ["not_leader", answer[0][1]]), answer
        ACKED[key.encode()] = b"new"
        assert await c.get(key) == b"new"
    await cluster.wait_healthy(timeout_s=60)


async def test_kill_node_and_catch_up_through_a_snapshot(cluster: ProcessCluster) -> None:
    await cluster.wait_healthy(timeout_s=60)
    victim = cluster.nodes["n3"]
    async with open_client(cluster.addresses, timeout_s=5) as c:
        stop = trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(HISTORY.run, c, stop, 6, 4, 2)
            for i in range(6):
                n.start_soon(_writer, c, stop, f"nk{i}", random.Random(10 + i))
            await trio.sleep(0.5)
            victim.kill()  # SIGKILL to the coordinator and its workers
            commit_at_kill = {g["id"]: g["commit"] for g in (await cluster.status())["groups"]}

            # keep writing until every group's leader has compacted past n3's log
            def compacted(s: dict) -> bool:
                return all(g["leader"] and g["commit"] > commit_at_kill[g["id"]] + 2 * SNAPSHOT_THRESHOLD
                           for g in s["groups"])

            await cluster.wait_for(compacted, timeout_s=90, what="enough writes while n3 is down")
            victim.start()
            await cluster.wait_healthy(timeout_s=60)
            await trio.sleep(1.0)
            stop.set()
        status = await cluster.wait_caught_up(timeout_s=60)
        assert caught_up(status)
        await _check_acked(c)
    n3 = await _status_of(cluster, "n3")
    installed = sum((w.get("stats") or {}).get("snapshots_installed", 0) for w in n3["workers"])
    assert installed >= 1, "n3 caught up without a snapshot: the leaders did not compact"
    for g in status["groups"]:
        assert len({r["keys"] for r in g["replicas"]}) == 1, g


async def test_history_recorded_during_faults_is_linearizable() -> None:
    assert HISTORY.ok > 50, "too few operations completed to say anything"
    result = await trio.to_thread.run_sync(lambda: check_events(HISTORY.events, timeout_s=60))
    assert result.ok, f"{result.verdict}: key {result.failed_key}"


async def test_clean_shutdown_leaves_no_process(cluster: ProcessCluster) -> None:
    assert cluster.stop(timeout_s=20), "a node had to be SIGKILLed"
    assert not cluster.any_process_left()
    for node in cluster.nodes.values():
        assert node.process.returncode == 0, node.log_text()[-2000:]
