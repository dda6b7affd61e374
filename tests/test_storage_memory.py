"""MemoryStorage: same semantics as the file log, plus seeded fault injection."""

from __future__ import annotations

import pytest

from multiraft.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from storage import GroupWrite, InvalidWriteError, LogCompactedError, MemoryStorage, SnapshotError


def ents(first, last, term=1):
    return [Entry(term, i, 0, b"e%d" % i) for i in range(first, last + 1)]


def test_crash_loses_only_unsynced_writes():
    m = MemoryStorage(seed=1, sync_on_write=False)
    m.write([GroupWrite(1, entries=ents(1, 3), hard_state=HardState(1, "a", 0))], sync=True)
    m.write([GroupWrite(1, entries=ents(4, 6), hard_state=HardState(2, "b", 3))])
    m.write([GroupWrite(2, entries=ents(1, 2))])
    assert m.last_index(1) == 6
    lost = m.crash()
    assert lost == 3
    assert m.last_index(1) == 3 and m.hard_state(1) == HardState(1, "a", 0)
    assert m.last_index(2) == 0
    m.write([GroupWrite(1, entries=ents(4, 4))])
    m.sync()
    m.crash()
    assert m.last_index(1) == 4


def test_torn_tail_keeps_a_prefix_of_unsynced_records():
    outcomes = set()
    for seed in range(40):
        m = MemoryStorage(seed=seed, sync_on_write=False, torn_tail=True)
        m.write([GroupWrite(1, entries=ents(1, 1))], sync=True)
        for i in range(2, 6):
            m.write([GroupWrite(1, entries=ents(i, i), hard_state=HardState(i, None, 0))])
        m.crash()
        last = m.last_index(1)
        hs = m.hard_state(1)
        # a prefix: the hard state written with entry i survives only if entry i does
        assert hs is None or hs.term <= last
        assert m.entries(1, 1, last + 1) == ents(1, last)
        m.check_invariants()
        outcomes.add(last)
    assert len(outcomes) >= 3  # the seed decides how much survived


def test_same_seed_same_faults():
    def run(seed):
        m = MemoryStorage(seed=seed, sync_on_write=False, torn_tail=True)
        for i in range(1, 20):
            m.write([GroupWrite(i % 3, entries=ents(m.last_index(i % 3) + 1, m.last_index(i % 3) + 1))])
            if i % 7 == 0:
                m.crash()
        return [m.last_index(g) for g in range(3)]

    assert run(3) == run(3)


def test_slow_sync_uses_the_injected_sleep():
    slept = []
    m = MemoryStorage(seed=2, sync_delay=0.01, sleep=slept.append)
    m.write([GroupWrite(1, entries=ents(1, 1))])
    m.write([GroupWrite(1, entries=ents(2, 2))], sync=False)
    m.sync()
    assert len(slept) == 2 and all(0.005 <= s <= 0.015 for s in slept)


def test_validation_is_shared_with_the_file_log():
    m = MemoryStorage()
    m.write([GroupWrite(1, entries=ents(1, 5))])
    with pytest.raises(InvalidWriteError):
        m.write([GroupWrite(1, entries=ents(7, 7))])
    m.write([GroupWrite(1, compact_to=(3, 1), conf_state=ConfState(voters=frozenset({"a"})))])
    with pytest.raises(LogCompactedError):
        m.entries(1, 3, 5)
    assert m.entries(1, 4, 6) == ents(4, 5)
    assert m.term(1, 3) == 1 and m.compacted_to(1) == (3, 1)


def test_snapshots_and_crash():
    m = MemoryStorage()
    meta = SnapshotMeta(5, 1, ConfState(voters=frozenset({"a"})))
    m.save_snapshot(1, Snapshot(meta, b"image"))
    w = m.begin_snapshot(1, SnapshotMeta(9, 2, meta.conf_state))
    w.write(b"new")
    m.crash()
    with pytest.raises(SnapshotError):
        w.commit()
    assert m.load_snapshot(1) == Snapshot(meta, b"image")
    assert b"".join(m.iter_snapshot_chunks(1, 2)) == b"image"
    assert m.snapshot_groups() == [1]
