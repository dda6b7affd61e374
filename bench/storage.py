"""Storage throughput against the raw limit of the file system, and recovery speed.

    python -m bench.storage [--json] [--seconds-per-case 0.5] [--repeat 1]
                            [--recovery-mb 256] [--recovery-gib] [--groups 1,64,1024]
                            [--batches 1,16,256] [--sizes 16,1024] [--dir DIR]

(a) For each (groups, batch_entries, entry_bytes): SegmentedLog.write() with
    group commit: every write carries batch_entries new entries for each of
    `groups` groups, fsynced (sync_on_write=True), default options otherwise.
    Every ~32 MiB the next batch also compacts every group (so segments are
    deleted and the entry cache stays bounded, as a worker taking snapshots
    would). Only the write() calls are timed, not building the Entry tuples.
(b) The raw limit: a bare os.write + os.fsync of the very same number of
    bytes (the store's on-disk bytes, framing included), in the same
    directory, rotating files at the same segment size. Store and raw writes
    alternate, one for one, so that both see the same machine (this matters
    on a shared, noisy one). Also reported: the CPU time (user + system) the
    store's write adds over the raw write's (thread time, so other processes
    do not count): what the store costs, whatever the disk.
Rates: entries/s and MB/s of bytes written; ratio = store / raw (total raw
time over total store time). With --repeat N each case runs N times and the
row reports the median ratio and the range.
(c) Recovery: write a log of --recovery-mb MiB (64 groups x 16 entries of
    --recovery-entry-bytes per write), close it, and time opening it
    (scan + checksum + index). The page cache is warm (the log was just
    written); --recovery-gib measures a 1 GiB log.

With --json the last line is one JSON object:
{"results": [{"groups", "batch_entries", "entry_bytes", "store_entries_per_s",
"raw_entries_per_s", "ratio", "ratio_min", "ratio_max", "raw_us_per_write",
"store_us_per_write", "added_cpu_us_per_write", ...}, ...], "recovery_mb_per_s": ...}
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


class _Raw:
    """The raw limit: os.write + os.fsync of given byte counts, files rotated like segments."""

    def __init__(self, base: Path, segment_size: int, max_size: int) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.segment_size = segment_size
        self.buf = memoryview(bytes(max_size))
        self.n = 0
        self.path = base / "raw_0.log"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.in_file = 0

    def write(self, size: int) -> tuple[float, float]:
        """Seconds (wall, and CPU of this thread) to write `size` bytes and fsync them."""
        if size > len(self.buf):
            self.buf = memoryview(bytes(size))
        c0 = time.thread_time()
        t0 = time.perf_counter()
        if self.in_file and self.in_file + size > self.segment_size:
            os.close(self.fd)
            os.unlink(self.path)
            self.n += 1
            self.path = self.base / f"raw_{self.n}.log"
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self.in_file = 0
        off = 0
        while off < size:
            off += os.write(self.fd, self.buf[off:size])
        os.fsync(self.fd)
        dt = time.perf_counter() - t0
        dc = time.thread_time() - c0
        self.in_file += size
        return dt, dc

    def close(self) -> None:
        os.close(self.fd)


def bench_case(base: Path, groups: int, batch: int, size: int, seconds: float) -> dict:
    """Store writes and raw writes of the same sizes, alternating."""
    opts = FileStorageOptions(base_dir=base / "store", min_free_disk_space=64 * MiB)
    log = SegmentedLog(opts)
    raw = _Raw(base / "raw", opts.max_segment_size, groups * batch * (size + 64))
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    next_index = [1] * groups
    store_s = raw_s = cpu_s = raw_cpu_s = 0.0
    written = 0
    since_compact = 0
    total_entries = 0
    rounds = writes = 0
    try:
        while store_s < seconds or writes < 2:
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
            c0 = time.thread_time()
            t0 = time.perf_counter()
            log.write(ws)
            dt = time.perf_counter() - t0
            dc = time.thread_time() - c0
            nbytes = log.end_lsn - before
            rounds += 1
            if rounds == 1 and groups * batch * size < 16 * MiB:
                continue  # warm-up, for both
            rdt, rdc = raw.write(nbytes)
            raw_s += rdt
            raw_cpu_s += rdc
            store_s += dt
            cpu_s += dc
            writes += 1
            written += nbytes
            since_compact += nbytes
            total_entries += groups * batch
        stats = log.stats()
    finally:
        log.close()
        raw.close()
    return {
        "seconds": store_s,
        "raw_seconds": raw_s,
        "cpu_seconds": cpu_s,
        "raw_cpu_seconds": raw_cpu_s,
        "entries": total_entries,
        "bytes": written,
        "writes": writes,
        "segments_deleted": stats["segments_deleted"],
        "syncs": stats["syncs"],
    }


def bench_recovery(base: Path, mb: int, entry_bytes: int) -> dict:
    opts = FileStorageOptions(base_dir=base, min_free_disk_space=64 * MiB, sync_on_write=False)
    log = SegmentedLog(opts)
    payload = os.urandom(entry_bytes)
    groups, batch = 64, 16
    index = 1
    while log.end_lsn < mb * MiB:
        ws = [
            GroupWrite(g, entries=[Entry(1, i, 0, payload) for i in range(index, index + batch)]) for g in range(groups)
        ]
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
    p.add_argument("--repeat", type=int, default=1, help="run each case N times: median ratio and range")
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
            f"{'raw ent/s':>12} {'raw MB/s':>9} | {'ratio':>5} {'range':>9} | "
            f"{'raw us/wr':>10} {'store us/wr':>10} {'+cpu us/wr':>10} {'writes':>6}",
            flush=True,
        )
        for groups in args.groups:
            for batch in args.batches:
                for size in args.sizes:
                    runs = []
                    for k in range(args.repeat):
                        case = root / f"{groups}_{batch}_{size}_{k}"
                        runs.append(bench_case(case, groups, batch, size, args.seconds_per_case))
                        shutil.rmtree(case)
                    ratios = sorted(r["raw_seconds"] / r["seconds"] for r in runs)
                    mid = sorted(runs, key=lambda r: r["raw_seconds"] / r["seconds"])[len(runs) // 2]
                    store_eps = mid["entries"] / mid["seconds"]
                    raw_eps = mid["entries"] / mid["raw_seconds"]
                    row = {
                        "groups": groups,
                        "batch_entries": batch,
                        "entry_bytes": size,
                        "store_entries_per_s": round(store_eps, 1),
                        "raw_entries_per_s": round(raw_eps, 1),
                        "ratio": round(mid["raw_seconds"] / mid["seconds"], 3),
                        "ratio_min": round(ratios[0], 3),
                        "ratio_max": round(ratios[-1], 3),
                        "store_mb_per_s": round(mid["bytes"] / MiB / mid["seconds"], 2),
                        "raw_mb_per_s": round(mid["bytes"] / MiB / mid["raw_seconds"], 2),
                        "raw_us_per_write": round(mid["raw_seconds"] / mid["writes"] * 1e6, 1),
                        "store_us_per_write": round(mid["seconds"] / mid["writes"] * 1e6, 1),
                        # CPU time (user + system) of the writing thread, store minus raw
                        "added_cpu_us_per_write": round(
                            (mid["cpu_seconds"] - mid["raw_cpu_seconds"]) / mid["writes"] * 1e6, 1
                        ),
                        "writes": mid["writes"],
                    }
                    results.append(row)
                    rng = f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}" if len(runs) > 1 else ""
                    print(
                        f"{groups:>6} {batch:>5} {size:>5} | {store_eps:>12,.0f} {row['store_mb_per_s']:>10.1f} | "
                        f"{raw_eps:>12,.0f} {row['raw_mb_per_s']:>9.1f} | {row['ratio']:>5.2f} {rng:>9} | "
                        f"{row['raw_us_per_write']:>10,.0f} {row['store_us_per_write']:>10,.0f} "
                        f"{row['added_cpu_us_per_write']:>10,.0f} {row['writes']:>6}",
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
