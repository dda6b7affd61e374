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
  ["ping"] on the node's --listen address (protocol channel 2);
- keeps the cluster's members (members.json: nodes admitted by ["join"] on
  any coordinator, nodes retired), exchanged with the peers in every poll;
- runs multiraft-admin's jobs (["admin", ...], multiraft.jobs) and changes its
  own placement for them (["add_replica"], ["drop_replica"], ["move_worker"]:
  placement.json first, then the worker is told on its control pipe).

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
from multiraft.jobs import JobRunner
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
MEMBERS_FILE = "members.json"
MEMBERS_FORMAT = 1
LOCK_FILE = "LOCK"
CLUSTER_FORMAT = "multiraft-node"
CLUSTER_FORMAT_VERSION = 1

WORKER_STOP_TIMEOUT_S = 5.0
GROUP_OP_TIMEOUT_S = 30.0
# Channel 2 ops answered when done (placement changes wait for a worker).
ASYNC_OPS = ("add_replica", "drop_replica", "move_worker", "admin")
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
    joined = None
    if stored is None and raw.join is not None:
        joined = _join_cluster(raw)  # asks a running cluster; nothing written yet
        stored = joined["doc"]
    options = resolve(raw, stored, cwd=cwd)
    try:
        options.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {options.data_dir}: {exc.strerror}") from None
    lock_fd = _lock(options.data_dir)
    try:
        if joined is not None:
            _write_joined(options, joined)
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


def _join_cluster(raw: RawOptions) -> dict:
    """`multiraft node --join HOST:PORT` on an empty data directory: ask that
    coordinator to admit this node. Returns {"doc": the cluster.json to write,
    "members": the cluster's members}. ConfigError if it refuses."""
    from multiraft.client import ClientError, coordinator_request
    from multiraft.nodeconfig import (
        DEFAULT_MAX_CLOCK_DRIFT_MS,
        DEFAULT_WORKERS,
        check_node_id,
        lease_timing,
        parse_address,
    )

    if raw.peers is not None:
        raise ConfigError("--join and --peers exclude each other: a joining node learns the cluster from --join")
    if raw.node_id is None:
        raise ConfigError("--join needs --node-id (a name no other node of the cluster has)")
    node_id = check_node_id(raw.node_id)
    if raw.listen is None:
        raise ConfigError("--join needs --listen HOST:PORT, the address the other nodes use for this node")
    host, port = parse_address(raw.listen, what="--listen address")
    if host in ("0.0.0.0", "::"):
        raise ConfigError("--join needs --listen with the address the other nodes use (not 0.0.0.0)")
    address = format_address(host, port)
    workers = raw.workers if raw.workers is not None else DEFAULT_WORKERS
    via = format_address(*parse_address(raw.join, what="--join address"))
    # The cluster refuses a node whose timing differs (the leader lease
    # counts on every node's election timeout). The defaults: nodeconfig's.
    timing = lease_timing(
        raw.tick_ms if raw.tick_ms is not None else 100,
        raw.election_tick if raw.election_tick is not None else 10,
        raw.max_clock_drift_ms if raw.max_clock_drift_ms is not None else DEFAULT_MAX_CLOCK_DRIFT_MS,
    )
    request = ["join", node_id, address, workers, timing]
    try:
        reply = trio.run(lambda: coordinator_request([via], request, timeout_s=10.0))
    except ClientError as exc:
        raise ConfigError(f"cannot join the cluster at {via}: {exc}") from None
    try:
        layout = reply["cluster"]
        members = reply["members"]
        assert isinstance(layout["nodes"], dict) and layout["nodes"] and isinstance(members, dict)
        groups, replicas = int(layout["groups"]), int(layout["replicas"])
    except (KeyError, TypeError, ValueError, AssertionError):
        raise ConfigError(f"{via} answered the join with something unexpected") from None
    for name, have in (("groups", groups), ("replicas", replicas)):
        given = getattr(raw, name)
        if given is not None and given != have:
            raise ConfigError(f"the cluster at {via} has --{name} {have}, not {given}")
    doc = {
        "format": CLUSTER_FORMAT,
        "format_version": CLUSTER_FORMAT_VERSION,
        "node_id": node_id,
        "cluster": {"nodes": dict(layout["nodes"]), "groups": groups, "replicas": replicas,
                    "key_hash": layout.get("key_hash", KEY_HASH_NAME)},
        "workers": workers,
        "joined": {"address": address, "via": via},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "multiraft_version": getattr(multiraft, "__version__", "0"),
    }
    return {"doc": doc, "members": members}


def _write_joined(options: NodeOptions, joined: dict) -> None:
    """A joined node starts empty: no replicas until multiraft-admin adds some."""
    data_dir = options.data_dir
    placement = Placement(options.node_id, options.workers, options.groups, {}, {})
    _atomic_write_json(data_dir / PLACEMENT_FILE, placement.to_plain())
    _save_members(data_dir, _clean_members(joined["members"]))
    _atomic_write_json(data_dir / CLUSTER_FILE, joined["doc"])  # last: the node exists once this does


def _clean_members(doc: Any) -> dict[str, dict]:
    """{node id: {"address", "epoch", "removed"}}, malformed entries left out."""
    from multiraft.nodeconfig import check_node_id, parse_address

    out: dict[str, dict] = {}
    if not isinstance(doc, dict):
        return out
    for n, m in doc.items():
        try:
            check_node_id(n)
            parse_address(m["address"])
            out[n] = {"address": str(m["address"]), "epoch": int(m["epoch"]), "removed": bool(m["removed"])}
        except (ConfigError, KeyError, TypeError, ValueError):
            continue
    return out


def _save_members(data_dir: Path, members: dict) -> None:
    _atomic_write_json(data_dir / MEMBERS_FILE, {"format": MEMBERS_FORMAT, "members": members})


def _initial_members(options: NodeOptions) -> dict[str, dict]:
    """The cluster's members: members.json, or (on a first start) --peers."""
    members = {
        n: {"address": format_address(h, p), "epoch": 0, "removed": False} for n, (h, p) in options.peers.items()
    }
    path = options.data_dir / MEMBERS_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return members
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != MEMBERS_FORMAT:
        raise ConfigError(f"{path} was not written by this release")
    for n, m in _clean_members(doc.get("members")).items():
        cur = members.get(n)
        if cur is None or _newer(m, cur):
            members[n] = m
    return members


def _newer(m: dict, cur: dict) -> bool:
    """Member record m supersedes cur: a later epoch (a rejoin), or the same
    epoch retired (retirement is final within an epoch)."""
    return m["epoch"] > cur["epoch"] or (m["epoch"] == cur["epoch"] and m["removed"] and not cur["removed"])


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
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
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
        self.timing_sent: tuple[bool, str] | None = None  # the lease verdict it was sent
        # placement changes sent to the worker, answered by "group_op" frames
        self.op_waiters: dict[tuple[str, int], tuple[trio.Event, dict]] = {}
        self.send_lock = trio.Lock()
        # groups deleted from placement while this worker was down: their
        # data is deleted once it is back (in memory only; a leak at worst)
        self.pending_wipes: set[int] = set()

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
        self.members: dict[str, dict] = {}  # its view of the cluster's members
        self.busy: dict[int, str] = {}  # groups its admin jobs are changing
        self.retired = False  # no longer a member: stop polling it
        # The timing it announced (placement "timing"); None: never reached.
        self.timing: Any = None
        self.timing_seen = False

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
        # the API port's refusals: bad frames (connection dropped) and answers
        # that could not be encoded (answered "error" instead)
        self.api_counters: dict[str, int] = {"api_bad_frames": 0, "api_answers_unencodable": 0}
        self.worker_argv = worker_argv or worker_command()
        self.workers = [WorkerHandle(i, self.placement.worker_groups(i)) for i in range(options.workers)]
        # the bootstrap formula: only a fallback for groups nothing is known about
        self.plan = group_replicas(list(options.bootstrap or options.peers), options.groups, options.replicas)
        # every node that joined and was not retired (members.json)
        self.members = _initial_members(options)
        self.peers = {
            n: _Peer(n, m["address"]) for n, m in sorted(self.members.items()) if n != self.node_id and not m["removed"]
        }
        self.runner = JobRunner(self)
        self.nursery: trio.Nursery | None = None
        self._placement_lock = trio.Lock()
        self.routing: dict = {}
        self.routing_version = 0
        self._routing_key: Any = None
        self._routing_changed = trio.Event()
        self._dirty = trio.Event()
        self._stopping = False
        self.listen_address: str | None = None
        self._stop_scope: trio.CancelScope | None = None
        # Lease reads are served only while every peer announced our timing:
        # (ok, why), sent to the workers (["timing", {...}]).
        self.timing_verdict: tuple[bool, str] = (True, "")
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
            "members": self.members,
            "busy": self.runner.busy(),
            "timing": self.options.timing(),
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
            "counters": dict(self.api_counters),
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
        if op == "join" and len(request) in (5, 6):
            return self.join(request[2], request[3], request[4], request[5] if len(request) == 6 else None)
        if op == "admin":
            return protocol.ERROR, "admin requests are answered asynchronously (the node is starting or stopping)"
        if op == "job" and len(request) == 3:
            doc = self.runner.job_doc(request[2])
            if doc is None:
                return (
                    protocol.ERROR,
                    f"no job {request[2]!r:.80} on node {self.node_id}"
                    " (jobs live in the coordinator that ran them, until it restarts)",
                )
            return protocol.OK, doc
        if op == "jobs":
            return protocol.OK, self.runner.list_docs()
        return protocol.ERROR, f"unknown op {op!r:.80}"

    # --- membership (multiraft-admin; multiraft.jobs runs the long changes) ---

    def join(self, node_id: Any, address: Any, workers: Any, timing: Any = None) -> tuple[str, Any]:
        """["join", node_id, "host:port", workers, timing]: admit a new, empty
        node. One with other timing than ours is refused: the leader lease
        counts on every node's election timeout. (An older release sends no
        timing; the polls then keep lease reads off until it matches.)"""
        from multiraft.nodeconfig import PORTS_PER_NODE, check_node_id, describe_timing, parse_address

        try:
            check_node_id(node_id)
            host, port = parse_address(address, what="the joining node's address")
        except ConfigError as exc:
            return protocol.ERROR, str(exc)
        address = format_address(host, port)
        cur = self.members.get(node_id)
        if cur is not None and not cur["removed"]:
            if cur["address"] == address:
                return protocol.OK, self._join_reply()  # already in (a retried join)
            return protocol.ERROR, f"node id {node_id} is already a member of this cluster (at {cur['address']})"
        for n, m in sorted(self.members.items()):
            if m["removed"] or n == node_id:
                continue
            h, p = parse_address(m["address"])
            if h == host and abs(p - port) < PORTS_PER_NODE:
                return protocol.ERROR, (
                    f"{address} is too close to node {n} ({m['address']}): a node uses ports P..P+99, "
                    f"so nodes on one host must be at least {PORTS_PER_NODE} apart"
                )
        # Checked after who and where: those are the more basic errors to report.
        mine = self.options.timing()
        if timing is not None and timing != mine:
            _log.error("refused node %s: its timing (%s) differs from this cluster's (%s)",
                       node_id, describe_timing(timing), describe_timing(mine))
            return protocol.ERROR, (
                f"node {node_id} runs {describe_timing(timing)} but this cluster runs {describe_timing(mine)}: "
                "start it with the same --tick-ms, --election-tick and --max-clock-drift-ms "
                "(the leader lease relies on every node's election timeout)"
            )

        epoch = cur["epoch"] + 1 if cur is not None else 1
        self.members[node_id] = {"address": address, "epoch": epoch, "removed": False}
        _log.info("node %s (%s, %.40r workers) joins the cluster", node_id, address, workers)
        self._members_changed()
        return protocol.OK, self._join_reply()

    def _join_reply(self) -> dict:
        return {"cluster": {**self.options.cluster_layout(), "key_hash": KEY_HASH_NAME}, "members": self.members}

    def _merge_members(self, theirs: Any) -> None:
        changed = False
        for n, m in _clean_members(theirs).items():
            cur = self.members.get(n)
            if cur is None or _newer(m, cur):
                self.members[n] = m
                changed = True
        if changed:
            self._members_changed()

    def _members_changed(self) -> None:
        """Persist the members and poll exactly the active ones."""
        _save_members(self.options.data_dir, self.members)
        for n, m in sorted(self.members.items()):
            if n == self.node_id:
                if m["removed"]:
                    _log.warning("this node (%s) was retired from the cluster: the others ignore it now", n)
                continue
            peer = self.peers.get(n)
            if m["removed"]:
                if peer is not None:
                    peer.retired = True
                    del self.peers[n]
                    _log.info("node %s was retired from the cluster", n)
            elif peer is None or peer.address != m["address"]:
                if peer is not None:
                    peer.retired = True
                peer = self.peers[n] = _Peer(n, m["address"])
                _log.info("node %s (%s) is a member of the cluster", n, m["address"])
                if self.nursery is not None:
                    self.nursery.start_soon(self._poll_peer, peer, self.nursery)
        self._mark_dirty()

    def retire_member(self, node: str) -> None:
        m = self.members[node]
        self.members[node] = {**m, "removed": True}
        self._members_changed()

    def member_address(self, node: str) -> str | None:
        m = self.members.get(node)
        return m["address"] if m is not None and not m["removed"] else None

    def peer_busy(self) -> dict[str, dict[int, str]]:
        return {n: p.busy for n, p in self.peers.items() if p.up and p.busy}

    def peers_not_knowing_removal(self, node: str) -> list[str]:
        return sorted(n for n, p in self.peers.items() if p.up and not (p.members.get(node) or {}).get("removed"))

    # --- this node's placement (asked by the admin jobs of any coordinator) ---

    async def _answer_later(self, stream: trio.SocketStream, lock: trio.Lock, frame: list) -> None:
        try:
            status, payload = await self.handle_async(frame)
        except Exception as exc:  # a bug of ours: answer, keep serving
            _log.exception("request %.200r failed", frame[:2])
            status, payload = protocol.ERROR, f"internal error: {exc}"[:300]
        data = self._encode_answer(frame[0], status, payload)
        try:
            async with lock:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    def _encode_answer(self, req_id: Any, status: str, payload: Any) -> bytes:
        data, why = protocol.encode_response(req_id, status, payload)
        if why is not None:  # ours or the request's: answered "error", keep serving
            self.api_counters["api_answers_unencodable"] += 1
            _log.warning("answered %.80r with an error: %s", req_id, why)
        return data

    async def handle_async(self, frame: list) -> tuple[str, Any]:
        """["add_replica", g], ["drop_replica", g], ["move_worker", g, from, to],
        ["admin", command, args] (start a job, multiraft.jobs)."""
        if frame[1] == "admin":
            if len(frame) != 4 or self.nursery is None:
                return protocol.ERROR, "bad admin request (or the node is stopping)"
            return await self.runner.start(frame[2], frame[3], self.nursery)
        try:
            return protocol.OK, await self.placement_op(frame[1], *frame[2:])
        except PlacementError as exc:
            return protocol.ERROR, str(exc)

    async def placement_op(self, op: str, *args: Any) -> dict:
        """Change this node's placement; PlacementError (a message) if refused."""
        def group(value: Any) -> int:
            if type(value) is not int or not 0 <= value < self.options.groups:
                raise PlacementError(f"no group {value!r:.40} (groups are 0..{self.options.groups - 1})")
            return value

        if op == "add_replica" and len(args) == 1:
            return await self._add_replica(group(args[0]))
        if op == "drop_replica" and len(args) == 1:
            return await self._drop_replica(group(args[0]))
        if op == "move_worker" and len(args) == 3:
            return await self._move_worker(group(args[0]), args[1], args[2])
        raise PlacementError(f"bad request {[op, *args]!r:.200}")

    async def _set_placement(self, placement: Placement) -> None:
        await trio.to_thread.run_sync(
            _atomic_write_json, self.options.data_dir / PLACEMENT_FILE, placement.to_plain()
        )
        self.placement = placement
        for w in self.workers:
            w.groups = placement.worker_groups(w.index)
        self._mark_dirty()

    async def _worker_group_op(self, index: int, kind: str, g: int, data: Any = None) -> dict | None:
        """Send ["add_group", g] (and friends) to worker `index`; its answer,
        or None if the worker is not running (it reads placement when it starts)."""
        w = self.workers[index]
        process = w.process
        if not w.up or process is None:
            return None
        event = trio.Event()
        box: dict = {}
        w.op_waiters[(kind, g)] = (event, box)
        frame = [kind, g] if data is None else [kind, g, data]
        try:
            async with w.send_lock:
                await process.stdin.send_all(protocol.encode(frame))
            with trio.move_on_after(GROUP_OP_TIMEOUT_S):
                await event.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return {"ok": False, "error": f"worker {index} exited"}
        finally:
            if w.op_waiters.get((kind, g), (None,))[0] is event:
                del w.op_waiters[(kind, g)]
        return box or {"ok": False, "error": f"worker {index} did not answer {kind} {g}"}

    async def _add_replica(self, g: int) -> dict:
        async with self._placement_lock:
            w = self.placement.group_worker.get(g)
            existed = w is not None
            if w is None:
                # A new incarnation (multiraft.replica): its id is persisted
                # before the worker creates it, and is never reused.
                w = self.placement.least_loaded_worker()
                await self._set_placement(self.placement.with_group(g, w))
                _log.info("group %d: new empty replica %s on worker %d", g, self.placement.replica_of(g), w)
            rid = self.placement.replica_of(g)
            result = await self._worker_group_op(w, "add_group", g, rid)
        if result is not None and not result.get("ok"):
            raise PlacementError(f"worker {w} could not create group {g}: {result.get('error')}")
        return {"worker": w, "existed": existed, "replica": rid}

    async def _drop_replica(self, g: int) -> dict:
        # Safety: never delete the data of a replica that is in the group's
        # config (a voter that forgets its log could make a committed entry
        # vanish). Ask the group's leader, now.
        try:
            st = await self.runner.leader_status(g, timeout_s=5.0)
        except Exception as exc:
            raise PlacementError(f"group {g}: cannot check its config now ({exc}); not deleting") from None
        if st.get("conf_change_pending"):
            # A membership change (maybe one naming us) is not applied yet:
            # the config the leader reports may be about to change.
            raise PlacementError(f"group {g}: a membership change is in progress; not deleting now (run it again)")
        members = set(st.get("voters") or ()) | set(st.get("learners") or ()) | set(st.get("voters_outgoing") or ())
        if self.node_id in members or st.get("node") == self.node_id:
            raise PlacementError(
                f"node {self.node_id} is still in group {g}'s config ({','.join(sorted(members))}): "
                f"remove it first (multiraft-admin remove-replica {g} {self.node_id})"
            )
        async with self._placement_lock:
            w = self.placement.group_worker.get(g)
            if w is None:
                return {"existed": False}
            rid = self.placement.replica_of(g)
            # The id is retired (tombstoned) before the data goes.
            await self._set_placement(self.placement.without_group(g))
            _log.info("group %d: deleting this node's replica %s (worker %d)", g, rid, w)
            result = await self._worker_group_op(w, "remove_group", g)
            if result is None:
                self.workers[w].pending_wipes.add(g)
        if result is not None and not result.get("ok"):
            raise PlacementError(f"worker {w} could not delete group {g}: {result.get('error')}")
        return {"existed": True, "worker": w}

    async def _wipe_pending(self, w: WorkerHandle) -> None:
        for g in sorted(w.pending_wipes):
            async with self._placement_lock:
                if g in w.groups:  # placed here again since: add_group wiped it
                    w.pending_wipes.discard(g)
                    continue
                result = await self._worker_group_op(w.index, "remove_group", g)
            if result is not None and result.get("ok"):
                w.pending_wipes.discard(g)

    async def _reconcile_worker(self, w: WorkerHandle, reported: dict) -> None:
        """A worker that became ready got its groups when it was spawned; a
        placement change made while it was starting (add_replica, drop_replica)
        found it not running and is delivered now, so that the worker hosts
        exactly the replicas the placement names (issue 13: a replica added
        to a starting node was never created)."""
        async with self._placement_lock:
            if not w.up:
                return
            have = {g: r for g, r in reported.items() if type(g) is int and isinstance(r, str)}
            want = self.placement.worker_replicas(w.index)
            for g, rid in sorted(want.items()):
                if have.get(g) != rid:
                    _log.info("group %d: worker %d started without replica %s: creating it", g, w.index, rid)
                    result = await self._worker_group_op(w.index, "add_group", g, rid)
                    if result is not None and not result.get("ok"):
                        _log.error("group %d: worker %d could not create %s: %s", g, w.index, rid, result.get("error"))
            for g in sorted(set(have) - set(want)):
                _log.info("group %d: worker %d holds a replica the placement no longer has: deleting it", g, w.index)
                result = await self._worker_group_op(w.index, "remove_group", g)
                if result is None or not result.get("ok"):
                    w.pending_wipes.add(g)

    async def _move_worker(self, g: int, source: Any, target: Any) -> dict:
        async with self._placement_lock:
            have = self.placement.group_worker.get(g)
            if have is None:
                raise PlacementError(f"node {self.node_id} holds no replica of group {g}")
            if have != source:
                if have == target:
                    return {"worker": target, "moved": False}
                raise PlacementError(f"group {g} is on worker {have}, not {source}")
            if type(target) is not int or not 0 <= target < self.options.workers or target == source:
                raise PlacementError(f"node {self.node_id} has no other worker {target!r}")
            if not (self.workers[source].up and self.workers[target].up):
                raise PlacementError(f"worker {source} or {target} of {self.node_id} is not running")
            exported = await self._worker_group_op(source, "export_group", g)
            if not exported or not exported.get("ok"):
                raise PlacementError(f"worker {source} could not hand over group {g}: {(exported or {}).get('error')}")
            imported = await self._worker_group_op(target, "import_group", g, exported["state"])
            if not imported or not imported.get("ok"):
                # put it back where it was (its log there is intact)
                back = await self._worker_group_op(source, "import_group", g, exported["state"])
                if not back or not back.get("ok"):
                    _log.error("group %d: could not put it back on worker %d: restarting the worker", g, source)
                    process = self.workers[source].process
                    if process is not None:
                        process.kill()
                raise PlacementError(f"worker {target} could not take group {g}: {(imported or {}).get('error')}")
            voters = self.placement.group_voters.get(g, [])
            rid = self.placement.replica_of(g)  # the same replica: same id
            await self._set_placement(self.placement.with_group(g, target, voters, rid))
            await self._worker_group_op(source, "remove_group", g)
            _log.info("group %d moved from worker %d to worker %d", g, source, target)
        return {"worker": target, "moved": True}

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        buf = protocol.FrameBuffer(frame_size_bytes_max=1 << 20, text_keys_only=True)
        send_lock = trio.Lock()
        try:
            while True:
                data = await stream.receive_some(1 << 16)
                if not data:
                    return
                buf.feed(data)
                out = bytearray()
                for frame in buf.frames():
                    req_id = frame[0]
                    if len(frame) > 1 and frame[1] in ASYNC_OPS and self.nursery is not None:
                        # answered when done, in any order (requests are pipelined)
                        self.nursery.start_soon(self._answer_later, stream, send_lock, frame)
                        continue
                    try:
                        status, payload = self.handle(frame)
                    except Exception as exc:  # a bug of ours: answer, keep serving
                        _log.exception("request %.200r failed", frame[:2])
                        status, payload = protocol.ERROR, f"internal error: {exc}"[:300]
                    out += self._encode_answer(req_id, status, payload)
                if out:
                    async with send_lock:
                        await stream.send_all(bytes(out))
        except protocol.ProtocolError as exc:
            self.api_counters["api_bad_frames"] += 1
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
            "replica_ids": self.placement.worker_replicas(w.index),
            "groups_total": o.groups,
            "tick_ms": o.tick_ms,
            "election_tick": o.election_tick,
            "heartbeat_tick": o.heartbeat_tick,
            "sync_on_write": o.sync_on_write,
            "snapshot_threshold_entries": o.snapshot_threshold_entries,
            "compact_lag_entries": o.compact_lag_entries,
            "lease_reads": o.lease_reads,
            "max_clock_drift_ms": o.max_clock_drift_ms,
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
        w.timing_sent = None
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
                raise rest from None  # the broken pipes are handled here; only the rest goes on
            _log.warning("worker %d: control pipe broke", w.index)
        finally:
            w.up = False
            w.status = {}
            for event, box in w.op_waiters.values():
                box.update({"ok": False, "error": f"worker {w.index} exited"})
                event.set()
            w.op_waiters.clear()
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
        async with w.send_lock:
            await process.stdin.send_all(protocol.encode(["config", self._worker_config(w)]))
        while True:
            if w.up and w.routing_sent != self.routing_version:
                version = self.routing_version
                async with w.send_lock:
                    await process.stdin.send_all(protocol.encode(["routing", self.routing]))
                w.routing_sent = version
                continue
            if w.up and w.timing_sent != self.timing_verdict:
                verdict = self.timing_verdict
                async with w.send_lock:
                    await process.stdin.send_all(
                        protocol.encode(["timing", {"ok": verdict[0], "why": verdict[1]}])
                    )
                w.timing_sent = verdict
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
            if w.pending_wipes and self.nursery is not None:
                self.nursery.start_soon(self._wipe_pending, w)
            reported = body.get("replicas") if isinstance(body, dict) else None
            if isinstance(reported, dict) and self.nursery is not None:
                self.nursery.start_soon(self._reconcile_worker, w, reported)
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
        elif kind == "group_op" and len(frame) >= 4:
            waiter = w.op_waiters.pop((frame[1], frame[2]), None)
            if waiter is not None and isinstance(frame[3], dict):
                waiter[1].update(frame[3])
                waiter[0].set()
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
        while not peer.retired:
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
                peer.members = placement.get("members") or {}
                peer.busy = {int(g): str(v) for g, v in (placement.get("busy") or {}).items()}
                peer.timing = placement.get("timing")
                peer.timing_seen = True
                self._check_timing()
                self._merge_members(peer.members)
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
        if conn is not None:
            conn.close()

    def _check_timing(self) -> None:
        """Lease reads on our workers only while every peer we reached
        announced our own timing (a peer never reached cannot have acked our
        heartbeats; one that comes up is checked at its first poll)."""
        from multiraft.nodeconfig import describe_timing

        mine = self.options.timing()
        bad = [
            f"{n} runs {describe_timing(p.timing)}"
            for n, p in sorted(self.peers.items())
            if not p.retired and p.timing_seen and p.timing != mine
        ]
        verdict = (not bad, "; ".join(bad) + f" (we run {describe_timing(mine)})" if bad else "")
        if verdict == self.timing_verdict:
            return
        if bad:
            _log.error("lease reads off on this node (served with ReadIndex): %s", verdict[1])
        else:
            _log.info("lease reads back on: every peer runs this node's timing")
        self.timing_verdict = verdict
        event, self._routing_changed = self._routing_changed, trio.Event()
        event.set()  # the worker writers send the verdict

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
                self.nursery = nursery
                nursery.start_soon(self._routing_loop)
                for w in self.workers:
                    nursery.start_soon(self._supervise, w)
                for peer in self.peers.values():
                    nursery.start_soon(self._poll_peer, peer, nursery)
                nursery.start_soon(trio.serve_listeners, self._serve_connection, listeners)
                if o.redis:
                    nursery.start_soon(self._supervise_resp)
                _log.info(
                    "node %s listening on %s: %d workers, %d of %d groups, replicas %d, data %s",
                    o.node_id, self.listen_address, o.workers, len(self.placement.group_worker),
                    o.groups, o.replicas, o.data_dir,
                )
                task_status.started(self)
        finally:
            self._stopping = True

    async def _supervise_resp(self) -> None:
        """`--redis HOST:PORT`: the RESP front-end (python -m multiraft.resp) as
        one more child, restarted when it exits. Its stdin is a pipe it watches,
        so it exits with this process however this process ends."""
        o = self.options
        cluster = [o.address] + [p.address for p in self.peers.values()]
        argv = [sys.executable, "-m", "multiraft.resp", "--listen", o.redis, "--cluster", ",".join(cluster),
                "--exit-on-stdin-eof", "--log-level", o.log_level]
        backoff = RESTART_BACKOFF_MIN_S
        while True:
            started = trio.current_time()
            process = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, env=_child_env(), preexec_fn=_child_setup
            )
            _log.info("redis front-end started on %s (pid %d)", o.redis, process.pid)
            try:
                await process.wait()
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        await process.stdin.aclose()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                    with trio.move_on_after(WORKER_STOP_TIMEOUT_S):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
            if trio.current_time() - started > RESTART_BACKOFF_RESET_S:
                backoff = RESTART_BACKOFF_MIN_S
            _log.warning("redis front-end exited (code %s); restarting in %.1fs", process.returncode, backoff)
            await trio.sleep(backoff)
            backoff = min(RESTART_BACKOFF_MAX_S, backoff * 2)

    def stop(self) -> None:
        """Stop the node: workers are shut down in order, then run() returns."""
        self._stopping = True
        if self._stop_scope is not None:
            self._stop_scope.cancel()


def _check_worker_ports(o: NodeOptions) -> None:
    from multiraft.nodeconfig import worker_client_port, worker_raft_port

    family = socket.AF_INET6 if ":" in o.listen_host else socket.AF_INET
    for i in range(o.workers):
        for what, port in (
            ("Raft", worker_raft_port(o.listen_port, i)),
            ("client", worker_client_port(o.listen_port, i)),
        ):
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
