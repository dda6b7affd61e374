"""The KV client against nodes running the fake worker (tests/fake_worker.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from conftest import FAKE_WORKER_ENV

from multiraft.client import ClusterUnavailable, SyncClient, Timeout, open_client
from multiraft.localcluster import ProcessCluster
from multiraft.sharding import group_for_key

FAKE = {**FAKE_WORKER_ENV, "FAKE_WORKER_SILENT_KEY_PREFIX": "silent-"}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    # 2 nodes, replicas 2: each group is led by its first replica, the other
    # answers not_leader with a hint.
    cluster = ProcessCluster(tmp_path_factory.mktemp("client"), nodes=2, workers=2, groups=8, replicas=2,
                           poll_interval_ms=100, env=FAKE)
    cluster.start()
    trio.run(lambda: cluster.wait_healthy(timeout_s=30))
    yield cluster
    assert cluster.stop()
    assert not cluster.any_process_left()


@pytest.mark.integration
async def test_put_get_delete_cas(nodes) -> None:
    async with open_client(nodes.addresses) as c:
        assert await c.get("absent") is None
        assert await c.put("k1", "v1") is False
        assert await c.put(b"k1", b"v2") is True
        assert await c.get("k1") == b"v2"
        assert await c.get("k1", lease=True) == b"v2"
        assert await c.cas("k1", "nope", "v3") == (False, b"v2")
        assert await c.cas("k1", "v2", "v3") == (True, b"v3")
        assert await c.cas("k9", None, "new") == (True, b"new")
        assert await c.delete("k1") is True
        assert await c.delete("k1") is False
        assert await c.get("k1") is None
        with pytest.raises(TypeError):
            await c.put(1, "x")


@pytest.mark.integration
async def test_many_requests_in_flight(nodes) -> None:
    async with open_client(nodes.addresses) as c:
        async with trio.open_nursery() as n:
            for i in range(300):
                n.start_soon(c.put, f"key-{i}", f"value-{i}")
        # every concurrent write had its own session (seq per session in order)
        assert 1 <= sum(len(free) for free in c._free_sessions.values()) <= 300
        # registered once each, reused by the writes that followed
        assert c.stats["sessions_registered"] == sum(len(free) for free in c._free_sessions.values())
        results = {}

        async def get(i: int) -> None:
            results[i] = await c.get(f"key-{i}")

        async with trio.open_nursery() as n:
            for i in range(300):
                n.start_soon(get, i)
        assert results == {i: f"value-{i}".encode() for i in range(300)}
        assert len(c._conns) <= 4  # one pipelined connection per worker


@pytest.mark.integration
async def test_not_leader_hints_are_followed(nodes) -> None:
    async with open_client(nodes.addresses) as c:
        g = group_for_key(b"hinted", c.groups_total)
        info = c.routing["groups"][g]
        true_leader = info["leader"]
        wrong = next(n for n in info["replicas"] if n != true_leader)
        c._leaders[g] = wrong  # a stale leader: the first attempt gets not_leader
        await c.put("hinted", "x")
        assert c.stats["redirects"] >= 1
        assert c._leaders[g] == true_leader


@pytest.mark.integration
async def test_unknown_outcome_is_reported_as_such(nodes) -> None:
    async with open_client(nodes.addresses, attempt_timeout_s=0.3) as c:
        with pytest.raises(Timeout) as info:
            await c.put("silent-1", "x", timeout_s=1.0)
        assert info.value.outcome_unknown
        assert "outcome unknown" in str(info.value)
        # it was in fact applied (the answer was lost): a read tells
        assert await c.get("silent-1") == b"x"


async def test_unreachable_cluster() -> None:
    with pytest.raises(ClusterUnavailable, match="no coordinator"):
        async with open_client(["127.0.0.1:1"], timeout_s=1):
            pass


@pytest.mark.integration
def test_sync_client(nodes) -> None:
    with SyncClient(nodes.addresses) as c:
        c.put("sync", "yes")
        assert c.get("sync") == b"yes"
        assert c.cas("sync", "yes", "no") == (True, b"no")
        assert c.delete("sync") is True
        assert c.get("sync") is None
        assert c.cluster_status()["nodes"][0]["id"] == "n1"
    with pytest.raises(ClusterUnavailable):
        SyncClient(["127.0.0.1:1"], timeout_s=1)


@pytest.mark.integration
async def test_a_down_node_makes_its_groups_unavailable_not_others(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, nodes=2, workers=1, groups=4, replicas=1, poll_interval_ms=100, env=FAKE)
    cluster.start()
    try:
        await cluster.wait_healthy(timeout_s=30)
        async with open_client(cluster.addresses, timeout_s=2) as c:
            keys = {group_for_key(f"k{i}".encode(), 4): f"k{i}" for i in range(50)}
            for k in keys.values():
                await c.put(k, "v")
            cluster.nodes["n2"].kill()
            on_n1 = [k for g, k in keys.items() if c.routing["groups"][g]["replicas"] == {"n1": 0}]
            on_n2 = [k for g, k in keys.items() if k not in on_n1]
            for k in on_n1:
                assert await c.get(k) == b"v"
            with pytest.raises((ClusterUnavailable, Timeout)):
                await c.put(on_n2[0], "w", timeout_s=1.5)
    finally:
        cluster.stop()
