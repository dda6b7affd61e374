"""Membership and placement inside a worker (multiraft-admin, docs/operations.md).

Two kinds of requests reach a worker:

- on the client port (multiraft.protocol channel 1), from the coordinators:
  ``conf_change`` (propose a membership change at the group's leader; the
  answer carries the entry's index and term, and the coordinator watches
  ``group_status`` until it is applied), ``transfer_leader`` and
  ``group_status`` (the replica's status, with the leader's progress of
  every peer: the admin's "caught up" test);
- on the control pipe (channel 3), from the worker's own coordinator, which
  owns the node's placement: ``add_group`` (an empty replica, which learns
  everything from its leader), ``remove_group`` (stop it and delete its log
  records and snapshot), and ``export_group`` / ``import_group`` (move a
  replica, Raft state and all, to another worker of the same node).

Placement changes run in the raft loop between two rounds (`run_group_ops`):
no Ready is outstanding then, and the raft loop is the only writer of the log.
"""

from __future__ import annotations

import logging
import os
import random
from typing import TYPE_CHECKING, Any

import trio

from multiraft import kv, protocol
from multiraft.raft.confchange import ChangeKind, ConfChange, SingleChange
from multiraft.raft.errors import Busy, ConfChangeRejected, LogDoesNotFollowSnapshot, NotLeader, RaftError
from multiraft.raft.log import check_follows_snapshot
from multiraft.raft.state import RaftState
from multiraft.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta, StateRole
from multiraft.replica import SEPARATOR, ReplicaIdError, check_replica_id, node_of
from storage import GroupWrite, StorageError

from .group import Group, leader_hint
from .identity import save_identities

if TYPE_CHECKING:  # pragma: no cover
    from .client_server import Connection
    from .requests import AdminRequest
    from .worker import Worker

__all__ = ["handle_admin", "group_op", "run_group_ops", "GROUP_OPS"]

_log = logging.getLogger("workers")

GROUP_OPS = ("add_group", "remove_group", "export_group", "import_group")
_KINDS = {"add_voter": ChangeKind.ADD_VOTER, "add_learner": ChangeKind.ADD_LEARNER, "remove": ChangeKind.REMOVE_NODE}


# ---------------------------------------------------------------------------
# Client-port requests


def handle_admin(worker: Worker, conn: Connection, req: AdminRequest) -> None:
    """conf_change, transfer_leader, group_status (never blocks)."""
    g = worker.groups.get(req.group)
    if g is None:
        worker.counters["client_no_group"] += 1
        conn.respond(req.req_id, protocol.NO_GROUP, None)
        return
    if req.op == "group_status":
        conn.respond(req.req_id, protocol.OK, g.status())
        return
    raft = g.raft
    if g.failed is not None or raft.role != StateRole.LEADER:
        conn.respond(req.req_id, protocol.NOT_LEADER, None if g.failed else raft.leader)
        return
    if req.op == "transfer_leader":
        try:
            raft.transfer_leader(_member(raft.conf, req.node))
        except NotLeader as exc:
            conn.respond(req.req_id, protocol.NOT_LEADER, exc.leader)
            return
        except RaftError as exc:
            conn.respond(req.req_id, protocol.ERROR, str(exc))
            return
        worker._dirty.add(g.gid)
        transferee = raft.lead_transferee
        conn.respond(
            req.req_id, protocol.OK, {"leader": leader_hint(raft.leader), "transferee": leader_hint(transferee)}
        )
        return
    try:
        cc = ConfChange(
            tuple(SingleChange(_KINDS[k], _resolve(raft.conf, k, name)) for k, name in req.changes), req.joint
        )
        index = raft.propose_conf_change(cc)
    except NotLeader as exc:
        conn.respond(req.req_id, protocol.NOT_LEADER, exc.leader)
        return
    except Busy as exc:
        conn.respond(req.req_id, protocol.BUSY, exc.reason)
        return
    except ConfChangeRejected as exc:
        conn.respond(req.req_id, protocol.ERROR, str(exc))
        return
    worker._dirty.add(g.gid)
    _log.info("%s: group %d: proposed %s at index %d", worker.address, g.gid, _describe(req), index)
    conn.respond(req.req_id, protocol.OK, {"index": index, "term": raft.term})


def _member(conf: ConfState, name: str) -> str:
    """The member replica id that `name` (a replica id or a node) means."""
    members = conf.all_nodes()
    if name in members:
        return name
    same_node = [m for m in members if node_of(m) == node_of(name)]
    return same_node[0] if len(same_node) == 1 else name


def _resolve(conf: ConfState, kind: str, name: str) -> str:
    """The replica id a change names. The control plane names nodes, except
    for a new replica (add_learner / add_voter of a node not in the config),
    where it names the replica id its node allocated (multiraft.replica):
    a bare node there means incarnation 0. A node holds one replica per group:
    a second incarnation of a member node is refused."""
    member = _member(conf, name)
    if member != name and kind in ("add_voter", "add_learner") and SEPARATOR in name:
        raise ConfChangeRejected(
            f"node {node_of(name)} is in the config as {member}: remove that replica before adding {name}"
        )
    return member


def _describe(req: AdminRequest) -> str:
    text = ", ".join(f"{k} {n}" for k, n in req.changes)
    return f"[{text}]" + (" (joint)" if req.joint else "")


# ---------------------------------------------------------------------------
# Placement changes (control pipe)


async def group_op(worker: Worker, op: str, gid: Any, data: Any = None) -> dict:
    """Queue a placement change for the raft loop and wait for its result."""
    if op not in GROUP_OPS:
        return {"ok": False, "error": f"unknown group op {op!r}"}
    if op == "add_group":
        try:
            data = check_replica_id(worker.node_id if data is None else data, worker.node_id)
        except ReplicaIdError as exc:
            return {"ok": False, "error": str(exc)}
    if type(gid) is not int or not 0 <= gid < worker.config.groups_total:
        return {"ok": False, "error": f"bad group id {gid!r}"}
    done = trio.Event()
    result: dict = {}
    worker._group_ops.append((op, gid, data, done, result))
    worker._notify()
    await done.wait()
    return result


async def run_group_ops(worker: Worker) -> None:
    """In the raft loop, between rounds: run every queued placement change."""
    ops, worker._group_ops = worker._group_ops, []
    for op, gid, data, done, result in ops:
        try:
            if op == "add_group":
                extra = await _add(worker, gid, data)
            elif op == "remove_group":
                extra = await _remove(worker, gid)
            elif op == "export_group":
                extra = _export(worker, gid)
            else:
                extra = await _import(worker, gid, data)
            result.update({"ok": True, "error": None, **extra})
        except _OpError as exc:
            result.update({"ok": False, "error": str(exc)})
        except StorageError as exc:
            from .worker import WorkerError

            done.set()
            raise WorkerError(f"storage failed while changing group {gid}: {exc}") from None
        done.set()
        _log.info("%s: %s %d: %s", worker.address, op, gid, "done" if result["ok"] else result["error"])


class _OpError(Exception):
    pass


def _forget(worker: Worker, gid: int) -> Group | None:
    """Stop driving group gid; its waiting clients get not_leader."""
    g = worker.groups.pop(gid, None)
    if g is None:
        return None
    worker._fail_group_requests(g, protocol.NOT_LEADER, None)
    worker._dirty.discard(gid)
    worker._proposing.discard(gid)
    worker._snapshotting.discard(gid)
    worker._unsaved_hs.pop(gid, None)
    return g


def _wipe(worker: Worker, gid: int, new_rid: str | None = None) -> None:
    """Blocking: delete the group's log records and snapshot, then record
    which incarnation (if any) owns the group's stored data from now on. In
    this order: data never sits under an id it does not belong to
    (workers/identity.py)."""
    worker._wipe_group_data(gid)
    if new_rid is None:
        worker.identities.pop(gid, None)
    else:
        worker.identities[gid] = new_rid
    save_identities(worker.config.data_dir, worker.identities, sync=worker.config.sync_on_write)


def _new_raft(worker: Worker, gid: int, rid: str, **state: Any) -> RaftState:
    cfg = worker.config
    if cfg.seed is not None:
        rng = random.Random(cfg.seed * 1_000_003 + gid)
    else:
        rng = random.Random(os.urandom(16))
    return RaftState(worker._raft_config(rid), rng, **state)


def _install(worker: Worker, g: Group) -> None:
    worker.groups[g.gid] = g
    if worker._routing_table is not None:
        try:
            worker.set_routing(worker._routing_table)
        except ValueError as exc:  # RoutingError: the table was accepted before
            _log.error("%s: group %d: routing: %s", worker.address, g.gid, exc)
    worker._dirty.add(g.gid)


async def _add(worker: Worker, gid: int, rid: str) -> dict:
    g = worker.groups.get(gid)
    if g is not None:
        if g.raft.id == rid:
            return {"existed": True, "replica": rid}
        # The coordinator retired that incarnation (it placed a new id): it goes.
        _log.warning("%s: group %d: replacing retired replica %s by %s", worker.address, gid, g.raft.id, rid)
        _forget(worker, gid)
    # Anything left from an earlier replica of this group on this worker goes:
    # a new replica starts empty (initial voters None) and learns from its leader.
    await worker._run_io(_wipe, worker, gid, rid)
    raft = _new_raft(worker, gid, rid, hard_state=HardState())
    _install(worker, Group(gid, raft, kv.KVStateMachine()))
    return {"existed": False, "replica": rid}


async def _remove(worker: Worker, gid: int) -> dict:
    existed = _forget(worker, gid) is not None
    await worker._run_io(_wipe, worker, gid)
    return {"existed": existed}


def _export(worker: Worker, gid: int) -> dict:
    """Stop the group here and hand out its whole Raft state: the hard state,
    a snapshot at the applied index and the log after it. The stored copy is
    kept until remove_group (the coordinator's restart finds it if the move
    does not complete)."""
    g = worker.groups.get(gid)
    if g is None:
        raise _OpError(f"group {gid} is not on this worker")
    if g.failed is not None:
        raise _OpError(f"group {gid} has failed here: {g.failed}")
    raft = g.raft
    log = raft.log
    applied = log.applied
    snapshot = None
    pending = log.pending_snapshot
    if pending is not None:
        # A leader's snapshot the core took but the state machine has not
        # restored yet: it is the image at the applied index.
        meta = pending.meta
        snapshot = [meta.index, meta.term, list(meta.conf_state.to_plain()), pending.data]
    elif applied > 0:
        term = log.term(applied)
        assert term is not None
        snapshot = [applied, term, list(raft.conf.to_plain()), g.kv.snapshot()]
    last = log.last_index()
    entries = log.slice(applied + 1, last + 1, 1 << 62) if last > applied else []
    state = {
        "replica_id": raft.id,  # the same replica moves: its identity with it
        "hard_state": [raft.term, raft.vote, log.committed],
        "snapshot": snapshot,
        "entries": [[e.term, e.index, int(e.type), e.data] for e in entries],
    }
    _forget(worker, gid)
    return {"state": state}


async def _import(worker: Worker, gid: int, data: Any) -> dict:
    try:
        term, vote, commit = data["hard_state"]
        hs = HardState(int(term), vote, int(commit))
        snap = None
        if data["snapshot"] is not None:
            index, sterm, conf, sm_data = data["snapshot"]
            snap = Snapshot(SnapshotMeta(int(index), int(sterm), ConfState.from_plain(conf)), bytes(sm_data))
        entries = tuple(Entry(int(t), int(i), int(ty), bytes(d)) for t, i, ty, d in data["entries"])
        rid = check_replica_id(data.get("replica_id", worker.node_id), worker.node_id)
    except (KeyError, TypeError, ValueError) as exc:  # ReplicaIdError is a ValueError
        raise _OpError(f"malformed group state: {exc!r}") from None
    if gid in worker.groups:
        raise _OpError(f"group {gid} is already on this worker")
    try:
        # Refused before anything is written (the core would refuse it after).
        check_follows_snapshot(snap.meta if snap is not None else None, hs, entries)
    except LogDoesNotFollowSnapshot as exc:
        raise _OpError(f"the exported group state is inconsistent: {exc.reason}") from None
    sm = kv.KVStateMachine()
    if snap is not None:
        try:
            sm.restore(snap.data)
        except kv.SnapshotFormatError as exc:
            raise _OpError(f"the exported snapshot is unreadable: {exc}") from None

    def persist() -> None:
        assert worker.log is not None and worker.snapshots is not None
        _wipe(worker, gid, rid)
        if snap is not None:
            worker.snapshots.save_snapshot(gid, snap)
        w: dict = {"hard_state": hs}
        if snap is not None:
            w["compact_to"] = (snap.meta.index, snap.meta.term)
        if entries:
            w["entries"] = entries
        worker.log.write([GroupWrite(gid, **w)], sync=True)

    await worker._run_io(persist)
    raft = _new_raft(worker, gid, rid, hard_state=hs, snapshot=snap, entries=entries)
    g = Group(gid, raft, sm)
    g.saved_term, g.saved_vote = hs.term, hs.vote
    _install(worker, g)
    return {}
