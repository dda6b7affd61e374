"""Membership and placement jobs: what `multiraft-admin` asks a coordinator to do.

A job runs in the coordinator that received it (so it goes on if the admin
process dies) as a sequence of small steps, each checked against the live
cluster just before it runs and each idempotent: a job looks at the group's
Raft config (fresh, from its leader) and does only what is still missing. So
rerunning a command that was interrupted (admin, coordinator or group leader
killed) finishes it, or reports that it is done.

The steps, and who does what:

- "create an empty replica of g on node N": N's coordinator places it on its
  least loaded worker, persists placement.json and tells the worker
  (["add_group", g]); the replica starts empty and learns everything from
  its leader. An empty replica that is not in the Raft config is harmless.
- a membership change: proposed at the group leader's worker
  (["conf_change", g, changes, joint] on its client port); the job then
  watches the leader's ["group_status", g] until the change is applied (and,
  for a joint change, until the joint config is left: the core leaves it by
  itself, and a new leader finishes the leave);
- "caught up": the leader's progress for the learner is within
  CATCH_UP_LAG_ENTRIES of its last index;
- "delete the replica of g on N" once N is out of the config: N's
  coordinator removes it from placement.json and its worker deletes the
  group's log records and snapshot (["remove_group", g]).

Rules (multiraft.placement): one job at a time per group (a second one fails
with a message naming the first, unless it is the very same command, which
waits for it); changes of voters need a live majority of the current voters
and leave one among the new voters; every change of more than one voter is
joint; no replica is added on a node that is down or already holds one.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from multiraft import protocol
from multiraft.client import ClientError, Connection, ConnectionLost, coordinator_request, open_connection
from multiraft.placement import (
    ClusterState,
    DropReplica,
    GroupState,
    Move,
    Refused,
    Transfer,
    WorkerMove,
    check_new_replica,
    check_not_joint,
    check_step,
    check_transfer,
    check_voters_change,
    cluster_state_from_status,
    plan_drain,
    plan_rebalance,
)

if TYPE_CHECKING:  # pragma: no cover
    from multiraft.coordinator import Coordinator

__all__ = ["JobRunner", "JobError", "COMMANDS"]

_log = logging.getLogger("multiraft.jobs")

CATCH_UP_LAG_ENTRIES = 64
CATCH_UP_TIMEOUT_S = 120.0
LEADER_TIMEOUT_S = 30.0
CHANGE_TIMEOUT_S = 60.0
WORKER_CALL_TIMEOUT_S = 3.0
POLL_S = 0.05
JOBS_KEPT = 100

# command -> argument names (all required; "force" and "dry_run" are flags)
COMMANDS = {
    "add-learner": ("group", "node"),
    "promote": ("group", "node"),
    "add-voter": ("group", "node"),
    "remove-replica": ("group", "node"),
    "move-replica": ("group", "source", "target"),
    "transfer-leader": ("group", "node"),
    "drain": ("node",),
    "rebalance": (),
    "remove-node": ("node",),
}
_FLAGS = ("force", "dry_run")


class JobError(Exception):
    """The job cannot go on: the message says why (and what to do)."""


class Job:
    def __init__(self, job_id: str, command: str, args: dict) -> None:
        self.id = job_id
        self.command = command
        self.args = args
        self.state = "running"
        self.steps: list[str] = []
        self.error: str | None = None
        self.result: Any = None
        self.started = time.time()
        self.finished: float | None = None
        self.groups: set[int] = set()  # locked now
        self.done = trio.Event()

    def step(self, text: str) -> None:
        self.steps.append(text)
        _log.info("job %s (%s): %s", self.id, self.describe(), text)

    def describe(self) -> str:
        parts = [self.command] + [str(self.args[a]) for a in COMMANDS[self.command]]
        parts += [f"--{f.replace('_', '-')}" for f in _FLAGS if self.args.get(f)]
        return " ".join(parts)

    def doc(self) -> dict:
        return {
            "id": self.id,
            "command": self.command,
            "args": self.args,
            "describe": self.describe(),
            "state": self.state,
            "steps": list(self.steps),
            "error": self.error,
            "result": self.result,
            "started": self.started,
            "finished": self.finished,
        }


def parse_job_request(command: Any, args: Any) -> dict:
    """Check the shape of ["admin", command, args] (Refused if malformed)."""
    if command not in COMMANDS:
        raise Refused(f"unknown admin command {command!r}; known: {', '.join(COMMANDS)}")
    if not isinstance(args, dict):
        raise Refused("admin arguments must be a map")
    out: dict = {}
    for name in COMMANDS[command]:
        value = args.get(name)
        if name == "group":
            if type(value) is not int or value < 0:
                raise Refused(f"group must be an int >= 0, not {value!r}")
        elif not isinstance(value, str) or not value:
            raise Refused(f"{name} must be a node id, not {value!r}")
        out[name] = value
    for flag in _FLAGS:
        if args.get(flag):
            out[flag] = True
    return out


class JobRunner:
    """The jobs of one coordinator (see the module docstring)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coord = coordinator
        self.jobs: dict[str, Job] = {}
        self.locks: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._conns: dict[str, Connection] = {}
        self._conn_locks: dict[str, trio.Lock] = {}
        self._lock_changed = trio.Event()

    # --- the API (protocol channel 2) ---

    def busy(self) -> dict[int, str]:
        """{group: "job-id: command"} for the groups being changed here."""
        return {g: f"{j.id}: {j.describe()}" for g, j in self.locks.items()}

    def job_doc(self, job_id: Any) -> dict | None:
        job = self.jobs.get(job_id)
        return job.doc() if job else None

    def list_docs(self) -> list[dict]:
        return [j.doc() for j in self.jobs.values()]

    async def start(self, command: Any, args: Any, nursery: trio.Nursery) -> tuple[str, Any]:
        """Check a request and start its job: (status, payload)."""
        try:
            parsed = parse_job_request(command, args)
            for job in self.jobs.values():
                if job.state == "running" and job.command == command and job.args == parsed:
                    return protocol.OK, {"job": job.id, "attached": True, "node": self.coord.node_id}
            cluster = self.cluster()
            if "group" in parsed and parsed["group"] in cluster.groups:
                # the group's config fresh from its leader, if it has one
                try:
                    cluster = self._with_fresh(cluster, await self.leader_status(parsed["group"], timeout_s=3.0))
                except JobError:
                    pass
            for job in self.jobs.values():  # (the same command may have started meanwhile)
                if job.state == "running" and job.command == command and job.args == parsed:
                    return protocol.OK, {"job": job.id, "attached": True, "node": self.coord.node_id}
            self._precheck(command, parsed, cluster)
        except Refused as exc:
            return protocol.ERROR, str(exc)
        job = Job(f"{self.coord.node_id}-{next(self._ids)}", command, parsed)
        if "group" in parsed:
            try:
                self._lock(job, parsed["group"])
            except JobError as exc:
                return protocol.ERROR, str(exc)
        self.jobs[job.id] = job
        while len(self.jobs) > JOBS_KEPT:
            oldest = next((j for j in self.jobs.values() if j.state != "running"), None)
            if oldest is None:
                break
            del self.jobs[oldest.id]
        nursery.start_soon(self._run, job)
        return protocol.OK, {"job": job.id, "attached": False, "node": self.coord.node_id}

    # --- locks ---

    def _lock(self, job: Job, g: int) -> None:
        holder = self.locks.get(g)
        if holder is not None and holder is not job:
            raise JobError(
                f"group {g} is being changed by job {holder.id} ({holder.describe()}): "
                "one change at a time per group; wait for it (multiraft-admin jobs) and retry"
            )
        for node, busy in self.coord.peer_busy().items():
            if g in busy:
                raise JobError(
                    f"group {g} is being changed by node {node}'s coordinator (job {busy[g]}): "
                    "one change at a time per group; wait for it and retry"
                )
        self.locks[g] = job
        job.groups.add(g)

    async def _lock_wait(self, job: Job, g: int, timeout_s: float = CHANGE_TIMEOUT_S) -> None:
        deadline = trio.current_time() + timeout_s
        while True:
            try:
                self._lock(job, g)
                return
            except JobError:
                if trio.current_time() >= deadline:
                    raise
            with trio.move_on_at(min(deadline, trio.current_time() + 0.5)):
                await self._lock_changed.wait()

    def _unlock(self, job: Job, g: int) -> None:
        if self.locks.get(g) is job:
            del self.locks[g]
        job.groups.discard(g)
        event, self._lock_changed = self._lock_changed, trio.Event()
        event.set()

    # --- running ---

    async def _run(self, job: Job) -> None:
        handler = getattr(self, "_do_" + job.command.replace("-", "_"))
        try:
            result = await handler(job, **{k: v for k, v in job.args.items()})
            if isinstance(result, dict) and result.get("group") is not None:
                await self._await_view(result)
            job.result = result
            job.state = "done"
            job.step("done")
        except (JobError, Refused) as exc:
            job.state = "failed"
            job.error = str(exc)
            _log.warning("job %s (%s) failed: %s", job.id, job.describe(), exc)
        except Exception as exc:  # a bug of ours: report it, keep the coordinator
            _log.exception("job %s (%s) crashed", job.id, job.describe())
            job.state = "failed"
            job.error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            for g in list(job.groups):
                self._unlock(job, g)
            job.finished = time.time()
            job.done.set()

    # --- the cluster as known now ---

    def cluster(self) -> ClusterState:
        return cluster_state_from_status(self.coord.cluster_status_doc())

    def _with_fresh(self, cluster: ClusterState, st: dict) -> ClusterState:
        gs = GroupState(
            st["group"],
            frozenset(st.get("voters") or ()),
            frozenset(st.get("learners") or ()),
            frozenset(st.get("voters_outgoing") or ()),
            st.get("node"),
            cluster.group(st["group"]).placed if st["group"] in cluster.groups else {},
        )
        return cluster.with_group(gs)

    def _precheck(self, command: str, a: dict, cluster: ClusterState) -> None:
        """Immediate refusals: from what this coordinator last polled, and the
        group's config as its leader has it now."""
        if "group" in a:
            cluster.group(a["group"])  # Refused if there is no such group
        for name in ("node", "source", "target"):
            if name in a and a[name] not in cluster.nodes and command != "remove-node":
                raise Refused(f"node {a[name]} is not a member of the cluster")
        if command in ("add-learner", "add-voter"):
            gs = cluster.group(a["group"])
            if a["node"] not in gs.members:
                check_new_replica(cluster, a["group"], a["node"])
            if command == "add-voter" and a["node"] not in gs.voters:
                check_voters_change(cluster, a["group"], gs.voters | {a["node"]})
        elif command == "promote":
            gs = cluster.group(a["group"])
            if a["node"] not in gs.members:
                raise Refused(f"node {a['node']} is not a learner of group {a['group']}: add it first (add-learner)")
            if a["node"] not in gs.voters:
                if not cluster.is_up(a["node"]):
                    raise Refused(f"node {a['node']} is down: it cannot become a voter")
                check_voters_change(cluster, a["group"], gs.voters | {a["node"]})
        elif command == "remove-replica":
            gs = cluster.group(a["group"])
            if a["node"] in gs.voters:
                check_voters_change(cluster, a["group"], gs.voters - {a["node"]})
        elif command == "move-replica":
            gs = cluster.group(a["group"])
            # joint: leaving by itself (perhaps this very move, interrupted); the job waits
            if not gs.joint and not (a["target"] in gs.voters and a["source"] not in gs.members):
                if a["target"] in gs.voters:
                    raise Refused(
                        f"node {a['target']} already holds a replica of group {a['group']} (as voter): "
                        f"use remove-replica {a['group']} {a['source']}"
                    )
                if a["target"] in gs.members:  # a learner: an interrupted move, or add-learner
                    if a["source"] in gs.voters:
                        check_voters_change(cluster, a["group"], (gs.voters - {a["source"]}) | {a["target"]})
                else:
                    check_step(cluster, Move(a["group"], a["source"], a["target"]))
        elif command == "transfer-leader":
            check_transfer(cluster, a["group"], a["node"])
        elif command == "drain":
            plan_drain(cluster, a["node"])
        elif command == "remove-node":
            self._check_remove_node(cluster, a["node"], bool(a.get("force")))

    # --- talking to workers and coordinators ---

    async def _conn(self, address: str) -> Connection:
        lock = self._conn_locks.setdefault(address, trio.Lock())
        async with lock:  # one connection per worker, however many tasks ask
            conn = self._conns.get(address)
            if conn is None or conn.closed:
                conn = await open_connection(self.coord.nursery, address, timeout_s=WORKER_CALL_TIMEOUT_S)
                self._conns[address] = conn
            return conn

    def _worker_address(self, g: int, node: str) -> str | None:
        table = self.coord.routing
        try:
            w = table["groups"][g]["replicas"].get(node)
            n = table["nodes"][node]
            if w is None or not n.get("up"):
                return None
            return n["workers"][w]["client_address"]
        except (KeyError, IndexError, TypeError):
            return None

    async def worker_call(self, g: int, node: str, body: list) -> tuple[str, Any]:
        """One request to the worker hosting node's replica of g.
        ("unreachable", reason) if it cannot be asked."""
        address = self._worker_address(g, node)
        if address is None:
            return "unreachable", f"{node} has no known replica of group {g} that is up"
        try:
            with trio.fail_after(WORKER_CALL_TIMEOUT_S):
                conn = await self._conn(address)
                return await conn.request(body)
        except (OSError, ConnectionLost, trio.TooSlowError) as exc:
            conn = self._conns.pop(address, None)
            if conn is not None:
                conn.close()
            return "unreachable", f"{node} ({address}): {exc or type(exc).__name__}"

    async def coordinator_call(self, node: str, body: list, timeout_s: float = 10.0) -> Any:
        """A request to node's coordinator (this one directly); JobError on failure."""
        if node == self.coord.node_id:
            status, payload = await self.coord.handle_async(["local", *body])
            if status != protocol.OK:
                raise JobError(f"{node}: {payload}")
            return payload
        address = self.coord.member_address(node)
        if address is None:
            raise JobError(f"node {node} is not a member of the cluster")
        try:
            return await coordinator_request([address], body, timeout_s=timeout_s)
        except ClientError as exc:
            raise JobError(f"{node}'s coordinator: {exc}") from None

    async def leader_status(self, g: int, timeout_s: float = LEADER_TIMEOUT_S) -> dict:
        """The group's status as its leader sees it now (with "node": the
        leader and "progress": every replica's match index)."""
        deadline = trio.current_time() + timeout_s
        problems: list[str] = []
        while True:
            table = self.coord.routing
            info = (table.get("groups") or {}).get(g) or {}
            answers: dict[str, tuple[str, Any]] = {}

            async def ask(node: str, answers: dict[str, tuple[str, Any]] = answers) -> None:
                answers[node] = await self.worker_call(g, node, ["group_status", g])

            async with trio.open_nursery() as nursery:  # every replica at once
                for node in sorted(info.get("replicas") or {}):
                    nursery.start_soon(ask, node)
            best = None
            problems = []
            newest = 0
            for node, (status, st) in sorted(answers.items()):
                if status != protocol.OK or not isinstance(st, dict):
                    problems.append(f"{node}: {status} {st}")
                    continue
                newest = max(newest, int(st.get("term", 0)))
                if st.get("role") == "leader" and (best is None or st["term"] > best["term"]):
                    best = {**st, "node": node, "group": g}
            # A leader that a replica has seen a newer term than is stale (a
            # newer leader may hold a config it does not know yet): decisions
            # such as deleting a replica must not rest on its config.
            if best is not None and best["term"] >= newest:
                return best
            if best is not None:
                problems.append(f"{best['node']} leads term {best['term']} but a replica is at term {newest}")
            if trio.current_time() >= deadline:
                raise JobError(f"group {g} has no leader ({'; '.join(problems) or 'no replica answered'})")
            await trio.sleep(0.1)

    async def _await_view(self, conf: dict, timeout_s: float = 5.0) -> None:
        """Until this coordinator's merged status (what `status` prints) shows
        the group as its leader reported it at the end of the job: it lags by
        a status interval and a poll."""
        g = conf["group"]
        want = (set(conf.get("voters") or ()), set(conf.get("learners") or ()), set(conf.get("voters_outgoing") or ()))
        with trio.move_on_after(timeout_s):
            while True:
                grp = self.coord.cluster_status_doc()["groups"][g]
                have = (set(grp["voters"]), set(grp["learners"]), set(grp["voters_outgoing"]))
                if have == want and grp["leader"] == conf.get("leader"):
                    return
                await trio.sleep(POLL_S)

    # --- building blocks ---

    async def ensure_replica(self, job: Job, g: int, node: str) -> str:
        """Make sure `node` hosts a replica of g; its replica id (multiraft.replica)."""
        result = await self.coordinator_call(node, ["add_replica", g])
        rid = result.get("replica") or node
        if result.get("existed"):
            job.step(f"{node} already holds a replica of group {g} ({rid}, worker {result.get('worker')})")
        else:
            job.step(f"created an empty replica {rid} of group {g} on {node} (worker {result.get('worker')})")
        return rid

    async def drop_replica(self, job: Job, g: int, node: str) -> None:
        if node not in self.coord.views():
            return
        view = self.coord.views()[node]
        if not view.get("up"):
            job.step(
                f"{node} is down: its copy of group {g} is deleted when you run this command again "
                "after it is back (until then it is ignored)"
            )
            return
        deadline = trio.current_time() + CHANGE_TIMEOUT_S
        while True:
            try:
                result = await self.coordinator_call(node, ["drop_replica", g])
                break
            except JobError as exc:
                # The leader has a membership change not yet applied: wait for it.
                if "membership change is in progress" not in str(exc) or trio.current_time() >= deadline:
                    raise
                await trio.sleep(POLL_S)
        if result.get("existed"):
            job.step(f"deleted {node}'s copy of group {g}")

    async def change(
        self,
        job: Job,
        g: int,
        changes: list[list[str]],
        joint: bool,
        done: Callable[[dict], bool],
        check: Callable[[dict], None] | None = None,
    ) -> dict:
        """Propose `changes` at the leader until `done(leader status)`: the
        change is applied and no joint config is left."""
        deadline = trio.current_time() + CHANGE_TIMEOUT_S
        proposed = False
        while True:
            st = await self.leader_status(g)
            if done(st) and not st.get("voters_outgoing"):
                return st
            if trio.current_time() >= deadline:
                raise JobError(
                    f"group {g}: the change did not complete in {CHANGE_TIMEOUT_S:.0f}s (config now {_conf(st)})"
                )
            if st.get("voters_outgoing"):
                await trio.sleep(POLL_S)  # leaving a joint config: the core does it
                continue
            if check is not None:
                check(st)
            status, payload = await self.worker_call(g, st["node"], ["conf_change", g, changes, joint])
            if status == protocol.OK:
                if not proposed:
                    job.step(
                        f"group {g}: proposed {_changes(changes)}{' as one joint change' if joint else ''} "
                        f"at {st['node']} (index {payload['index']})"
                    )
                proposed = True
                await self._wait_applied(g, payload["index"], payload["term"], deadline)
                continue
            if status == protocol.ERROR and "in progress" not in str(payload):
                raise JobError(f"group {g}: {st['node']} refused {_changes(changes)}: {payload}")
            await trio.sleep(0.1)  # not leader any more, busy, another change pending

    async def _wait_applied(self, g: int, index: int, term: int, deadline: float) -> None:
        while trio.current_time() < deadline:
            try:
                st = await self.leader_status(g, timeout_s=max(0.5, deadline - trio.current_time()))
            except JobError:
                return
            if st["term"] != term or st["applied"] >= index:
                return
            await trio.sleep(POLL_S)

    async def wait_caught_up(self, job: Job, g: int, node: str) -> None:
        deadline = trio.current_time() + CATCH_UP_TIMEOUT_S
        said = -1.0
        while True:
            st = await self.leader_status(g)
            match = (st.get("progress") or {}).get(node)
            if isinstance(match, int):
                lag = st["last_index"] - match
                if lag <= CATCH_UP_LAG_ENTRIES:
                    job.step(f"{node} caught up on group {g} (lag {lag} entries)")
                    return
            else:
                lag = None
            now = trio.current_time()
            if now >= deadline:
                raise JobError(f"{node} did not catch up on group {g} in {CATCH_UP_TIMEOUT_S:.0f}s (lag {lag})")
            if now - said > 3.0:
                job.step(f"waiting for {node} to catch up on group {g} (lag {lag if lag is not None else '?'} entries)")
                said = now
            await trio.sleep(0.1)

    async def transfer(self, job: Job, g: int, node: str) -> dict:
        deadline = trio.current_time() + LEADER_TIMEOUT_S
        asked_at = -100.0
        wait_s = max(1.0, 3 * self.coord.options.election_tick * self.coord.options.tick_ms / 1000)
        while True:
            st = await self.leader_status(g)
            if st["node"] == node:
                return st
            now = trio.current_time()
            if now >= deadline:
                raise JobError(f"group {g}: leadership did not move to {node} (leader {st['node']})")
            if now - asked_at > wait_s:
                status, payload = await self.worker_call(g, st["node"], ["transfer_leader", g, node])
                if status == protocol.ERROR:
                    raise JobError(f"group {g}: {st['node']} refused to transfer leadership: {payload}")
                if status == protocol.OK:
                    job.step(f"group {g}: transferring leadership from {st['node']} to {node}")
                    asked_at = now
            await trio.sleep(POLL_S)

    async def _move_leadership_off(self, job: Job, g: int, node: str, keep: frozenset[str]) -> None:
        """If node leads g, hand leadership to the most caught-up live voter in `keep`."""
        st = await self.leader_status(g)
        if st["node"] != node:
            return
        cluster = self.cluster()
        progress = st.get("progress") or {}
        others = sorted(
            (v for v in keep if v != node and cluster.is_up(v)),
            key=lambda v: (-(progress.get(v) or 0), v),
        )
        if not others:
            job.step(f"group {g}: no other live voter to take over from {node}: it hands off after the change")
            return
        try:
            await self.transfer(job, g, others[0])
        except JobError as exc:
            job.step(f"group {g}: {exc}; the removed leader hands off by itself")

    # --- the commands ---

    def _fresh_check(self, g: int, new_voters: Callable[[dict], frozenset[str]]) -> Callable[[dict], None]:
        def check(st: dict) -> None:
            cluster = self._with_fresh(self.cluster(), st)
            check_voters_change(cluster, g, new_voters(st))
        return check

    async def _add_learner(self, job: Job, g: int, node: str) -> dict:
        st = await self.settled_status(g)
        if node in st["voters"] or node in st["learners"]:
            await self.ensure_replica(job, g, node)
            return st
        cluster = self._with_fresh(self.cluster(), st)
        check_not_joint(cluster.group(g))
        check_new_replica(cluster, g, node)
        rid = await self.ensure_replica(job, g, node)
        job.step(f"group {g}: adding {node} as a learner")
        return await self.change(
            job, g, [["add_learner", rid]], False,
            done=lambda s: node in s["learners"] or node in s["voters"],
        )

    async def _do_add_learner(self, job: Job, group: int, node: str, **_: Any) -> dict:
        st = await self._add_learner(job, group, node)
        return _conf_doc(st)

    async def _promote(self, job: Job, g: int, node: str, force: bool) -> dict:
        st = await self.settled_status(g)
        if node in st["voters"] and not st.get("voters_outgoing"):
            job.step(f"{node} is already a voter of group {g}")
            return st
        if node not in st["learners"]:
            raise JobError(f"node {node} is not a learner of group {g}: add it first (add-learner)")
        if not self.cluster().is_up(node):
            raise JobError(f"node {node} is down: it cannot become a voter")
        if not force:
            await self.wait_caught_up(job, g, node)
        job.step(f"group {g}: promoting {node} to voter")
        return await self.change(
            job, g, [["add_voter", node]], False,
            done=lambda s: node in s["voters"],
            check=self._fresh_check(g, lambda s: frozenset(s["voters"]) | {node}),
        )

    async def _do_promote(self, job: Job, group: int, node: str, force: bool = False, **_: Any) -> dict:
        return _conf_doc(await self._promote(job, group, node, force))

    async def _do_add_voter(self, job: Job, group: int, node: str, force: bool = False, **_: Any) -> dict:
        st = await self.settled_status(group)
        if node in st["voters"] and not st.get("voters_outgoing"):
            job.step(f"{node} is already a voter of group {group}")
            await self.ensure_replica(job, group, node)
            return _conf_doc(st)
        await self._add_learner(job, group, node)
        return _conf_doc(await self._promote(job, group, node, force))

    async def _do_remove_replica(self, job: Job, group: int, node: str, **_: Any) -> dict:
        g = group
        st = await self.settled_status(g)
        members = set(st["voters"]) | set(st["learners"]) | set(st.get("voters_outgoing") or ())
        if node in members:
            if node in st["voters"]:
                cluster = self._with_fresh(self.cluster(), st)
                check_voters_change(cluster, g, frozenset(st["voters"]) - {node})
                await self._move_leadership_off(job, g, node, frozenset(st["voters"]) - {node})
            job.step(f"group {g}: removing {node} ({'voter' if node in st['voters'] else 'learner'})")
            st = await self.change(
                job, g, [["remove", node]], False,
                done=lambda s: node not in s["voters"] and node not in s["learners"],
                check=self._fresh_check(g, lambda s: frozenset(s["voters"]) - {node}),
            )
            st = await self._leader_other_than(g, node)
        else:
            job.step(f"{node} is not in group {g}'s config")
        await self.drop_replica(job, g, node)
        return _conf_doc(st)

    async def settled_status(self, g: int) -> dict:
        """The leader's status once no joint config is in progress (the core
        leaves it by itself: perhaps an interrupted run of this very command)."""
        deadline = trio.current_time() + CHANGE_TIMEOUT_S
        while True:
            st = await self.leader_status(g)
            if not st.get("voters_outgoing"):
                return st
            if trio.current_time() >= deadline:
                raise JobError(f"group {g} did not leave its joint config ({_conf(st)})")
            await trio.sleep(POLL_S)

    async def _leader_other_than(self, g: int, node: str) -> dict:
        deadline = trio.current_time() + LEADER_TIMEOUT_S
        while True:
            st = await self.leader_status(g)
            if st["node"] != node or trio.current_time() >= deadline:
                return st
            await trio.sleep(POLL_S)

    async def _do_move_replica(self, job: Job, group: int, source: str, target: str, **_: Any) -> dict:
        g = group
        if source == target:
            raise JobError("source and target are the same node")
        st = await self.settled_status(g)
        members = set(st["voters"]) | set(st["learners"]) | set(st.get("voters_outgoing") or ())
        if target in members and source not in members and not st.get("voters_outgoing"):
            job.step(f"group {g} already has {target} and not {source}")
            await self.drop_replica(job, g, source)
            return _conf_doc(st)
        if source not in members:
            raise JobError(f"node {source} holds no replica of group {g} (config {_conf(st)})")
        source_is_voter = source in st["voters"] or source in (st.get("voters_outgoing") or ())
        if target not in members:
            cluster = self._with_fresh(self.cluster(), st)
            check_step(cluster, Move(g, source, target))
            await self._add_learner(job, g, target)
        elif target in st["voters"] and source_is_voter:
            raise JobError(f"{target} is already a voter of group {g}: use remove-replica {g} {source}")
        await self.wait_caught_up(job, g, target)
        if source_is_voter:
            st = await self.leader_status(g)
            await self._move_leadership_off(job, g, source, frozenset(st["voters"]) - {source})
            job.step(f"group {g}: replacing voter {source} by {target} (enter joint, then leave)")
            st = await self.change(
                job, g, [["add_voter", target], ["remove", source]], True,
                done=lambda s: target in s["voters"] and source not in s["voters"] and source not in s["learners"],
                check=self._fresh_check(g, lambda s: (frozenset(s["voters"]) - {source}) | {target}),
            )
            job.step(f"group {g}: left the joint config; voters {','.join(st['voters'])}")
        else:
            job.step(f"group {g}: removing learner {source}")
            st = await self.change(
                job, g, [["remove", source]], False,
                done=lambda s: source not in s["learners"] and source not in s["voters"],
            )
        st = await self._leader_other_than(g, source)
        await self.drop_replica(job, g, source)
        return _conf_doc(st)

    async def _do_transfer_leader(self, job: Job, group: int, node: str, **_: Any) -> dict:
        st = await self.leader_status(group)
        cluster = self._with_fresh(self.cluster(), st)
        check_transfer(cluster, group, node)
        st = await self.transfer(job, group, node)
        job.step(f"group {group}: {node} leads (term {st['term']})")
        return _conf_doc(st)

    async def _run_steps(self, job: Job, steps: list) -> None:
        """Run planned steps one by one, each checked again when it runs; then
        wait until this coordinator's view shows the result."""
        confs: dict[int, dict] = {}
        for i, step in enumerate(steps, 1):
            groups = {step.group}
            job.step(f"[{i}/{len(steps)}] {step.describe()}")
            for g in groups:
                await self._lock_wait(job, g)
            try:
                if isinstance(step, Move):
                    confs[step.group] = await self._do_move_replica(job, step.group, step.source, step.target)
                elif isinstance(step, Transfer):
                    confs[step.group] = await self._do_transfer_leader(job, step.group, step.target)
                elif isinstance(step, DropReplica):
                    confs[step.group] = await self._do_remove_replica(job, step.group, step.node)
                elif isinstance(step, WorkerMove):
                    await self._worker_move(job, step)
            finally:
                for g in groups:
                    self._unlock(job, g)
        for conf in confs.values():
            await self._await_view(conf, timeout_s=2.0)

    async def _worker_move(self, job: Job, step: WorkerMove) -> None:
        st = await self.leader_status(step.group)
        if st["node"] == step.node:
            await self._move_leadership_off(job, step.group, step.node, frozenset(st["voters"]))
        try:
            result = await self.coordinator_call(
                step.node, ["move_worker", step.group, step.source_worker, step.target_worker]
            )
        except JobError as exc:  # planned from a view that changed since: skip it
            job.step(f"skipped: {exc}")
            return
        job.step(f"group {step.group} on {step.node}: now on worker {result.get('worker')}")

    async def _do_drain(self, job: Job, node: str, **_: Any) -> dict:
        steps = plan_drain(self.cluster(), node)
        if not steps:
            job.step(f"{node} holds no replica")
        else:
            job.step(f"plan: {len(steps)} step(s): " + "; ".join(s.describe() for s in steps))
        await self._run_steps(job, steps)
        left = []
        for g, gs in sorted(self.cluster().groups.items()):
            if node in gs.members:  # as last polled: ask the leader
                st = await self.leader_status(g)
                if node in set(st["voters"]) | set(st["learners"]) | set(st.get("voters_outgoing") or ()):
                    left.append(g)
        if left:
            raise JobError(f"{node} still holds replicas of groups {left} (did something else add them?)")
        return {"node": node, "steps": [s.describe() for s in steps]}

    async def _do_rebalance(self, job: Job, dry_run: bool = False, **_: Any) -> dict:
        steps = plan_rebalance(self.cluster())
        described = [s.describe() for s in steps]
        if not steps:
            job.step("the cluster is balanced: nothing to do")
        elif dry_run:
            job.step(f"plan ({len(steps)} steps, not applied):")
            for i, text in enumerate(described, 1):
                job.step(f"  {i}. {text}")
        else:
            job.step(f"plan: {len(steps)} step(s)")
            await self._run_steps(job, steps)
        return {"steps": described, "applied": bool(steps) and not dry_run}

    def _check_remove_node(self, cluster: ClusterState, node: str, force: bool) -> None:
        if node not in cluster.nodes:
            raise Refused(f"node {node} is not a member of the cluster")
        held = sorted(g for g, gs in cluster.groups.items() if node in gs.members)
        if held:
            raise Refused(
                f"node {node} still holds replicas of groups {held}: move them first (multiraft-admin drain {node})"
            )
        if not cluster.is_up(node) and not force:
            raise Refused(
                f"node {node} is down, so what it holds cannot be checked. No group's config names it, so "
                "retiring it is safe: rerun with --force"
            )

    async def _do_remove_node(self, job: Job, node: str, force: bool = False, **_: Any) -> dict:
        cluster = self.cluster()
        self._check_remove_node(cluster, node, force)
        for g, gs in sorted(cluster.groups.items()):
            if node in gs.placed and node not in gs.members and cluster.is_up(node):
                await self._lock_wait(job, g)
                try:
                    await self.drop_replica(job, g, node)
                finally:
                    self._unlock(job, g)
        self.coord.retire_member(node)
        job.step(f"node {node} is retired from the cluster")
        deadline = trio.current_time() + 10.0
        while trio.current_time() < deadline:
            pending = self.coord.peers_not_knowing_removal(node)
            if not pending:
                job.step("every node that is up knows it")
                break
            await trio.sleep(0.1)
        else:
            job.step(f"nodes {','.join(pending)} have not heard yet; they will from their peers")
        return {"node": node}


def _changes(changes: list[list[str]]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in changes)


def _conf(st: dict) -> str:
    text = f"voters {','.join(st.get('voters') or []) or '-'}"
    if st.get("learners"):
        text += f", learners {','.join(st['learners'])}"
    if st.get("voters_outgoing"):
        text += f", joint with {','.join(st['voters_outgoing'])}"
    return text


def _conf_doc(st: dict) -> dict:
    return {
        "group": st.get("group"),
        "leader": st.get("node"),
        "term": st.get("term"),
        "voters": st.get("voters"),
        "learners": st.get("learners"),
        "voters_outgoing": st.get("voters_outgoing"),
    }
