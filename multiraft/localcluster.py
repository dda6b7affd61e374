"""Run a cluster of real `multiraft node` processes on loopback.

Used by `multiraft demo`, `python -m bench` and the integration tests. Each node
is ``python -m multiraft.cli node ...`` in its own session (process group), so
``kill_node`` can SIGKILL a coordinator together with all its workers, as a
machine crash would. Ports are picked free at random below the ephemeral range.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

import multiraft
from multiraft.nodeconfig import CLIENT_PORT_OFFSET, RAFT_PORT_OFFSET

__all__ = ["REDIS_PORT_OFFSET", "LocalNode", "ProcessCluster", "free_base_ports"]

# With redis=True, node P serves RESP on P+50: the one port of its range
# P..P+99 that neither its Raft (P+1+i) nor its client (P+51+i) ports use.
REDIS_PORT_OFFSET = 50

_ROOT = Path(multiraft.__file__).resolve().parent.parent


def _port_free(host: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_base_ports(count: int, workers: int, host: str = "127.0.0.1", rng: random.Random | None = None) -> list[int]:
    """`count` listen ports, 100 apart, whose node port ranges are free."""
    rng = rng or random.Random()
    for _ in range(200):
        start = rng.randrange(10_000, 32_000 - 100 * count, 100) + rng.randrange(0, 50) * 0
        bases = [start + 100 * i for i in range(count)]
        needed = [
            p
            for b in bases
            for p in [b, b + REDIS_PORT_OFFSET]
            + [b + RAFT_PORT_OFFSET + i for i in range(workers)]
            + [b + CLIENT_PORT_OFFSET + i for i in range(workers)]
        ]
        if all(_port_free(host, p) for p in needed):
            return bases
    raise RuntimeError("no free port range found")


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except ProcessLookupError:
            return []
        except PermissionError:
            return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        # fields: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


class LocalNode:
    def __init__(self, cluster: ProcessCluster, node_id: str, port: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.port = port
        self.address = f"{cluster.host}:{port}"
        self.redis_address = f"{cluster.host}:{port + REDIS_PORT_OFFSET}" if cluster.redis else None
        self.data_dir = cluster.base_dir / node_id
        self.log_path = cluster.base_dir / f"{node_id}.log"
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.join: str | None = None  # HOST:PORT it joined through (ProcessCluster.join_node)

    def argv(self) -> list[str]:
        c = self.cluster
        if self.join is not None:
            layout = ["--join", self.join]
        else:
            layout = ["--peers", c.peers_arg, "--groups", str(c.groups), "--replicas", str(c.replicas)]
        argv = [
            sys.executable, "-m", "multiraft.cli", "node",
            "--node-id", self.node_id,
            "--listen", self.address,
            *layout,
            "--data-dir", str(self.data_dir),
            "--workers", str(c.workers),
            "--tick-ms", str(c.tick_ms),
            "--election-tick", str(c.election_tick),
            "--heartbeat-tick", str(c.heartbeat_tick),
            "--poll-interval-ms", str(c.poll_interval_ms),
            "--log-level", c.log_level,
        ]
        if c.snapshot_threshold_entries is not None:
            argv += ["--snapshot-threshold-entries", str(c.snapshot_threshold_entries)]
        if c.compact_lag_entries is not None:
            argv += ["--compact-lag-entries", str(c.compact_lag_entries)]
        if not c.sync_on_write:
            argv.append("--no-sync")
        if self.redis_address:
            argv += ["--redis", self.redis_address]
        return argv + list(c.extra_args)

    def start(self) -> None:
        assert not self.running, f"{self.node_id} is already running"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(self.cluster.env)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        try:
            self.process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=str(self.cluster.base_dir),
            )
        finally:
            log.close()
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pgid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def group_alive(self) -> bool:
        """Whether any live (non-zombie) process of the node's process group exists."""
        if self.process is None:
            return False
        self.process.poll()
        return bool(group_members(self.process.pid))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the node's whole process group (coordinator and workers)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            self.process.wait()
            deadline = time.monotonic() + 10
            while self.group_alive() and time.monotonic() < deadline:
                time.sleep(0.02)  # the workers die with it; let the kernel finish

    def terminate(self) -> None:
        """SIGTERM to the coordinator only: it stops its workers itself."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout_s: float = 15.0) -> bool:
        """Wait for the coordinator and every worker to be gone; SIGKILL them
        after timeout_s. Returns True if they stopped by themselves."""
        if self.process is None:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None and not self.group_alive():
                return True
            time.sleep(0.05)
        self.kill(signal.SIGKILL)
        return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class ProcessCluster:
    """Real node processes on loopback (workers.testing.InProcessCluster is the
    in-process kind: Workers in one trio run, for unit tests)."""

    def __init__(
        self,
        base_dir: str | os.PathLike,
        *,
        nodes: int = 3,
        workers: int = 2,
        groups: int = 12,
        replicas: int | None = None,
        tick_ms: int = 50,
        election_tick: int = 10,
        heartbeat_tick: int = 2,
        poll_interval_ms: int = 300,
        snapshot_threshold_entries: int | None = None,
        compact_lag_entries: int | None = None,
        sync_on_write: bool = True,
        log_level: str = "info",
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        ports: list[int] | None = None,
        redis: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.workers = workers
        self.groups = groups
        self.replicas = replicas if replicas is not None else min(3, nodes)
        self.tick_ms = tick_ms
        self.election_tick = election_tick
        self.heartbeat_tick = heartbeat_tick
        self.poll_interval_ms = poll_interval_ms
        self.snapshot_threshold_entries = snapshot_threshold_entries
        self.compact_lag_entries = compact_lag_entries
        self.sync_on_write = sync_on_write
        self.log_level = log_level
        self.extra_args = extra_args
        self.env = dict(env or {})
        self.redis = redis  # each node also serves RESP on its port + REDIS_PORT_OFFSET
        ports = ports or free_base_ports(nodes, workers, host)
        self.nodes = {f"n{i + 1}": LocalNode(self, f"n{i + 1}", ports[i]) for i in range(nodes)}
        self.peers_arg = ",".join(f"{n.node_id}={n.address}" for n in self.nodes.values())

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes.values()]

    @property
    def redis_addresses(self) -> list[str]:
        return [n.redis_address for n in self.nodes.values() if n.redis_address]

    def addresses_of_running(self) -> list[str]:
        return [n.address for n in self.nodes.values() if n.running]

    def start(self) -> None:
        for node in self.nodes.values():
            node.start()

    def join_node(self, node_id: str, port: int, via: str | None = None) -> LocalNode:
        """Start a new node that joins the running cluster (`multiraft node
        --join`): it holds no replica until multiraft-admin adds some."""
        node = LocalNode(self, node_id, port)
        node.join = via or next(iter(self.nodes.values())).address
        self.nodes[node_id] = node
        node.start()
        return node

    def stop(self, timeout_s: float = 15.0) -> bool:
        """SIGTERM every node, wait for every process to go. True if all
        stopped by themselves (no SIGKILL needed)."""
        for node in self.nodes.values():
            node.terminate()
        clean = True
        for node in self.nodes.values():
            clean = node.wait_stopped(timeout_s) and clean
        return clean

    def any_process_left(self) -> bool:
        return any(n.group_alive() for n in self.nodes.values())

    def __enter__(self) -> ProcessCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- waiting on conditions (async, for trio callers) ---

    async def status(self, timeout_s: float = 3.0) -> dict:
        from multiraft.client import coordinator_request

        return await coordinator_request(self.addresses_of_running() or self.addresses, ["cluster_status"],
                                         timeout_s=timeout_s)

    async def wait_for(
        self, predicate, *, timeout_s: float = 30.0, interval_s: float = 0.2, what: str = "condition"
    ) -> dict:
        """Poll cluster_status until predicate(status) is true; return it.
        Raises TimeoutError with the last status summary."""
        from multiraft.client import ClientError

        deadline = trio.current_time() + timeout_s
        last: Any = None
        while True:
            try:
                last = await self.status()
                if predicate(last):
                    return last
            except ClientError as exc:
                last = exc
            if trio.current_time() >= deadline:
                raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}; last: {_summary(last)}")
            await trio.sleep(interval_s)

    async def wait_healthy(self, *, timeout_s: float = 30.0, nodes: list[str] | None = None) -> dict:
        """Every node (or `nodes`) up with all workers up, every group a leader,
        and every replica on an up node reporting status."""
        want = set(nodes or self.nodes)

        def ok(st: dict) -> bool:
            return healthy(st, want)

        return await self.wait_for(ok, timeout_s=timeout_s, what="a healthy cluster")

    async def wait_caught_up(self, *, timeout_s: float = 30.0) -> dict:
        """Every group: all replicas applied == the leader's commit."""
        return await self.wait_for(caught_up, timeout_s=timeout_s, what="replicas to catch up")


def healthy(st: dict, want: set[str]) -> bool:
    up = {n["id"] for n in st["nodes"] if n["up"] and all(w["up"] for w in n["workers"])}
    if not want <= up:
        return False
    for g in st["groups"]:
        if not g["leader"]:
            return False
        for r in g["replicas"]:
            if r["node"] in want and r["applied"] is None:
                return False
    return True


def caught_up(st: dict) -> bool:
    if not all(n["up"] for n in st["nodes"]):
        return False
    for g in st["groups"]:
        if not g["leader"]:
            return False
        for r in g["replicas"]:
            if r["applied"] is None or r["applied"] < g["commit"] or r["commit"] is None or r["commit"] < g["commit"]:
                return False
    return True


def _summary(st: Any) -> str:
    if not isinstance(st, dict):
        return repr(st)[:300]
    nodes = ",".join(f"{n['id']}:{'up' if n['up'] else 'down'}" for n in st.get("nodes", []))
    leaderless = [g["id"] for g in st.get("groups", []) if not g["leader"]]
    lag = [
        f"g{g['id']}:{r['node']}={r['applied']}/{g['commit']}"
        for g in st.get("groups", [])
        for r in g["replicas"]
        if r["applied"] is None or r["applied"] < g["commit"]
    ]
    return f"nodes {nodes}; leaderless groups {leaderless[:10]}; lagging {lag[:8]}"
