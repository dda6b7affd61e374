"""Crash safety of SegmentedLog: torn tails, bit flips, SIGKILL at random moments."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from multiraft.raft.types import Entry, HardState
from storage import CorruptLogError, FileStorageOptions, GroupWrite, SegmentedLog
from storage.records import HEADER_SIZE, scan_records


def opts(base, **kw):
    kw.setdefault("min_free_disk_space", 0)
    return FileStorageOptions(base_dir=base, **kw)


def payload(i: int, size: int) -> bytes:
    # Non-zero bytes: a real torn write shows zeros, a bit flip does not.
    return bytes(1 + (i * 7 + k) % 255 for k in range(size))


def segment_files(base: Path) -> list[Path]:
    return sorted((base / "logs").glob("segment_*.log"))


def record_spans(path: Path) -> list[tuple[int, int]]:
    data = path.read_bytes()
    spans = []
    for off, rtype, _g, _d, body in scan_records(data):
        assert rtype is not None
        spans.append((off, off + HEADER_SIZE + len(body)))
    return spans


def state(log: SegmentedLog) -> dict:
    out = {}
    for g in log.groups():
        out[g] = (
            log.compacted_to(g),
            log.entries(g, log.first_index(g), log.last_index(g) + 1),
            log.hard_state(g),
        )
    return out


def test_torn_tail_at_every_byte_of_the_last_write(tmp_path):
    src = tmp_path / "src"
    log = SegmentedLog(opts(src))
    log.write([GroupWrite(1, entries=[Entry(1, 1, 0, payload(1, 10))], hard_state=HardState(1, "a", 0))])
    log.write([GroupWrite(2, entries=[Entry(1, 1, 0, payload(2, 10))])])
    before = state(log)
    # The last write: three records (entries + hard state of group 1, entries of group 3).
    log.write([GroupWrite(1, entries=[Entry(2, 2, 0, payload(3, 12))], hard_state=HardState(2, "b", 1)),
               GroupWrite(3, entries=[Entry(1, 1, 0, payload(4, 6))])])
    full = state(log)
    log.close()
    seg = segment_files(src)[0]
    data = seg.read_bytes()
    spans = record_spans(seg)[-3:]
    start = spans[0][0]
    work = tmp_path / "work"
    for cut in range(start, len(data)):
        shutil.rmtree(work, ignore_errors=True)
        (work / "logs").mkdir(parents=True)
        (work / "logs" / seg.name).write_bytes(data[:cut])
        log = SegmentedLog(opts(work))
        whole = sum(1 for _a, b in spans if b <= cut)
        got = state(log)
        expect = dict(before)
        if whole >= 1:
            expect[1] = (full[1][0], full[1][1], before[1][2])
        if whole >= 2:
            expect[1] = full[1]
        if whole >= 3:
            expect[3] = full[3]
        assert got == expect, cut
        boundary = cut == start or any(b == cut for _a, b in spans)
        assert (log.recovery["torn_tail"] is None) == boundary, cut
        if cut % 4 and not boundary:
            log.close()
            continue
        # Appending continues at the validated end, and survives a reopen.
        log.write([GroupWrite(9, entries=[Entry(1, 1, 0, b"after")])])
        log.close()
        log = SegmentedLog(opts(work))
        assert log.entries(9, 1, 2) == [Entry(1, 1, 0, b"after")]
        assert log.recovery["torn_tail"] is None
        log.close()


def _build_flip_log(base: Path) -> dict:
    log = SegmentedLog(opts(base, max_segment_size=400))
    for i in range(1, 9):
        log.write([GroupWrite(i % 3, entries=[Entry(1, log.last_index(i % 3) + 1, 0, payload(i, 30))])])
    s = state(log)
    log.close()
    return s


def test_a_flipped_bit_anywhere_is_detected(tmp_path):
    src = tmp_path / "src"
    full = _build_flip_log(src)
    segs = segment_files(src)
    assert len(segs) >= 2
    originals = {p.name: p.read_bytes() for p in segs}
    last = segs[-1]
    last_start, last_end = record_spans(last)[-1]
    work = tmp_path / "work"
    cuts = 0
    rng = random.Random(5)
    for p in segs:
        data = originals[p.name]
        for pos in range(len(data)):
            bit = rng.randrange(8)
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(src, work)
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            (work / "logs" / p.name).write_bytes(flipped)
            try:
                log = SegmentedLog(opts(work))
            except CorruptLogError as exc:
                assert exc.path.endswith(p.name) and exc.offset is not None and exc.offset <= pos
                assert (work / "logs" / p.name).read_bytes() == flipped  # nothing was deleted or cut
                continue
            # Only the last record's length field can make it look cut short by
            # a crash; then it is cut, never returned.
            assert p == last and last_start + 8 <= pos < last_start + 12, (p.name, pos)
            got = state(log)
            log.close()
            assert got != full and all(got[g][1] == full[g][1][: len(got[g][1])] for g in got)
            cuts += 1
    assert cuts <= 32


def test_zeroed_tail_is_a_torn_write(tmp_path):
    log = SegmentedLog(opts(tmp_path))
    log.write([GroupWrite(1, entries=[Entry(1, 1, 0, payload(1, 40))])])
    log.close()
    seg = segment_files(tmp_path)[0]
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(bytes(8192))  # the file grew but the data never made it
    log = SegmentedLog(opts(tmp_path))
    assert log.entries(1, 1, 2) == [Entry(1, 1, 0, payload(1, 40))]
    assert log.recovery["torn_tail"]["offset"] == size
    log.close()
    assert seg.stat().st_size == size


def test_unsynced_batch_written_out_of_order_is_torn_not_corrupt(tmp_path):
    """A crash may persist later pages of the last write but not earlier ones."""
    log = SegmentedLog(opts(tmp_path))
    log.write([GroupWrite(1, entries=[Entry(1, 1, 0, payload(1, 100))])])
    keep = state(log)
    log.write([GroupWrite(g, entries=[Entry(1, log.last_index(g) + 1, 0, payload(g, 3000))]) for g in (1, 2, 3)])
    log.close()
    seg = segment_files(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    first_new = record_spans(seg)[1]
    z = (first_new[0] // 512 + 2) * 512
    data[z : z + 512] = bytes(512)  # one sector of the first new record never written
    seg.write_bytes(data)
    log = SegmentedLog(opts(tmp_path))
    assert state(log) == keep
    log.close()


def test_corruption_in_an_older_segment_refuses_to_start(tmp_path):
    log = SegmentedLog(opts(tmp_path, max_segment_size=300))
    for i in range(1, 10):
        log.write([GroupWrite(1, entries=[Entry(1, i, 0, payload(i, 50))])])
    log.close()
    segs = segment_files(tmp_path)
    first = segs[0]
    original = first.read_bytes()
    data = bytearray(original)
    data[-3:] = bytes(3)  # zeros, but not in the last segment: corruption
    first.write_bytes(data)
    names = sorted(os.listdir(tmp_path / "logs"))
    with pytest.raises(CorruptLogError) as info:
        SegmentedLog(opts(tmp_path))
    assert first.name in str(info.value) and info.value.offset is not None
    assert sorted(os.listdir(tmp_path / "logs")) == names
    # A missing segment in the middle is detected too.
    first.write_bytes(original)
    segs[1].unlink()
    with pytest.raises(CorruptLogError, match="missing"):
        SegmentedLog(opts(tmp_path))


def test_interrupted_segment_creation_is_repaired(tmp_path):
    log = SegmentedLog(opts(tmp_path))
    log.write([GroupWrite(1, entries=[Entry(1, 1, 0, b"x")])])
    end = log.stats()["end_lsn"]
    log.close()
    (tmp_path / "logs" / f"segment_{end:020d}.log").write_bytes(b"MRSE")
    log = SegmentedLog(opts(tmp_path))
    assert log.entries(1, 1, 2) == [Entry(1, 1, 0, b"x")]
    log.write([GroupWrite(1, entries=[Entry(1, 2, 0, b"y")])])
    log.close()
    log = SegmentedLog(opts(tmp_path))
    assert log.last_index(1) == 2
    log.close()


@pytest.mark.integration
def test_sigkill_loses_nothing_that_was_reported_synced(tmp_path):
    child = Path(__file__).with_name("storage_crash_child.py")
    rng = random.Random(20240607)
    reported: set[int] = set()
    seq = 1
    deadline = time.monotonic() + 8
    rounds = 0
    while rounds < 4 and time.monotonic() < deadline:
        proc = subprocess.Popen(
            [sys.executable, str(child), str(tmp_path), str(seq)], stdout=subprocess.PIPE, text=True
        )
        first = proc.stdout.readline()  # wait until it is writing
        assert first, "child died before writing"
        time.sleep(rng.uniform(0.02, 0.3))
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=10)
        got = [int(x) for x in (first + rest).split()]
        assert got, "child reported nothing"
        reported.update(got)
        seq = max(got) + 2  # the unreported write in flight may or may not have landed
        rounds += 1
        log = SegmentedLog(opts(tmp_path))
        log.check_invariants()
        found = set()
        for g in log.groups():
            for e in log.entries(g, 1, log.last_index(g) + 1):
                found.add(int(e.data.split(b";")[0][4:]))
        log.close()
        missing = reported - found
        assert not missing, f"round {rounds}: {len(missing)} synced records lost, e.g. {sorted(missing)[:5]}"
    assert rounds >= 2 and len(reported) > 20


# ---- a persist round with a snapshot, killed between its steps ------------------------------
#
# The worker's order: the snapshot made durable, then one log write (the new
# base, entries, hard state), then one fsync. The child SIGKILLs itself at each
# point; a power loss may also keep only a prefix of the unsynced write (cut at
# every record boundary of it, and inside records). Every outcome must restart
# into a state the core accepts, equal to the state before the round or after
# it (what the crash kept), never a mix that holds wrong data.

import random as _random  # noqa: E402

import storage_crash_child as crash_child  # noqa: E402

from multiraft.raft.config import Config  # noqa: E402
from multiraft.raft.state import RaftState  # noqa: E402
from storage import SnapshotStore  # noqa: E402
from storage.recovery import recover_group  # noqa: E402

OLD_G1 = [Entry(1, i, 0, b"old%d" % i) for i in range(1, 13)]
OLD_G2 = [Entry(1, i, 0, b"g2-%d" % i) for i in range(1, 4)]
NEW_G2 = [Entry(2, i, 0, b"g2-%d" % i) for i in range(4, 7)]


def _open(base):
    o = crash_child._opts(str(base))
    return SegmentedLog(o), SnapshotStore(o.snapshot_dir(), "n1")


def _restart(base) -> dict:
    """Recover both groups as the worker does and build their cores; then
    check that the log takes the core's next append (no gap after a reset)."""
    log, snaps = _open(base)
    try:
        out = {}
        for g in (crash_child.SNAP_GROUP, crash_child.OTHER_GROUP):
            rec = recover_group(log, snaps, g)
            raft = RaftState(
                Config("n1"), _random.Random(0), hard_state=rec.hard_state or HardState(),
                snapshot=rec.snapshot, entries=rec.entries, group=g,
            )
            out[g] = (rec, raft)
        return out
    finally:
        log.close()


def _append_after(base, got: dict) -> None:
    log, _snaps = _open(base)
    try:
        for g, (_rec, raft) in got.items():
            nxt = raft.log.last_index() + 1
            log.write(
                [GroupWrite(g, entries=[Entry(raft.term, nxt, 0, b"next")], hard_state=HardState(raft.term, None, 0))]
            )
            assert log.last_index(g) == nxt
    finally:
        log.close()


def _check_outcome(kind: str, got: dict) -> str:
    """Assert the outcome is a valid state of the round; return which one."""
    rec, raft = got[crash_child.SNAP_GROUP]
    snap = crash_child.round_snapshot(kind)
    if kind == "install_empty" and rec.snapshot == crash_child.initial_snapshot():
        assert raft.log.entries == [] and raft.log.snapshot_index == 12 and raft.term == 1
        outcome = "before"
    elif rec.snapshot is None:
        assert raft.log.entries == OLD_G1 and raft.term == 1 and raft.vote == "n1"
        outcome = "before"
    else:
        assert rec.snapshot == snap
        assert raft.log.snapshot_index == snap.meta.index and raft.conf == snap.meta.conf_state
        if kind.startswith("install"):
            # Every old entry came from another history: none may survive.
            assert raft.log.entries == [] and raft.term >= 2
        else:
            assert raft.log.entries == OLD_G1[snap.meta.index :] and raft.term == 1
        outcome = "repaired" if rec.repaired else "after"
    rec2, raft2 = got[crash_child.OTHER_GROUP]
    ents = raft2.log.entries
    assert ents[:3] == OLD_G2 and ents[3:] == NEW_G2[: len(ents) - 3]
    assert raft2.term >= ents[-1].term
    return outcome


def _crash_round(tmp_path, kind: str, point: str) -> Path:
    base = tmp_path / f"{kind}-{point}"
    crash_child.setup_round(str(base), kind)
    child = Path(__file__).with_name("storage_crash_child.py")
    proc = subprocess.run(
        [sys.executable, str(child), "snapround", str(base), kind, point], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL and proc.stdout.strip() == point, proc.stderr
    return base


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["install", "install_empty", "local"])
def test_sigkill_at_every_point_of_a_snapshot_round_restarts_into_a_valid_state(tmp_path, kind):
    seen = {}
    for point in crash_child.POINTS:
        base = _crash_round(tmp_path, kind, point)
        seen[point] = _check_outcome(kind, _restart(base))
        # The repair is durable: a second restart finds nothing left to do.
        again = _restart(base)
        assert all(rec.repaired is None for rec, _ in again.values()), point
        assert _check_outcome(kind, again) in ("before", "after")
        _append_after(base, again)
    assert seen["in_snapshot_save"] == "before"
    # SIGKILL keeps the page cache: the unsynced write survives the process.
    assert seen["after_write"] == seen["after_fsync"] == "after"
    if kind.startswith("install"):
        # The lost log reset (and hard state) is finished at restart.
        assert seen["after_snapshot_save"] == "repaired"
    else:
        # A pending compaction needs no repair: the log still holds the snapshot's index.
        assert seen["after_snapshot_save"] == "after"


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["install", "install_empty", "local"])
def test_power_loss_keeping_any_prefix_of_the_unsynced_round_restarts_into_a_valid_state(tmp_path, kind):
    base = _crash_round(tmp_path, kind, "after_write")
    seg = segment_files(base)[0]
    data = seg.read_bytes()
    setup = tmp_path / "setup"
    crash_child.setup_round(str(setup), kind)
    start = segment_files(setup)[0].stat().st_size  # where the round's write begins
    spans = [s for s in record_spans(seg) if s[0] >= start]
    assert len(spans) >= 3
    cuts = sorted({start, *(b for _a, b in spans), *(a + 7 for a, _b in spans)})
    outcomes = set()
    for cut in cuts:
        work = tmp_path / f"cut{cut}"
        shutil.copytree(base, work)
        (work / "logs" / seg.name).write_bytes(data[:cut])
        got = _restart(work)
        outcomes.add(_check_outcome(kind, got))
        _append_after(work, got)
    assert "after" in outcomes
    if kind.startswith("install"):
        assert "repaired" in outcomes  # e.g. the reset kept, the hard state torn off
