"""SnapshotStore: layout, streaming, checksum verification, interrupted writes."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from multiraft.raft.types import ConfState, Snapshot, SnapshotMeta
from storage import CorruptSnapshotError, SnapshotChecksumError, SnapshotStore

CS = ConfState(voters=frozenset({"n1", "n2", "n3"}), learners=frozenset({"n4"}))


def test_layout_and_round_trip(tmp_path):
    store = SnapshotStore(tmp_path, "n1")
    assert store.load_snapshot(3) is None and store.load_snapshot_meta(3) is None
    data = os.urandom(100_000)
    store.save_snapshot(3, Snapshot(SnapshotMeta(42, 7, CS), data))
    d = tmp_path / "3_n1"
    assert sorted(os.listdir(d)) == ["data.bin", "meta.json"]
    meta = json.loads((d / "meta.json").read_text())
    assert meta["index"] == 42 and meta["term"] == 7 and meta["size"] == len(data)
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert ConfState.from_plain(meta["conf_state"]) == CS
    again = SnapshotStore(tmp_path, "n1")
    snap = again.load_snapshot(3)
    assert snap == Snapshot(SnapshotMeta(42, 7, CS), data)
    assert again.snapshot_groups() == [3]
    assert sorted(os.listdir(tmp_path)) == ["3_n1"]


def test_streaming_in_and_out(tmp_path):
    store = SnapshotStore(tmp_path, "n1", chunk_size=4096)
    chunks = [bytes([k]) * 10_000 for k in range(1, 30)]
    w = store.begin_snapshot(1, SnapshotMeta(10, 2, CS))
    for c in chunks:
        w.write(c)
    w.commit()
    out = list(store.iter_snapshot_chunks(1, chunk_size=7000))
    assert max(map(len, out)) == 7000
    assert b"".join(out) == b"".join(chunks)
    r = store.open_snapshot_reader(1)
    assert r.meta == SnapshotMeta(10, 2, CS) and r.size == 290_000
    r.close()


def test_replacing_a_snapshot(tmp_path):
    store = SnapshotStore(tmp_path, "n1")
    store.save_snapshot(1, Snapshot(SnapshotMeta(5, 1, CS), b"old"))
    store.save_snapshot(1, Snapshot(SnapshotMeta(9, 2, CS), b"new"))
    assert store.load_snapshot(1) == Snapshot(SnapshotMeta(9, 2, CS), b"new")
    assert sorted(os.listdir(tmp_path)) == ["1_n1"]
    store.delete_snapshot(1)
    assert store.load_snapshot(1) is None


def test_checksum_mismatch_is_detected(tmp_path):
    store = SnapshotStore(tmp_path, "n1")
    store.save_snapshot(1, Snapshot(SnapshotMeta(5, 1, CS), b"a" * 5000))
    path = tmp_path / "1_n1" / "data.bin"
    data = bytearray(path.read_bytes())
    data[1234] ^= 0x10
    path.write_bytes(data)
    with pytest.raises(SnapshotChecksumError) as info:
        store.load_snapshot(1)
    assert "1_n1" in str(info.value)
    with pytest.raises(SnapshotChecksumError):
        list(store.iter_snapshot_chunks(1, chunk_size=1000))
    path.write_bytes(bytes(data[:-1]) + b"")  # wrong size
    with pytest.raises(SnapshotChecksumError):
        store.load_snapshot(1)
    unverified = SnapshotStore(tmp_path, "n1", verify_checksum=False)
    with pytest.raises(SnapshotChecksumError):  # the size is still checked
        unverified.load_snapshot(1)
    path.write_bytes(data)
    assert unverified.load_snapshot(1).data == bytes(data)
    (tmp_path / "1_n1" / "meta.json").write_text("{not json")
    with pytest.raises(CorruptSnapshotError):
        store.load_snapshot_meta(1)


def test_interrupted_write_leaves_the_previous_snapshot(tmp_path):
    store = SnapshotStore(tmp_path, "n1")
    old = Snapshot(SnapshotMeta(5, 1, CS), b"old data")
    store.save_snapshot(1, old)
    # Crash while streaming the new one: only a .tmp directory is left.
    w = store.begin_snapshot(1, SnapshotMeta(9, 2, CS))
    w.write(b"half of the new")
    reopened = SnapshotStore(tmp_path, "n1")
    assert reopened.load_snapshot(1) == old
    assert sorted(os.listdir(tmp_path)) == ["1_n1"]


def test_crash_between_the_renames_restores_the_old_snapshot(tmp_path):
    store = SnapshotStore(tmp_path, "n1")
    old = Snapshot(SnapshotMeta(5, 1, CS), b"old data")
    store.save_snapshot(1, old)
    w = store.begin_snapshot(1, SnapshotMeta(9, 2, CS))
    w.write(b"new data")
    real_rename = os.rename
    calls = []

    def failing_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old one is moved aside, then the crash
            raise OSError("simulated crash")
        real_rename(src, dst)

    os.rename = failing_rename
    try:
        with pytest.raises(OSError):
            w.commit()
    finally:
        os.rename = real_rename
    assert not (tmp_path / "1_n1").exists()
    reopened = SnapshotStore(tmp_path, "n1")
    assert reopened.load_snapshot(1) == old
    assert sorted(os.listdir(tmp_path)) == ["1_n1"]


def test_aborted_writer_and_failing_source(tmp_path):
    store = SnapshotStore(tmp_path, "n1")

    def chunks():
        yield b"abc"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        store.save_snapshot_chunks(2, SnapshotMeta(1, 1, CS), chunks())
    assert store.load_snapshot(2) is None
    assert os.listdir(tmp_path) == []


def test_bad_node_id_is_refused(tmp_path):
    with pytest.raises(ValueError):
        SnapshotStore(tmp_path, "../etc")
