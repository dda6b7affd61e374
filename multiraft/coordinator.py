"""The coordinator: one per node, the control plane (DESIGN §1, docs/operations.md).

It

- owns the data directory's cluster.json and placement.json (created on the
  first start, checked and reused on every restart) and a lock file, so two
  processes never share a data directory;
- spawns the node's W workers (``python -m workers``) as children in its
  nursery, with stdin/stdout pipes as the control channel (multiraft.protocol
  channel 3): the first frame is ["config", {...}], then ["routing", table]
  whenever the table changes; the worker answers ["ready", {...}] and then
  ["status", {g: group status}] periodically. A worker that exits is restarted
  with exponential backoff and recovers from its own data directory. A worker
  exits when its stdin closes, which the kernel does when the coordinator
  dies in any way, so no worker outlives its coordinator;
- polls every peer coordinator (["placement"], ["status"]) every
  ``poll_interval_ms``, merges the routing table (multiraft.placement) and
  pushes it to its workers;
- serves ["routing"], ["status"], ["placement"], ["cluster_status"] and
  ["ping"] on the node's --listen address (protocol channel 2).

It is never on the data path, and it never imports `workers` or `storage`:
those run in other processes.

SIGINT / SIGTERM: every worker gets ["shutdown"] and its stdin closed, is
waited for (then killed if it has not exited in `WORKER_STOP_TIMEOUT_S`), and
the coordinator exits 0.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

import multiraft
from multiraft import protocol
from multiraft.client import Connection, ConnectionLost, open_connection
from multiraft.nodeconfig import (
    ConfigError,
    NodeOptions,
    RawOptions,
    data_dir_of,
    format_address,
    resolve,
)
from multiraft.placement import Placement, PlacementError, group_replicas, merge_cluster_status, merge_routing
from multiraft.sharding import KEY_HASH_NAME

__all__ = [
    "CLUSTER_FILE",
    "PLACEMENT_FILE",
    "CLUSTER_FORMAT",
    "CLUSTER_FORMAT_VERSION",
    "Coordinator",
    "NodeSetup",
    "prepare_node",
    "load_stored",
    "run_node",
    "worker_command",
]

CLUSTER_FILE = "cluster.json"
PLACEMENT_FILE = "placement.json"
LOCK_FILE = "LOCK"
CLUSTER_FORMAT = "multiraft-node"
CLUSTER_FORMAT_VERSION = 1

WORKER_STOP_TIMEOUT_S = 5.0
RESTART_BACKOFF_MIN_S = 0.1
RESTART_BACKOFF_MAX_S = 5.0
RESTART_BACKOFF_RESET_S = 10.0
PEER_TIMEOUT_S = 2.0
ROUTING_MIN_INTERVAL_S = 0.05

_log = logging.getLogger("multiraft.coordinator")


# ---------------------------------------------------------------------------
# The data directory


def _atomic_write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_stored(data_dir: Path) -> dict | None:
    """The data directory's cluster.json, checked; None for a new node (the
    directory is absent or empty). ConfigError if it holds anything else."""
    if not data_dir.exists():
        return None
    if not data_dir.is_dir():
        raise ConfigError(f"data directory {data_dir} is not a directory")
    path = data_dir / CLUSTER_FILE
    if not path.exists():
        leftovers = [p.name for p in data_dir.iterdir() if p.name != LOCK_FILE]
        if leftovers:
            raise ConfigError(
                f"data directory {data_dir} is not empty and has no {CLUSTER_FILE}: "
                "it was not written by multiraft (use an empty or new directory)"
            )
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != CLUSTER_FORMAT:
        raise ConfigError(f"{path} was not written by multiraft (no format {CLUSTER_FORMAT!r})")
    if doc.get("format_version") != CLUSTER_FORMAT_VERSION:
        raise ConfigError(
            f"{path} has format version {doc.get('format_version')!r}; this release reads {CLUSTER_FORMAT_VERSION}"
        )
    try:
        cluster = doc["cluster"]
        assert isinstance(doc["node_id"], str)
        assert isinstance(cluster["nodes"], dict) and cluster["nodes"]
        assert type(cluster["groups"]) is int and type(cluster["replicas"]) is int
        assert type(doc["workers"]) is int
    except (KeyError, TypeError, AssertionError):
        raise ConfigError(f"{path} is incomplete or malformed") from None
    if cluster.get("key_hash", KEY_HASH_NAME) != KEY_HASH_NAME:
        raise ConfigError(f"{path} uses key hash {cluster.get('key_hash')!r}; this release uses {KEY_HASH_NAME}")
    return doc


class NodeSetup:
    """A prepared node: options, placement, and the held data directory lock."""

    def __init__(self, options: NodeOptions, placement: Placement, lock_fd: int) -> None:
        self.options = options
        self.placement = placement
        self._lock_fd = lock_fd

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def prepare_node(raw: RawOptions, *, cwd: Path | None = None) -> NodeSetup:
    """Resolve options against the data directory, create or check its files,
    lock it. Raises ConfigError (one line) on any operator mistake."""
    data_dir = data_dir_of(raw, cwd=cwd)
    stored = load_stored(data_dir)
    options = resolve(raw, stored, cwd=cwd)
    try:
        options.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {options.data_dir}: {exc.strerror}") from None
    lock_fd = _lock(options.data_dir)
    try:
        placement = _load_or_create_placement(options, stored)
        for i in range(options.workers):
            (options.data_dir / "workers" / f"w{i}").mkdir(parents=True, exist_ok=True)
    except BaseException:
        os.close(lock_fd)
        raise
    return NodeSetup(options, placement, lock_fd)


def _lock(data_dir: Path) -> int:
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = ""
        try:
            holder = os.pread(fd, 32, 0).decode().strip()
        except OSError:
            pass
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ConfigError(
                f"data directory {data_dir} is in use by another multiraft node"
                + (f" (pid {holder})" if holder else "")
            ) from None
        raise ConfigError(f"cannot lock {path}: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _load_or_create_placement(options: NodeOptions, stored: dict | None) -> Placement:
    data_dir = options.data_dir
    path = data_dir / PLACEMENT_FILE
    if stored is not None:
        try:
            placement = Placement.from_plain(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"{path} is missing (the data directory is damaged)") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is unreadable: {exc}") from None
        if (
            placement.node_id != options.node_id
            or placement.workers != options.workers
            or placement.groups_total != options.groups
        ):
            raise ConfigError(f"{path} does not match {CLUSTER_FILE}")
        return placement
    try:
        placement = Placement.plan(
            options.node_id, list(options.peers), options.groups, options.replicas, options.workers
        )
    except PlacementError as exc:
        raise ConfigError(str(exc)) from None
    _atomic_write_json(path, placement.to_plain())
    doc = {
        "format": CLUSTER_FORMAT,
        "format_version": CLUSTER_FORMAT_VERSION,
        "node_id": options.node_id,
        "cluster": {**options.cluster_layout(), "key_hash": KEY_HASH_NAME},
        "workers": options.workers,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "multiraft_version": getattr(multiraft, "__version__", "0"),
    }
    _atomic_write_json(data_dir / CLUSTER_FILE, doc)
    return placement


# ---------------------------------------------------------------------------
# Workers


def worker_command() -> list[str]:
    """The worker's argv. $MULTIRAFT_WORKER_ARGV (a JSON list) overrides it
    (tests use a fake worker)."""
    override = os.environ.get("MULTIRAFT_WORKER_ARGV")
    if override:
        argv = json.loads(override)
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv) or not argv:
            raise ConfigError("MULTIRAFT_WORKER_ARGV must be a JSON list of strings")
        return argv
    return [sys.executable, "-m", "workers"]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = Path(multiraft.__file__).resolve().parent.parent
    if (root / "workers" / "__init__.py").exists():
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(root) + (os.pathsep + old if old else "")
    return env


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Ctrl-C in a terminal signals the whole process group: let the coordinator
    # stop the workers in order instead (a Python child keeps SIG_IGN for SIGINT).
    # (No PR_SET_PDEATHSIG: trio spawns from a worker thread, and the kernel
    # sends that signal when the spawning *thread* exits, which trio's thread
    # cache does after 10 idle seconds. The end of stdin is the guarantee.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class WorkerHandle:
    def __init__(self, index: int, groups: dict[int, list[str]]) -> None:
        self.index = index
        self.groups = groups
        self.process: trio.Process | None = None
        self.pid: int | None = None
        self.up = False
        self.starts = 0
        self.last_exit: int | None = None
        self.raft_url: str | None = None
        self.client_address: str | None = None
        self.status: dict[int, dict] = {}
        self.stats: dict = {}
        self.routing_sent = -1

    def info(self) -> dict:
        return {
            "index": self.index,
            "up": self.up,
            "pid": self.pid,
            "restarts": max(0, self.starts - 1),
            "last_exit": self.last_exit,
            "raft_url": self.raft_url,
            "client_address": self.client_address,
            "groups": len(self.groups),
        }


class _Peer:
    def __init__(self, node_id: str, address: str) -> None:
        self.node_id = node_id
        self.address = address
        self.up = False
        self.ever_up = False
        self.workers: list[dict] = []
        self.groups: dict[int, int] | None = None
        self.status: dict[int, dict] = {}
        self.problem = ""

    def view(self) -> dict:
        return {
            "address": self.address,
            "up": self.up,
            "workers": self.workers,
            "groups": self.groups,
            "status": self.status if self.up else {},
        }


class Coordinator:
    def __init__(self, setup: NodeSetup, *, worker_argv: list[str] | None = None) -> None:
        self.setup = setup
        self.options = options = setup.options
        self.placement = setup.placement
        self.node_id = options.node_id
        self.worker_argv = worker_argv or worker_command()
        self.workers = [WorkerHandle(i, self.placement.worker_groups(i)) for i in range(options.workers)]
        self.plan = group_replicas(list(options.peers), options.groups, options.replicas)
        self.peers = {
            n: _Peer(n, format_address(h, p)) for n, (h, p) in options.peers.items() if n != self.node_id
        }
        self.routing: dict = {}
        self.routing_version = 0
        self._routing_key: Any = None
        self._routing_changed = trio.Event()
        self._dirty = trio.Event()
        self._stopping = False
        self.listen_address: str | None = None
        self._stop_scope: trio.CancelScope | None = None
        self._recompute()

    # --- state merge ---

    def self_view(self) -> dict:
        status: dict[int, dict] = {}
        for w in self.workers:
            if w.up:
                for g, st in w.status.items():
                    if g in w.groups:
                        status[g] = st
        return {
            "address": self.options.address,
            "up": True,
            "workers": [
                {
                    **w.info(),
                    "raft_url": w.raft_url or self.options.worker_raft_url(w.index),
                    "client_address": w.client_address or self.options.worker_client_address(w.index),
                }
                for w in self.workers
            ],
            "groups": dict(self.placement.group_worker),
            "status": status,
        }

    def views(self) -> dict[str, dict]:
        views = {n: p.view() for n, p in self.peers.items()}
        views[self.node_id] = self.self_view()
        return views

    def _mark_dirty(self) -> None:
        self._dirty.set()

    def _recompute(self) -> None:
        table = merge_routing(0, self.options.groups, self.plan, self.views())
        key = json.dumps(table, sort_keys=True, default=str)
        if key != self._routing_key:
            self._routing_key = key
            self.routing_version += 1
            table["version"] = self.routing_version
            self.routing = table
            event, self._routing_changed = self._routing_changed, trio.Event()
            event.set()

    async def _routing_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            started = time.perf_counter()
            self._recompute()
            # at most ~10 % of a core on merging, however many groups there are
            cost = time.perf_counter() - started
            await trio.sleep(max(ROUTING_MIN_INTERVAL_S, 10 * cost))

    # --- the API (protocol channel 2) ---

    def placement_doc(self) -> dict:
        return {
            "node": self.node_id,
            "address": self.options.address,
            "cluster": self.options.cluster_layout(),
            "workers": self.self_view()["workers"],
            "groups": dict(self.placement.group_worker),
        }

    def status_doc(self) -> dict:
        groups = {}
        for w in self.workers:
            if not w.up:
                continue
            for g, st in w.status.items():
                if g in w.groups:
                    groups[g] = {**st, "worker": w.index}
        return {
            "node": self.node_id,
            "address": self.options.address,
            "workers": [{**w.info(), "stats": w.stats} for w in self.workers],
            "groups": groups,
        }

    def cluster_status_doc(self) -> dict:
        doc = merge_cluster_status(self.options.groups, self.plan, self.views())
        doc["node"] = self.node_id
        doc["groups_total"] = self.options.groups
        doc["replicas"] = self.options.replicas
        doc["routing_version"] = self.routing_version
        return doc

    def handle(self, request: list) -> tuple[str, Any]:
        op = request[1] if len(request) > 1 else None
        if op == "routing":
            return protocol.OK, self.routing
        if op == "status":
            return protocol.OK, self.status_doc()
        if op == "placement":
            return protocol.OK, self.placement_doc()
        if op == "cluster_status":
            return protocol.OK, self.cluster_status_doc()
        if op == "ping":
            return protocol.OK, self.node_id
        return protocol.ERROR, f"unknown op {op!r}"

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        buf = protocol.FrameBuffer(frame_size_bytes_max=1 << 20)
        try:
            while True:
                data = await stream.receive_some(1 << 16)
                if not data:
                    return
                buf.feed(data)
                out = bytearray()
                for frame in buf.frames():
                    req_id = frame[0]
                    try:
                        status, payload = self.handle(frame)
                    except Exception as exc:  # a bug of ours: answer, keep serving
                        _log.exception("request %r failed", frame[:2])
                        status, payload = protocol.ERROR, f"internal error: {exc}"
                    out += protocol.encode([req_id, status, payload])
                if out:
                    await stream.send_all(bytes(out))
        except protocol.ProtocolError as exc:
            _log.info("dropping a connection that sent a bad frame: %s", exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            with trio.move_on_after(0.5) as cs:
                cs.shield = True
                await stream.aclose()

    # --- workers ---

    def _worker_config(self, w: WorkerHandle) -> dict:
        o = self.options
        return {
            "node_id": o.node_id,
            "worker_index": w.index,
            "data_dir": str(o.data_dir / "workers" / f"w{w.index}"),
            "raft_listen_url": o.worker_raft_url(w.index, advertised=False),
            "client_listen_address": o.worker_client_address(w.index, advertised=False),
            "groups": {g: list(v) for g, v in w.groups.items()},
            "groups_total": o.groups,
            "tick_ms": o.tick_ms,
            "election_tick": o.election_tick,
            "heartbeat_tick": o.heartbeat_tick,
            "sync_on_write": o.sync_on_write,
            "snapshot_threshold_entries": o.snapshot_threshold_entries,
            "compact_lag_entries": o.compact_lag_entries,
            "lease_reads": o.lease_reads,
        }

    async def _supervise(self, w: WorkerHandle) -> None:
        backoff = RESTART_BACKOFF_MIN_S
        while True:
            started = trio.current_time()
            try:
                await self._run_worker_once(w)
            except OSError as exc:
                _log.error("worker %d: cannot start %s: %s", w.index, self.worker_argv[0], exc)
            if trio.current_time() - started > RESTART_BACKOFF_RESET_S:
                backoff = RESTART_BACKOFF_MIN_S
            _log.warning("worker %d exited (code %s); restarting in %.1fs", w.index, w.last_exit, backoff)
            await trio.sleep(backoff)
            backoff = min(RESTART_BACKOFF_MAX_S, backoff * 2)

    async def _run_worker_once(self, w: WorkerHandle) -> None:
        process = await trio.lowlevel.open_process(
            self.worker_argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_child_env(),
            preexec_fn=_child_setup,
        )
        w.process = process
        w.pid = process.pid
        w.starts += 1
        w.routing_sent = -1
        _log.info("worker %d started (pid %d, %d groups)", w.index, process.pid, len(w.groups))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._worker_reader, w, process, nursery.cancel_scope)
                nursery.start_soon(self._worker_writer, w, process)
                await process.wait()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            _log.warning("worker %d: control pipe broke: %s", w.index, exc)
        except BaseExceptionGroup as eg:
            if not eg.subgroup((trio.BrokenResourceError, trio.ClosedResourceError, OSError)):
                raise
            rest = eg.split((trio.BrokenResourceError, trio.ClosedResourceError, OSError))[1]
            if rest is not None:
                raise rest
            _log.warning("worker %d: control pipe broke", w.index)
        finally:
            w.up = False
            w.status = {}
            self._mark_dirty()
            with trio.CancelScope(shield=True):
                await self._stop_process(w, process)
            w.last_exit = process.returncode
            w.process = None

    async def _stop_process(self, w: WorkerHandle, process: trio.Process) -> None:
        if process.returncode is None:
            with trio.move_on_after(0.5):
                try:
                    await process.stdin.send_all(protocol.encode(["shutdown"]))
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
                    pass
        try:
            await process.stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        with trio.move_on_after(WORKER_STOP_TIMEOUT_S):
            await process.wait()
        if process.returncode is None:
            _log.warning("worker %d (pid %d) did not exit: killing it", w.index, process.pid)
            process.kill()
            await process.wait()
        try:
            await process.stdout.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _worker_writer(self, w: WorkerHandle, process: trio.Process) -> None:
        await process.stdin.send_all(protocol.encode(["config", self._worker_config(w)]))
        while True:
            if w.up and w.routing_sent != self.routing_version:
                version = self.routing_version
                await process.stdin.send_all(protocol.encode(["routing", self.routing]))
                w.routing_sent = version
                continue
            changed = self._routing_changed
            await changed.wait()

    async def _worker_reader(self, w: WorkerHandle, process: trio.Process, scope: trio.CancelScope) -> None:
        buf = protocol.FrameBuffer()
        try:
            while True:
                data = await process.stdout.receive_some(1 << 16)
                if not data:
                    return
                buf.feed(data)
                for frame in buf.frames():
                    self._on_worker_frame(w, frame)
        except protocol.ProtocolError as exc:
            _log.error("worker %d wrote a bad control frame (%s): stopping it", w.index, exc)
            scope.cancel()

    def _on_worker_frame(self, w: WorkerHandle, frame: list) -> None:
        kind = frame[0]
        body = frame[1] if len(frame) > 1 else None
        if kind == "ready":
            if isinstance(body, dict):
                w.raft_url = body.get("raft_url") or w.raft_url
                w.client_address = body.get("client_address") or w.client_address
            w.up = True
            _log.info("worker %d ready (raft %s, clients %s)", w.index, w.raft_url, w.client_address)
            self._mark_dirty()
            # wake the writer so it sends the routing table now
            event, self._routing_changed = self._routing_changed, trio.Event()
            event.set()
        elif kind == "status":
            if isinstance(body, dict):
                for g, st in body.items():
                    if isinstance(g, int) and isinstance(st, dict):
                        w.status[g] = st
                self._mark_dirty()
            if len(frame) > 2 and isinstance(frame[2], dict):
                w.stats = frame[2]
        elif kind == "error":
            message = body.get("message") if isinstance(body, dict) else body
            _log.error("worker %d reports: %s", w.index, message)
        else:
            _log.debug("worker %d: ignoring control frame %r", w.index, kind)

    # --- peers ---

    async def _poll_peer(self, peer: _Peer, nursery: trio.Nursery) -> None:
        conn: Connection | None = None
        interval = self.options.poll_interval_ms / 1000
        layout = self.options.cluster_layout()
        while True:
            try:
                if conn is None or conn.closed:
                    conn = await open_connection(nursery, peer.address, timeout_s=PEER_TIMEOUT_S)
                with trio.fail_after(PEER_TIMEOUT_S):
                    s1, placement = await conn.request(["placement"])
                    s2, status = await conn.request(["status"])
                if s1 != protocol.OK or s2 != protocol.OK:
                    raise OSError(f"answered {s1}/{s2}")
                if placement.get("node") != peer.node_id:
                    raise OSError(f"it is node {placement.get('node')!r}, not {peer.node_id}")
                if placement.get("cluster") != layout:
                    raise OSError("its cluster layout differs from ours (check --peers/--groups/--replicas)")
                peer.workers = list(placement.get("workers") or [])
                peer.groups = {int(g): int(w) for g, w in (placement.get("groups") or {}).items()}
                peer.status = {
                    int(g): st for g, st in (status.get("groups") or {}).items() if isinstance(st, dict)
                }
                if not peer.up:
                    _log.info("peer %s (%s) is up", peer.node_id, peer.address)
                peer.up = peer.ever_up = True
                peer.problem = ""
            except (OSError, ConnectionLost, trio.TooSlowError, protocol.ProtocolError,
                    AttributeError, TypeError, ValueError) as exc:
                if conn is not None:
                    conn.close()
                    conn = None
                problem = str(exc) or type(exc).__name__
                if peer.up or (problem != peer.problem and not isinstance(exc, (OSError, trio.TooSlowError))):
                    _log.warning("peer %s (%s) is down: %s", peer.node_id, peer.address, problem)
                elif problem != peer.problem and "layout" in problem:
                    _log.error("peer %s (%s): %s", peer.node_id, peer.address, problem)
                peer.up = False
                peer.problem = problem
            self._mark_dirty()
            await trio.sleep(interval)

    # --- running ---

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        o = self.options
        _check_worker_ports(o)
        try:
            listeners = await trio.open_tcp_listeners(o.listen_port, host=o.listen_host)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {format_address(o.listen_host, o.listen_port)}: {exc.strerror or exc}"
            ) from None
        self.listen_address = format_address(o.listen_host, o.listen_port)
        try:
            async with trio.open_nursery() as nursery:
                self._stop_scope = nursery.cancel_scope
                nursery.start_soon(self._routing_loop)
                for w in self.workers:
                    nursery.start_soon(self._supervise, w)
                for peer in self.peers.values():
                    nursery.start_soon(self._poll_peer, peer, nursery)
                nursery.start_soon(trio.serve_listeners, self._serve_connection, listeners)
                _log.info(
                    "node %s listening on %s: %d workers, %d of %d groups, replicas %d, data %s",
                    o.node_id, self.listen_address, o.workers, len(self.placement.group_worker),
                    o.groups, o.replicas, o.data_dir,
                )
                task_status.started(self)
        finally:
            self._stopping = True

    def stop(self) -> None:
        """Stop the node: workers are shut down in order, then run() returns."""
        self._stopping = True
        if self._stop_scope is not None:
            self._stop_scope.cancel()


def _check_worker_ports(o: NodeOptions) -> None:
    from multiraft.nodeconfig import worker_client_port, worker_raft_port

    family = socket.AF_INET6 if ":" in o.listen_host else socket.AF_INET
    for i in range(o.workers):
        for what, port in (("Raft", worker_raft_port(o.listen_port, i)), ("client", worker_client_port(o.listen_port, i))):
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((o.listen_host, port))
            except OSError as exc:
                raise ConfigError(
                    f"worker {i}'s {what} port {format_address(o.listen_host, port)} is not available: "
                    f"{exc.strerror or exc} (a node uses ports P..P+99 of its --listen port P)"
                ) from None
            finally:
                s.close()


async def run_node(setup: NodeSetup, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run a prepared node until SIGINT or SIGTERM (then stop cleanly)."""
    coordinator = Coordinator(setup)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    _log.info("%s: stopping", signal.Signals(signum).name)
                    coordinator.stop()
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
            await nursery.start(coordinator.run)
            task_status.started(coordinator)
    _log.info("node %s stopped", coordinator.node_id)
