"""FileStorage, the async facade: raft-lite's API, on trio worker threads."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from multiraft.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from storage import FileStorage, FileStorageOptions, GroupWrite, MemoryStorage, SnapshotChecksumError

ROOT = Path(__file__).resolve().parents[1]


def options(tmp_path, **kw):
    kw.setdefault("min_free_disk_space", 0)
    return FileStorageOptions(base_dir=tmp_path, **kw)


def run_sync_for(opts):
    return functools.partial(trio.to_thread.run_sync, limiter=trio.CapacityLimiter(opts.max_io_threads))


def ents(first, last, term=1):
    return [Entry(term, i, 0, b"entry %d" % i) for i in range(first, last + 1)]


async def test_raft_lite_api_round_trip(tmp_path):
    opts = options(tmp_path)
    cs = ConfState(voters=frozenset({"n1", "n2", "n3"}))
    async with await FileStorage.open(opts, node_id="n1", run_sync=run_sync_for(opts)) as s:
        assert await s.load_hard_state(1) is None
        assert await s.load_cluster_config(1) == ConfState()
        await s.save_hard_state(1, HardState(3, "n2", 0))
        await s.save_cluster_config(1, cs)
        await s.append_log_entries(1, ents(1, 10, term=3))
        assert await s.get_log_entries(1, 2, 5) == ents(2, 4, term=3)
        assert await s.get_last_log_index(1) == (10, 3)
        assert await s.get_log_term(1, 4) == 3
        assert await s.get_log_entries_term(1, 1, 3) == [(1, 3), (2, 3)]
        await s.truncate_log_suffix(1, 9)
        await s.compact_log_prefix(1, 4)
        assert await s.compacted_to(1) == (4, 3)
        assert await s.get_first_log_index(1) == 5
        await s.save_snapshot(1, Snapshot(SnapshotMeta(4, 3, cs), b"state at 4"))
        stats = await s.statistics()
        assert stats["snapshots"] == 1 and stats["groups"] == 1
    async with await FileStorage.open(opts, node_id="n1", run_sync=run_sync_for(opts)) as s:
        assert await s.load_hard_state(1) == HardState(3, "n2", 0)
        assert await s.load_cluster_config(1) == cs
        assert await s.get_log_entries(1, 5, 9) == ents(5, 8, term=3)
        assert await s.get_last_log_index(1) == (8, 3)
        assert await s.load_snapshot(1) == Snapshot(SnapshotMeta(4, 3, cs), b"state at 4")
        assert await s.list_snapshots() == [1]


async def test_concurrent_appends_are_group_committed(tmp_path):
    opts = options(tmp_path)
    s = await FileStorage.open(opts, run_sync=run_sync_for(opts))

    async def appender(g):
        for i in range(1, 31):
            await s.append_log_entries(g, ents(i, i))

    async with trio.open_nursery() as nursery:
        for g in range(8):
            nursery.start_soon(appender, g)
    stats = await s.statistics()
    assert stats["writes"] == 240
    assert stats["syncs"] <= 240
    for g in range(8):
        assert await s.get_log_entries(g, 1, 31) == ents(1, 30)
    await s.close()


async def test_batch_api_one_fsync(tmp_path):
    opts = options(tmp_path)
    s = FileStorage(opts, run_sync=run_sync_for(opts))
    await s.write([GroupWrite(g, hard_state=HardState(1, None, 0), entries=ents(1, 4)) for g in range(100)])
    stats = await s.statistics()
    assert stats["syncs"] == 1 and stats["physical_writes"] == 1
    await s.close()


async def test_snapshot_streaming(tmp_path):
    opts = options(tmp_path, snapshot_chunk_size=1000)
    s = FileStorage(opts, node_id="n7", run_sync=run_sync_for(opts))
    meta = SnapshotMeta(100, 4, ConfState(voters=frozenset({"n7"})))

    async def source():
        for k in range(10):
            yield bytes([k + 1]) * 777

    await s.save_snapshot_chunks(5, meta, source())
    got = [c async for c in s.snapshot_chunks(5)]
    assert all(len(c) <= 1000 for c in got)
    assert b"".join(got) == b"".join(bytes([k + 1]) * 777 for k in range(10))
    assert await s.load_snapshot_meta(5) == meta
    data = tmp_path / "snapshots" / "5_n7" / "data.bin"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(raw)
    with pytest.raises(SnapshotChecksumError):
        async for _ in s.snapshot_chunks(5):
            pass
    await s.remove_group(5)
    assert await s.list_snapshots() == []
    await s.close()


async def test_inline_mode_and_memory_backend():
    mem = MemoryStorage(seed=4)
    s = FileStorage(node_id="n1", log=mem, snapshots=mem)
    await s.append_log_entries(3, ents(1, 3))
    assert await s.get_last_log_index(3) == (3, 1)
    await s.save_snapshot(3, Snapshot(SnapshotMeta(2, 1, ConfState()), b"x"))
    assert (await s.load_snapshot(3)).data == b"x"


@pytest.mark.integration
def test_example_runs_clean(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "file_storage_example.py"), "--dir", str(tmp_path / "ex")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "everything came back" in out.stdout


@pytest.mark.integration
def test_logdump_runs(tmp_path):
    from storage import SegmentedLog

    log = SegmentedLog(options(tmp_path))
    log.write([GroupWrite(4, entries=ents(1, 3), hard_state=HardState(2, "n1", 1))])
    log.close()
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "logdump.py"), str(tmp_path), "--records"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "ENTRIES 1..3" in out.stdout and "group 4" in out.stdout
