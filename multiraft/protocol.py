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
       ["register", group]                                  -> ok: client_id
           opens an exactly-once session through the log (KV Register); the
           id is the log index of its entry. Once per session, not per write.
   added for the Redis front-end (multiraft.resp, docs/resp.md):
       ["mput",   group, [[key, value|None], ...], client_id, seq]
                                                            -> ok: existed (int)
           one log entry: every item applies, in order, or none (None deletes);
           existed counts the items whose key was present (DEL's answer)
       ["incr",   group, key, delta, client_id, seq]        -> ok: [value|None, error|None]
           delta an int64; error "not_integer" (the value is not a decimal
           int64) or "overflow", and then nothing changed
       ["append", group, key, suffix, client_id, seq]       -> ok: new length | None
           None: the value would exceed the value size limit (nothing changed)
       ["putif",  group, key, value, condition, client_id, seq]
                                                            -> ok: [done, previous|None]
           condition "always", "absent" (SET NX) or "present" (SET XX)
       ["keys",   group, start, prefix, limit]              -> ok: [[key, ...], next|None]
           keys only; next is where the next page starts (None: the end);
           capped like scan
       ["count",  group]                                    -> ok: number of keys
       (keys and count are linearizable reads, like get)
   membership, used by the coordinators' admin jobs (multiraft.jobs,
   workers/membership.py):
       ["conf_change", group, [[kind, node], ...], joint]   -> ok: {"index", "term"}
           kind "add_voter", "add_learner" (also demotes a voter) or
           "remove"; joint true forces joint consensus (more than one voter
           change is always joint). Leader only. ok means proposed: the
           change is applied once the leader's applied index reaches "index"
           (watch group_status; a different term there means it was lost).
           "error": the core refused it (unsafe, or "another membership
           change is in progress"); "busy": a leader transfer is in progress
       ["transfer_leader", group, node]                      -> ok: {"leader", "transferee"}
           leader only; node must be a voter; ok means started (the core
           catches node up, then sends it TimeoutNow)
       ["group_status", group]                               -> ok: group status (below)
           any replica; a leader's has "progress": {node: match index}
   read_mode is "linearizable" (ReadIndex, the default) or "lease"; it may be
   left out (["get", group, key]). "lease" is honoured only when the worker runs
   with lease_reads (otherwise it is served with ReadIndex). limit is an int
   >= 0 or None (the worker caps it: 10,000 pairs and 16 MiB by default; an
   answer shorter than asked for may mean "go on from last key + b'\\x00'").
   The worker address is "n1/w0" (wire.worker_address). req_id is an int, a
   string, bytes or None.
   Keys and values are bytes. client_id is a registered session's id, or 0
   for no exactly-once session (tests and tools only: multiraft.client never
   sends 0). Only a group's leader serves requests, reads included (followers
   answer not_leader with their leader hint). A write whose (client_id, seq)
   is older than the session's last applied seq gets "error" ("stale
   request"); one whose session the group does not know (evicted, or never
   registered) gets "session_expired" and was not applied.
   statuses: "ok"; "not_leader" (payload: leader node id or None); "busy"
   (overloaded: retry later); "no_group" (this worker does not host it);
   "timeout" (the outcome of a write is unknown: retry with the same seq);
   "error" (payload: a message; the request was malformed: do not retry);
   "session_expired" (payload: a message; this attempt did not apply: register
   again; an earlier attempt of the same write may have applied).
   "not_leader" for a write also means its entry was overwritten by another
   leader's (it did not apply: retry). A frame that is not a valid frame (not
   CBOR, not a non-empty list, over the worker's limit; see decode_body: no
   tags, nesting <= 32, ints <= 128 bits, map keys text or bytes) closes the
   connection; a well-framed but malformed request only gets "error" (an int
   field beyond 64 bits included).

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
                                      "learners", "voters_outgoing", "joint",
                                      "replicas": [{"node", "worker", "up", "member", "lag",
                                                    "role", "term", "commit", "applied",
                                                    "last_index", "keys"}]}]}
                         (commit/applied/voters... are the leader's; null fields: unknown)
                         a group's replicas: the nodes of its Raft config and the nodes
                         whose placement holds it; "member" is "voter", "learner",
                         "outgoing" (joint) or "none" (placed, not in the config);
                         "lag": entries behind the leader's last index
       ["ping"]       -> the node id
       ["join", node_id, "host:port", workers]
                      -> {"cluster": {"nodes" (the first nodes), "groups", "replicas",
                          "key_hash"}, "members": {id: {"address", "epoch", "removed"}}}
                         admits an empty node (`multiraft node --join`); a retried
                         join with the same address is ok; a taken id or an address
                         too close to a member's ports is an error. Members spread to
                         the other coordinators through ["placement"] (below).
       ["admin", command, {args}]
                      -> {"job": id, "attached": bool, "node": id} once the job is
                         started (multiraft.jobs: commands "add-learner", "promote",
                         "add-voter", "remove-replica", "move-replica",
                         "transfer-leader", "drain", "rebalance", "remove-node"; args
                         "group", "node", "source", "target", "force", "dry_run");
                         "error" with the reason if refused up front. The very same
                         command while it runs attaches to its job.
       ["job", id]    -> {"id", "command", "args", "describe", "state" ("running",
                          "done", "failed"), "steps": [str], "error", "result",
                          "started", "finished"}
       ["jobs"]       -> [job, ...] (this coordinator's, kept until it restarts)
       answered when done (any order; the connection stays usable meanwhile):
       ["add_replica", g]  -> {"worker", "existed"}: an empty replica of g on this
                         node's least loaded worker (placement.json first)
       ["drop_replica", g] -> {"existed", "worker"}: delete this node's replica of
                         g; refused while g's leader says this node is in its config
       ["move_worker", g, from, to] -> {"worker", "moved"}: move this node's replica
                         of g, Raft state and all, from worker `from` to `to`
       ["placement"] also carries "members" (as in join) and "busy": {g: job} (the
       groups this coordinator's jobs are changing).
       worker info: {"index", "up", "pid", "restarts", "last_exit", "raft_url",
                     "client_address", "groups": count}
       Unknown ops answer "error"; a frame that is not a valid frame (as on
       channel 1) closes the connection. "status" also carries "counters":
       {"api_bad_frames", "api_answers_unencodable"} of this port.

3. Coordinator <-> worker (the worker's stdin and stdout pipes; the worker exits
   when stdin closes, so a worker can never outlive its coordinator).
   The worker is `python -m workers` (workers/control.py).
       coordinator -> worker: ["config", WorkerConfig dict] (first frame),
                              ["routing", routing table], ["shutdown"],
                              ["add_group", g], ["remove_group", g],
                              ["export_group", g], ["import_group", g, state]
       worker -> coordinator: ["ready", {"raft_url": ..., "client_address": ...}],
                              ["status", {g: group status}, worker stats] (periodically)
                              ["group_op", kind, g, {"ok", "error", ...}] (the answer
                                  to each of the four group ops above)
                              ["error", {"message": str}] (fatal; then it exits non-zero)
   add_group: an empty replica (no initial voters; anything left of an earlier
   replica of g on this worker is deleted first). remove_group: stop g and
   delete its log records and snapshot. export_group: stop g and answer with
   its Raft state {"hard_state": [term, vote, commit], "snapshot": [index,
   term, conf_state, data] | None, "entries": [[term, index, type, data]...]}
   (the stored copy stays until remove_group); import_group: make that state
   durable here and run g. All run between two raft rounds.
   WorkerConfig keys are documented in workers/config.py (node_id, worker_index,
   data_dir, raft_listen_url, client_listen_address, groups {g: [initial voter
   node ids]}, groups_total, tick_ms, election_tick, heartbeat_tick,
   sync_on_write, snapshot_threshold_entries, compact_lag_entries, lease_reads,
   seed, limits {...}, storage {...}); an unknown key is refused.
   "ready" also carries "node_id", "worker_index", "address" ("n1/w0"), "pid"
   "groups" (sorted ids) and "replicas" ({group: replica id}, which the
   coordinator reconciles with its placement); it is written once the worker recovered its
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
    node's placement is known, for every node whose placement holds the group
    (membership changes move replicas: the first formula is not used);
    "nodes" lists every member of the cluster; "leader" comes from the replica status with the
    highest term (a self-declared leader wins a tie) and is None while unknown
    or when that node is down. Worker "up" is false while the worker restarts.
Group status (worker -> coordinator -> admin):
    {"role", "leader", "term", "commit", "applied", "last_index",
     "voters", "learners", "voters_outgoing"} (+ "progress": {node: match} on a leader)
    role is "follower", "pre_candidate", "candidate", "leader" or "failed" (a
    replica the worker stopped driving; "error" then says why). Workers also
    report "snapshot_index", "keys" (number of keys) and "pending" (client
    requests waiting on this replica).
    In the routing table, group ids may be ints (CBOR) or decimal strings (JSON).
"""

from __future__ import annotations

import io
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
SESSION_EXPIRED = "session_expired"

READ_LINEARIZABLE = "linearizable"
READ_LEASE = "lease"

# Coordinator ops (channel 2).
COORDINATOR_OPS = (
    "routing", "status", "placement", "cluster_status", "ping",
    "join", "admin", "job", "jobs", "add_replica", "drop_replica", "move_worker",
)

# The keys of the ["config", {...}] frame the coordinator sends (channel 3);
# workers/config.py documents them (and a few optional ones it also accepts).
WORKER_CONFIG_KEYS = (
    "node_id",
    "worker_index",
    "data_dir",
    "raft_listen_url",
    "client_listen_address",
    "groups",
    "replica_ids",
    "groups_total",
    "tick_ms",
    "election_tick",
    "heartbeat_tick",
    "sync_on_write",
    "snapshot_threshold_entries",
    "compact_lag_entries",
    "lease_reads",
    "max_clock_drift_ms",
)


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame: the peer's fault."""


def encode(obj: list) -> bytes:
    body = cbor2.dumps(obj)
    if len(body) > FRAME_SIZE_BYTES_MAX:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {FRAME_SIZE_BYTES_MAX}")
    return _LENGTH.pack(len(body)) + body


def encode_response(req_id: Any, status: str, payload: Any) -> tuple[bytes, str | None]:
    """(frame, None); or, if this answer cannot be encoded (too large, a value
    cbor2 refuses), (an "error" answer, why): one bad answer never stops a
    server. The caller counts the second case."""
    try:
        return encode([req_id, status, payload]), None
    except Exception as exc:
        why = f"answer not encodable: {type(exc).__name__}: {exc}"[:200]
    try:
        return encode([req_id, ERROR, why]), why
    except Exception:  # the req_id itself (the decoder never yields such a one)
        return encode([None, ERROR, why]), why


# Decoding is as strict as the peer wire's (multiraft.wire): every byte comes
# from whoever reached the port. Linear work in the frame size: no shared
# references (tag 28/29 build cycles, which kill the encoder of the answer, and
# DAGs exponentially larger than their bytes), no string references (same),
# no other tags (datetimes, regexes, decimals... each its own cost and type),
# bounded nesting, and integers of at most `INT_BITS_MAX` bits (bignums of
# megabytes would be decoded, compared and formatted). No field carries more
# than 64 bits: a bignum up to 128 bits is decoded so that the request's own
# check refuses it with a message; a longer one is a malformed frame.
NESTING_DEPTH_MAX = 32
INT_BITS_MAX = 128
_BIGNUM_BYTES_MAX = INT_BITS_MAX // 8


def _refuse_tag(value: Any, immutable: bool) -> Any:
    raise cbor2.CBORDecodeError("CBOR tags are not allowed")


def _refuse_unknown_tag(decoder: Any, tag: Any) -> Any:
    raise cbor2.CBORDecodeError(f"CBOR tag {tag.tag:.40} is not allowed")


def _bignum(value: Any, immutable: bool) -> int:
    if type(value) is not bytes or len(value) > _BIGNUM_BYTES_MAX:
        raise cbor2.CBORDecodeError(f"an integer beyond {INT_BITS_MAX} bits")
    return int.from_bytes(value, "big")


def _negative_bignum(value: Any, immutable: bool) -> int:
    return -1 - _bignum(value, immutable)


# cbor2 decodes the tags below itself unless overridden (the C decoder calls an
# override with the tag's decoded content); every other tag reaches tag_hook.
_BUILTIN_TAGS = (*range(0, 300), 1004, 55799)
_SEMANTIC = {t: _refuse_tag for t in _BUILTIN_TAGS}
_SEMANTIC[2] = _bignum
_SEMANTIC[3] = _negative_bignum


def _decoder_options(text_keys_only: bool) -> dict:
    return dict(
        max_depth=NESTING_DEPTH_MAX,
        allow_duplicate_keys=False,
        # Text/byte string hashes are randomised: no hash flooding. Answers (the
        # routing table, placements, the control channel) key maps by group id.
        strict_hashable_types=text_keys_only,
        semantic_decoders=_SEMANTIC,
        tag_hook=_refuse_unknown_tag,
    )


_STRICT = _decoder_options(True)
_INT_KEYS = _decoder_options(False)


def decode_body(body: bytes, *, text_keys_only: bool = False) -> list:
    """One frame's CBOR document; ProtocolError (the sender's fault) otherwise.

    Servers decoding requests pass text_keys_only=True (no request has a map
    with other keys)."""
    try:
        fp = io.BytesIO(body)
        obj = cbor2.CBORDecoder(fp, **(_STRICT if text_keys_only else _INT_KEYS)).decode()
        trailing = len(body) - fp.tell()
    except Exception as e:  # cbor2 raises several types on garbage
        raise ProtocolError(f"malformed frame: {type(e).__name__}: {e}"[:300]) from None
    if trailing:
        raise ProtocolError(f"malformed frame: {trailing} bytes after the CBOR document")
    if type(obj) is not list or not obj:
        raise ProtocolError("a frame must be a non-empty list")
    return obj


class FrameBuffer:
    """Incremental decoder: feed bytes, take whole frames."""

    def __init__(self, frame_size_bytes_max: int = FRAME_SIZE_BYTES_MAX, *, text_keys_only: bool = False) -> None:
        self._buf = bytearray()
        self._max = frame_size_bytes_max
        self._text_keys_only = text_keys_only

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
            out.append(decode_body(bytes(buf[pos + 4 : pos + 4 + n]), text_keys_only=self._text_keys_only))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out
