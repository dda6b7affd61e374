"""multiraft-admin against a real cluster (coordinators + real workers) on loopback.

One cluster serves the whole module; the tests run in file order and build on
each other: a node joins, membership changes run under a recorded client
workload (add-voter, remove-replica, move-replica, transfer-leader,
rebalance, drain), the history is checked with multiraft.lincheck, refusals
with nodes down, a leader killed in the middle of a joint change, a node
drained and retired, and a clean shutdown.

Everything waits on conditions with generous bounds; nothing asserts a timing.
"""

from __future__ import annotations

import os
import random
import signal
import sys

import pytest
import trio
from conftest import linux_only

from multiraft import protocol
from multiraft.client import ClientError, RequestError, coordinator_request, open_client
from multiraft.lincheck import check_events
from multiraft.localcluster import ProcessCluster, caught_up, free_base_ports

GROUPS = 6
WORKERS = 2

pytestmark = [pytest.mark.integration, linux_only]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ports = free_base_ports(4, WORKERS)
    c = ProcessCluster(
        tmp_path_factory.mktemp("admin"),
        nodes=3,
        workers=WORKERS,
        groups=GROUPS,
        tick_ms=50,
        election_tick=10,
        heartbeat_tick=2,
        poll_interval_ms=200,
        ports=ports[:3],
    )
    c.spare_ports = ports[3:]
    c.start()
    yield c
    if c.any_process_left():
        for n in c.nodes.values():
            if n.process is not None:
                try:
                    os.killpg(n.process.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        c.stop()
        for n in c.nodes.values():
            n.kill()


async def admin(cluster: ProcessCluster, *args: str, via: str | None = None) -> tuple[int, str, str]:
    addresses = via or ",".join(cluster.addresses_of_running())
    r = await trio.run_process(
        [sys.executable, "-m", "multiraft.admin_cli", "--cluster", addresses, *args],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    return r.returncode, r.stdout.decode(), r.stderr.decode()


async def admin_ok(cluster: ProcessCluster, *args: str) -> str:
    code, out, err = await admin(cluster, *args)
    assert code == 0, f"multiraft-admin {' '.join(args)} exited {code}:\n{out}\n{err}"
    return out


def group(st: dict, g: int) -> dict:
    return st["groups"][g]


def holds(st: dict, node: str) -> list[int]:
    return [g["id"] for g in st["groups"] if node in g["voters"] + g["learners"] + g["voters_outgoing"]]


def agree(st: dict) -> bool:
    """Every replica caught up, and the voters of each group hold the same data."""
    if not caught_up(st):
        return False
    for g in st["groups"]:
        reps = [r for r in g["replicas"] if r["member"] == "voter"]
        if len({r["applied"] for r in reps}) != 1 or len({r["keys"] for r in reps}) != 1:
            return False
    return True


def settled(st: dict) -> bool:
    """Every group has a leader, no joint config, and no learner."""
    return all(g["leader"] and not g["voters_outgoing"] and not g["learners"] for g in st["groups"])


class Workload:
    """Concurrent clients over a few shared keys, recorded for lincheck; any
    client error is recorded too (the requirement: retries at most)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.errors: list[str] = []
        self.acked: dict[bytes, bytes] = {}
        self.ok = 0
        self._process = 0

    async def run(self, client, stop: trio.Event, tasks: int = 5, keys: int = 4) -> None:
        async with trio.open_nursery() as n:
            for t in range(tasks):
                n.start_soon(self._lin_task, client, stop, keys, random.Random(t), t)
            for t in range(2):
                n.start_soon(self._writer, client, stop, f"w{t}")

    async def _lin_task(self, client, stop, keys, rng, t) -> None:
        self._process += 1
        process = self._process
        n = 0
        while not stop.is_set():
            n += 1
            key = f"lin-{rng.randrange(keys)}"
            r = rng.random()
            if r < 0.45:
                value = f"{t}.{n}"
                ev = {"process": process, "f": "put", "key": key, "value": value}
                self.events.append({**ev, "type": "invoke"})
                try:
                    await client.put(key, value)
                    self.events.append({**ev, "type": "ok"})
                    self.ok += 1
                except ClientError as exc:
                    self.errors.append(f"put {key}: {exc}")
                    self.events.append({**ev, "type": "info" if exc.outcome_unknown else "fail"})
            elif r < 0.85:
                ev = {"process": process, "f": "get", "key": key}
                self.events.append({**ev, "type": "invoke", "value": None})
                try:
                    got = await client.get(key)
                    self.events.append({**ev, "type": "ok", "value": None if got is None else got.decode()})
                    self.ok += 1
                except ClientError as exc:
                    self.errors.append(f"get {key}: {exc}")
                    self.events.append({**ev, "type": "fail", "value": None})
            else:
                prev = [e["value"] for e in self.events if e["key"] == key and e["f"] == "put"]
                expected = rng.choice(prev) if prev and rng.random() < 0.8 else None
                value = f"{t}.{n}c"
                ev = {"process": process, "f": "cas", "key": key, "value": [expected, value]}
                self.events.append({**ev, "type": "invoke"})
                try:
                    swapped, _ = await client.cas(key, expected, value)
                    self.events.append({**ev, "type": "ok" if swapped else "fail"})
                    self.ok += 1
                except ClientError as exc:
                    self.errors.append(f"cas {key}: {exc}")
                    self.events.append({**ev, "type": "info" if exc.outcome_unknown else "fail"})
            if self.events[-1]["type"] == "info":
                self._process += 1
                process = self._process
            await trio.sleep(rng.random() * 0.02)

    async def _writer(self, client, stop, prefix) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            key = f"{prefix}-{n % 200}".encode()
            value = f"{prefix}-{n}".encode()
            try:
                await client.put(key, value)
            except ClientError as exc:
                self.errors.append(f"put {key!r}: {exc}")
                continue
            self.acked[key] = value
            await trio.sleep(0.005)


WORKLOAD = Workload()


# ---------------------------------------------------------------------------


async def test_a_node_joins_empty(cluster: ProcessCluster) -> None:
    await cluster.wait_healthy(timeout_s=60)
    cluster.join_node("n4", cluster.spare_ports[0], via=cluster.nodes["n2"].address)

    def joined(st: dict) -> bool:
        n4 = [n for n in st["nodes"] if n["id"] == "n4"]
        return bool(n4) and n4[0]["up"] and all(w["up"] for w in n4[0]["workers"])

    st = await cluster.wait_for(joined, timeout_s=60, what="n4 to join")
    assert holds(st, "n4") == []
    # every coordinator knows it (the join spread by polling)
    for node in ("n1", "n2", "n3"):
        async def knows(node=node) -> bool:
            doc = await coordinator_request([cluster.nodes[node].address], ["cluster_status"])
            return any(n["id"] == "n4" and n["up"] for n in doc["nodes"])

        with trio.fail_after(30):
            while not await knows():
                await trio.sleep(0.2)
    out = await admin_ok(cluster, "status")
    assert "n4" in out
    # a join under a name already taken, or with --peers too, is refused in one line
    spare = cluster.spare_ports[0] + 100
    for extra, message in ((["--node-id", "n2"], b"already a member"),
                           (["--node-id", "n9", "--peers", "n9=127.0.0.1:1"], b"exclude each other")):
        r = await trio.run_process(
            [sys.executable, "-m", "multiraft.cli", "node", *extra, "--listen", f"127.0.0.1:{spare}",
             "--join", cluster.nodes["n1"].address, "--data-dir", str(cluster.base_dir / "refused")],
            capture_stdout=True, capture_stderr=True, check=False)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


async def test_membership_changes_under_a_workload(cluster: ProcessCluster) -> None:
    async with open_client(cluster.addresses, timeout_s=30) as c:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(WORKLOAD.run, c, stop)
            await trio.sleep(0.5)

            # add-voter: a fourth voter
            out = await admin_ok(cluster, "add-voter", "0", "n4")
            assert "caught up" in out and "promoting n4" in out
            st = await cluster.status()
            assert sorted(group(st, 0)["voters"]) == ["n1", "n2", "n3", "n4"]

            # remove-replica of the leader: leadership moves first
            leader = group(st, 0)["leader"]
            victim = leader if leader != "n4" else "n1"
            out = await admin_ok(cluster, "remove-replica", "0", victim)
            st = await cluster.status()
            assert victim not in group(st, 0)["voters"] and len(group(st, 0)["voters"]) == 3
            if victim == leader:
                assert "transferring leadership" in out

            # move-replica of several groups, through joint consensus
            for g in (1, 2):
                st = await cluster.status()
                src = sorted(v for v in group(st, g)["voters"] if v != "n4")[0]
                out = await admin_ok(cluster, "move-replica", str(g), src, "n4")
                assert "joint" in out and "left the joint config" in out
                st = await cluster.status()
                assert "n4" in group(st, g)["voters"] and src not in group(st, g)["voters"]
                assert not group(st, g)["voters_outgoing"]

            # transfer-leader
            st = await cluster.status()
            target = sorted(v for v in group(st, 3)["voters"] if v != group(st, 3)["leader"])[0]
            await admin_ok(cluster, "transfer-leader", "3", target)
            st = await cluster.status()
            assert group(st, 3)["leader"] == target

            # rebalance: replicas and leaders even over the four nodes
            await admin_ok(cluster, "rebalance", "--dry-run")
            await admin_ok(cluster, "rebalance")
            st = await cluster.wait_for(settled, timeout_s=30, what="groups to settle")
            counts = [len(holds(st, n)) for n in ("n1", "n2", "n3", "n4")]
            assert max(counts) - min(counts) <= 1, counts

            # drain n1: it ends up empty, the others take its replicas
            out = await admin_ok(cluster, "drain", "n1")
            st = await cluster.wait_for(settled, timeout_s=30, what="groups to settle")
            assert holds(st, "n1") == []
            await trio.sleep(1.0)
            stop.set()

        st = await cluster.wait_for(agree, timeout_s=60, what="every replica to catch up and agree")
        for g in st["groups"]:
            assert len(g["voters"]) == 3 and not g["learners"] and not g["voters_outgoing"], g
            assert "n1" not in g["voters"]
            reps = [r for r in g["replicas"] if r["member"] == "voter"]
            assert len(reps) == 3
            assert len({r["applied"] for r in reps}) == 1 and len({r["keys"] for r in reps}) == 1, g
            assert [r for r in g["replicas"] if r["member"] == "none"] == [], g
        # every acknowledged write is there
        for key, value in sorted(WORKLOAD.acked.items()):
            assert await c.get(key, timeout_s=10) == value
    assert WORKLOAD.errors == [], WORKLOAD.errors[:5]
    assert WORKLOAD.ok > 100
    result = await trio.to_thread.run_sync(lambda: check_events(WORKLOAD.events, timeout_s=60))
    assert result.ok, f"{result.verdict}: key {result.failed_key}"


async def test_unsafe_changes_are_refused(cluster: ProcessCluster) -> None:
    st = await cluster.wait_for(settled, timeout_s=30, what="groups to settle")
    # one change at a time per group: a second request for the same group fails clearly
    n2 = [cluster.nodes["n2"].address]
    first = await coordinator_request(n2, ["admin", "add-voter", {"group": 5, "node": "n1"}])
    with pytest.raises(RequestError, match="being changed by job"):
        await coordinator_request(n2, ["admin", "transfer-leader", {"group": 5, "node": group(st, 5)["voters"][0]}])
    # the very same command attaches to the running job (or finds it done)
    code, out, err = await admin(cluster, "add-voter", "5", "n1", via=n2[0])
    assert code == 0 and (f"already running as job {first['job']}" in out or "already a voter" in out), (out, err)
    await admin_ok(cluster, "remove-replica", "5", "n1")

    # nodes down: n1 (empty) and n4 (holds a replica of every group)
    st = await cluster.status()
    g = next(g for g in st["groups"] if "n4" in g["voters"])
    other = next(v for v in g["voters"] if v != "n4")
    cluster.nodes["n1"].kill()
    cluster.nodes["n4"].kill()
    await cluster.wait_for(
        lambda s: not any(n["up"] for n in s["nodes"] if n["id"] in ("n1", "n4")), timeout_s=30,
        what="n1 and n4 to be seen down")
    code, _, err = await admin(cluster, "remove-replica", str(g["id"]), other)
    assert code == 1 and "without a live majority" in err and "down: n4" in err, err
    code, _, err = await admin(cluster, "add-voter", str(g["id"]), "n1")
    assert code == 1 and "n1 is down" in err, err
    code, _, err = await admin(cluster, "remove-node", "n4", "--force")
    assert code == 1 and "still holds replicas" in err, err
    code, _, err = await admin(cluster, "remove-node", "n1")
    assert code == 1 and "--force" in err, err
    cluster.nodes["n1"].start()
    cluster.nodes["n4"].start()
    await cluster.wait_healthy(timeout_s=60)

    # the last voter cannot be removed
    gid = str(g["id"])
    voters = sorted(g["voters"])
    await admin_ok(cluster, "remove-replica", gid, voters[0])
    await admin_ok(cluster, "remove-replica", gid, voters[1])
    code, _, err = await admin(cluster, "remove-replica", gid, voters[2])
    assert code == 1 and "last voter" in err, err
    await admin_ok(cluster, "add-voter", gid, voters[0])
    await admin_ok(cluster, "add-voter", gid, voters[1])
    st = await cluster.status()
    assert sorted(group(st, g["id"])["voters"]) == voters


class RawWorker:
    """Requests to a worker's client port, several in one write (so that the
    worker handles them back to back, before its next raft round)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = protocol.FrameBuffer()
        self.next_id = 1

    @classmethod
    async def open(cls, cluster: ProcessCluster, node: str, g: int) -> RawWorker:
        st = await coordinator_request([cluster.nodes[node].address], ["status"])
        w = st["groups"][g]["worker"]
        host, port = st["workers"][w]["client_address"].rsplit(":", 1)
        return cls(await trio.open_tcp_stream(host, int(port)))

    async def requests(self, *bodies: list) -> list:
        ids = list(range(self.next_id, self.next_id + len(bodies)))
        self.next_id += len(bodies)
        await self.stream.send_all(b"".join(protocol.encode([i, *b]) for i, b in zip(ids, bodies, strict=True)))
        answers: dict = {}
        while len(answers) < len(ids):
            data = await self.stream.receive_some(1 << 16)
            assert data, "the worker closed the connection"
            self.buf.feed(data)
            for req_id, status, payload in self.buf.frames():
                answers[req_id] = (status, payload)
        return [answers[i] for i in ids]


async def test_leader_killed_in_a_joint_change(cluster: ProcessCluster) -> None:
    """The admin proposes {+n1, -C} as one joint change and dies; the group's
    leader dies while the group is joint. The group leaves joint under its new
    leader, and rerunning the same command finishes the job."""
    st = await cluster.wait_for(settled, timeout_s=30, what="groups to settle")
    gs = next(x for x in st["groups"] if "n1" not in x["voters"])
    g = gs["id"]
    a, b, c = sorted(gs["voters"])
    await admin_ok(cluster, "transfer-leader", str(g), a)
    await admin_ok(cluster, "add-learner", str(g), "n1")
    st = await cluster.wait_for(lambda s: (group(s, g)["replicas"] and all(
        r["lag"] == 0 for r in group(s, g)["replicas"] if r["node"] == "n1")), timeout_s=30, what="n1 to catch up")

    # Hold the group in its joint config: B is frozen and the leader is
    # transferring to it, which defers leaving the joint config.
    node_b = cluster.nodes[b]
    os.killpg(node_b.process.pid, signal.SIGSTOP)
    try:
        conn = await RawWorker.open(cluster, a, g)
        cc, tl = await conn.requests(
            ["conf_change", g, [["add_voter", "n1"], ["remove", c]], True],  # what move-replica proposes
            ["transfer_leader", g, b],
        )
        assert cc[0] == "ok" and tl[0] == "ok", (cc, tl)
        with trio.fail_after(10):
            while True:
                [(status, gst)] = await conn.requests(["group_status", g])
                if gst.get("voters_outgoing"):
                    break
                await trio.sleep(0.01)
        cluster.nodes[a].kill()  # the leader dies while the group is joint
        await conn.stream.aclose()
        assert sorted(gst["voters"]) == sorted([a, b, "n1"]) and sorted(gst["voters_outgoing"]) == [a, b, c]
    finally:
        os.killpg(node_b.process.pid, signal.SIGCONT)

    def left_joint(s: dict) -> bool:
        grp = group(s, g)
        return bool(grp["leader"]) and grp["leader"] != a and not grp["voters_outgoing"]

    st = await cluster.wait_for(left_joint, timeout_s=60, what=f"group {g} to leave joint under a new leader")
    assert sorted(group(st, g)["voters"]) == sorted([a, b, "n1"])
    # rerunning the interrupted command finishes it (deletes c's copy) or says it is done
    out = await admin_ok(cluster, "move-replica", str(g), c, "n1")
    assert "already has n1" in out
    cluster.nodes[a].start()
    await cluster.wait_healthy(timeout_s=60)
    st = await cluster.wait_for(caught_up, timeout_s=60, what="replicas to catch up")
    reps = [r for r in group(st, g)["replicas"]]
    assert sorted(r["node"] for r in reps) == sorted([a, b, "n1"]), reps


async def test_coordinator_killed_in_the_middle_of_a_move(cluster: ProcessCluster) -> None:
    """The coordinator running a move-replica dies (with its node, which held
    the replica being moved); rerunning the command elsewhere finishes it, and
    once the node is back, once more deletes its stale copy."""
    st = await cluster.wait_for(settled, timeout_s=30, what="groups to settle")
    gs = next(x for x in st["groups"] if "n1" not in x["voters"] and x["leader"] != "n1")
    g = gs["id"]
    src = next(v for v in sorted(gs["voters"]) if v != gs["leader"])
    via = [cluster.nodes[src].address]
    started = await coordinator_request(via, ["admin", "move-replica", {"group": g, "source": src, "target": "n1"}])
    with trio.fail_after(30):
        while True:
            doc = await coordinator_request(via, ["job", started["job"]])
            if any("as a learner" in step for step in doc["steps"]):
                break
            assert doc["state"] == "running", doc
            await trio.sleep(0.01)
    cluster.nodes[src].kill()  # the coordinator running the job, and the source replica
    code, out, err = await admin(cluster, "move-replica", str(g), src, "n1")
    assert code == 0, (out, err)
    assert f"{src} is down" in out
    st = await cluster.status()
    assert "n1" in group(st, g)["voters"] and src not in group(st, g)["voters"]
    cluster.nodes[src].start()
    await cluster.wait_healthy(timeout_s=60)
    out = await admin_ok(cluster, "move-replica", str(g), src, "n1")
    assert "already has n1" in out and f"deleted {src}'s copy" in out
    st = await cluster.wait_for(agree, timeout_s=60, what="replicas to agree")
    assert sorted(r["node"] for r in group(st, g)["replicas"]) == sorted(group(st, g)["voters"])


async def test_drain_and_retire_a_node(cluster: ProcessCluster) -> None:
    await cluster.wait_healthy(timeout_s=60)
    await admin_ok(cluster, "drain", "n1")
    st = await cluster.wait_for(settled, timeout_s=30, what="groups to settle")
    assert holds(st, "n1") == []
    out = await admin_ok(cluster, "remove-node", "n1")
    assert "retired" in out
    # n1 is gone from the status and the routing of every other coordinator
    for node in ("n2", "n3", "n4"):
        with trio.fail_after(30):
            while True:
                doc = await coordinator_request([cluster.nodes[node].address], ["cluster_status"])
                if "n1" not in [n["id"] for n in doc["nodes"]]:
                    break
                await trio.sleep(0.2)
    retired = cluster.nodes.pop("n1")
    retired.terminate()
    assert retired.wait_stopped(20)
    st = await cluster.wait_for(caught_up, timeout_s=60, what="replicas to catch up")
    assert all(len(g["voters"]) == 3 for g in st["groups"])
    async with open_client(cluster.addresses_of_running(), timeout_s=20) as c:
        await c.put("after-retire", "ok")
        assert await c.get("after-retire") == b"ok"


async def test_rebalance_evens_out_the_workers_of_a_node(cluster: ProcessCluster) -> None:
    """Replicas moved between the workers of a node keep their Raft state."""
    n2 = [cluster.nodes["n2"].address]
    placed = (await coordinator_request(n2, ["placement"]))["groups"]  # {g: worker}
    assert len(placed) == GROUPS
    for g, w in sorted(placed.items()):
        if w == 1:
            await coordinator_request(n2, ["move_worker", g, 1, 0], timeout_s=30)
    placed = (await coordinator_request(n2, ["placement"]))["groups"]
    assert set(placed.values()) == {0}
    out = await admin_ok(cluster, "rebalance")
    assert "from worker 0 to 1" in out
    placed = (await coordinator_request(n2, ["placement"]))["groups"]
    loads = [sum(1 for w in placed.values() if w == i) for i in range(WORKERS)]
    assert max(loads) - min(loads) <= 1, loads
    await cluster.wait_for(agree, timeout_s=60, what="replicas to agree")
    async with open_client(cluster.addresses_of_running(), timeout_s=20) as c:
        for key, value in sorted(WORKLOAD.acked.items())[:50]:
            assert await c.get(key) == value


async def test_help_explains_every_command() -> None:
    for command in ("add-learner", "promote", "add-voter", "remove-replica", "move-replica",
                    "transfer-leader", "drain", "rebalance", "remove-node", "status"):
        r = await trio.run_process([sys.executable, "-m", "multiraft.admin_cli", command, "--help"],
                                   capture_stdout=True, check=False)
        assert r.returncode == 0 and b"example" in r.stdout and b"usage:" in r.stdout, command


async def test_clean_shutdown_leaves_no_process(cluster: ProcessCluster) -> None:
    assert cluster.stop(timeout_s=20), "a node had to be SIGKILLed"
    assert not cluster.any_process_left()
