"""Storage throughput against the raw limit of the file system, and recovery speed.

    python -m bench.storage [--json] [--seconds-per-case 0.5] [--recovery-mb 256]
                            [--recovery-gib] [--groups 1,64,1024] [--batches 1,16,256]
                            [--sizes 16,1024] [--dir DIR]

(a) For each (groups, batch_entries, entry_bytes): SegmentedLog.write() with
    group commit: every write carries batch_entries new entries for each of
    `groups` groups, fsynced (sync_on_write=True), default options otherwise.
    Every ~32 MiB the next batch also compacts every group (so segments are
    deleted and the entry cache stays bounded, as a worker taking snapshots
    would). Only the write() calls are timed, not building the Entry tuples.
(b) The raw limit: a bare loop of os.write + os.fsync writing the very same
    number of bytes per write (the store's on-disk bytes, framing included),
    with the same batch boundaries, in the same directory, rotating files at
    the same segment size.
Rates: entries/s and MB/s of bytes written; ratio = store / raw.
(c) Recovery: write a log of --recovery-mb MiB (64 groups x 16 entries of
    --recovery-entry-bytes per write), close it, and time opening it
    (scan + checksum + index). The page cache is warm (the log was just
    written); --recovery-gib measures a 1 GiB log.

With --json the last line is one JSON object:
{"results": [{"groups", "batch_entries", "entry_bytes", "store_entries_per_s",
"raw_entries_per_s", "ratio", ...}, ...], "recovery_mb_per_s": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from multiraft.raft.types import Entry
from storage import FileStorageOptions, GroupWrite, SegmentedLog

MiB = 1 << 20
COMPACT_EVERY = 32 * MiB


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def bench_store(base: Path, groups: int, batch: int, size: int, seconds: float) -> dict:
    opts = FileStorageOptions(base_dir=base, min_free_disk_space=64 * MiB)
    log = SegmentedLog(opts)
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    next_index = [1] * groups
    sizes: list[int] = []
    elapsed = 0.0
    since_compact = 0
    total_entries = 0
    rounds = 0
    while elapsed < seconds or rounds < 2:
        compact = since_compact >= COMPACT_EVERY
        ws = []
        for g in range(groups):
            first = next_index[g]
            ents = [Entry(1, i, 0, payload) for i in range(first, first + batch)]
            ws.append(GroupWrite(g, entries=ents, compact_to=(first - 1, 1) if compact and first > 1 else None))
            next_index[g] = first + batch
        if compact:
            since_compact = 0
        before = log.end_lsn
        t0 = time.perf_counter()
        log.write(ws)
        dt = time.perf_counter() - t0
        written = log.end_lsn - before
        rounds += 1
        if rounds == 1 and groups * batch * size < 16 * MiB:
            continue  # warm-up (kept out of the raw run too)
        elapsed += dt
        sizes.append(written)
        since_compact += written
        total_entries += groups * batch
    stats = log.stats()
    log.close()
    return {
        "seconds": elapsed,
        "entries": total_entries,
        "bytes": sum(sizes),
        "sizes": sizes,
        "segments_deleted": stats["segments_deleted"],
        "syncs": stats["syncs"],
    }


def bench_raw(base: Path, sizes: list[int], segment_size: int) -> float:
    """Seconds to write these byte counts with os.write + os.fsync each."""
    base.mkdir(parents=True, exist_ok=True)
    buf = memoryview(bytes(max(sizes)))
    n = 0
    path = base / f"raw_{n}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    in_file = 0
    elapsed = 0.0
    for size in sizes:
        t0 = time.perf_counter()
        if in_file and in_file + size > segment_size:
            os.close(fd)
            os.unlink(path)
            n += 1
            path = base / f"raw_{n}.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            in_file = 0
        off = 0
        while off < size:
            off += os.write(fd, buf[off:size])
        os.fsync(fd)
        elapsed += time.perf_counter() - t0
        in_file += size
    os.close(fd)
    return elapsed


def bench_recovery(base: Path, mb: int, entry_bytes: int) -> dict:
    opts = FileStorageOptions(base_dir=base, min_free_disk_space=64 * MiB, sync_on_write=False)
    log = SegmentedLog(opts)
    payload = os.urandom(entry_bytes)
    groups, batch = 64, 16
    index = 1
    while log.end_lsn < mb * MiB:
        ws = [GroupWrite(g, entries=[Entry(1, i, 0, payload) for i in range(index, index + batch)]) for g in range(groups)]
        log.write(ws)
        index += batch
    log.close()
    t0 = time.perf_counter()
    log = SegmentedLog(FileStorageOptions(base_dir=base, min_free_disk_space=64 * MiB))
    dt = time.perf_counter() - t0
    st = log.stats()
    log.close()
    return {
        "mb": st["log_bytes"] / MiB,
        "seconds": dt,
        "mb_per_s": st["log_bytes"] / MiB / dt,
        "entries": groups * (index - 1),
        "segments": st["segments"],
        "entry_bytes": entry_bytes,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--seconds-per-case", type=float, default=0.5)
    p.add_argument("--groups", type=_ints, default=[1, 64, 1024])
    p.add_argument("--batches", type=_ints, default=[1, 16, 256])
    p.add_argument("--sizes", type=_ints, default=[16, 1024])
    p.add_argument("--recovery-mb", type=int, default=256)
    p.add_argument("--recovery-gib", action="store_true", help="measure recovery of a 1 GiB log")
    p.add_argument("--recovery-entry-bytes", type=int, default=1024)
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    args = p.parse_args(argv)
    if args.recovery_gib:
        args.recovery_mb = 1024

    root = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.dir))
    results = []
    try:
        print(
            f"{'groups':>6} {'batch':>5} {'bytes':>5} | {'store ent/s':>12} {'store MB/s':>10} | "
            f"{'raw ent/s':>12} {'raw MB/s':>9} | {'ratio':>5} {'writes':>6}",
            flush=True,
        )
        for groups in args.groups:
            for batch in args.batches:
                for size in args.sizes:
                    case = root / f"{groups}_{batch}_{size}"
                    s = bench_store(case / "store", groups, batch, size, args.seconds_per_case)
                    shutil.rmtree(case / "store")
                    raw_seconds = bench_raw(case / "raw", s["sizes"], FileStorageOptions().max_segment_size)
                    shutil.rmtree(case)
                    store_eps = s["entries"] / s["seconds"]
                    raw_eps = s["entries"] / raw_seconds
                    row = {
                        "groups": groups,
                        "batch_entries": batch,
                        "entry_bytes": size,
                        "store_entries_per_s": round(store_eps, 1),
                        "raw_entries_per_s": round(raw_eps, 1),
                        "ratio": round(store_eps / raw_eps, 3),
                        "store_mb_per_s": round(s["bytes"] / MiB / s["seconds"], 2),
                        "raw_mb_per_s": round(s["bytes"] / MiB / raw_seconds, 2),
                        "writes": len(s["sizes"]),
                    }
                    results.append(row)
                    print(
                        f"{groups:>6} {batch:>5} {size:>5} | {store_eps:>12,.0f} {row['store_mb_per_s']:>10.1f} | "
                        f"{raw_eps:>12,.0f} {row['raw_mb_per_s']:>9.1f} | {row['ratio']:>5.2f} {row['writes']:>6}",
                        flush=True,
                    )
        rec = bench_recovery(root / "recovery", args.recovery_mb, args.recovery_entry_bytes)
        print(
            f"recovery: {rec['mb']:.0f} MiB in {rec['segments']} segments, {rec['entries']:,} entries of "
            f"{rec['entry_bytes']} B: {rec['seconds']:.2f} s = {rec['mb_per_s']:.0f} MB/s (warm page cache)",
            flush=True,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps({"results": results, "recovery_mb_per_s": round(rec["mb_per_s"], 1), "recovery": rec}))


if __name__ == "__main__":
    sys.exit(main())
