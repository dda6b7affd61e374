"""`multiraft demo`: a local 3-node cluster through a crash and a recovery.

1. start 3 nodes (W workers each, G groups, replicas 3) in a temporary
   directory on free loopback ports, and wait until every group has a leader;
2. run a mixed workload (puts, linearizable gets, CAS) from many concurrent
   client tasks, with a progress bar, and print throughput and latency;
3. kill one node with SIGKILL (its coordinator and all its workers) and keep
   the workload running: groups it led elect new leaders;
4. restart it and show it catching up (every replica applies up to its
   leader's commit index);
5. check every key against what the clients were acknowledged, print the
   status table, stop the cluster with SIGTERM and check no process is left.

Each client task owns its keys, so the expected final value of every key is
known (a write whose outcome is unknown allows both values).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from typing import Any

import trio

from multiraft.client import ClientError, Timeout, open_client
from multiraft.localcluster import ProcessCluster

__all__ = ["main_from_args", "Workload", "percentile"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


class ProgressBar:
    """A plain-text progress bar: redraws with \\r on a terminal, prints a line
    every couple of seconds otherwise."""

    def __init__(self, label: str, seconds: float, out: Any = None) -> None:
        self.label = label
        self.seconds = seconds
        self.out = out or sys.stdout
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.last_line = 0.0

    def update(self, elapsed: float, ops: int, errors: int, final: bool = False) -> None:
        frac = min(1.0, elapsed / self.seconds) if self.seconds else 1.0
        width = 24
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        rate = ops / elapsed if elapsed > 0 else 0.0
        line = (
            f"  {self.label:<10} [{bar}] {elapsed:4.1f}/{self.seconds:.0f}s "
            f"{ops:>7,} ops {rate:>7,.0f} ops/s  errors {errors}"
        )
        if self.tty:
            self.out.write("\r" + line + ("\n" if final else ""))
            self.out.flush()
        elif final or elapsed - self.last_line >= 2.0:
            self.last_line = elapsed
            self.out.write(line + "\n")
            self.out.flush()


class Workload:
    """Concurrent client tasks over disjoint key sets, checking what they read."""

    def __init__(self, client, tasks: int, keys_per_task: int = 16, seed: int = 1, value_size: int = 16) -> None:
        self.client = client
        self.tasks = tasks
        self.keys_per_task = keys_per_task
        self.rng = random.Random(seed)
        self.value_size = value_size
        # key -> (acknowledged value or None, set of values of unknown-outcome writes)
        self.expected: dict[bytes, tuple[bytes | None, set[bytes]]] = {}
        self.ops = 0
        self.errors = 0
        self.anomalies: list[str] = []
        self.latencies: list[float] = []
        self._counter = 0

    def _value(self, task: int) -> bytes:
        self._counter += 1
        return f"v{task}-{self._counter}".encode().ljust(self.value_size, b".")

    async def _task(self, index: int, stop: trio.Event) -> None:
        rng = random.Random(self.rng.random())
        keys = [f"demo-{index}-{i}".encode() for i in range(self.keys_per_task)]
        for k in keys:
            self.expected.setdefault(k, (None, set()))
        while not stop.is_set():
            key = rng.choice(keys)
            acked, unknown = self.expected[key]
            r = rng.random()
            t0 = time.perf_counter()
            try:
                if r < 0.45:
                    value = self._value(index)
                    try:
                        await self.client.put(key, value, timeout_s=5)
                    except Timeout as exc:
                        if exc.outcome_unknown:
                            unknown.add(value)
                        raise
                    self.expected[key] = (value, set())
                elif r < 0.9:
                    got = await self.client.get(key, timeout_s=5)
                    if got != acked and got not in unknown:
                        self.anomalies.append(f"get {key!r} = {got!r}, expected {acked!r}")
                    elif got in unknown:  # an unknown write did apply
                        self.expected[key] = (got, set())
                else:
                    value = self._value(index)
                    try:
                        swapped, current = await self.client.cas(key, acked, value, timeout_s=5)
                    except Timeout as exc:
                        if exc.outcome_unknown:
                            unknown.add(value)
                        raise
                    if swapped:
                        self.expected[key] = (value, set())
                    elif current in unknown:
                        self.expected[key] = (current, set())
                    else:
                        self.anomalies.append(f"cas {key!r}: found {current!r}, expected {acked!r}")
                self.ops += 1
                self.latencies.append(time.perf_counter() - t0)
            except ClientError:
                self.errors += 1
                await trio.sleep(0.05)

    async def run(self, seconds: float, label: str, during=None) -> dict:
        """Run for `seconds` (plus however long `during` takes, if given)."""
        stop = trio.Event()
        ops0, err0, lat0 = self.ops, self.errors, len(self.latencies)
        progress = ProgressBar(label, seconds)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(self.tasks):
                nursery.start_soon(self._task, i, stop)

            async def ticker() -> None:
                while not stop.is_set():
                    progress.update(time.perf_counter() - start, self.ops - ops0, self.errors - err0)
                    await trio.sleep(0.25)

            nursery.start_soon(ticker)
            if during is not None:
                await during()
            remaining = seconds - (time.perf_counter() - start)
            if remaining > 0:
                await trio.sleep(remaining)
            stop.set()
        elapsed = time.perf_counter() - start
        progress.seconds = max(progress.seconds, elapsed)
        progress.update(elapsed, self.ops - ops0, self.errors - err0, final=True)
        lat = self.latencies[lat0:]
        return {
            "ops": self.ops - ops0,
            "errors": self.errors - err0,
            "seconds": elapsed,
            "ops_per_s": (self.ops - ops0) / elapsed if elapsed else 0.0,
            "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000,
        }

    async def verify(self) -> int:
        """Read every key back; returns the number of keys checked."""
        checked = 0
        for key, (acked, unknown) in sorted(self.expected.items()):
            got = await self.client.get(key, timeout_s=10)
            if got != acked and got not in unknown:
                self.anomalies.append(f"final {key!r} = {got!r}, expected {acked!r}")
            checked += 1
        return checked


def _say(text: str = "") -> None:
    print(text, flush=True)


def _leaders(status: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for g in status["groups"]:
        if g["leader"]:
            counts[g["leader"]] = counts.get(g["leader"], 0) + 1
    return counts


def _fmt_leaders(counts: dict[str, int], nodes) -> str:
    return ", ".join(f"{n}: {counts.get(n, 0)}" for n in nodes)


def _fmt_stats(s: dict) -> str:
    return (
        f"{s['ops']:,} ops in {s['seconds']:.1f}s = {s['ops_per_s']:,.0f} ops/s, "
        f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, errors {s['errors']}"
    )


async def run_demo(args: argparse.Namespace, base_dir: str) -> int:
    from multiraft.admin_cli import format_status

    t_start = time.perf_counter()
    cluster = ProcessCluster(base_dir, nodes=3, workers=args.workers, groups=args.groups, tick_ms=50,
                           election_tick=10, heartbeat_tick=2, poll_interval_ms=300, redis=True)
    nodes = list(cluster.nodes)
    _say(f"Starting 3 nodes x {args.workers} workers, {args.groups} groups x 3 replicas, in {base_dir}")
    for n in cluster.nodes.values():
        _say(f"  {n.node_id}: coordinator {n.address}, redis {n.redis_address}, data {n.data_dir}, log {n.log_path}")
    first_redis = cluster.nodes["n1"].redis_address
    _say(f"  (while it runs, try: redis-cli -p {first_redis.rpartition(':')[2]} set hello world)")
    ok = False
    try:
        cluster.start()
        status = await cluster.wait_healthy(timeout_s=60)
        _say(f"All {args.groups} groups have a leader after {time.perf_counter() - t_start:.1f}s "
             f"(leaders per node: {_fmt_leaders(_leaders(status), nodes)})")
        _say()
        async with open_client(cluster.addresses, timeout_s=5) as client:
            work = Workload(client, args.clients)
            _say(f"1. Mixed workload (45% put, 45% get, 10% cas) from {args.clients} concurrent clients:")
            s1 = await work.run(args.seconds, "steady")
            _say(f"   {_fmt_stats(s1)}")
            _say()

            before = _leaders(await cluster.status())
            victim = cluster.nodes[max(nodes, key=lambda n: (before.get(n, 0), n))]
            _say(f"2. kill -9 {victim.node_id} (coordinator and its {args.workers} workers; it leads "
                 f"{before.get(victim.node_id, 0)} of {args.groups} groups), workload continues:")
            victim.kill()
            t_kill = time.perf_counter()
            failover: dict[str, float] = {}

            def led_elsewhere(st: dict) -> bool:
                return all(g["leader"] and g["leader"] != victim.node_id for g in st["groups"])

            async def wait_failover() -> None:
                await cluster.wait_for(led_elsewhere, timeout_s=30, interval_s=0.1, what="new leaders")
                failover["at"] = time.perf_counter() - t_kill

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_failover)
                s2 = await work.run(args.seconds, "degraded")
            status = await cluster.wait_for(
                lambda st: led_elsewhere(st) and not any(
                    n["up"] for n in st["nodes"] if n["id"] == victim.node_id),
                timeout_s=30, what="leaders without the killed node")
            _say(f"   {_fmt_stats(s2)}")
            _say(f"   {victim.node_id} is down; its groups had new leaders {failover['at']:.1f}s after the kill "
                 f"(leaders per node: {_fmt_leaders(_leaders(status), nodes)})")
            _say()

            _say(f"3. Restart {victim.node_id} and let it catch up while the workload runs:")
            target = {g["id"]: g["commit"] for g in (await cluster.status())["groups"]}
            victim.start()
            t_restart = time.perf_counter()
            caught: dict[str, float] = {}

            def backlog_done(st: dict) -> bool:
                # every replica on the victim applied what its group had
                # committed when the node came back
                for g in st["groups"]:
                    for r in g["replicas"]:
                        if r["node"] == victim.node_id and (r["applied"] or 0) < target.get(g["id"], 0):
                            return False
                return any(n["up"] for n in st["nodes"] if n["id"] == victim.node_id)

            async def wait_backlog() -> None:
                await cluster.wait_for(backlog_done, timeout_s=60, interval_s=0.1, what="the backlog")
                caught["at"] = time.perf_counter() - t_restart

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_backlog)
                s3 = await work.run(args.seconds, "recovery")
            await cluster.wait_caught_up(timeout_s=60)
            in_sync = time.perf_counter() - t_restart
            _say(f"   {_fmt_stats(s3)}")
            _say(f"   {victim.node_id} applied the {sum(target.values()):,} entries committed before its restart "
                 f"{caught['at']:.1f}s after it; once the workload stopped every replica of every group "
                 f"had applied its leader's commit index ({in_sync:.1f}s)")
            _say()

            checked = await work.verify()
            _say(f"4. Read back {checked} keys: "
                 + ("every value is the last acknowledged write" if not work.anomalies
                    else f"{len(work.anomalies)} ANOMALIES: {work.anomalies[:3]}"))
            total = work.ops
            _say(f"   {total:,} operations, {work.errors} errors (retried by the clients past their deadline)")
            _say()
            status = await cluster.status()
            _say(format_status(status))
            _say()
        _say("Stopping the cluster (SIGTERM)...")
        clean = cluster.stop()
        left = cluster.any_process_left()
        _say(f"Stopped {'cleanly' if clean else 'after SIGKILL'}; processes left: {'some!' if left else 'none'}. "
             f"Demo took {time.perf_counter() - t_start:.0f}s.")
        ok = clean and not left and not work.anomalies
        return 0 if ok else 1
    finally:
        if not ok:
            for n in cluster.nodes.values():
                if n.running:
                    n.kill()
            if any(n.starts for n in cluster.nodes.values()):
                _say(f"(node logs are in {base_dir})")


def main_from_args(args: argparse.Namespace) -> int:
    from multiraft.nodeconfig import ConfigError

    if not 1 <= args.workers <= 8:
        raise ConfigError("--workers must be 1..8 for the demo")
    if not 3 <= args.groups <= 1024:
        raise ConfigError("--groups must be 3..1024 for the demo")
    if not 1 <= args.clients <= 1024:
        raise ConfigError("--clients must be 1..1024")
    if not 1 <= args.seconds <= 600:
        raise ConfigError("--seconds must be 1..600")
    base_dir = tempfile.mkdtemp(prefix="multiraft-demo-")
    code = 1
    try:
        code = trio.run(run_demo, args, base_dir)
        return code
    finally:
        if code == 0 and not args.keep:
            shutil.rmtree(base_dir, ignore_errors=True)
        elif args.keep:
            print(f"(kept {base_dir})")
