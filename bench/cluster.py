"""Cluster benchmark: a local cluster of real nodes, driven by KV clients.

    python -m bench --nodes 3 --workers 2 --groups 64 --seconds 10 --clients 64 \\
        --value-size 16 [--reads 0.5] [--client-procs 2] [--no-sync] [--json]

Starts `--nodes` real `multiraft node` processes on loopback (a temporary data
directory, fsync on unless --no-sync), waits until every group has a leader,
warms up, then for `--seconds` runs `--clients` concurrent client loops (split
over `--client-procs` processes, each with one `multiraft.client.Client`).
Each loop does a get with probability `--reads`, else a put of a random
`--value-size`-byte value to a random key out of `--keys`.

Honest counting: only operations the cluster acknowledged count, timed from
the request to its answer; any ClientError (timeout, unavailable) is an error
and is reported. Printed: a table, then, last, one JSON line with at least
writes_per_s, reads_per_s, p50_ms, p99_ms, errors.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any

import trio

from multiraft.client import ClientError, open_client
from multiraft.localcluster import ProcessCluster


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


async def drive(cluster: list[str], clients: int, seconds: float, warmup: float, value_size: int,
                reads: float, keys: int, seed: int, lease: bool = False) -> dict:
    """Run `clients` loops; return counts and latencies of the measured window."""
    rng = random.Random(seed)
    result: dict[str, Any] = {"writes": 0, "reads": 0, "errors": 0, "write_lat": [], "read_lat": [],
                              "error_kinds": {}}
    measuring = False
    stop = trio.Event()

    async with open_client(cluster, timeout_s=10) as client:

        async def loop(i: int) -> None:
            r = random.Random(rng.random())
            while not stop.is_set():
                key = f"bench-{r.randrange(keys)}".encode()
                is_read = r.random() < reads
                t0 = time.perf_counter()
                try:
                    if is_read:
                        await client.get(key, lease=lease)
                    else:
                        await client.put(key, r.randbytes(value_size))
                except ClientError as exc:
                    if measuring:
                        result["errors"] += 1
                        kind = type(exc).__name__
                        result["error_kinds"][kind] = result["error_kinds"].get(kind, 0) + 1
                    continue
                if measuring and not stop.is_set():
                    dt = time.perf_counter() - t0
                    if is_read:
                        result["reads"] += 1
                        result["read_lat"].append(dt)
                    else:
                        result["writes"] += 1
                        result["write_lat"].append(dt)

        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(loop, i)
            await trio.sleep(warmup)
            measuring = True
            t_start = time.perf_counter()
            cpu0 = time.process_time()
            await trio.sleep(seconds)
            stop.set()
            result["seconds"] = time.perf_counter() - t_start
            result["client_cpu_s"] = time.process_time() - cpu0
    result["client_stats"] = dict(client.stats)
    return result


def _proc_main(conn, args: tuple) -> None:
    try:
        conn.send(trio.run(drive, *args))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send({"failure": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_clients(cluster: list[str], args: argparse.Namespace) -> dict:
    procs = max(1, min(args.client_procs, args.clients))
    if procs == 1:
        return trio.run(drive, cluster, args.clients, args.seconds, args.warmup, args.value_size,
                        args.reads, args.keys, 1, args.lease_reads)
    ctx = multiprocessing.get_context("spawn")
    children = []
    for p in range(procs):
        n = args.clients // procs + (1 if p < args.clients % procs else 0)
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_proc_main, args=(child, (cluster, n, args.seconds, args.warmup,
                                                            args.value_size, args.reads, args.keys, p + 1,
                                                            args.lease_reads)))
        proc.start()
        child.close()
        children.append((proc, parent))
    merged: dict[str, Any] = {"writes": 0, "reads": 0, "errors": 0, "write_lat": [], "read_lat": [],
                              "error_kinds": {}, "seconds": 0.0}
    for proc, parent in children:
        r = parent.recv()
        proc.join()
        if "failure" in r:
            raise RuntimeError(f"a client process failed: {r['failure']}")
        for k in ("writes", "reads", "errors"):
            merged[k] += r[k]
        merged["write_lat"] += r["write_lat"]
        merged["read_lat"] += r["read_lat"]
        merged["seconds"] = max(merged["seconds"], r["seconds"])
        merged["client_cpu_s"] = merged.get("client_cpu_s", 0.0) + r["client_cpu_s"]
        for k, v in r["error_kinds"].items():
            merged["error_kinds"][k] = merged["error_kinds"].get(k, 0) + v
    return merged


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="workers per node")
    p.add_argument("--groups", type=int, default=64)
    p.add_argument("--replicas", type=int, default=None, help="default min(3, nodes)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--clients", type=int, default=64, help="concurrent client loops")
    p.add_argument("--client-procs", type=int, default=1, help="client processes sharing the loops")
    p.add_argument("--value-size", type=int, default=16)
    p.add_argument("--reads", type=float, default=0.0, help="fraction of operations that are gets")
    p.add_argument("--lease-reads", action="store_true",
                   help="gets are leader-lease reads (no quorum round) instead of ReadIndex")
    p.add_argument("--keys", type=int, default=100_000, help="key space size")
    p.add_argument("--no-sync", action="store_true", help="nodes skip fsync (UNSAFE; for comparison)")
    p.add_argument("--tick-ms", type=int, default=100)
    p.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    p.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.reads <= 1.0:
        print("bench: error: --reads must be in [0, 1]", file=sys.stderr)
        return 2
    if args.nodes < 1 or args.workers < 1 or args.groups < 1 or args.clients < 1 or args.seconds <= 0:
        print("bench: error: --nodes, --workers, --groups, --clients, --seconds must be positive", file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="multiraft-bench-")
    cluster = ProcessCluster(base, nodes=args.nodes, workers=args.workers, groups=args.groups,
                           replicas=args.replicas, tick_ms=args.tick_ms, election_tick=10, heartbeat_tick=2,
                           sync_on_write=not args.no_sync, log_level="warning")
    ok = False
    try:
        cluster.start()
        t0 = time.perf_counter()
        trio.run(lambda: cluster.wait_healthy(timeout_s=120))
        ready_s = time.perf_counter() - t0
        r = run_clients(cluster.addresses, args)
        ok = True
    finally:
        clean = cluster.stop()
        if (ok and not args.keep) and clean:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"bench: data and logs kept in {base}", file=sys.stderr)
    secs = r["seconds"] or args.seconds
    lat = r["write_lat"] + r["read_lat"]
    out = {
        "bench": "cluster",
        "nodes": args.nodes,
        "workers": args.workers,
        "groups": args.groups,
        "replicas": cluster.replicas,
        "clients": args.clients,
        "client_procs": args.client_procs,
        "value_size": args.value_size,
        "reads_fraction": args.reads,
        "lease_reads": args.lease_reads,
        "sync_on_write": not args.no_sync,
        "seconds": round(secs, 3),
        "writes": r["writes"],
        "reads": r["reads"],
        "writes_per_s": round(r["writes"] / secs, 1),
        "reads_per_s": round(r["reads"] / secs, 1),
        "ops_per_s": round((r["writes"] + r["reads"]) / secs, 1),
        "p50_ms": round(percentile(lat, 50) * 1000, 2),
        "p99_ms": round(percentile(lat, 99) * 1000, 2),
        "write_p50_ms": round(percentile(r["write_lat"], 50) * 1000, 2),
        "write_p99_ms": round(percentile(r["write_lat"], 99) * 1000, 2),
        "read_p50_ms": round(percentile(r["read_lat"], 50) * 1000, 2),
        "read_p99_ms": round(percentile(r["read_lat"], 99) * 1000, 2),
        "errors": r["errors"],
        "error_kinds": r["error_kinds"],
        "cluster_ready_s": round(ready_s, 2),
        "client_cpu_s": round(r.get("client_cpu_s", 0.0), 2),
        "cpus": os.cpu_count(),
    }
    rows = [
        ("cluster", f"{args.nodes} nodes x {args.workers} workers, {args.groups} groups x {cluster.replicas} replicas,"
                    f" fsync {'on' if not args.no_sync else 'OFF'}"),
        ("load", f"{args.clients} clients in {args.client_procs} process(es), {args.value_size}-byte values,"
                 f" reads {args.reads:.0%}, {secs:.1f}s measured"),
        ("writes", f"{out['writes']:,} acknowledged = {out['writes_per_s']:,.0f}/s"
                   f" (p50 {out['write_p50_ms']} ms, p99 {out['write_p99_ms']} ms)"),
        ("reads", f"{out['reads']:,} = {out['reads_per_s']:,.0f}/s"
                  f" (p50 {out['read_p50_ms']} ms, p99 {out['read_p99_ms']} ms)"),
        ("all ops", f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms"),
        ("errors", f"{out['errors']} {out['error_kinds'] or ''}"),
        ("client", f"{out['client_cpu_s']} CPU-seconds in the client process(es) over {secs:.1f}s"),
    ]
    for k, v in rows:
        print(f"{k:>8}  {v}")
    print(json.dumps(out, sort_keys=True))
    return 0
