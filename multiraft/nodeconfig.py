"""The options of one node (`multiraft node`): defaults, TOML file, flags, data dir.

Where a value comes from, lowest priority first:

1. built-in defaults (`multiraft node` alone is a one-node cluster in
   ./multiraft-data/n1 on 127.0.0.1:7100 with 64 groups, replicas 1);
2. the TOML file given with ``--config`` (same names as the flags, with ``_``
   or ``-``; ``peers`` may be a table ``{n1 = "127.0.0.1:7100", ...}`` or the
   flag's string);
3. the command-line flags;
4. for the cluster *layout* (node id, peers, workers, groups, replicas) the
   data directory's cluster.json, when it exists: an option left unset takes
   the stored value, an option set to a different value is an error (a node
   cannot silently change the layout its data was written with).

Every problem is a `ConfigError` with a one-line message for the operator.

Ports (see docs/operations.md): a node listening on HOST:P uses P (coordinator:
admin and client bootstrap), P+1+i (worker i's Raft transport, nng) and P+51+i
(worker i's client port), so a node has at most 49 workers and two nodes on one
host need listen ports at least 100 apart.
"""

from __future__ import annotations

import os
import re
import tomllib
from itertools import pairwise
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "ConfigError",
    "NodeOptions",
    "RawOptions",
    "WORKERS_MAX",
    "RAFT_PORT_OFFSET",
    "CLIENT_PORT_OFFSET",
    "PORTS_PER_NODE",
    "parse_address",
    "parse_peers",
    "parse_cluster",
    "load_toml",
    "resolve",
    "data_dir_of",
    "format_address",
    "check_node_id",
    "worker_raft_port",
    "worker_client_port",
]

WORKERS_MAX = 49
RAFT_PORT_OFFSET = 1  # worker i: P + 1 + i
CLIENT_PORT_OFFSET = 51  # worker i: P + 51 + i
PORTS_PER_NODE = 100  # P .. P+99 belong to the node

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7100
DEFAULT_NODE_ID = "n1"
DEFAULT_WORKERS = 2

# Conservative: clock rates drift by well under 0.1 %; this allows 20 % of
# the default election timeout.
DEFAULT_MAX_CLOCK_DRIFT_MS = 200
DEFAULT_GROUPS = 64
DEFAULT_REPLICAS_MAX = 3
DEFAULT_DATA_ROOT = "multiraft-data"

_NODE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class ConfigError(Exception):
    """An operator mistake in options, files or the data directory (one line)."""


def worker_raft_port(listen_port: int, worker_index: int) -> int:
    return listen_port + RAFT_PORT_OFFSET + worker_index


def worker_client_port(listen_port: int, worker_index: int) -> int:
    return listen_port + CLIENT_PORT_OFFSET + worker_index


# ---------------------------------------------------------------------------
# Parsing helpers (also used by the client and the CLIs)


def parse_address(text: str, *, what: str = "address") -> tuple[str, int]:
    """"host:port" -> (host, port). IPv6 hosts go in brackets: "[::1]:7100"."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a string HOST:PORT, not {text!r}")
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"malformed {what} {text!r}: expected [HOST]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(f"malformed {what} {text!r}: expected HOST:PORT")
        if ":" in host:
            raise ConfigError(f"malformed {what} {text!r}: put IPv6 hosts in brackets, [HOST]:PORT")
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"malformed {what} {text!r}: empty or invalid host")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"malformed {what} {text!r}: port must be 1..65535")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_node_id(node_id: Any) -> str:
    if not isinstance(node_id, str) or not _NODE_ID.match(node_id):
        raise ConfigError(
            f"invalid node id {node_id!r}: use 1-32 letters, digits, '_', '.' or '-'"
        )
    return node_id


def parse_peers(value: Any) -> dict[str, tuple[str, int]]:
    """"n1=h:p,n2=h:p" (or a TOML table {n1 = "h:p"}) -> {id: (host, port)}, sorted by id."""
    items: list[tuple[str, str]] = []
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, str):
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            node, sep, addr = part.partition("=")
            if not sep:
                raise ConfigError(f"malformed peer {part!r}: expected NODE_ID=HOST:PORT")
            items.append((node.strip(), addr.strip()))
    else:
        raise ConfigError(f"peers must be NODE_ID=HOST:PORT,... not {value!r}")
    if not items:
        raise ConfigError("peers is empty: expected NODE_ID=HOST:PORT,...")
    peers: dict[str, tuple[str, int]] = {}
    for node, addr in items:
        check_node_id(node)
        if node in peers:
            raise ConfigError(f"peer {node} is listed twice")
        peers[node] = parse_address(addr, what=f"address of peer {node}")
    return dict(sorted(peers.items()))


def parse_cluster(text: str | None) -> list[tuple[str, int]]:
    """--cluster "h:p[,h:p...]" (default: $MULTIRAFT_CLUSTER or 127.0.0.1:7100)."""
    if text is None:
        text = os.environ.get("MULTIRAFT_CLUSTER") or f"{DEFAULT_HOST}:{DEFAULT_PORT}"
    out = [parse_address(p, what="cluster address") for p in text.split(",") if p.strip()]
    if not out:
        raise ConfigError("--cluster is empty: expected HOST:PORT[,HOST:PORT...]")
    return out


# ---------------------------------------------------------------------------
# Raw (unresolved) options


def _opt(default: Any = None) -> Any:
    return attrs.field(default=default)


@attrs.define
class RawOptions:
    """Options as given (None = not given). See `resolve`."""

    node_id: str | None = _opt()
    listen: str | None = _opt()
    peers: Any = _opt()
    data_dir: str | None = _opt()
    workers: int | None = _opt()
    groups: int | None = _opt()
    replicas: int | None = _opt()
    tick_ms: int | None = _opt()
    election_tick: int | None = _opt()
    heartbeat_tick: int | None = _opt()
    sync_on_write: bool | None = _opt()
    snapshot_threshold_entries: int | None = _opt()
    compact_lag_entries: int | None = _opt()
    poll_interval_ms: int | None = _opt()
    log_level: str | None = _opt()
    lease_reads: bool | None = _opt()
    max_clock_drift_ms: int | None = _opt()
    # HOST:PORT of a coordinator of a running cluster: join it as an empty
    # node (first start only; see multiraft.coordinator.prepare_node).
    join: str | None = _opt()
    # HOST:PORT: serve the Redis protocol there (multiraft.resp, a child process).
    redis: str | None = _opt()

    def merged_over(self, base: RawOptions) -> RawOptions:
        """self's set values over base's."""
        values = {}
        for field in attrs.fields(RawOptions):
            mine = getattr(self, field.name)
            values[field.name] = mine if mine is not None else getattr(base, field.name)
        return RawOptions(**values)


_INT_FIELDS = {
    "workers", "groups", "replicas", "tick_ms", "election_tick", "heartbeat_tick",
    "snapshot_threshold_entries", "compact_lag_entries", "poll_interval_ms",
    "max_clock_drift_ms",
}
_STR_FIELDS = {"node_id", "listen", "data_dir", "log_level", "join", "redis"}


def load_toml(path: str | os.PathLike) -> RawOptions:
    """Read a node's TOML file: the flags' names, as top-level keys."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    known = {f.name for f in attrs.fields(RawOptions)}
    values: dict[str, Any] = {}
    for key, value in doc.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"config file {str(path)!r}: unknown option {key!r}")
        if name in _INT_FIELDS and (type(value) is not int):
            raise ConfigError(f"config file {str(path)!r}: {key} must be an integer, not {value!r}")
        if name in _STR_FIELDS and not isinstance(value, str):
            raise ConfigError(f"config file {str(path)!r}: {key} must be a string, not {value!r}")
        if name in ("sync_on_write", "lease_reads") and type(value) is not bool:
            raise ConfigError(f"config file {str(path)!r}: {key} must be true or false")
        values[name] = value
    return RawOptions(**values)


# ---------------------------------------------------------------------------
# Resolved options


@attrs.frozen
class NodeOptions:
    node_id: str
    listen_host: str
    listen_port: int
    peers: dict[str, tuple[str, int]]  # every node of the cluster, sorted by id
    data_dir: Path
    workers: int
    groups: int
    replicas: int
    tick_ms: int = 100
    election_tick: int = 10
    heartbeat_tick: int = 2
    sync_on_write: bool = True
    snapshot_threshold_entries: int = 10_000
    compact_lag_entries: int = 1_000
    poll_interval_ms: int = 500
    log_level: str = "info"
    # Honour clients' lease reads (read_mode "lease"); off: they get ReadIndex.
    lease_reads: bool = True
    # How far two nodes' clocks may drift apart within an election timeout:
    # the lease is election timeout - this - one tick (see lease_timing).
    max_clock_drift_ms: int = DEFAULT_MAX_CLOCK_DRIFT_MS
    # The cluster's first nodes, when this node joined later (`--join`): the
    # layout every node agrees on. None: this node is one of them (= peers).
    bootstrap: dict[str, tuple[str, int]] | None = None
    # Where the RESP front-end listens (`--redis HOST:PORT`); None: no front-end.
    redis: str | None = None

    @property
    def advertise_host(self) -> str:
        """The host the other nodes and the clients use for this node."""
        return self.peers[self.node_id][0]

    @property
    def address(self) -> str:
        return format_address(self.advertise_host, self.listen_port)

    def worker_raft_url(self, index: int, *, advertised: bool = True) -> str:
        host = self.advertise_host if advertised else self.listen_host
        return f"tcp://{format_address(host, worker_raft_port(self.listen_port, index))}"

    def worker_client_address(self, index: int, *, advertised: bool = True) -> str:
        host = self.advertise_host if advertised else self.listen_host
        return format_address(host, worker_client_port(self.listen_port, index))

    def timing(self) -> dict:
        """The timing the leader lease assumes every node runs."""
        return lease_timing(self.tick_ms, self.election_tick, self.max_clock_drift_ms)

    def cluster_layout(self) -> dict:
        """What every node of the cluster must agree on."""
        nodes = self.bootstrap if self.bootstrap is not None else self.peers
        return {
            "nodes": {n: format_address(h, p) for n, (h, p) in nodes.items()},
            "groups": self.groups,
            "replicas": self.replicas,
        }


_LEVELS = {"debug", "info", "warning", "error"}


def lease_timing(tick_ms: int, election_tick: int, max_clock_drift_ms: int) -> dict:
    """What a node announces to its peers (and a joining node to the
    cluster): a lease is safe only if every node runs these same values
    (workers always run CheckQuorum, which the lease needs)."""
    return {
        "tick_ms": tick_ms,
        "election_tick": election_tick,
        "max_clock_drift_ms": max_clock_drift_ms,
        "check_quorum": True,
    }


def describe_timing(t: Any) -> str:
    if not isinstance(t, dict):
        return "no timing announced (an older release?)"
    return " ".join(f"{k}={t.get(k)}" for k in ("tick_ms", "election_tick", "max_clock_drift_ms", "check_quorum"))


def _positive(name: str, value: int, minimum: int = 1, maximum: int | None = None) -> int:
    if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"--{name.replace('_', '-')} must be an integer {bound}, not {value!r}")
    return value


def data_dir_of(raw: RawOptions, *, cwd: Path | None = None) -> Path:
    """Where the node's data lives: --data-dir, or ./multiraft-data/NODE_ID."""
    if raw.data_dir is not None:
        data_dir = Path(raw.data_dir).expanduser()
    else:
        data_dir = Path(DEFAULT_DATA_ROOT) / check_node_id(raw.node_id or DEFAULT_NODE_ID)
    if not data_dir.is_absolute():
        data_dir = (cwd or Path.cwd()) / data_dir
    return data_dir


def resolve(raw: RawOptions, stored: dict | None = None, *, cwd: Path | None = None) -> NodeOptions:
    """Apply defaults and checks to `raw`. `stored` is the data dir's cluster.json
    (see `load_stored` in multiraft.coordinator) or None for a new node."""
    node_id = raw.node_id
    if node_id is None and stored is not None:
        node_id = stored["node_id"]
    node_id = check_node_id(node_id or DEFAULT_NODE_ID)

    peers = parse_peers(raw.peers) if raw.peers is not None else None
    listen = parse_address(raw.listen, what="--listen address") if raw.listen is not None else None
    bootstrap = None

    if stored is not None and stored.get("joined"):
        # A node that joined a running cluster: the first nodes are the
        # layout, plus this node at the address it joined with.
        if node_id != stored["node_id"]:
            raise ConfigError(f"the data directory belongs to node {stored['node_id']}, not {node_id}")
        if peers is not None:
            raise ConfigError("this node joined its cluster (--join): --peers does not apply to it")
        bootstrap = {n: parse_address(a) for n, a in stored["cluster"]["nodes"].items()}
        peers = dict(sorted({**bootstrap, node_id: parse_address(stored["joined"]["address"])}.items()))
        stored = {
            **stored,
            "cluster": {**stored["cluster"], "nodes": {n: format_address(h, p) for n, (h, p) in peers.items()}},
        }
    if stored is not None:
        if node_id != stored["node_id"]:
            raise ConfigError(
                f"the data directory belongs to node {stored['node_id']}, not {node_id}"
            )
        stored_peers = {n: parse_address(a) for n, a in stored["cluster"]["nodes"].items()}
        if peers is not None and peers != stored_peers:
            raise ConfigError(
                "--peers differs from the cluster recorded in the data directory: "
                + ",".join(f"{n}={a}" for n, a in stored["cluster"]["nodes"].items())
            )
        peers = stored_peers
        for name, key in (("workers", "workers"), ("groups", "groups"), ("replicas", "replicas")):
            given = getattr(raw, name)
            have = stored["workers"] if key == "workers" else stored["cluster"][key]
            if given is not None and given != have:
                raise ConfigError(
                    f"the data directory was created with --{name} {have}; "
                    f"this run asks for --{name} {given} (changing it is not supported)"
                )

    if peers is None:
        host, port = listen or (DEFAULT_HOST, DEFAULT_PORT)
        peers = {node_id: (host, port)}
    if node_id not in peers:
        raise ConfigError(f"--peers must list this node ({node_id}), e.g. {node_id}=HOST:PORT")
    if listen is None:
        listen = peers[node_id]
    elif listen[1] != peers[node_id][1]:
        raise ConfigError(
            f"--listen port {listen[1]} differs from this node's port in --peers ({peers[node_id][1]})"
        )

    workers = raw.workers if raw.workers is not None else (stored["workers"] if stored else DEFAULT_WORKERS)
    _positive("workers", workers, 1, WORKERS_MAX)
    groups = raw.groups if raw.groups is not None else (stored["cluster"]["groups"] if stored else DEFAULT_GROUPS)
    _positive("groups", groups, 1, 1_000_000)
    replicas = raw.replicas
    if replicas is None:
        replicas = stored["cluster"]["replicas"] if stored else min(DEFAULT_REPLICAS_MAX, len(peers))
    _positive("replicas", replicas, 1)
    if replicas > len(peers):
        raise ConfigError(f"--replicas {replicas} needs at least {replicas} nodes in --peers, not {len(peers)}")

    # Every node owns ports P .. P+99 on its host: they must not overlap.
    by_host: dict[str, list[tuple[int, str]]] = {}
    for n, (h, p) in peers.items():
        if p + PORTS_PER_NODE - 1 > 65535:
            raise ConfigError(f"port of {n} ({p}) is too high: a node uses ports P..P+99 (at most 65436)")
        by_host.setdefault(h, []).append((p, n))
    for h, ports in by_host.items():
        ports.sort()
        for (p1, n1), (p2, n2) in pairwise(ports):
            if p2 - p1 < PORTS_PER_NODE:
                raise ConfigError(
                    f"nodes {n1} and {n2} on {h} are {p2 - p1} ports apart: a node uses "
                    f"ports P..P+99, so put them at least {PORTS_PER_NODE} apart"
                )

    data_dir = data_dir_of(attrs.evolve(raw, node_id=node_id), cwd=cwd)

    tick_ms = _positive("tick_ms", raw.tick_ms if raw.tick_ms is not None else 100, 1, 60_000)
    election_tick = _positive("election_tick", raw.election_tick if raw.election_tick is not None else 10, 2)
    heartbeat_tick = _positive("heartbeat_tick", raw.heartbeat_tick if raw.heartbeat_tick is not None else 2, 1)
    if heartbeat_tick >= election_tick:
        raise ConfigError("--heartbeat-tick must be smaller than --election-tick")
    snap = _positive(
        "snapshot_threshold_entries",
        raw.snapshot_threshold_entries if raw.snapshot_threshold_entries is not None else 10_000,
    )
    lag = _positive(
        "compact_lag_entries",
        raw.compact_lag_entries if raw.compact_lag_entries is not None else 1_000,
        0,
    )
    drift = _positive(
        "max_clock_drift_ms",
        raw.max_clock_drift_ms if raw.max_clock_drift_ms is not None else DEFAULT_MAX_CLOCK_DRIFT_MS,
        0,
        3_600_000,
    )
    poll = _positive("poll_interval_ms", raw.poll_interval_ms if raw.poll_interval_ms is not None else 500, 10)
    level = (raw.log_level or "info").lower()
    if level not in _LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(sorted(_LEVELS))}, not {raw.log_level!r}")
    return NodeOptions(
        node_id=node_id,
        listen_host=listen[0],
        listen_port=listen[1],
        peers=peers,
        data_dir=data_dir,
        workers=workers,
        groups=groups,
        replicas=replicas,
        tick_ms=tick_ms,
        election_tick=election_tick,
        heartbeat_tick=heartbeat_tick,
        sync_on_write=True if raw.sync_on_write is None else bool(raw.sync_on_write),
        snapshot_threshold_entries=snap,
        compact_lag_entries=lag,
        poll_interval_ms=poll,
        log_level=level,
        lease_reads=True if raw.lease_reads is None else bool(raw.lease_reads),
        max_clock_drift_ms=drift,
        bootstrap=bootstrap,
        redis=format_address(*parse_address(raw.redis, what="--redis address")) if raw.redis is not None else None,
    )
