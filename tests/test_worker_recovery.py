"""A worker restarting from a log that does not follow its snapshots: the
group is refused with a typed reason (a failed group, reported), the worker
and its other groups run, and nothing on disk changes. (Crash points inside a
round, which recovery repairs, are in tests/test_storage_crash.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import trio
from conftest import fill

from storage.records import SEGMENT_HEADER_SIZE
from workers.testing import open_cluster

BOUND = 120


def disk_image(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != "LOCK"}


async def test_an_emptied_log_under_a_snapshot_fails_the_group_and_changes_nothing_on_disk(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, snapshot_threshold_entries=10, compact_lag_entries=0) as cluster:
            await fill(cluster, [0])
            assert cluster.workers["n2"].groups[0].raft.snapshot is not None
            await cluster.stop("n2")
            d = tmp_path / "n2"
            segs = sorted(d.rglob("segment_*.log"))
            assert segs
            header = segs[0].read_bytes()[:SEGMENT_HEADER_SIZE]
            for p in segs[1:]:
                p.unlink()
            segs[0].write_bytes(header)  # emptied: only the segment header is left
            before = disk_image(d)
            w = await cluster.start("n2")
            st = w.groups[0].status()
            assert st["role"] == "failed"
            assert "hard state" in st["error"] and "snapshots" in st["error"] and "group 0" in st["error"]
            assert w.counters["groups_refused"] == 1
            await trio.sleep(5)  # ticks and peer messages reach it: still nothing written
            assert disk_image(d) == before


async def test_a_snapshot_older_than_the_logs_compaction_fails_only_that_group(tmp_path, autojump_clock):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path, groups=2, snapshot_threshold_entries=10, compact_lag_entries=0) as cluster:
            await fill(cluster, [0, 1])
            await cluster.stop("n2")
            d = tmp_path / "n2"
            snap_dirs = [p for p in d.rglob("0_n2") if p.is_dir()]
            assert snap_dirs
            shutil.rmtree(snap_dirs[0])  # the log was compacted after it: entries missing
            before = disk_image(d)
            w = await cluster.start("n2")
            assert w.groups[0].status()["role"] == "failed"
            assert "compacted" in w.groups[0].failed
            assert w.groups[1].failed is None
            async with cluster.client(await cluster.wait_leader(1)) as c:
                assert (await c.call("put", 1, b"after", b"x", 0, 0))[0] == "ok"
            await cluster.wait_applied(
                1, cluster.workers[cluster.leader_of(1)].groups[1].raft.log.applied, nodes=("n2",)
            )
            assert {k: v for k, v in disk_image(d).items() if "0_n2" in k} == {
                k: v for k, v in before.items() if "0_n2" in k
            }


async def test_importing_a_group_state_whose_log_does_not_follow_its_snapshot_is_refused_unwritten(
    tmp_path, autojump_clock
):
    with trio.fail_after(BOUND):
        async with open_cluster(tmp_path) as cluster:
            await fill(cluster, [0], n=10)
            w = cluster.workers["n2"]
            exported = await w.group_op("export_group", 0)
            state = exported["state"]
            index = state["snapshot"][0]
            bad = dict(state, entries=[[state["hard_state"][0], index + 5, 0, b"x"]])  # a gap after the snapshot
            result = await w.group_op("import_group", 0, bad)
            assert not result["ok"] and "inconsistent" in result["error"] and "missing" in result["error"]
            assert 0 not in w.groups
            assert (await w.group_op("import_group", 0, state))["ok"]
