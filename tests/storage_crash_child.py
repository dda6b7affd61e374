"""Helper for tests/test_storage_crash.py (not a test module).

Appends to a SegmentedLog and fsyncs in a loop, printing each sequence number
once its write has returned (so it is durable), until killed.

    python tests/storage_crash_child.py BASE_DIR FIRST_SEQ
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multiraft.raft.types import Entry, HardState  # noqa: E402
from storage import FileStorageOptions, GroupWrite, SegmentedLog  # noqa: E402

GROUPS = 8


def main() -> None:
    base_dir, seq = sys.argv[1], int(sys.argv[2])
    log = SegmentedLog(FileStorageOptions(base_dir=base_dir, max_segment_size=32 * 1024, min_free_disk_space=0))
    out = sys.stdout
    while True:
        g = seq % GROUPS
        index = log.last_index(g) + 1
        data = b"seq=%d;" % seq + bytes(range(seq % 200))
        log.write([GroupWrite(g, entries=[Entry(1, index, 0, data)], hard_state=HardState(1, None, seq))])
        out.write(f"{seq}\n")
        out.flush()
        seq += 1




# ---- one persist round with a snapshot, killed at a named point ---------------------------
#
#     python tests/storage_crash_child.py snapround BASE_DIR KIND POINT
#
# KIND: "install" (a follower installs the leader's snapshot over a conflicting
# log), "install_empty" (over a log with no entries after its base), or
# "local" (a snapshot of our own applied state, then compaction).
# POINT: where the process SIGKILLs itself, in the worker's order
# (workers/worker.py _persist): the snapshot made durable, then one log write,
# then one fsync.

SNAP_GROUP = 1
OTHER_GROUP = 2
POINTS = ("in_snapshot_save", "after_snapshot_save", "after_write", "after_fsync")


def setup_round(base_dir: str, kind: str = "install") -> None:
    """The state before the round: group 1 holds entries 1..12 of term 1
    (committed to 4), group 2 entries 1..3. For "install_empty", group 1 is
    then compacted to a snapshot at 12: its log holds no entries."""
    from storage import SnapshotStore

    opts = _opts(base_dir)
    log = SegmentedLog(opts)
    log.write(
        [
            GroupWrite(
                SNAP_GROUP,
                entries=[Entry(1, i, 0, b"old%d" % i) for i in range(1, 13)],
                hard_state=HardState(1, "n1", 4),
            ),
            GroupWrite(
                OTHER_GROUP,
                entries=[Entry(1, i, 0, b"g2-%d" % i) for i in range(1, 4)],
                hard_state=HardState(1, None, 3),
            ),
        ]
    )
    if kind == "install_empty":
        snaps = SnapshotStore(opts.snapshot_dir(), "n1")
        snaps.save_snapshot(SNAP_GROUP, initial_snapshot())
        log.write([GroupWrite(SNAP_GROUP, compact_to=(12, 1), hard_state=HardState(1, "n1", 12))])
    log.close()


def initial_snapshot():
    from multiraft.raft.types import ConfState, Snapshot, SnapshotMeta

    return Snapshot(SnapshotMeta(12, 1, ConfState(voters=frozenset({"n1", "n2", "n3"}))), b"image-at-12")


def round_snapshot(kind: str):
    from multiraft.raft.types import ConfState, Snapshot, SnapshotMeta

    conf = ConfState(voters=frozenset({"n1", "n2", "n3"}))
    if kind == "install":
        return Snapshot(SnapshotMeta(10, 2, conf), b"leader-image" * 100)
    if kind == "install_empty":
        return Snapshot(SnapshotMeta(20, 2, conf), b"leader-image" * 100)
    return Snapshot(SnapshotMeta(8, 1, conf), b"local-image" * 100)


def round_batch(kind: str):
    snap = round_snapshot(kind)
    meta = snap.meta
    if kind.startswith("install"):
        ws = [GroupWrite(SNAP_GROUP, compact_to=(meta.index, meta.term), hard_state=HardState(3, None, meta.index))]
    else:
        ws = [GroupWrite(SNAP_GROUP, compact_to=(meta.index, meta.term))]
    ws.append(
        GroupWrite(
            OTHER_GROUP, entries=[Entry(2, i, 0, b"g2-%d" % i) for i in range(4, 7)], hard_state=HardState(2, None, 3)
        )
    )
    return snap, ws


def _opts(base_dir: str):
    return FileStorageOptions(base_dir=base_dir, max_segment_size=1 << 20, min_free_disk_space=0)


def snapround(base_dir: str, kind: str, point: str) -> None:
    import os
    import signal

    from storage import SnapshotStore

    opts = _opts(base_dir)
    log = SegmentedLog(opts)
    snaps = SnapshotStore(opts.snapshot_dir(), "n1")
    snap, batch = round_snapshot(kind), round_batch(kind)[1]

    def die() -> None:
        sys.stdout.write(f"{point}\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "in_snapshot_save":
        w = snaps.begin_snapshot(SNAP_GROUP, snap.meta)
        w.write(snap.data)
        die()
    snaps.save_snapshot(SNAP_GROUP, snap)
    if point == "after_snapshot_save":
        die()
    log.write(batch, sync=False)
    if point == "after_write":
        die()
    log.sync()
    die()


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "snapround":
    snapround(*sys.argv[2:5])
    sys.exit(0)


if __name__ == "__main__":
    main()
