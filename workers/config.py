"""WorkerConfig: everything a worker process needs, as sent in the first control frame.

The coordinator sends ``["config", {...}]`` as the first frame on the worker's
stdin (see multiraft.protocol, channel 3). ``WorkerConfig.from_dict`` checks it
and raises ``WorkerConfigError`` (one readable line) for anything wrong, including
unknown keys, so that a typo never passes silently.

Keys (required ones first):

==========================  ===========  ==================================================
key                         default      meaning
==========================  ===========  ==================================================
node_id                     (required)   this node's id, e.g. "n1" (letters, digits, ``._-``)
worker_index                (required)   this worker's index on its node (0, 1, ...); its
                                         transport address is ``wire.worker_address(node_id,
                                         worker_index)``, e.g. "n1/w0"
data_dir                    (required)   this worker's own directory (``logs/`` and
                                         ``snapshots/`` inside); shared with no other process
raft_listen_url             (required)   where peers reach this worker's raft transport,
                                         ``tcp://host:port`` (port 0: any free port; the real
                                         URL is reported in ``ready``)
client_listen_address       (required)   ``host:port`` of the client server (port 0: any; the
                                         real address is reported in ``ready``)
groups                      (required)   ``{group id: [initial voter node ids]}``: the groups
                                         whose replica on this node lives on this worker. The
                                         voters are used only for a group with no stored state
                                         (and only if this node is one of them; otherwise the
                                         replica starts empty and waits for its leader;
                                         an empty list: a replica added by a membership
                                         change, which always starts empty).
                                         Group ids may be ints or decimal strings (JSON).
groups_total                (required)   the number of groups of the cluster; every group id
                                         must be below it
replica_ids                 {}           ``{group id: replica id}`` of this node's replica of
                                         each group (multiraft.replica: "n1", or "n1~3" for a
                                         later incarnation); a group not listed is the bare
                                         node id. Stored data of another incarnation is
                                         deleted at start (that replica was retired)
tick_ms                     100          one Raft tick, in milliseconds
election_tick               10           election timeout in ticks (randomised in
                                         [election_tick, 2 * election_tick))
heartbeat_tick              1            leader heartbeat interval in ticks (< election_tick)
sync_on_write               true         fsync each persist round. false is UNSAFE (a crash
                                         may lose acknowledged writes): benchmarks only
snapshot_threshold_entries  10000        take a snapshot when a group has applied this many
                                         entries since its last one
compact_lag_entries         1000         entries kept in the log behind a snapshot, so that
                                         slightly lagging followers catch up from the log
lease_reads                 false        honour read_mode "lease" (leader lease reads,
                                         thesis §6.4.1; relies on bounded clock drift). When
                                         false, "lease" reads are served with ReadIndex
max_clock_drift_ms          200          how far two nodes' clocks may drift apart within one
                                         election timeout; a lease read is served only while
                                         less than election timeout - this - one tick passed
                                         since the heartbeat round a quorum acknowledged was
                                         sent (by this process's monotonic clock). When that
                                         is <= 0, lease reads are served with ReadIndex
seed                        null         seed of the election-timeout randomness (null: from
                                         os.urandom); for reproducible tests only
limits                      {}           see ``Limits`` below
storage                     {}           extra ``storage.FileStorageOptions`` fields
                                         (max_segment_size, max_io_threads, batch_size,
                                         cache_entries_size, min_free_disk_space,
                                         verify_snapshot_checksum, rewrite_after_segments,
                                         snapshot_chunk_size)
==========================  ===========  ==================================================

``limits`` keys (all ints > 0):

===============================  ========  ===========================================
key                              default   meaning
===============================  ========  ===========================================
pending_requests_max             10000     client requests in flight in this worker
                                           (queued, proposed or waiting for a read);
                                           beyond it requests are answered "busy"
request_timeout_ms               5000      a request not answered by then gets "timeout"
client_connections_max           1024      more connections are closed at once
client_frame_bytes_max           4 MiB     a bigger client frame closes its connection
connection_output_bytes_max      4 MiB     a connection whose unsent responses exceed
                                           this is not read from until they drain
scan_items_max                   10000     a scan returns at most this many pairs
scan_bytes_max                   16 MiB    ... and at most this many bytes of keys and
                                           values (but at least one pair)
transport_outbox_messages_max    10000     raft messages queued per peer worker
transport_batch_messages_max     256       raft messages per transport frame
===============================  ========  ===========================================
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from multiraft.replica import ReplicaIdError, check_replica_id
from storage.options import FileStorageOptions

__all__ = ["Limits", "WorkerConfig", "WorkerConfigError"]

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,59}$")
_STORAGE_KEYS = frozenset(
    f.name for f in attrs.fields(FileStorageOptions) if f.name not in ("base_dir", "sync_on_write")
)


class WorkerConfigError(ValueError):
    """The worker configuration is invalid: the sender's (coordinator's) fault."""


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if type(value) is not int or value < minimum:
        raise WorkerConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise WorkerConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _check_node_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _NODE_ID.match(value):
        raise WorkerConfigError(
            f"{name} must be 1 to 60 letters, digits, '.', '_' or '-' "
            f"(not starting with a punctuation mark), got {value!r}"
        )
    return value


def parse_host_port(name: str, value: Any) -> tuple[str, int]:
    """'host:port' -> (host, port); WorkerConfigError if malformed. Port 0 is allowed."""
    if not isinstance(value, str) or ":" not in value:
        raise WorkerConfigError(f"{name} must be 'host:port', got {value!r}")
    host, _, port_s = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise WorkerConfigError(f"{name} must be 'host:port' with a port in 0..65535, got {value!r}")
    return host, int(port_s)


def _check_url(name: str, value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise WorkerConfigError(f"{name} must be a URL such as tcp://127.0.0.1:7101, got {value!r}")
    scheme, _, rest = value.partition("://")
    if scheme == "tcp":
        parse_host_port(name, rest)
    elif scheme not in ("ipc", "inproc", "mem"):
        raise WorkerConfigError(f"{name}: unsupported scheme {scheme!r} (use tcp://host:port)")
    return value


def _reject_unknown(where: str, given: dict, known) -> None:
    unknown = sorted(str(k) for k in given if k not in known)
    if unknown:
        raise WorkerConfigError(
            f"unknown {where} key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


@attrs.frozen
class Limits:
    """Bounds on everything that could grow with load (see the module docstring)."""

    pending_requests_max: int = 10_000
    request_timeout_ms: int = 5_000
    client_connections_max: int = 1_024
    client_frame_bytes_max: int = 4 << 20
    connection_output_bytes_max: int = 4 << 20
    scan_items_max: int = 10_000
    scan_bytes_max: int = 16 << 20
    transport_outbox_messages_max: int = 10_000
    transport_batch_messages_max: int = 256

    @classmethod
    def from_dict(cls, d: Any) -> Limits:
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise WorkerConfigError(f"limits must be a map, got {type(d).__name__}")
        known = {f.name for f in attrs.fields(cls)}
        _reject_unknown("limits", d, known)
        return cls(**{k: _check_int(f"limits.{k}", v) for k, v in d.items()})

    def to_dict(self) -> dict:
        return attrs.asdict(self)


@attrs.frozen
class WorkerConfig:
    """A worker's configuration (see the module docstring for every key)."""

    node_id: str
    worker_index: int
    data_dir: str
    raft_listen_url: str
    client_listen_address: str
    groups: dict[int, tuple[str, ...]]
    groups_total: int
    replica_ids: dict[int, str] = attrs.field(factory=dict)
    tick_ms: int = 100
    election_tick: int = 10
    heartbeat_tick: int = 1
    sync_on_write: bool = True
    snapshot_threshold_entries: int = 10_000
    compact_lag_entries: int = 1_000
    lease_reads: bool = False
    max_clock_drift_ms: int = 200
    seed: int | None = None
    limits: Limits = Limits()
    storage: dict = attrs.field(factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> WorkerConfig:
        """Build and validate; WorkerConfigError (one line) on anything wrong."""
        if not isinstance(d, dict):
            raise WorkerConfigError(f"the worker config must be a map, got {type(d).__name__}")
        known = {f.name for f in attrs.fields(cls)}
        _reject_unknown("config", d, known)
        required = [f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING]
        missing = [k for k in required if k not in d]
        if missing:
            raise WorkerConfigError(f"missing config key(s) {', '.join(missing)}")
        kw = dict(d)
        kw["node_id"] = _check_node_id("node_id", d["node_id"])
        kw["worker_index"] = _check_int("worker_index", d["worker_index"], 0)
        if not isinstance(d["data_dir"], str) or not d["data_dir"]:
            raise WorkerConfigError(f"data_dir must be a non-empty path, got {d['data_dir']!r}")
        kw["raft_listen_url"] = _check_url("raft_listen_url", d["raft_listen_url"])
        parse_host_port("client_listen_address", d["client_listen_address"])
        total = kw["groups_total"] = _check_int("groups_total", d["groups_total"])
        kw["groups"] = _parse_groups(d["groups"], total)
        kw["replica_ids"] = _parse_replica_ids(d.get("replica_ids") or {}, kw["groups"], kw["node_id"])
        for name in ("tick_ms", "election_tick", "heartbeat_tick", "snapshot_threshold_entries"):
            if name in d:
                _check_int(name, d[name])
        if "compact_lag_entries" in d:
            _check_int("compact_lag_entries", d["compact_lag_entries"], 0)
        if "max_clock_drift_ms" in d:
            _check_int("max_clock_drift_ms", d["max_clock_drift_ms"], 0)
        for name in ("sync_on_write", "lease_reads"):
            if name in d:
                _check_bool(name, d[name])
        if d.get("seed") is not None:
            _check_int("seed", d["seed"], 0)
        if "election_tick" in d or "heartbeat_tick" in d:
            if kw.get("heartbeat_tick", 1) >= kw.get("election_tick", 10):
                raise WorkerConfigError("heartbeat_tick must be smaller than election_tick")
        kw["limits"] = Limits.from_dict(d.get("limits"))
        st = d.get("storage") or {}
        if not isinstance(st, dict):
            raise WorkerConfigError(f"storage must be a map, got {type(st).__name__}")
        _reject_unknown("storage", st, _STORAGE_KEYS)
        kw["storage"] = dict(st)
        cfg = cls(**kw)
        cfg.storage_options()  # validate the storage fields now
        return cfg

    def to_dict(self) -> dict:
        """The plain form (round-trips through from_dict)."""
        d = attrs.asdict(self, recurse=False)
        d["groups"] = {g: list(v) for g, v in self.groups.items()}
        d["replica_ids"] = dict(self.replica_ids)
        d["limits"] = self.limits.to_dict()
        d["storage"] = dict(self.storage)
        return d

    @property
    def lease_s(self) -> float | None:
        """The leader lease, in seconds of the monotonic clock: election
        timeout - max clock drift - one tick (the tick: a follower may hear a
        heartbeat just before its tick). None: too short to be worth it."""
        ms = self.election_tick * self.tick_ms - self.max_clock_drift_ms - self.tick_ms
        return ms / 1000.0 if ms > 0 else None

    @property
    def address(self) -> str:
        """This worker's transport address, "n1/w0" (wire.worker_address)."""
        return f"{self.node_id}/w{self.worker_index}"

    def replica_id(self, g: int) -> str:
        """This node's replica id of group g (multiraft.replica)."""
        return self.replica_ids.get(g, self.node_id)

    def storage_options(self) -> FileStorageOptions:
        try:
            return FileStorageOptions(
                base_dir=self.data_dir, sync_on_write=self.sync_on_write, **self.storage
            )
        except (TypeError, ValueError) as exc:
            raise WorkerConfigError(f"storage: {exc}") from None


def _parse_groups(value: Any, total: int) -> dict[int, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise WorkerConfigError(f"groups must be a map of group id -> [voter node ids], got {type(value).__name__}")
    out: dict[int, tuple[str, ...]] = {}
    for key, voters in value.items():
        if type(key) is int:
            g = key
        elif isinstance(key, str) and key.isdigit():
            g = int(key)
        else:
            raise WorkerConfigError(f"group ids must be ints, got {key!r}")
        if not 0 <= g < total:
            raise WorkerConfigError(f"group {g} is outside 0..{total - 1} (groups_total {total})")
        if g in out:
            raise WorkerConfigError(f"group {g} is listed twice")
        if not isinstance(voters, (list, tuple)):
            raise WorkerConfigError(f"group {g}: initial voters must be a list of node ids")
        vs = tuple(_check_node_id(f"group {g} voter", v) for v in voters)
        if len(set(vs)) != len(vs):
            raise WorkerConfigError(f"group {g}: initial voters listed twice: {list(vs)}")
        out[g] = vs
    return out


def _parse_replica_ids(value: Any, groups: dict[int, tuple[str, ...]], node_id: str) -> dict[int, str]:
    if not isinstance(value, dict):
        raise WorkerConfigError(f"replica_ids must be a map of group id -> replica id, got {type(value).__name__}")
    out: dict[int, str] = {}
    for key, rid in value.items():
        g = key if type(key) is int else int(key) if isinstance(key, str) and key.isdigit() else None
        if g is None or g not in groups:
            raise WorkerConfigError(f"replica_ids: group {key!r} is not one of this worker's groups")
        try:
            out[g] = check_replica_id(rid, node_id)
        except ReplicaIdError as exc:
            raise WorkerConfigError(f"replica_ids: group {g}: {exc}") from None
    return out
