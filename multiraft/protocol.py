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
   read_mode is "linearizable" (ReadIndex, the default) or "lease".
   Keys and values are bytes. client_id 0 means no exactly-once session.
   statuses: "ok"; "not_leader" (payload: leader node id or None); "busy"
   (overloaded: retry later); "no_group" (this worker does not host it);
   "timeout" (the outcome of a write is unknown: retry with the same seq);
   "error" (payload: a message; the request was malformed: do not retry).

2. Admin/bootstrap <-> coordinator (TCP, the node's --listen port).
       request:  [req_id, op, *args]     response: [req_id, status, payload]
       ["routing"]    -> the routing table (see below)
       ["status"]     -> {"node": id, "workers": [...], "groups": {g: group status}}
       ["placement"]  -> this node's placement (used by peer coordinators)

3. Coordinator <-> worker (the worker's stdin and stdout pipes; the worker exits
   when stdin closes, so a worker can never outlive its coordinator).
       coordinator -> worker: ["config", WorkerConfig dict] (first frame),
                              ["routing", routing table], ["shutdown"]
       worker -> coordinator: ["ready", {"raft_url": ..., "client_address": ...}],
                              ["status", {g: group status}] (periodically)

Routing table (coordinator -> clients and workers):
    {"version": int, "groups_total": int,
     "nodes":  {node_id: {"address": "host:port", "up": bool,
                          "workers": [{"raft_url": "tcp://h:p", "client_address": "h:p"}, ...]}},
     "groups": {g: {"replicas": {node_id: worker_index}, "leader": node_id|None, "term": int}}}
Group status (worker -> coordinator -> admin):
    {"role", "leader", "term", "commit", "applied", "last_index",
     "voters", "learners", "voters_outgoing"}
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
