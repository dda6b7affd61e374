#!/usr/bin/env python
"""raft-lite's file_storage_example, for multiraft's FileStorage.

Create a store, save and load hard state, config, entries and a snapshot,
print statistics, reopen, and verify that everything came back.

    python tools/file_storage_example.py [--dir DIR]   (default: a temporary directory)
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multiraft.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta  # noqa: E402
from storage import FileStorage, FileStorageOptions, GroupWrite  # noqa: E402

GROUP = 1
NODE = "n1"


async def run(base_dir: Path) -> None:
    # A small min_free_disk_space so the example runs on nearly full disks too.
    options = FileStorageOptions.with_base_dir(base_dir, min_free_disk_space=1 << 20)
    # The worker's way to run blocking storage calls off the event loop.
    run_sync = functools.partial(trio.to_thread.run_sync, limiter=trio.CapacityLimiter(options.max_io_threads))

    hard_state = HardState(term=5, vote="n2", commit=3)
    conf = ConfState(voters=frozenset({"n1", "n2", "n3"}))
    entries = [Entry(term=5, index=i, type=0, data=f"set k{i} v{i}".encode()) for i in range(1, 11)]
    snapshot = Snapshot(SnapshotMeta(index=3, term=5, conf_state=conf), b"state machine image up to 3")

    print(f"creating a FileStorage in {base_dir}")
    async with await FileStorage.open(options, node_id=NODE, run_sync=run_sync) as storage:
        await storage.save_hard_state(GROUP, hard_state)
        await storage.save_cluster_config(GROUP, conf)
        await storage.append_log_entries(GROUP, entries)
        await storage.save_snapshot(GROUP, snapshot)
        await storage.compact_log_prefix(GROUP, snapshot.meta.index, snapshot.meta.term)
        # The batch API: many groups in one write and one fsync.
        await storage.write([GroupWrite(g, hard_state=HardState(1, None, 0), entries=entries[:2]) for g in (2, 3, 4)])

        assert await storage.load_hard_state(GROUP) == hard_state
        assert await storage.load_cluster_config(GROUP) == conf
        assert await storage.get_log_entries(GROUP, 4, 11) == entries[3:]
        assert await storage.load_snapshot(GROUP) == snapshot
        print("loaded back before reopening: ok")
        stats = await storage.statistics()
        print("statistics:", json.dumps(stats, indent=1, sort_keys=True, default=str))

    print("reopening")
    async with await FileStorage.open(options, node_id=NODE, run_sync=run_sync) as storage:
        checks = {
            "hard state": await storage.load_hard_state(GROUP) == hard_state,
            "cluster config": await storage.load_cluster_config(GROUP) == conf,
            "entries": await storage.get_log_entries(GROUP, 4, 11) == entries[3:],
            "last index and term": await storage.get_last_log_index(GROUP) == (10, 5),
            "compacted prefix": await storage.compacted_to(GROUP) == (3, 5),
            "snapshot": await storage.load_snapshot(GROUP) == snapshot,
            "other groups": all([await storage.get_log_entries(g, 1, 3) == entries[:2] for g in (2, 3, 4)]),
        }
        for what, ok in checks.items():
            print(f"  {what}: {'ok' if ok else 'MISMATCH'}")
        if not all(checks.values()):
            raise SystemExit("some data did not come back")
        print("after reopen, everything came back")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=None, help="base directory (default: a temporary one)")
    args = p.parse_args()
    if args.dir is not None:
        trio.run(run, args.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="multiraft-storage-") as d:
            trio.run(run, Path(d))


if __name__ == "__main__":
    main()
