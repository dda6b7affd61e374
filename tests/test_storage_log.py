"""SegmentedLog: persistence, rotation, truncation, compaction, reclaiming segments."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import storage.segment_log as segment_log
from multiraft.raft.types import ConfState, Entry, HardState
from storage import (
    DiskFullError,
    FileStorageOptions,
    GroupWrite,
    InvalidWriteError,
    LogCompactedError,
    LogLockedError,
    LogUnavailableError,
    SegmentedLog,
    StorageClosedError,
)


def opts(tmp_path, **kw):
    kw.setdefault("min_free_disk_space", 0)
    return FileStorageOptions(base_dir=tmp_path, **kw)


def ents(first, last, term=1, size=8, tag=b""):
    return [Entry(term, i, 0, (tag + b"%d:" % i).ljust(size, b"x")) for i in range(first, last + 1)]


def reopen(log):
    log.close()
    new = SegmentedLog(log.options)
    new.check_invariants()
    return new


def test_each_record_kind_persists(tmp_path):
    log = SegmentedLog(opts(tmp_path))
    cs = ConfState(voters=frozenset({"n1", "n2"}), learners=frozenset({"n3"}))
    log.write([GroupWrite(7, hard_state=HardState(3, "n2", 2), entries=ents(1, 5, term=3), conf_state=cs)])
    log.write([GroupWrite(8, hard_state=HardState(1, None, 0))])
    log.write([GroupWrite(7, truncate_from=5)])
    log.write([GroupWrite(7, compact_to=(2, 3))])
    log.write([GroupWrite(9, entries=ents(1, 3)), GroupWrite(10, hard_state=HardState(4, "n1", 0))])
    log.write([GroupWrite(10, remove=True)])
    log = reopen(log)
    assert log.hard_state(7) == HardState(3, "n2", 2)
    assert log.hard_state(8) == HardState(1, None, 0)
    assert log.conf_state(7) == cs
    assert log.conf_state(8) is None
    assert log.compacted_to(7) == (2, 3)
    assert log.first_index(7) == 3 and log.last_index(7) == 4
    assert log.entries(7, 3, 5) == ents(3, 4, term=3)
    assert log.term(7, 2) == 3
    assert log.entries(9, 1, 4) == ents(1, 3)
    assert log.groups() == [7, 8, 9]
    assert log.hard_state(10) is None
    log.close()


def test_append_after_reopen_keeps_old_records(tmp_path):
    # raft-lite's bug: reopening overwrote the segment from its start.
    log = SegmentedLog(opts(tmp_path))
    log.write([GroupWrite(1, entries=ents(1, 10))])
    log = reopen(log)
    log.write([GroupWrite(1, entries=ents(11, 20))])
    log = reopen(log)
    log.write([GroupWrite(1, entries=ents(21, 30))])
    log = reopen(log)
    assert log.entries(1, 1, 31) == ents(1, 30)
    assert log.stats()["segments"] == 1
    log.close()


def test_rotation_and_reads_across_segments(tmp_path):
    log = SegmentedLog(opts(tmp_path, max_segment_size=1024, cache_entries_size=4))
    for i in range(1, 201):
        log.write([GroupWrite(1, entries=ents(i, i, size=40)), GroupWrite(2, entries=ents(i, i, term=2, size=24))])
    assert log.stats()["segments"] > 10
    assert log.entries(1, 1, 201) == ents(1, 200, size=40)
    assert log.entries(2, 50, 150) == ents(50, 149, term=2, size=24)
    assert log.stats()["entries_read_from_disk"] > 0
    log = reopen(log)
    assert log.stats()["segments"] > 10
    assert log.entries(1, 1, 201) == ents(1, 200, size=40)
    log.write([GroupWrite(1, entries=ents(201, 205, size=40))])
    log = reopen(log)
    assert log.entries(1, 195, 206) == ents(195, 205, size=40)
    log.close()


def test_large_group_write_is_split_into_records(tmp_path):
    log = SegmentedLog(opts(tmp_path))
    big = ents(1, 40, size=100_000)  # ~4 MB: several records of about 1 MiB
    log.write([GroupWrite(1, entries=big)])
    assert log.stats()["records_written"] >= 4
    log = reopen(log)
    assert log.entries(1, 1, 41) == big
    assert log.entries(1, 17, 19) == big[16:18]
    log.close()


def test_suffix_truncation_meaning(tmp_path):
    """Entries from index i on are removed: explicitly, or by writing at i."""
    log = SegmentedLog(opts(tmp_path))
    log.write([GroupWrite(1, entries=ents(1, 10, term=1))])
    log.write([GroupWrite(1, truncate_from=8)])
    assert log.last_index(1) == 7
    log.write([GroupWrite(1, entries=ents(5, 6, term=2))])  # replaces 5.. (implied truncation)
    assert log.last_index(1) == 6
    assert log.entries(1, 1, 7) == ents(1, 4, term=1) + ents(5, 6, term=2)
    log.write([GroupWrite(1, truncate_from=100)])  # past the end: nothing to do
    assert log.last_index(1) == 6
    log = reopen(log)
    assert log.entries(1, 1, 7) == ents(1, 4, term=1) + ents(5, 6, term=2)
    assert [log.term(1, i) for i in range(0, 7)] == [0, 1, 1, 1, 1, 2, 2]
    log.close()


def test_compaction_semantics(tmp_path):
    log = SegmentedLog(opts(tmp_path))
    log.write([GroupWrite(1, entries=ents(1, 5, term=1) + ents(6, 10, term=2))])
    log.write([GroupWrite(1, compact_to=(4, 1))])  # matching term: keep the rest
    assert log.compacted_to(1) == (4, 1)
    assert log.first_index(1) == 5 and log.last_index(1) == 10
    assert log.term(1, 4) == 1
    with pytest.raises(LogCompactedError):
        log.entries(1, 4, 6)
    with pytest.raises(LogCompactedError):
        log.term(1, 3)
    with pytest.raises(LogUnavailableError):
        log.entries(1, 5, 12)
    log.write([GroupWrite(1, compact_to=(3, 1))])  # at or below the base: no-op
    assert log.compacted_to(1) == (4, 1)
    log.write([GroupWrite(1, compact_to=(8, 5))])  # term mismatch: a snapshot replaces the log
    assert log.compacted_to(1) == (8, 5)
    assert log.last_index(1) == 8 and log.entries(1, 9, 9) == []
    log.write([GroupWrite(1, compact_to=(20, 6), entries=ents(21, 22, term=6))])  # past the end
    assert (log.first_index(1), log.last_index(1)) == (21, 22)
    log = reopen(log)
    assert log.compacted_to(1) == (20, 6)
    assert log.entries(1, 21, 23) == ents(21, 22, term=6)
    assert log.last_term(1) == 6
    log.close()


def test_invalid_writes_are_rejected_whole(tmp_path):
    log = SegmentedLog(opts(tmp_path))
    log.write([GroupWrite(1, entries=ents(1, 5, term=2))])
    bad = [
        [GroupWrite(1, entries=ents(7, 8, term=2))],  # gap
        [GroupWrite(1, entries=[Entry(2, 6, 0, b"a"), Entry(2, 8, 0, b"b")])],  # not contiguous
        [GroupWrite(1, entries=ents(6, 6, term=1))],  # term decreases
        [GroupWrite(1, entries=[Entry(3, 6, 0, b"a"), Entry(2, 7, 0, b"b")])],
        [GroupWrite(1, entries=[Entry(2, 6, 300, b"a")])],  # type out of range
        [GroupWrite(1, entries=[Entry(2, 6, 0, "text")])],  # data not bytes
        [GroupWrite(2, hard_state=HardState(1)), GroupWrite(2, hard_state=HardState(2))],  # group twice
        [GroupWrite(3, hard_state=HardState(1)), GroupWrite(1, truncate_from=0)],
        [GroupWrite(-1, hard_state=HardState(1))],
        [object()],  # not a GroupWrite
        [GroupWrite(4, entries=[(1, 1)])],  # not an Entry
    ]
    for batch in bad:
        with pytest.raises(InvalidWriteError):
            log.write(batch)
    log.write([GroupWrite(1, compact_to=(3, 2))])
    with pytest.raises(InvalidWriteError):
        log.write([GroupWrite(1, entries=ents(3, 4, term=2))])  # below the base
    with pytest.raises(InvalidWriteError):
        log.write([GroupWrite(1, truncate_from=3)])
    assert log.groups() == [1]  # group 3's hard state was not applied either
    assert log.entries(1, 4, 6) == ents(4, 5, term=2)
    log = reopen(log)
    assert log.entries(1, 4, 6) == ents(4, 5, term=2)
    log.close()


def test_groups_are_isolated(tmp_path):
    log = SegmentedLog(opts(tmp_path, max_segment_size=2048))
    for r in range(30):
        log.write([GroupWrite(g, entries=ents(r + 1, r + 1, term=g, tag=b"g%d-" % g)) for g in range(1, 6)])
    log.write([GroupWrite(3, truncate_from=10), GroupWrite(4, compact_to=(20, 4)), GroupWrite(5, remove=True)])
    log = reopen(log)
    assert log.groups() == [1, 2, 3, 4]
    for g in (1, 2):
        assert log.entries(g, 1, 31) == ents(1, 30, term=g, tag=b"g%d-" % g)
    assert log.last_index(3) == 9
    assert log.entries(4, 21, 31) == ents(21, 30, term=4, tag=b"g4-")
    assert log.last_index(5) == 0 and log.hard_state(5) is None
    log.close()


def test_unknown_group_is_an_empty_log(tmp_path):
    log = SegmentedLog(opts(tmp_path))
    assert (log.first_index(5), log.last_index(5), log.term(5, 0), log.compacted_to(5)) == (1, 0, 0, (0, 0))
    assert log.entries(5, 1, 1) == []
    with pytest.raises(LogUnavailableError):
        log.term(5, 1)
    log.close()


def test_cache_is_bounded_and_reads_match(tmp_path):
    log = SegmentedLog(opts(tmp_path, cache_entries_size=10))
    for i in range(1, 101):
        log.write([GroupWrite(1, entries=ents(i, i))])
    assert log.stats()["cached_entries"] == 10
    before = log.stats()
    assert log.entries(1, 95, 101) == ents(95, 100)
    assert log.stats()["entries_read_from_disk"] == before["entries_read_from_disk"]
    assert log.entries(1, 1, 101) == ents(1, 100)
    assert log.entries(1, 1, 101, max_bytes=20) == ents(1, 2)
    assert log.entries(1, 1, 101, max_bytes=0) == ents(1, 1)
    log.close()


def test_unpinned_segments_are_deleted(tmp_path):
    log = SegmentedLog(opts(tmp_path, max_segment_size=1024))
    for i in range(1, 101):
        log.write([GroupWrite(1, entries=ents(i, i, size=50))])
    assert log.stats()["segments"] >= 8
    log.write([GroupWrite(1, compact_to=(95, 1))])
    st = log.stats()
    assert st["segments_deleted"] >= 6
    assert st["segments"] <= 2
    log.check_invariants()
    files = sorted(os.listdir(tmp_path / "logs"))
    assert len([f for f in files if f.startswith("segment_")]) == st["segments"]
    log = reopen(log)
    assert log.entries(1, 96, 101) == ents(96, 100, size=50)
    assert log.compacted_to(1) == (95, 1)
    log.close()


def test_lagging_group_is_rewritten_forward(tmp_path):
    """One slow group (never compacted) must not pin old segments forever."""
    o = opts(tmp_path, max_segment_size=2048, rewrite_after_segments=3)
    log = SegmentedLog(o)
    cs = ConfState(voters=frozenset({"a", "b", "c"}))
    log.write([GroupWrite(99, hard_state=HardState(7, "b", 3), entries=ents(1, 3, term=7, tag=b"lag"), conf_state=cs)])
    for i in range(1, 401):
        batch = [GroupWrite(1, entries=ents(i, i, size=60))]
        if i % 10 == 0:
            batch[0] = GroupWrite(1, entries=ents(i, i, size=60), compact_to=(i - 1, 1))
        log.write(batch)
    st = log.stats()
    assert st["groups_rewritten"] >= 1
    assert st["segments"] <= 5, st
    log.check_invariants()
    log = reopen(log)
    assert log.hard_state(99) == HardState(7, "b", 3)
    assert log.conf_state(99) == cs
    assert log.entries(99, 1, 4) == ents(1, 3, term=7, tag=b"lag")
    assert log.compacted_to(99) == (0, 0)
    assert log.entries(1, 400, 401) == ents(400, 400, size=60)
    log.close()


def test_lagging_group_with_compacted_base_is_rewritten(tmp_path):
    o = opts(tmp_path, max_segment_size=2048, rewrite_after_segments=2)
    log = SegmentedLog(o)
    log.write([GroupWrite(5, entries=ents(1, 20, term=2))])
    log.write([GroupWrite(5, compact_to=(15, 2))])
    for i in range(1, 300):
        log.write([GroupWrite(1, entries=ents(i, i, size=60), compact_to=(i - 1, 1) if i > 1 else None)])
    assert log.stats()["groups_rewritten"] >= 1
    log = reopen(log)
    assert log.compacted_to(5) == (15, 2)
    assert log.entries(5, 16, 21) == ents(16, 20, term=2)
    log.close()


def test_disk_full_fails_before_writing(tmp_path, monkeypatch):
    log = SegmentedLog(opts(tmp_path, min_free_disk_space=10_000))
    log.write([GroupWrite(1, entries=ents(1, 5), hard_state=HardState(1, "n1", 5))])
    size_before = log.stats()["log_bytes"]
    monkeypatch.setattr(segment_log, "disk_free_bytes", lambda path: 10_100)
    with pytest.raises(DiskFullError) as info:
        log.write([GroupWrite(1, entries=ents(6, 20, size=50))])
    assert info.value.min_free == 10_000
    assert log.stats()["log_bytes"] == size_before
    assert log.last_index(1) == 5
    log.write([GroupWrite(2, hard_state=HardState(1))])  # small enough still fits
    monkeypatch.undo()
    log.write([GroupWrite(1, entries=ents(6, 20, size=50))])
    log = reopen(log)
    assert log.entries(1, 1, 21) == ents(1, 5) + ents(6, 20, size=50)
    assert log.hard_state(2) == HardState(1)
    log.close()


def test_no_sync_mode_and_explicit_sync(tmp_path):
    log = SegmentedLog(opts(tmp_path, sync_on_write=False))
    log.write([GroupWrite(1, entries=ents(1, 3))])
    assert log.stats()["syncs"] == 0
    log.write([GroupWrite(1, entries=ents(4, 4))], sync=True)
    assert log.stats()["syncs"] == 1
    log.write([GroupWrite(1, entries=ents(5, 5))])
    log.sync()
    assert log.stats()["durable_lsn"] == log.stats()["end_lsn"]
    log = reopen(log)
    assert log.last_index(1) == 5
    log.close()


def test_one_fsync_per_batch_of_many_groups(tmp_path):
    log = SegmentedLog(opts(tmp_path))
    log.write([GroupWrite(g, entries=ents(1, 16), hard_state=HardState(1, None, 0)) for g in range(200)])
    st = log.stats()
    assert st["syncs"] == 1 and st["physical_writes"] == 1
    log.close()


def test_concurrent_writers_share_fsyncs(tmp_path):
    log = SegmentedLog(opts(tmp_path))
    n_threads, n_writes = 4, 50

    def worker(g):
        for i in range(1, n_writes + 1):
            log.write([GroupWrite(g, entries=ents(i, i))])

    threads = [threading.Thread(target=worker, args=(g,)) for g in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = log.stats()
    assert st["writes"] == n_threads * n_writes
    assert st["syncs"] <= st["writes"]
    log = reopen(log)
    for g in range(n_threads):
        assert log.entries(g, 1, n_writes + 1) == ents(1, n_writes)
    log.close()


def test_log_directory_is_locked(tmp_path):
    log = SegmentedLog(opts(tmp_path))
    with pytest.raises(LogLockedError):
        SegmentedLog(opts(tmp_path))
    log.close()
    with pytest.raises(StorageClosedError):
        log.last_index(1)
    SegmentedLog(opts(tmp_path)).close()


def test_read_only_open_changes_nothing(tmp_path):
    log = SegmentedLog(opts(tmp_path))
    log.write([GroupWrite(1, entries=ents(1, 3))])
    log.close()
    path = next((tmp_path / "logs").glob("segment_*"))
    with open(path, "ab") as f:
        f.write(b"\x4d\x52\x52\x4c partial")
    size = path.stat().st_size
    ro = SegmentedLog(opts(tmp_path), read_only=True)
    assert ro.entries(1, 1, 4) == ents(1, 3)
    assert ro.recovery["torn_tail"] is not None
    ro.close()
    assert path.stat().st_size == size


@pytest.mark.integration
def test_storage_does_not_import_trio():
    code = "import sys, storage; bad = {'trio', 'pynng', 'cbor2', 'workers'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
