"""Simulated clients: puts, gets, CAS and deletes, with retries, recorded as a
history in the lincheck format (multiraft.lincheck checks it at the end).

Clients behave like the real client: a write keeps its (client id, sequence
number) across retries so it applies exactly once; a read goes through
ReadIndex (or the lease) on the leader or on a follower. Sessions are
registered through the log (one per client and group, reused); a write whose
session was evicted (`SessionExpired`) is sent again under a new session if
its refused send was its only one (it provably did not apply), and is
recorded as indeterminate ("info") otherwise.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import attrs

from multiraft import kv
from multiraft.raft.errors import ProposalDropped
from multiraft.replica import node_of
from multiraft.sharding import group_for_key

from .cluster import ReadWaiter, Waiter

if TYPE_CHECKING:
    from .run import Sim

ATTEMPT_TIMEOUT_STEPS = 150
OP_TIMEOUT_STEPS = 3000
BACKOFF_STEPS = 15
# As multiraft.client.SESSION_RENEWALS_MAX: new sessions one write may use up.
SESSION_RENEWALS_MAX = 3


@attrs.define
class Op:
    op_id: int
    f: str
    key: str
    value: object
    group: int
    seq: int
    invoked_at: int
    attempt_deadline: int
    attempts: int = 0
    registering: bool = False  # waiting for a Registered answer first
    client_id: int = 0  # the session the write is sent under
    proposals: int = 0  # proposals of the write under that session
    renewals: int = 0  # sessions used up by SessionExpired


@attrs.define
class Client:
    id: int
    process: int
    seq: int = 0
    op: Op | None = None
    next_op_at: int = 0
    leader_hint: dict[int, str] = attrs.field(factory=dict)
    last_seen: dict[str, str | None] = attrs.field(factory=dict)
    # group -> [client_id, last seq] of this client's registered session
    sessions: dict[int, list[int]] = attrs.field(factory=dict)


class Workload:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.rng = sim.rng
        o = sim.options
        self.keys = [f"k{i}" for i in range(o.keys)]
        self.clients = [Client(i + 1, process=(i + 1) * 1000) for i in range(o.clients)]
        self.events: list[dict] = []
        self._op_ids = 0
        self.completed = 0
        self.abandoned = 0
        self.paused = False

    # ---- driving ---------------------------------------------------------------

    def step(self, now: int) -> None:
        for c in self.clients:
            op = c.op
            if op is None:
                if not self.paused and now >= c.next_op_at:
                    self._invoke(c, now)
            elif now >= op.invoked_at + OP_TIMEOUT_STEPS and not self.sim.healed:
                self._abandon(c, now)
            elif now >= op.attempt_deadline:
                self._attempt(c, now)

    def busy(self) -> bool:
        return any(c.op is not None for c in self.clients)

    def _invoke(self, c: Client, now: int) -> None:
        o = self.sim.options
        key = self.rng.choice(self.keys)
        r = self.rng.random()
        seq = 0
        if r < o.read_fraction:
            f, value = "get", None
        else:
            c.seq += 1
            seq = c.seq
            new = f"c{c.id}-{seq}"
            r2 = self.rng.random()
            if r2 < o.cas_fraction:
                f, value = "cas", [c.last_seen.get(key), new]
            elif r2 < o.cas_fraction + 0.1:
                f, value = "delete", None
            else:
                f, value = "put", new
        self._op_ids += 1
        group = group_for_key(key.encode(), o.groups)
        c.op = Op(self._op_ids, f, key, value, group, seq, now, now)
        self.events.append({"process": c.process, "type": "invoke", "f": f, "key": key, "value": value})
        if f != "get":
            self._use_session(c, c.op)
        self._attempt(c, now)

    def _use_session(self, c: Client, op: Op) -> None:
        """Send the write under c's session of its group (next seq), or
        register one first."""
        session = c.sessions.get(op.group)
        op.proposals = 0
        if session is None:
            op.registering = True
            return
        op.registering = False
        session[1] += 1
        op.client_id, op.seq = session

    def _pick_node(self, c: Client, op: Op, prefer_follower: bool) -> str | None:
        nodes = [n for n in self.sim.nodes.values() if n.up and op.group in n.replicas]
        if not nodes:
            return None
        hint = c.leader_hint.get(op.group)
        if hint is not None and not prefer_follower and op.attempts % 3 != 2:
            hint = node_of(hint)  # a replica id: route to its node
            if any(n.id == hint for n in nodes):
                return hint
        return self.rng.choice(nodes).id

    def _attempt(self, c: Client, now: int) -> None:
        op = c.op
        assert op is not None
        op.attempts += 1
        op.attempt_deadline = now + ATTEMPT_TIMEOUT_STEPS
        is_read = op.f == "get"
        follower = is_read and self.rng.random() < self.sim.options.follower_reads
        node_id = self._pick_node(c, op, follower)
        if node_id is None:
            op.attempt_deadline = now + BACKOFF_STEPS
            return
        node = self.sim.nodes[node_id]
        if is_read:
            payload = f"{c.id}/{op.op_id}/{op.attempts}".encode()
        else:
            payload = kv.encode_command(kv.Register()) if op.registering else self._encode(c, op)
        deliver = functools.partial(self._deliver, c, op, node_id, is_read, payload)
        if node.paused(op.group):
            # The process is paused: the request waits in its backlog.
            node.queue_request(op.group, deliver)
            return
        deliver()

    def _deliver(self, c: Client, op: Op, node_id: str, is_read: bool, payload: bytes) -> None:
        """The node handles one attempt (at once, or when it resumes)."""
        node = self.sim.nodes[node_id]
        replica = node.replicas.get(op.group) if node.up else None
        if replica is None:
            return  # crashed meanwhile: the attempt is lost
        now = self.sim.now
        try:
            if is_read:
                replica.raft.read_index(payload, now=node.clock(now))
                replica.read_waiters[payload] = ReadWaiter(c.id, op.op_id, op.key.encode())
            else:
                index = replica.raft.propose(payload)
                replica.waiters[index] = Waiter(c.id, op.op_id, replica.raft.term)
                if not op.registering:
                    op.proposals += 1
        except ProposalDropped as e:
            if e.leader is not None:
                c.leader_hint[op.group] = e.leader
            if c.op is op:
                op.attempt_deadline = min(op.attempt_deadline, now + BACKOFF_STEPS)

    def _encode(self, c: Client, op: Op) -> bytes:
        key = op.key.encode()
        cid = op.client_id
        if op.f == "put":
            cmd = kv.Put(key, op.value.encode(), cid, op.seq)
        elif op.f == "delete":
            cmd = kv.Delete(key, cid, op.seq)
        else:
            expected, new = op.value
            cmd = kv.Cas(key, None if expected is None else expected.encode(), new.encode(), cid, op.seq)
        return kv.encode_command(cmd)

    def _abandon(self, c: Client, now: int) -> None:
        op = c.op
        assert op is not None
        if op.f == "get":
            # A read has no effect: giving up on it is a plain failure.
            self._record(c, "fail", op, None)
        else:
            # Outcome unknown: the write may still apply, at any later time.
            self._record(c, "info", op, op.value)
            c.process += 1  # an unknown outcome retires the process (Jepsen's rule)
        self.abandoned += 1
        c.op = None
        c.next_op_at = now + 1

    # ---- completions (called by replicas) ------------------------------------------

    def _client_op(self, client: int, op_id: int) -> tuple[Client, Op] | None:
        c = self.clients[client - 1]
        if c.op is None or c.op.op_id != op_id:
            return None  # a late answer to an attempt we already gave up on
        return c, c.op

    def complete_write(self, client: int, op_id: int, result, now: int) -> None:
        found = self._client_op(client, op_id)
        if found is None:
            return
        c, op = found
        if isinstance(result, kv.Registered):
            if op.registering:  # else a duplicate Register's answer: unused
                self.sim.counters["sessions_registered"] += 1
                c.sessions[op.group] = [result.client_id, 0]
                self._use_session(c, op)
                self._attempt(c, now)
            return
        if op.registering:
            raise AssertionError(f"client {client} op {op_id}: {result} while registering")
        if isinstance(result, kv.SessionExpired):
            self._session_expired(c, op, result, now)
            return
        if isinstance(result, (kv.StaleRequest, kv.InvalidCommand)):
            raise AssertionError(f"client {client} op {op_id}: unexpected {result}")
        if op.f == "cas":
            assert isinstance(result, kv.CasResult), result
            if result.ok:
                self._record(c, "ok", op, op.value)
                c.last_seen[op.key] = op.value[1]
            else:
                self._record(c, "fail", op, op.value)
                cur = result.current
                c.last_seen[op.key] = None if cur is None else cur.decode()
        else:
            self._record(c, "ok", op, op.value)
            c.last_seen[op.key] = op.value if op.f == "put" else None
        self._done(c, now)

    def _session_expired(self, c: Client, op: Op, result: kv.SessionExpired, now: int) -> None:
        self.sim.counters["sessions_expired"] += 1
        assert result.client_id == op.client_id, (result, op)
        if c.sessions.get(op.group, [None])[0] == op.client_id:
            del c.sessions[op.group]
        if op.proposals > 1:
            # Another send of this write may have applied before the eviction.
            self.sim.counters["writes_outcome_unknown"] += 1
            self._record(c, "info", op, op.value)
            c.process += 1
            c.op = None
            c.next_op_at = now + 1
            return
        # Its only send was refused: it did not apply.
        op.renewals += 1
        if op.renewals > SESSION_RENEWALS_MAX:
            if op.f == "cas":
                # It did not take effect, but the checker reads a failed cas as
                # "applied, and the compare did not match" (multiraft.lincheck):
                # record what is true of both, an unknown outcome.
                self._record(c, "info", op, op.value)
                c.process += 1
                c.op = None
                c.next_op_at = now + 1
                return
            self._record(c, "fail", op, op.value)
            self._done(c, now)
            return
        self._use_session(c, op)
        self._attempt(c, now)

    def complete_read(self, client: int, op_id: int, value: bytes | None, now: int) -> None:
        found = self._client_op(client, op_id)
        if found is None:
            return
        c, op = found
        text = None if value is None else value.decode()
        self._record(c, "ok", op, text)
        c.last_seen[op.key] = text
        self._done(c, now)

    def _done(self, c: Client, now: int) -> None:
        self.completed += 1
        c.op = None
        c.next_op_at = now + self.rng.randint(0, 20)

    def _record(self, c: Client, kind: str, op: Op, value) -> None:
        self.events.append({"process": c.process, "type": kind, "f": op.f, "key": op.key, "value": value})
