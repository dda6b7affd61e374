"""The node's request/response protocols (everything that is not peer Raft traffic).

Three channels share one framing: a 4-byte big-endian length, then one cbor2
document (always a list). Frames above `FRAME_SIZE_BYTES_MAX` are refused.

1. Client <-> worker (TCP, the worker's client port). Requests are pipelined:
   many in flight per connection, answered in any order, matched by req_id.
       request:  [req_id, op, *args]
       response: [req_id, status, payload]
   ops (group is the shard, see multiraft.sharding.group_for_key):
       ["put",    group, key, value, client_id, seq]        -> ok: prev_existed (bool)
       ["delete", group, key, client_id, seq]               -> ok: existed (bool)
       ["cas",    group, key, expected|None, new|None, client_id, seq]
                                                            -> ok: [swapped (bool), current|None]
       ["get",    group, key, read_mode]                    -> ok: value|None
       ["scan",   group, start, prefix, limit]              -> ok: [[key, value], ...]
       ["ping"]                                             -> ok: worker address
   read_mode is "linearizable" (ReadIndex, the default) or "lease"; it may be
   left out (["get", group, key]). "lease" is honoured only when the worker runs
   with lease_reads (otherwise it is served with ReadIndex). limit is an int
   >= 0 or None (the worker caps it: 10,000 pairs and 16 MiB by default; an
   answer shorter than asked for may mean "go on from last key + b'\\x00'").
   The worker address is "n1/w0" (wire.worker_address). req_id is an int, a
   string, bytes or None.
   Keys and values are bytes. client_id 0 means no exactly-once session.
   Only a group's leader serves requests, reads included (followers answer
   not_leader with their leader hint). A write whose (client_id, seq) is older
   than the session's last applied seq gets "error" ("stale request").
   statuses: "ok"; "not_leader" (payload: leader node id or None); "busy"
   (overloaded: retry later); "no_group" (this worker does not host it);
   "timeout" (the outcome of a write is unknown: retry with the same seq);
   "error" (payload: a message; the request was malformed: do not retry).
   "not_leader" for a write also means its entry was overwritten by another
   leader's (it did not apply: retry). A frame that is not a valid frame (not
   CBOR, not a non-empty list, over the worker's limit) closes the connection;
   a well-framed but malformed request only gets "error".

2. Admin/bootstrap <-> coordinator (TCP, the node's --listen port).
       request:  [req_id, op, *args]     response: [req_id, status, payload]
       ["routing"]    -> the routing table (see below)
       ["status"]     -> {"node": id, "address": "h:p",
                          "workers": [worker info + "stats": the worker's last counters],
                          "groups": {g: group status + "worker": index}}
                         (this node only; groups of workers that are down are absent)
       ["placement"]  -> this node's placement (used by peer coordinators):
                         {"node": id, "address": "h:p",
                          "cluster": {"nodes": {id: "h:p"}, "groups": G, "replicas": R},
                          "workers": [worker info], "groups": {g: worker index}}
       ["cluster_status"] -> the whole cluster as this coordinator last polled it
                         (what `multiraft-admin status --json` prints):
                         {"node": answering id, "groups_total", "replicas", "routing_version",
                          "nodes":  [{"id", "address", "up", "workers": [worker info]}],
                          "groups": [{"id", "leader", "term", "commit", "applied", "voters",
                                      "learners", "voters_outgoing",
                                      "replicas": [{"node", "worker", "up", "role", "term",
                                                    "commit", "applied", "last_index", "keys"}]}]}
                         (commit/applied/voters... are the leader's; null fields: unknown)
       ["ping"]       -> the node id
       worker info: {"index", "up", "pid", "restarts", "last_exit", "raft_url",
                     "client_address", "groups": count}
       Unknown ops answer "error"; a frame that is not a valid frame closes the
       connection.

3. Coordinator <-> worker (the worker's stdin and stdout pipes; the worker exits
   when stdin closes, so a worker can never outlive its coordinator).
   The worker is `python -m workers` (workers/control.py).
       coordinator -> worker: ["config", WorkerConfig dict] (first frame),
                              ["routing", routing table], ["shutdown"]
       worker -> coordinator: ["ready", {"raft_url": ..., "client_address": ...}],
                              ["status", {g: group status}, worker stats] (periodically)
                              ["error", {"message": str}] (fatal; then it exits non-zero)
   WorkerConfig keys are documented in workers/config.py (node_id, worker_index,
   data_dir, raft_listen_url, client_listen_address, groups {g: [initial voter
   node ids]}, groups_total, tick_ms, election_tick, heartbeat_tick,
   sync_on_write, snapshot_threshold_entries, compact_lag_entries, lease_reads,
   seed, limits {...}, storage {...}); an unknown key is refused.
   "ready" also carries "node_id", "worker_index", "address" ("n1/w0"), "pid"
   and "groups" (sorted ids); it is written once the worker recovered its
   groups and listens (ports 0 in the config are resolved there). "status"
   comes every ~500 ms; its third element is a map of counters (rounds,
   persists, fsyncs, persisted_entries, dropped_*, client_*, ..., with
   "transport", "storage" and "raft" sub-maps) for observability only.
   Stop: ["shutdown"], end of stdin or SIGTERM -> tasks cancelled, log synced
   and closed, exit status 0. SIGINT is ignored (the coordinator owns the
   worker's lifetime). Exit status 2: bad or missing config; 1: fatal error
   (storage unusable or locked, address in use), after an "error" frame.
   Frame kinds a side does not know are ignored by the worker (and should be
   by the coordinator). A routing table the worker cannot parse is logged and
   ignored (the previous one stays).

Routing table (coordinator -> clients and workers):
    {"version": int, "groups_total": int, "key_hash": "crc32-iso-hdlc-mod",
     "nodes":  {node_id: {"address": "host:port", "up": bool,
                          "workers": [{"raft_url": "tcp://h:p", "client_address": "h:p",
                                       "up": bool}, ...]}},
     "groups": {g: {"replicas": {node_id: worker_index}, "leader": node_id|None, "term": int}}}
    "version" grows whenever the content changes (per coordinator: tables of
    different coordinators are not ordered). A replica is listed once its
    node's placement is known; "leader" comes from the replica status with the
    highest term (a self-declared leader wins a tie) and is None while unknown
    or when that node is down. Worker "up" is false while the worker restarts.
Group status (worker -> coordinator -> admin):
    {"role", "leader", "term", "commit", "applied", "last_index",
     "voters", "learners", "voters_outgoing"}
    role is "follower", "pre_candidate", "candidate", "leader" or "failed" (a
    replica the worker stopped driving; "error" then says why). Workers also
    report "snapshot_index", "keys" (number of keys) and "pending" (client
    requests waiting on this replica).
    In the routing table, group ids may be ints (CBOR) or decimal strings (JSON).
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2

FRAME_SIZE_BYTES_MAX = 64 << 20
_LENGTH = struct.Struct(">I")

# Response statuses.
OK = "ok"
NOT_LEADER = "not_leader"
BUSY = "busy"
NO_GROUP = "no_group"
TIMEOUT = "timeout"
ERROR = "error"

READ_LINEARIZABLE = "linearizable"
READ_LEASE = "lease"

# Coordinator ops (channel 2).
COORDINATOR_OPS = ("routing", "status", "placement", "cluster_status", "ping")

# The keys of the ["config", {...}] frame the coordinator sends (channel 3);
# workers/config.py documents them (and a few optional ones it also accepts).
WORKER_CONFIG_KEYS = (
    "node_id",
    "worker_index",
    "data_dir",
    "raft_listen_url",
    "client_listen_address",
    "groups",
    "groups_total",
    "tick_ms",
    "election_tick",
    "heartbeat_tick",
    "sync_on_write",
    "snapshot_threshold_entries",
    "compact_lag_entries",
    "lease_reads",
)


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame: the peer's fault."""


def encode(obj: list) -> bytes:
    body = cbor2.dumps(obj)
    if len(body) > FRAME_SIZE_BYTES_MAX:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {FRAME_SIZE_BYTES_MAX}")
    return _LENGTH.pack(len(body)) + body


def decode_body(body: bytes) -> list:
    try:
        obj = cbor2.loads(body)
    except Exception as e:  # cbor2 raises several types on garbage
        raise ProtocolError(f"malformed frame: {e}") from None
    if not isinstance(obj, list) or not obj:
        raise ProtocolError("a frame must be a non-empty list")
    return obj


class FrameBuffer:
    """Incremental decoder: feed bytes, take whole frames."""

    def __init__(self, frame_size_bytes_max: int = FRAME_SIZE_BYTES_MAX) -> None:
        self._buf = bytearray()
        self._max = frame_size_bytes_max

    def feed(self, data: bytes) -> None:
        self._buf += data

    def frames(self) -> list[list[Any]]:
        out = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _LENGTH.unpack_from(buf, pos)
            if n > self._max:
                raise ProtocolError(f"frame of {n} bytes exceeds {self._max}")
            if len(buf) - pos - 4 < n:
                break
            out.append(decode_body(bytes(buf[pos + 4 : pos + 4 + n])))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out
