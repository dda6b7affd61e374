"""The worker: a thin trio driver around the pure Raft core (DESIGN §7).

One `Worker` hosts many groups. `await nursery.start(worker.run)` recovers
them from the worker's own log and snapshot store, starts listening, and
returns `{"raft_url", "client_address", ...}` once it is serving. Everything
runs in one nursery:

- the raft transport (`multiraft.transport.Transport`, or any object with the
  same interface, e.g. `workers.memtransport.MemTransport` in tests);
- the **receive loop**: each batch from the transport is stepped into its
  groups (`RaftState.step`); messages for unknown groups are counted and dropped;
- **one ticker**: every `tick_ms` it ticks every group (never a timer per
  group) and expires client deadlines;
- the **raft loop** (persist + apply): whenever something happened, it
  proposes the writes queued since the last round (one `propose_many` per
  group), takes the Ready of every group that has one, sends the leaders'
  early messages, writes every group's hard state, entries and snapshots as
  **one storage batch on a worker thread (one write, one fsync)**, then sends
  the messages that needed that persistence (votes, acknowledgements: so
  followers acknowledge only after their fsync), applies committed entries to
  each group's KV state machine, answers waiting clients and reads whose
  index is applied, advances, and takes snapshots of groups whose log grew;
- the **client server** (TCP, multiraft.protocol channel 1): one task pair
  per connection; requests are handled synchronously into the groups' queues.

Only the raft loop calls ready()/advance() and the storage, so at most one
Ready per group is outstanding and persist rounds never overlap; the receive
loop, the ticker and the client handlers may step/tick/read meanwhile, as the
core allows.

Every queue is bounded: the transport's inbox and outboxes, the client
requests in flight (`limits.pending_requests_max`, beyond which clients get
"busy"), and each connection's unsent responses (reading stops until they
drain).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import random
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from multiraft import kv, protocol
from multiraft.raft.config import Config
from multiraft.raft.errors import Busy, LogDoesNotFollowSnapshot, NotLeader
from multiraft.raft.state import RaftState
from multiraft.raft.types import (
    Entry,
    EntryType,
    HardState,
    Message,
    ReadOnlyOption,
    Ready,
    Snapshot,
    StateRole,
)
from multiraft.replica import ReplicaIdError, check_replica_id, incarnation_of, node_of
from multiraft.wire import worker_address
from storage import GroupWrite, SegmentedLog, SnapshotStore, StorageError
from storage.recovery import recover_group

from . import membership
from .client_server import ClientServer, Connection
from .config import WorkerConfig, WorkerConfigError, parse_host_port
from .group import Group, Request
from .identity import IdentityError, load_identities, save_identities
from .requests import AdminRequest, BadRequest, PingRequest, ReadRequest, parse_request, write_payload

__all__ = ["Worker", "WorkerError", "RoutingError"]

_log = logging.getLogger("workers")

_NORMAL = int(EntryType.NORMAL)
_LEADER = StateRole.LEADER
_CTX = struct.Struct(">Q")

# The counters reported in every status frame (all start at 0).
STAT_NAMES = (
    "rounds",  # raft loop rounds that did something
    "persists",  # storage batches written
    "fsyncs",  # storage batches written with sync
    "persisted_groups",  # sum over persists of the groups in the batch
    "persisted_entries",  # sum over persists of the entries in the batch
    "persist_batch_groups_max",
    "persist_batch_entries_max",
    "persist_seconds_total",  # wall time spent in storage writes (threads)
    "readies",  # Readys handled
    "entries_applied",
    "messages_received",
    "messages_sent",
    "dropped_unknown_group",  # a peer's message for a group not hosted here
    "dropped_no_route",  # our message to a node the routing table does not place
    "dropped_retired_replica",  # a message to a retired incarnation of one of our replicas
    "dropped_from_retired_replica",  # a (delayed) message from a retired incarnation of a peer
    "dropped_send",  # the transport refused it (peer down, outbox full, ...)
    "proposals",  # entries proposed
    "proposal_batches",  # propose_many calls
    "proposal_batch_max",
    "client_connections",  # accepted, total
    "client_connections_refused",  # over client_connections_max
    "client_requests",
    "client_bad_frames",  # garbage or oversized frames (connection closed)
    "client_errors",  # malformed requests answered "error"
    "client_answers_unencodable",  # an answer cbor2 could not encode: "error" instead
    "client_busy",
    "client_not_leader",
    "client_no_group",
    "client_timeouts",
    "writes_ok",
    "writes_overwritten",  # our entry lost to another leader's: "not_leader"
    "writes_unknown",  # covered by an installed snapshot: "timeout"
    "reads_ok",
    "reads_failed_leadership",  # lost leadership before the read index was confirmed
    "reads_lease_expired",  # lease ran out before the answer: asked again by ReadIndex
    "snapshots_taken",
    "snapshots_installed",
    "routing_updates",
    "routing_errors",
    "recovery_repairs",  # groups whose log a mid-round crash left to finish at start
    "groups_refused",  # groups whose log does not follow their snapshot: failed, disk untouched
)


class WorkerError(Exception):
    """The worker cannot start or go on (storage, addresses): the environment's fault."""


class RoutingError(ValueError):
    """A routing table that does not have the documented shape (the sender's fault)."""


def _from_retired(incarnations: dict[str, int], sender: str) -> bool:
    """Is `sender` an older incarnation than the one its node now hosts?
    (Replica ids only grow, so an older one is retired: multiraft.replica.)"""
    current = incarnations.get(node_of(sender))
    if current is None:
        return False
    try:
        return incarnation_of(sender) < current
    except ReplicaIdError:
        return True


def _plain_entries(entries: tuple[Entry, ...]) -> tuple[Entry, ...]:
    """Entries whose `type` is a plain int, as storage requires.

    The core builds entries with EntryType members (an IntEnum), which storage
    refuses (`type(t) is int`); rebuild only the entries that need it."""
    if all(type(e.type) is int for e in entries):
        return entries
    return tuple(e if type(e.type) is int else Entry(e.term, e.index, int(e.type), e.data) for e in entries)


async def _run_in_thread(limiter: trio.CapacityLimiter, fn: Callable, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)


async def _run_inline(fn: Callable, *args: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return fn(*args)


class Worker:
    """One worker (see the module docstring).

    `transport`: a Transport-like object (default: a real nng Transport on
    config.raft_listen_url, created in run()). `io_inline=True` runs the
    storage calls in the trio thread instead of a worker thread (tests with a
    virtual clock, where a thread hop would let the clock jump).
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        transport: Any = None,
        io_inline: bool = False,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        # {group: replica id of its stored data} (workers/identity.py)
        self.identities: dict[int, str] = {}
        self.address = config.address
        self.limits = config.limits
        self.groups: dict[int, Group] = {}
        self.counters: collections.Counter[str] = collections.Counter({k: 0 for k in STAT_NAMES})
        self.transport = transport
        self._own_transport = transport is None
        self._io_inline = io_inline
        self._run_io: Callable[..., Awaitable[Any]] = _run_inline
        self.log: SegmentedLog | None = None
        self.snapshots: SnapshotStore | None = None
        self.client_address: str | None = None
        self.routing_version: int | None = None
        self._client_server: ClientServer | None = None
        self._nursery: trio.Nursery | None = None
        self._stopping = False

        self._dirty: set[int] = set()  # groups that may have a Ready
        self._proposing: set[int] = set()  # groups with queued proposals
        self._snapshotting: set[int] = set()  # groups with a snapshot to persist
        self._unsaved_hs: dict[int, HardState] = {}  # commit-only changes not yet written
        self._flush_hs_due = False
        self._storage_stats: dict = {}
        self._storage_stats_at = 0.0
        self._wake = trio.Event()
        self._pending = 0  # client requests in flight
        self._deadlines: collections.deque[Request] = collections.deque()
        self._ctx_seq = 0
        self._request_timeout = config.limits.request_timeout_ms / 1000.0
        self._tick_interval = config.tick_ms / 1000.0
        # Lease reads need a lease worth having, and every node running the
        # timing the lease assumes (the coordinator checks its peers' and
        # clears `timing_ok` on a mismatch: see set_timing_ok).
        self._lease_s = config.lease_s
        self.timing_ok = True
        if config.lease_reads and self._lease_s is None:
            _log.warning(
                "%s: lease reads served with ReadIndex: election timeout %d ms leaves no lease "
                "after max_clock_drift_ms %d and one tick",
                config.address, config.election_tick * config.tick_ms, config.max_clock_drift_ms,
            )
        # Placement changes (add/remove/export/import a group) waiting for the
        # raft loop, and the last routing table (applied to groups added later).
        self._group_ops: list = []
        self._routing_table: Any = None

    # ==== lifecycle ============================================================

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Recover, serve until cancelled (or stop()), then close the storage."""
        cfg = self.config
        limiter = trio.CapacityLimiter(cfg.storage_options().max_io_threads)
        if not self._io_inline:
            self._run_io = functools.partial(_run_in_thread, limiter)
        try:
            await self._open_storage()
            await self._run_io(self._reconcile_identities)
            state = await self._run_io(self._load_state)
            self._build_groups(state)
            if self.transport is None:
                self.transport = self._make_transport()
            host, port = parse_host_port("client_listen_address", cfg.client_listen_address)
            self._client_server = ClientServer(self, host, port)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.transport.run)
                self.client_address = await nursery.start(self._client_server.run)
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._raft_loop)
                self._dirty.update(self.groups)  # bootstrap entries, restored commits
                self._notify()
                task_status.started(self.ready_info())
        finally:
            self._nursery = None
            self._fail_all_pending()
            if self._own_transport and self.transport is not None:
                try:
                    self.transport.close()  # idempotent; for one that never ran
                except RuntimeError:
                    pass
            with trio.CancelScope(shield=True):
                await self._close_storage()

    def stop(self) -> None:
        """Shut down: cancel every task (an fsync in progress completes first),
        then run() closes the log (which syncs it) and returns."""
        self._stopping = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def ready_info(self) -> dict:
        """The payload of the control pipe's "ready" frame."""
        return {
            "raft_url": self.transport.listen_url,
            "client_address": self.client_address,
            "node_id": self.node_id,
            "worker_index": self.config.worker_index,
            "address": self.address,
            "pid": os.getpid(),
            "groups": sorted(self.groups),
            # {group: replica id}: the coordinator reconciles it with its placement
            "replicas": {g: grp.raft.id for g, grp in sorted(self.groups.items())},
        }

    def _make_transport(self) -> Any:
        from multiraft.transport import Transport

        cfg = self.config
        try:
            return Transport(
                self.address,
                cfg.raft_listen_url,
                outbox_messages_max=cfg.limits.transport_outbox_messages_max,
                batch_messages_max=cfg.limits.transport_batch_messages_max,
            )
        except Exception as exc:  # pynng raises its own types for bad URLs, ports in use
            raise WorkerError(f"cannot listen for peers on {cfg.raft_listen_url}: {exc}") from None

    async def _open_storage(self) -> None:
        opts = self.config.storage_options()

        def open_both() -> tuple[SegmentedLog, SnapshotStore]:
            log = SegmentedLog(opts)
            try:
                snaps = SnapshotStore(
                    opts.snapshot_dir(),
                    self.node_id,
                    verify_checksum=opts.verify_snapshot_checksum,
                    sync=opts.sync_on_write,
                    chunk_size=opts.snapshot_chunk_size,
                )
            except BaseException:
                log.close()
                raise
            return log, snaps

        try:
            self.log, self.snapshots = await self._run_io(open_both)
        except (StorageError, OSError, ValueError) as exc:
            raise WorkerError(f"cannot open the storage in {opts.base_dir}: {exc}") from None

    async def _close_storage(self) -> None:
        try:
            await self._run_io(self._flush_unsaved_hard_states)
        except StorageError as exc:
            _log.error("%s: saving the commit indexes failed: %s", self.address, exc)
        log, self.log = self.log, None
        if log is not None:
            try:
                await self._run_io(log.close)
            except StorageError as exc:
                _log.error("%s: closing the log failed: %s", self.address, exc)
        if self.snapshots is not None:
            self.snapshots.close()
            self.snapshots = None

    def _reconcile_identities(self) -> None:
        """Blocking: delete stored data of any group whose stored incarnation
        is not the one the coordinator placed here (it was retired while we
        were down or mid-change: workers/identity.py), then record ours."""
        cfg = self.config
        try:
            stored = load_identities(cfg.data_dir)
        except IdentityError as exc:
            raise WorkerError(str(exc)) from None
        if stored is None:  # before replica ids: every stored replica was incarnation 0
            stored = {g: self.node_id for g in cfg.groups}
        stale = []
        for gid in cfg.groups:
            rid = cfg.replica_id(gid)
            had = stored.get(gid)
            if had != rid:
                if had is not None:
                    _log.warning(
                        "%s: group %d: deleting the stored data of retired replica %s (this node now hosts %s)",
                        self.address, gid, had, rid,
                    )
                stale.append(gid)
        if stale:
            self._wipe_group_data(*stale)
        self.identities = {g: cfg.replica_id(g) for g in cfg.groups}
        save_identities(cfg.data_dir, self.identities, sync=cfg.sync_on_write)

    def _wipe_group_data(self, *gids: int) -> None:
        """Blocking: delete these groups' log records (one write, one fsync)
        and snapshots."""
        assert self.log is not None and self.snapshots is not None
        self.log.write([GroupWrite(gid, remove=True) for gid in gids], sync=self.config.sync_on_write)
        for gid in gids:
            self.snapshots.delete_snapshot(gid)

    def _load_state(self) -> dict[int, tuple | LogDoesNotFollowSnapshot]:
        """Blocking: each configured group's (hard state, snapshot, entries),
        after finishing what a crash in the middle of a round left undone
        (storage.recovery); or the refusal of a group whose log does not
        follow its snapshot (that group fails; the others start)."""
        log, snaps = self.log, self.snapshots
        assert log is not None and snaps is not None
        out: dict[int, tuple | LogDoesNotFollowSnapshot] = {}
        for gid in self.config.groups:
            try:
                rec = recover_group(log, snaps, gid, sync=self.config.sync_on_write)
            except LogDoesNotFollowSnapshot as exc:
                out[gid] = exc
                continue
            except StorageError as exc:
                raise WorkerError(f"group {gid}: cannot recover: {exc}") from None
            if rec.repaired is not None:
                self.counters["recovery_repairs"] += 1
            out[gid] = (rec.hard_state, rec.snapshot, rec.entries)
        return out

    def _raft_config(self, rid: str) -> Config:
        cfg = self.config
        return Config(
            id=rid,
            election_tick=cfg.election_tick,
            heartbeat_tick=cfg.heartbeat_tick,
            pre_vote=True,
            check_quorum=True,
            read_only=ReadOnlyOption.SAFE,
            # In seconds of trio.current_time(), which this driver passes in.
            lease_duration=self._lease_s,
        )

    @property
    def lease_reads(self) -> bool:
        """Are clients' lease reads served by the lease (else ReadIndex)?"""
        return self.config.lease_reads and self._lease_s is not None and self.timing_ok

    def set_timing_ok(self, ok: bool, why: str = "") -> None:
        """The coordinator's verdict on its peers' timing settings: lease
        reads are trusted only while every node runs the same tick, election
        timeout and clock-drift bound as this one."""
        if ok != self.timing_ok:
            if ok:
                _log.debug("%s: lease reads back on: every peer runs the same timing", self.address)
            else:
                _log.debug("%s: lease reads off (served with ReadIndex): %s", self.address, why)
        self.timing_ok = ok

    def _build_groups(self, state: dict[int, tuple]) -> None:
        cfg = self.config
        for gid, voters in cfg.groups.items():
            rid = cfg.replica_id(gid)
            rc = self._raft_config(rid)
            if cfg.seed is not None:
                rng = random.Random(cfg.seed * 1_000_003 + gid)
            else:
                rng = random.Random(os.urandom(16))
            loaded = state[gid]
            refused = loaded if isinstance(loaded, LogDoesNotFollowSnapshot) else None
            if refused is None:
                hs, snap, entries = loaded
                fresh = hs is None and snap is None and not entries
                try:
                    raft = RaftState(
                        rc,
                        rng,
                        hard_state=hs or HardState(),
                        snapshot=snap,
                        entries=entries,
                        # Initial voters are incarnation 0 (bare node ids) by definition.
                        initial_voters=tuple(voters) if fresh and rid in voters else None,
                        group=gid,
                    )
                except LogDoesNotFollowSnapshot as exc:
                    refused = exc
            if refused is not None:
                # A failed group, not a crash loop: an empty core that is never
                # driven (no Ready is taken from a failed group, so nothing of
                # it is written), reported with the reason until an operator
                # repairs or replaces the replica.
                g = self.groups[gid] = Group(gid, RaftState(rc, rng, group=gid), kv.KVStateMachine())
                self.counters["groups_refused"] += 1
                self._fail_group(g, str(refused))
                continue
            sm = kv.KVStateMachine()
            if snap is not None:
                try:
                    sm.restore(snap.data)
                except kv.SnapshotFormatError as exc:
                    raise WorkerError(f"group {gid}: the stored snapshot is unreadable: {exc}") from None
            g = self.groups[gid] = Group(gid, raft, sm)
            if hs is not None:
                g.saved_term, g.saved_vote = hs.term, hs.vote

    # ==== routing ==============================================================

    def set_routing(self, table: Any) -> None:
        """Learn where each peer replica of our groups lives (protocol's routing
        table) and connect to those workers. Raises RoutingError (changing
        nothing) if the table is malformed."""
        try:
            version, routes, wanted = self._parse_routing(table)
        except RoutingError:
            self.counters["routing_errors"] += 1
            raise
        for gid, (peers, incarnations) in routes.items():
            g = self.groups[gid]
            g.peers = peers
            g.peer_incarnations = incarnations
        transport = self.transport
        current = transport.peers()
        for addr, url in wanted.items():
            have = current.get(addr)
            if have == url:
                continue
            if have is not None:
                transport.remove_peer(addr)
            transport.add_peer(addr, url)
        for addr in current:
            if addr not in wanted:
                transport.remove_peer(addr)
        self.routing_version = version
        self._routing_table = table
        self.counters["routing_updates"] += 1

    def _parse_routing(
        self, table: Any
    ) -> tuple[Any, dict[int, tuple[dict[str, str], dict[str, int]]], dict[str, str]]:
        if not isinstance(table, dict):
            raise RoutingError("the routing table must be a map")
        nodes, groups = table.get("nodes"), table.get("groups")
        if not isinstance(nodes, dict) or not isinstance(groups, dict):
            raise RoutingError("the routing table needs 'nodes' and 'groups' maps")
        by_id = {}
        for k, v in groups.items():
            gid = k if type(k) is int else int(k) if isinstance(k, str) and k.isdigit() else None
            if gid is None:
                raise RoutingError(f"group id {k!r} is not an int")
            by_id[gid] = v
        routes: dict[int, tuple[dict[str, str], dict[str, int]]] = {}
        wanted: dict[str, str] = {}
        for gid in self.groups:
            entry = by_id.get(gid)
            if entry is None:
                routes[gid] = ({}, {})
                continue
            incarnations: dict[str, int] = {}
            rids = entry.get("replica_ids", {}) if isinstance(entry, dict) else {}
            if not isinstance(rids, dict):
                raise RoutingError(f"group {gid}: 'replica_ids' must be a map of node id -> replica id")
            for node, rid in rids.items():
                if not isinstance(node, str):
                    raise RoutingError(f"group {gid}: replica_ids: node id {node!r} is not a string")
                try:
                    number = incarnation_of(check_replica_id(rid, node))
                except ReplicaIdError as exc:
                    raise RoutingError(f"group {gid}: bad replica id of node {node!r}: {exc}") from None
                if number and node != self.node_id:
                    incarnations[node] = number
            replicas = entry.get("replicas") if isinstance(entry, dict) else None
            if not isinstance(replicas, dict):
                raise RoutingError(f"group {gid}: 'replicas' must be a map of node id -> worker index")
            peers = {}
            for node, widx in replicas.items():
                if node == self.node_id:
                    continue
                if not isinstance(node, str) or type(widx) is not int or widx < 0:
                    raise RoutingError(f"group {gid}: bad replica {node!r}: {widx!r}")
                info = nodes.get(node)
                workers = info.get("workers") if isinstance(info, dict) else None
                if not isinstance(workers, list) or widx >= len(workers):
                    raise RoutingError(f"group {gid}: node {node!r} has no worker {widx}")
                w = workers[widx]
                url = w.get("raft_url") if isinstance(w, dict) else None
                if not isinstance(url, str) or not url:
                    raise RoutingError(f"node {node!r} worker {widx}: no raft_url")
                addr = worker_address(node, widx)
                if wanted.setdefault(addr, url) != url:
                    raise RoutingError(f"worker {addr} has two raft_urls")
                peers[node] = addr
            routes[gid] = (peers, incarnations)
        return table.get("version"), routes, wanted

    # ==== the receive loop =====================================================

    async def _receive_loop(self) -> None:
        channel = self.transport.receive_channel
        groups = self.groups
        dirty = self._dirty
        counters = self.counters
        while True:
            try:
                batch = await channel.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            n = 0
            while True:
                for gid, msg in batch:
                    g = groups.get(gid)
                    if g is None or g.failed:
                        counters["dropped_unknown_group"] += 1
                        continue
                    if msg.to != g.raft.id:
                        # Addressed to a retired incarnation of our replica (an
                        # old config names it): it must never vote or ack again.
                        counters["dropped_retired_replica"] += 1
                        continue
                    if g.peer_incarnations and _from_retired(g.peer_incarnations, msg.frm):
                        counters["dropped_from_retired_replica"] += 1
                        continue
                    g.raft.step(msg)
                    dirty.add(gid)
                n += len(batch)
                try:
                    batch = channel.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            counters["messages_received"] += n
            self._notify()

    # ==== the ticker ===========================================================

    async def _ticker(self) -> None:
        interval = self._tick_interval
        groups = self.groups
        dirty = self._dirty
        election_tick = self.config.election_tick
        next_tick = trio.current_time() + interval
        ticks = 0
        while True:
            await trio.sleep_until(next_tick)
            ticks += 1
            if ticks % election_tick == 0 and self._unsaved_hs:
                self._flush_hs_due = True  # commit indexes reach the disk within ~1 s
            now = trio.current_time()
            # Ticks missed while the worker was busy: a leader catches up (its
            # lease must never outlast real time), a follower does not (a late
            # follower only waits longer before campaigning: safe).
            missed = int((now - next_tick) / interval)
            behind = min(missed, election_tick)
            next_tick += (missed + 1) * interval  # the next tick on the grid after now
            for gid, g in groups.items():
                raft = g.raft
                if g.failed:
                    continue
                if raft.role == _LEADER:
                    # The time dates the heartbeat round this tick may start
                    # (the lease runs from it); followers need no clock.
                    raft.tick(now)
                    for _ in range(behind):
                        raft.tick(now)
                    dirty.add(gid)  # heartbeats, most likely
                    continue
                raft.tick()
                if raft.role == _LEADER:
                    dirty.add(gid)  # a single voter elected itself
                elif raft.election_elapsed == 0:
                    # A tick changes a non-leader only when it campaigns (or
                    # steps down), which resets its election timer; other
                    # groups are skipped without building their Ready state.
                    dirty.add(gid)
            self._expire(now)
            self._notify()

    # ==== the raft loop ========================================================

    def _notify(self) -> None:
        self._wake.set()

    async def _raft_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._group_ops:
                await membership.run_group_ops(self)
            await self._round()
            # A round without I/O has no checkpoint: let the others run.
            await trio.lowlevel.checkpoint()

    async def _round(self) -> None:
        groups = self.groups
        counters = self.counters
        if self._proposing:
            self._flush_proposals()
        # The same set object lives on: other tasks hold references to it.
        dirty = list(self._dirty)
        self._dirty.clear()
        readies: list[tuple[Group, Ready]] = []
        for gid in dirty:
            g = groups[gid]
            if g.failed is None and g.raft.has_ready():
                readies.append((g, g.raft.ready()))
        if not readies and not self._snapshotting and not (self._flush_hs_due and self._unsaved_hs):
            return
        counters["rounds"] += 1
        counters["readies"] += len(readies)

        # 1. A leader's appends and heartbeats may leave before its own fsync.
        send = self._send
        for g, rd in readies:
            for m in rd.messages:
                send(g, m)

        # 2. Apply committed entries and answer their clients and reads now,
        #    before this round's fsync: committed entries are already durable
        #    on a quorum (a leader counts itself only once synced), so this is
        #    safe, and it keeps an unrelated fsync off every answer's path (as
        #    etcd does). The state machine lives in memory; a restart rebuilds
        #    it from the snapshot and the log. Snapshots are taken only after
        #    advance(), when this round's entries are durable.
        for g, rd in readies:
            self._apply(g, rd)
        readies_ok = readies
        if any(g.failed is not None for g, _ in readies):
            readies_ok = [(g, rd) for g, rd in readies if g.failed is None]

        # 3. One storage batch for every group: one write, one fsync.
        writes: dict[int, dict] = {}
        snaps: list[tuple[int, Snapshot]] = []
        sync = False
        n_entries = 0
        unsaved = self._unsaved_hs
        for g, rd in readies_ok:
            w: dict = {}
            gid = g.gid
            if rd.snapshot is not None:
                snap = rd.snapshot
                snaps.append((gid, snap))
                w["compact_to"] = (snap.meta.index, snap.meta.term)
                # The leader's snapshot supersedes any local one not yet saved.
                g.snapshot_to_save = None
                g.compact_to = None
                self._snapshotting.discard(gid)
            if rd.entries:
                w["entries"] = _plain_entries(rd.entries)
                n_entries += len(rd.entries)
            hs = rd.hard_state
            if hs is not None:
                if w or hs.term != g.saved_term or hs.vote != g.saved_vote:
                    w["hard_state"] = hs
                    g.saved_term, g.saved_vote = hs.term, hs.vote
                    unsaved.pop(gid, None)
                else:
                    # Only the commit index moved. Raft keeps it in volatile
                    # state (a restart learns it again), so it costs no I/O of
                    # its own: it rides along with the next write.
                    unsaved[gid] = hs
            if w:
                writes[gid] = w
            if rd.must_sync:
                sync = True
        if self._snapshotting:
            for gid in self._snapshotting:
                g = groups[gid]
                if g.snapshot_to_save is not None:
                    snaps.append((gid, g.snapshot_to_save))
                if g.compact_to is not None:
                    writes.setdefault(gid, {})["compact_to"] = g.compact_to
                g.snapshot_to_save = None
                g.compact_to = None
            self._snapshotting.clear()
        if unsaved and (writes or snaps or self._flush_hs_due):
            for gid, hs in unsaved.items():
                writes.setdefault(gid, {}).setdefault("hard_state", hs)
            unsaved.clear()
        self._flush_hs_due = False
        if writes or snaps:
            batch = [GroupWrite(gid, **w) for gid, w in writes.items()]
            sync = sync and self.config.sync_on_write
            await self._persist(snaps, batch, sync)
            counters["persists"] += 1
            if sync:
                counters["fsyncs"] += 1
            counters["persisted_groups"] += len(batch)
            counters["persisted_entries"] += n_entries
            if len(batch) > counters["persist_batch_groups_max"]:
                counters["persist_batch_groups_max"] = len(batch)
            if n_entries > counters["persist_batch_entries_max"]:
                counters["persist_batch_entries_max"] = n_entries

        # 4. Votes and acknowledgements only now that the batch is durable
        #    (so followers acknowledge only after their fsync); advance.
        for g, rd in readies_ok:
            for m in rd.messages_after_persist:
                send(g, m)
            g.raft.advance(rd)
            self._after_advance(g)
            if g.raft.has_ready():
                self._dirty.add(g.gid)
        if self._dirty or self._snapshotting:
            self._notify()

    async def _persist(self, snaps: list[tuple[int, Snapshot]], batch: list[GroupWrite], sync: bool) -> None:
        """Snapshots first (durable before the log compaction that relies on
        them), then the whole batch as one write and at most one fsync.

        Validation, encoding and the os.write run here, in the trio thread;
        only the fsync (and snapshot files) go to a worker thread. A thread
        running Python would hold the GIL that this thread needs back after
        every system call (up to the 5 ms switch interval each time); an
        fsync releases it."""
        log = self.log
        assert log is not None
        t0 = time.perf_counter()
        try:
            if snaps:
                await self._run_io(self._save_snapshots, snaps)
            if self._io_inline:
                if batch:
                    log.write(batch, sync=sync)
            else:
                if batch:
                    log.write(batch, sync=False)
                if sync:
                    await self._run_io(log.sync)
        except StorageError as exc:
            raise WorkerError(f"storage failed: {exc}") from None
        self.counters["persist_seconds_total"] += time.perf_counter() - t0
        if t0 - self._storage_stats_at > 1.0:
            # Refreshed here, between writes: stats() takes the log's lock,
            # which an fsync in progress holds.
            self._storage_stats_at = t0
            self._storage_stats = log.stats()

    def _save_snapshots(self, snaps: list[tuple[int, Snapshot]]) -> None:
        assert self.snapshots is not None
        for gid, snap in snaps:
            self.snapshots.save_snapshot(gid, snap)

    def _flush_unsaved_hard_states(self) -> None:
        """Blocking: write the deferred commit indexes (at shutdown)."""
        if self.log is not None and self._unsaved_hs:
            batch = [GroupWrite(gid, hard_state=hs) for gid, hs in self._unsaved_hs.items()]
            self._unsaved_hs.clear()
            self.log.write(batch, sync=self.config.sync_on_write)

    def _send(self, g: Group, m: Message) -> None:
        # Routes are by node; most replica ids are bare node ids (incarnation 0).
        peers = g.peers
        addr = peers.get(m.to) or peers.get(node_of(m.to))
        if addr is None:
            self.counters["dropped_no_route"] += 1
        elif self.transport.send(addr, g.gid, m):
            self.counters["messages_sent"] += 1
        else:
            self.counters["dropped_send"] += 1

    def _apply(self, g: Group, rd: Ready) -> None:
        """Restore a snapshot, apply committed entries, answer their writers,
        note read indexes, answer the reads now applied, fail the reads a lost
        leadership orphaned. Runs before the Ready is persisted (see _round)."""
        raft = g.raft
        counters = self.counters
        applied = raft.log.applied
        if rd.snapshot is not None:
            snap = rd.snapshot
            try:
                g.kv.restore(snap.data)
            except kv.SnapshotFormatError as exc:
                self._fail_group(g, f"the leader's snapshot at index {snap.meta.index} is unreadable: {exc}")
                return
            counters["snapshots_installed"] += 1
            applied = snap.meta.index
            # Writes whose entries the snapshot covers: applied or not, we
            # cannot tell (the client retries with the same seq: exactly once).
            for index in [i for i in g.waiters if i <= snap.meta.index]:
                counters["writes_unknown"] += 1
                self._respond(g.waiters.pop(index), protocol.TIMEOUT, None)
        if rd.committed_entries:
            sm = g.kv
            waiters = g.waiters
            for e in rd.committed_entries:
                result = None
                if e.type == _NORMAL and e.index > sm.applied_index:
                    result = sm.apply(e.index, e.data)
                if waiters:
                    req = waiters.pop(e.index, None)
                    if req is not None:
                        if req.term == e.term:
                            status, payload = write_payload(result)
                            counters["writes_ok"] += 1
                            self._respond(req, status, payload)
                        else:
                            counters["writes_overwritten"] += 1
                            self._respond(req, protocol.NOT_LEADER, raft.leader)
            counters["entries_applied"] += len(rd.committed_entries)
            applied = rd.committed_entries[-1].index
        if rd.read_states:
            reads = g.reads
            for rs in rd.read_states:
                req = reads.pop(rs.context, None)
                if req is not None and not req.done:
                    req.index = rs.index
                    req.lease_expiry = rs.lease_expiry
                    g.reads_indexed.append(req)
        if g.reads and (raft.role != _LEADER or raft.term != g.reads_term):
            # The core forgot these reads when it lost leadership.
            self._fail_reads(g)
        if g.reads_indexed:
            keep = []
            now = trio.current_time()
            for req in g.reads_indexed:
                if req.done:
                    continue
                if req.index > applied:
                    keep.append(req)
                elif req.lease_expiry is not None and now >= req.lease_expiry:
                    # The lease is judged when the read is answered, not when
                    # the ReadState was made: an apply batch, an fsync or a
                    # stalled process may lie in between.
                    self._reask_read(g, req, now)
                else:
                    self._serve_read(g, req)
            g.reads_indexed = keep

    def _reask_read(self, g: Group, req: Request, now: float) -> None:
        """Ask again for a lease read whose lease ran out: a heartbeat round."""
        self.counters["reads_lease_expired"] += 1
        raft = g.raft
        req.index = -1
        req.lease_expiry = None
        if raft.role != _LEADER or raft.term != g.reads_term:
            self.counters["reads_failed_leadership"] += 1
            self._respond(req, protocol.NOT_LEADER, raft.leader)
            return
        try:
            raft.read_index(req.ctx, lease=False, now=now)
        except NotLeader as exc:
            self._respond(req, protocol.NOT_LEADER, exc.leader)
            return
        except Busy:
            self._respond(req, protocol.BUSY, None)
            return
        g.reads[req.ctx] = req
        self._dirty.add(g.gid)

    def _fail_reads(self, g: Group) -> None:
        """Answer not_leader to every read still waiting for its read index."""
        reads, g.reads = g.reads, {}
        self.counters["reads_failed_leadership"] += len(reads)
        leader = g.raft.leader
        for req in reads.values():
            self._respond(req, protocol.NOT_LEADER, leader)

    def _after_advance(self, g: Group) -> None:
        raft = g.raft
        if raft.log.applied - g.last_snapshot_index() > self.config.snapshot_threshold_entries:
            self._take_snapshot(g)

    def _serve_read(self, g: Group, req: Request) -> None:
        q = req.query
        if type(q) is kv.Get:
            payload: Any = g.kv.get(q.key)
        elif type(q) is kv.ScanKeys:  # "keys": [keys, next start or None]
            r = g.kv.scan_keys(q.start, q.limit, prefix=q.prefix, bytes_max=self.limits.scan_bytes_max)
            payload = [list(r.keys), r.next]
        elif type(q) is kv.Count:
            payload = len(g.kv)
        else:
            assert isinstance(q, kv.Scan)
            # At most scan_bytes_max of keys and values (at least one pair):
            # a shorter answer than `limit` means "page on from the last key".
            budget = self.limits.scan_bytes_max
            payload = []
            for k, v in g.kv.scan(q.start, q.limit, prefix=q.prefix):
                budget -= len(k) + len(v)
                if budget < 0 and payload:
                    break
                payload.append([k, v])
        self.counters["reads_ok"] += 1
        self._respond(req, protocol.OK, payload)

    def _take_snapshot(self, g: Group) -> None:
        """Image the state machine at the applied index; the next round makes it
        durable and then compacts the log (keeping compact_lag_entries)."""
        raft = g.raft
        snap = raft.create_snapshot(g.kv.snapshot(), self.config.compact_lag_entries)
        g.snapshot_to_save = snap
        g.compact_to = (raft.log.snapshot_index, raft.log.snapshot_term)
        self._snapshotting.add(g.gid)
        self.counters["snapshots_taken"] += 1

    def _fail_group(self, g: Group, reason: str) -> None:
        _log.error("%s: group %d stopped: %s", self.address, g.gid, reason)
        g.failed = reason
        self._fail_group_requests(g, protocol.NOT_LEADER, None)

    def _fail_group_requests(self, g: Group, status: str, payload: Any) -> None:
        for req in g.proposals:
            self._respond(req, status, payload)
        for req in g.waiters.values():
            self._respond(req, status, payload)
        for req in g.reads.values():
            self._respond(req, status, payload)
        for req in g.reads_indexed:
            self._respond(req, status, payload)
        g.proposals = []
        g.waiters = {}
        g.reads = {}
        g.reads_indexed = []

    def _fail_all_pending(self) -> None:
        for g in self.groups.values():
            self._fail_group_requests(g, protocol.TIMEOUT, None)

    # ==== proposals ============================================================

    def _flush_proposals(self) -> None:
        counters = self.counters
        groups = self.groups
        for gid in self._proposing:
            g = groups[gid]
            reqs = [r for r in g.proposals if not r.done]
            g.proposals = []
            if not reqs or g.failed is not None:
                continue
            raft = g.raft
            try:
                first = raft.propose_many([r.data for r in reqs])
            except NotLeader as exc:
                counters["client_not_leader"] += len(reqs)
                for r in reqs:
                    self._respond(r, protocol.NOT_LEADER, exc.leader)
                continue
            except Busy:
                counters["client_busy"] += len(reqs)
                for r in reqs:
                    self._respond(r, protocol.BUSY, None)
                continue
            term = raft.term
            waiters = g.waiters
            for i, r in enumerate(reqs):
                index = first + i
                r.index = index
                r.term = term
                r.data = b""
                old = waiters.get(index)
                if old is not None:
                    # Our log was cut below this index: that entry is gone.
                    counters["writes_overwritten"] += 1
                    self._respond(old, protocol.NOT_LEADER, raft.leader)
                waiters[index] = r
            counters["proposals"] += len(reqs)
            counters["proposal_batches"] += 1
            if len(reqs) > counters["proposal_batch_max"]:
                counters["proposal_batch_max"] = len(reqs)
            self._dirty.add(gid)
        self._proposing.clear()

    # ==== client requests ======================================================

    def handle_request(self, conn: Connection, frame: list) -> None:
        """One decoded client frame (called by the client server; never blocks)."""
        counters = self.counters
        counters["client_requests"] += 1
        try:
            req = parse_request(frame, scan_items_max=self.limits.scan_items_max)
        except BadRequest as exc:
            counters["client_errors"] += 1
            conn.respond(exc.req_id, protocol.ERROR, exc.message)
            return
        if type(req) is PingRequest:
            conn.respond(req.req_id, protocol.OK, self.address)
            return
        if type(req) is AdminRequest:
            membership.handle_admin(self, conn, req)
            return
        g = self.groups.get(req.group)
        if g is None:
            counters["client_no_group"] += 1
            conn.respond(req.req_id, protocol.NO_GROUP, None)
            return
        raft = g.raft
        if g.failed is not None or raft.role != _LEADER:
            counters["client_not_leader"] += 1
            conn.respond(req.req_id, protocol.NOT_LEADER, None if g.failed else raft.leader)
            return
        if self._pending >= self.limits.pending_requests_max or self._stopping:
            counters["client_busy"] += 1
            conn.respond(req.req_id, protocol.BUSY, None)
            return
        r = Request(conn, req.req_id, trio.current_time() + self._request_timeout, g.gid)
        if type(req) is ReadRequest:
            if g.reads and g.reads_term != raft.term:
                self._fail_reads(g)  # from an earlier term of leadership
            g.reads_term = raft.term
            self._ctx_seq += 1
            ctx = _CTX.pack(self._ctx_seq)
            try:
                raft.read_index(ctx, lease=req.lease and self.lease_reads, now=trio.current_time())
            except NotLeader as exc:
                counters["client_not_leader"] += 1
                conn.respond(req.req_id, protocol.NOT_LEADER, exc.leader)
                return
            except Busy:
                counters["client_busy"] += 1
                conn.respond(req.req_id, protocol.BUSY, None)
                return
            r.ctx = ctx
            r.query = req.query
            g.reads[ctx] = r
            self._dirty.add(g.gid)
        else:
            try:
                r.data = kv.encode_command(req.command)
            except kv.KVCommandError as exc:
                counters["client_errors"] += 1
                conn.respond(req.req_id, protocol.ERROR, str(exc))
                return
            g.proposals.append(r)
            self._proposing.add(g.gid)
        self._pending += 1
        self._deadlines.append(r)
        # The caller (the connection's reader) calls notify() once per read.

    def _respond(self, req: Request, status: str, payload: Any) -> None:
        if req.done:
            return
        req.done = True
        self._pending -= 1
        req.conn.respond(req.req_id, status, payload)

    def _expire(self, now: float) -> None:
        dq = self._deadlines
        counters = self.counters
        while dq and dq[0].deadline <= now:
            req = dq.popleft()
            if req.done:
                continue
            g = self.groups[req.group]
            if req.ctx:
                g.reads.pop(req.ctx, None)
            elif req.index >= 0 and g.waiters.get(req.index) is req:
                del g.waiters[req.index]
            counters["client_timeouts"] += 1
            self._respond(req, protocol.TIMEOUT, None)
        # Answered requests stay queued until their deadline; keep that bounded.
        if len(dq) > 4 * self.limits.pending_requests_max + 1024:
            self._deadlines = collections.deque(r for r in dq if not r.done)

    # ==== observability ========================================================

    @property
    def pending_requests(self) -> int:
        return self._pending

    def status(self) -> dict[int, dict]:
        """{group id: group status} (multiraft.protocol's group status)."""
        return {gid: g.status() for gid, g in self.groups.items()}

    def stats(self) -> dict[str, Any]:
        """Worker counters, transport counters, storage counters."""
        out: dict[str, Any] = dict(self.counters)
        out["persist_seconds_total"] = round(out["persist_seconds_total"], 6)
        out["pending_requests"] = self._pending
        out["client_connections_open"] = self._client_server.open_connections if self._client_server else 0
        out["groups"] = len(self.groups)
        out["leaders"] = sum(1 for g in self.groups.values() if g.raft.role == _LEADER)
        out["routing_version"] = self.routing_version
        if self.transport is not None:
            out["transport"] = self.transport.stats()
        st = self._storage_stats
        out["storage"] = {
            k: st[k]
            for k in (
                "segments",
                "log_bytes",
                "writes",
                "syncs",
                "entries_written",
                "bytes_written",
                "segments_deleted",
            )
            if k in st
        }
        core: collections.Counter[str] = collections.Counter()
        for g in self.groups.values():
            core.update(g.raft.counters)
        out["raft"] = dict(core)
        return out

    async def group_op(self, op: str, gid: int, data: Any = None) -> dict:
        """Add, remove, export or import a group's replica (workers.membership),
        between two raft rounds. Returns {"ok": bool, "error": str|None, ...}."""
        return await membership.group_op(self, op, gid, data)

    def check_invariants(self) -> None:
        """For tests: every group's core invariants, and the request accounting."""
        n = 0
        for g in self.groups.values():
            g.raft.check_invariants()
            g.kv.check_invariants()
            n += sum(1 for r in g.proposals if not r.done)
            n += sum(1 for r in g.waiters.values() if not r.done)
            n += sum(1 for r in g.reads.values() if not r.done)
            n += sum(1 for r in g.reads_indexed if not r.done)
        assert n == self._pending, (n, self._pending)


__all__ += ["STAT_NAMES", "WorkerConfigError"]
