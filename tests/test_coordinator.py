"""The coordinator: data directory, worker supervision, peers, routing, API.

Nodes run as real processes with the fake worker (tests/fake_worker.py), so
these tests do not depend on the real worker's Raft.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import trio
from conftest import FAKE_WORKER_ENV, process_alive, wait_until

from multiraft import protocol
from multiraft.client import coordinator_request
from multiraft.coordinator import load_stored, prepare_node
from multiraft.localcluster import ProcessCluster
from multiraft.nodeconfig import ConfigError, RawOptions

# --- the data directory ---


def test_prepare_creates_and_resumes(tmp_path: Path) -> None:
    raw = RawOptions(node_id="n2", data_dir=str(tmp_path / "d"), workers=3, groups=10,
                     peers="n1=127.0.0.1:7100,n2=127.0.0.1:7200,n3=127.0.0.1:7300")
    setup = prepare_node(raw)
    placement = setup.placement
    with pytest.raises(ConfigError, match="in use"):
        prepare_node(raw)
    setup.release()
    doc = load_stored(tmp_path / "d")
    assert doc["node_id"] == "n2" and doc["workers"] == 3 and doc["cluster"]["groups"] == 10
    assert doc["format"] == "multiraft-node" and doc["format_version"] == 1
    # a restart with no layout flags reads them back, same placement
    again = prepare_node(RawOptions(data_dir=str(tmp_path / "d")))
    assert again.options.node_id == "n2" and again.options.workers == 3 and again.placement == placement
    assert (tmp_path / "d" / "workers" / "w2").is_dir()
    again.release()
    for bad, what in ((RawOptions(data_dir=str(tmp_path / "d"), groups=11), "--groups"),
                      (RawOptions(data_dir=str(tmp_path / "d"), node_id="n1"), "belongs to node n2"),
                      (RawOptions(data_dir=str(tmp_path / "d"), peers="n2=127.0.0.1:7200"), "--peers")):
        with pytest.raises(ConfigError, match=what):
            prepare_node(bad)


def test_placement_is_balanced_over_workers(tmp_path: Path) -> None:
    setup = prepare_node(RawOptions(data_dir=str(tmp_path / "d"), workers=4, groups=64))
    loads = [len(setup.placement.worker_groups(i)) for i in range(4)]
    assert loads == [16, 16, 16, 16]
    setup.release()


# --- a running node ---


@pytest.fixture
def two_nodes(tmp_path: Path):
    cluster = ProcessCluster(
        tmp_path, nodes=2, workers=2, groups=6, replicas=1, poll_interval_ms=100, env=FAKE_WORKER_ENV
    )
    cluster.start()
    yield cluster
    cluster.stop()
    assert not cluster.any_process_left()


@pytest.mark.integration
async def test_routing_merges_peers_and_tracks_them(two_nodes: ProcessCluster) -> None:
    await two_nodes.wait_healthy(timeout_s=30)
    a1, a2 = two_nodes.addresses
    want_leaders = {g: ("n1" if g % 2 == 0 else "n2") for g in range(6)}

    async def merged():
        # Routing is merged from peer polls on its own schedule: it may trail
        # the status wait_healthy saw by one poll. Wait for it, then check it.
        t = await coordinator_request([a1], ["routing"])
        return {g: v["leader"] for g, v in t["groups"].items()} == want_leaders and t

    table = await wait_until(merged)
    assert set(table["nodes"]) == {"n1", "n2"}
    assert table["nodes"]["n2"]["workers"][1]["client_address"] == f"127.0.0.1:{two_nodes.nodes['n2'].port + 52}"
    assert {g: v["leader"] for g, v in table["groups"].items()} == want_leaders
    placement = await coordinator_request([a2], ["placement"])
    assert placement["node"] == "n2" and placement["cluster"]["groups"] == 6
    assert await coordinator_request([a1], ["ping"]) == "n1"

    two_nodes.nodes["n2"].kill()

    async def n2_down():
        t = await coordinator_request([a1], ["routing"])
        return not t["nodes"]["n2"]["up"] and t["groups"][1]["leader"] is None

    await wait_until(n2_down)
    two_nodes.nodes["n2"].start()
    await two_nodes.wait_healthy(timeout_s=30)


@pytest.mark.integration
async def test_a_killed_worker_is_restarted(two_nodes: ProcessCluster) -> None:
    await two_nodes.wait_healthy(timeout_s=30)
    a1 = two_nodes.addresses[0]
    st = await coordinator_request([a1], ["status"])
    old = st["workers"][1]["pid"]
    os.kill(old, signal.SIGKILL)

    async def restarted():
        s = await coordinator_request([a1], ["status"])
        w = s["workers"][1]
        return w["up"] and w["pid"] != old and w["restarts"] == 1 and s

    s = await wait_until(restarted)
    assert s["workers"][0]["restarts"] == 0
    await two_nodes.wait_healthy(timeout_s=30)


@pytest.mark.integration
async def test_bad_requests_get_errors_and_garbage_is_dropped(two_nodes: ProcessCluster) -> None:
    await two_nodes.wait_healthy(timeout_s=30)
    a1 = two_nodes.addresses[0]
    stream = await trio.open_tcp_stream("127.0.0.1", two_nodes.nodes["n1"].port)
    await stream.send_all(protocol.encode([7, "frobnicate"]))
    buf = protocol.FrameBuffer()
    with trio.fail_after(5):
        while not (frames := buf.frames()):
            buf.feed(await stream.receive_some(4096))
    assert frames[0][:2] == [7, "error"]
    await stream.send_all(b"\xff" * 64)  # a 4 GB length prefix: the connection is dropped
    with trio.fail_after(5):
        while await stream.receive_some(4096):
            pass
    await stream.aclose()
    assert await coordinator_request([a1], ["ping"]) == "n1"


@pytest.mark.integration
async def test_hostile_frames_do_not_stop_the_coordinator(two_nodes: ProcessCluster) -> None:
    # [x, "ping"] with x a list holding itself (CBOR tags 28/29, 10 bytes): the
    # answer echoes x, whose encoding raised outside any handler and stopped
    # the node. Then a shared-reference DAG and a 20,000-bit integer.
    await two_nodes.wait_healthy(timeout_s=30)
    a1 = two_nodes.addresses[0]
    dag = b"\xd8\x1c\x81\x01"
    for i in range(12):
        dag = b"\xd8\x1c\x82" + dag + bytes([0xD8, 0x1D, 12 - i])
    hostile = [
        bytes.fromhex("82" "d81c81d81d00" "6470696e67"),
        b"\x83\x01\x63job" + dag,
        protocol.encode([1 << 20000, "ping"])[4:],
    ]
    for body in hostile:
        stream = await trio.open_tcp_stream("127.0.0.1", two_nodes.nodes["n1"].port)
        await stream.send_all(len(body).to_bytes(4, "big") + body)
        with trio.fail_after(5):  # dropped: not a valid frame
            while await stream.receive_some(4096):
                pass
        await stream.aclose()
        assert await coordinator_request([a1], ["ping"]) == "n1"
    st = await coordinator_request([a1], ["status"])
    assert st["counters"]["api_bad_frames"] == len(hostile)
    assert all(w["up"] and w["restarts"] == 0 for w in st["workers"])


def _node_pids(node) -> tuple[int, list[int]]:
    import subprocess

    out = subprocess.run(["ps", "-o", "pid=", "-g", str(node.pgid)], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    return node.process.pid, [p for p in pids if p != node.process.pid]


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signals_stop_everything_cleanly(tmp_path: Path, sig: int) -> None:
    cluster = ProcessCluster(tmp_path, nodes=1, workers=3, groups=6, env=FAKE_WORKER_ENV)
    cluster.start()
    try:
        await cluster.wait_healthy(timeout_s=30)
        node = cluster.nodes["n1"]
        _, workers = _node_pids(node)
        assert len(workers) == 3
        node.process.send_signal(sig)
        assert node.wait_stopped(15), "did not stop by itself"
        assert node.process.returncode == 0
        assert not any(process_alive(p) for p in workers)
        assert "stopped" in node.log_text()
    finally:
        cluster.stop()


@pytest.mark.integration
async def test_workers_exit_when_the_coordinator_is_killed(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, nodes=1, workers=2, groups=4, env=FAKE_WORKER_ENV)
    cluster.start()
    try:
        await cluster.wait_healthy(timeout_s=30)
        node = cluster.nodes["n1"]
        coord, workers = _node_pids(node)
        os.kill(coord, signal.SIGKILL)  # the coordinator alone, not its group
        node.process.wait()
        deadline = time.monotonic() + 10
        while any(process_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(process_alive(p) for p in workers), "orphaned workers"
        # the node restarts on the same data directory, same placement
        node.start()
        await cluster.wait_healthy(timeout_s=30)
    finally:
        cluster.stop()


@pytest.mark.integration
async def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, nodes=1, workers=2, groups=4, env=FAKE_WORKER_ENV)
    node = cluster.nodes["n1"]
    s = socket.socket()
    s.bind(("127.0.0.1", node.port + 52))  # worker 1's client port
    s.listen()
    try:
        node.start()
        node.process.wait(timeout=30)
        assert node.process.returncode == 2
        lines = node.log_text().strip().splitlines()
        assert len(lines) == 1 and "worker 1's client port" in lines[0], lines
    finally:
        s.close()
        cluster.stop()


def test_worker_config_matches_the_contract_and_the_worker_accepts_it(tmp_path: Path) -> None:
    from multiraft.coordinator import Coordinator
    from multiraft.protocol import WORKER_CONFIG_KEYS

    setup = prepare_node(RawOptions(data_dir=str(tmp_path / "d"), workers=3, groups=10, node_id="n1",
                                    peers="n1=127.0.0.1:7100,n2=127.0.0.1:7200"))
    try:
        coordinator = Coordinator(setup, worker_argv=["true"])
        for w in coordinator.workers:
            config = coordinator._worker_config(w)
            assert tuple(config) == WORKER_CONFIG_KEYS
            assert config["raft_listen_url"] == f"tcp://127.0.0.1:{7101 + w.index}"
            assert config["client_listen_address"] == f"127.0.0.1:{7151 + w.index}"
            assert all(voters == sorted(voters) or len(voters) == 2 for voters in config["groups"].values())
            try:
                from workers.config import WorkerConfig
            except ImportError:  # pragma: no cover - the worker is another process
                continue
            parsed = WorkerConfig.from_dict(config)
            assert parsed.groups_total == 10 and set(parsed.groups) == set(config["groups"])
    finally:
        setup.release()


# --- the timing every node must share (the leader lease relies on it) ---


def _coordinator(tmp_path: Path, **raw):
    from multiraft.coordinator import Coordinator

    setup = prepare_node(RawOptions(data_dir=str(tmp_path / "d"), workers=1, groups=4, node_id="n1",
                                    peers="n1=127.0.0.1:7100,n2=127.0.0.1:7200", **raw))
    return setup, Coordinator(setup, worker_argv=["true"])


def test_a_joining_node_with_other_timing_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    from multiraft.nodeconfig import lease_timing

    setup, coordinator = _coordinator(tmp_path)
    try:
        other = lease_timing(100, 20, 200)  # twice our election timeout
        status, message = coordinator.join("n3", "127.0.0.1:7300", 1, other)
        assert status == protocol.ERROR
        assert "election_tick=20" in message and "election_tick=10" in message and "--election-tick" in message
        assert "n3" not in coordinator.members
        status, _ = coordinator.join("n3", "127.0.0.1:7300", 1, coordinator.options.timing())
        assert status == protocol.OK and "n3" in coordinator.members
    finally:
        setup.release()


def test_placement_announces_this_nodes_timing(tmp_path: Path) -> None:
    setup, coordinator = _coordinator(tmp_path, tick_ms=50, max_clock_drift_ms=100)
    try:
        assert coordinator.placement_doc()["timing"] == {
            "tick_ms": 50, "election_tick": 10, "max_clock_drift_ms": 100, "check_quorum": True,
        }
        assert coordinator._worker_config(coordinator.workers[0])["max_clock_drift_ms"] == 100
    finally:
        setup.release()


def test_a_peer_with_other_timing_turns_lease_reads_off_with_one_log_line(tmp_path: Path, caplog) -> None:
    from multiraft.nodeconfig import lease_timing

    setup, coordinator = _coordinator(tmp_path)
    try:
        peer = coordinator.peers["n2"]
        assert coordinator.timing_verdict == (True, "")
        peer.timing, peer.timing_seen = lease_timing(100, 10, 50), True
        with caplog.at_level("ERROR", logger="multiraft.coordinator"):
            coordinator._check_timing()
            coordinator._check_timing()  # no change: no second line
        ok, why = coordinator.timing_verdict
        assert not ok and "n2 runs" in why and "max_clock_drift_ms=50" in why
        lines = [r for r in caplog.records if "lease reads off" in r.getMessage()]
        assert len(lines) == 1
        peer.timing = coordinator.options.timing()
        coordinator._check_timing()
        assert coordinator.timing_verdict == (True, "")
    finally:
        setup.release()


async def test_a_worker_that_becomes_ready_is_reconciled_with_the_placement(tmp_path: Path) -> None:
    """Issue 13: a replica added (or deleted) while the node's worker was
    starting never reached it: the worker got its groups at spawn. When it
    reports ready, the coordinator sends what is missing and deletes what the
    placement no longer has."""
    from multiraft.coordinator import Coordinator

    peers = ",".join(f"n{i}=127.0.0.1:{7000 + 100 * i}" for i in range(1, 6))
    setup = prepare_node(RawOptions(data_dir=str(tmp_path / "d"), workers=1, groups=4, node_id="n1", peers=peers))
    try:
        coordinator = Coordinator(setup, worker_argv=["true"])
        w = coordinator.workers[0]
        placed = coordinator.placement.worker_replicas(0)
        # What the placement gained and lost while the worker started.
        new_group = next(g for g in range(4) if g not in placed)
        coordinator.placement = coordinator.placement.with_group(new_group, 0)
        old_group = min(placed)
        coordinator.placement = coordinator.placement.without_group(old_group).with_group(old_group, 0)
        sent = []

        async def group_op(index, kind, g, data=None):
            sent.append((kind, g, data))
            return {"ok": True}

        coordinator._worker_group_op = group_op
        w.up = True
        reported = dict(placed)  # the spawn-time replicas, plus one since dropped
        reported[99] = "n1"
        await coordinator._reconcile_worker(w, reported)
        assert sorted(sent) == sorted([
            ("add_group", new_group, "n1"),
            ("add_group", old_group, "n1~1"),  # a new incarnation replaced the old one
            ("remove_group", 99, None),
        ])
    finally:
        setup.release()
