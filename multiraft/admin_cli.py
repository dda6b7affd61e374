"""`multiraft-admin`: look at a cluster, and change its membership and placement.

    multiraft-admin --cluster 127.0.0.1:7100 status          # a readable table
    multiraft-admin --cluster 127.0.0.1:7100 status --json   # one JSON object
    multiraft-admin add-voter 3 n4                           # and the other changes below

Any coordinator of the cluster can answer: it merges what it polls from its
peers (about every half second), so the view may lag by a second.

A change is a *job* run by the coordinator this command talks to (so it goes
on if this command is interrupted): this command starts it, prints its steps
as they happen, and exits 0 once the change is committed and applied (1 if
it failed or was refused: the message says why). Rerunning an interrupted
command finishes it, or reports that it is done. See multiraft.jobs and
docs/operations.md.

Exit codes: 0 done; 1 refused, failed, or the cluster is unreachable; 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, NoReturn

import trio

from multiraft.nodeconfig import ConfigError, format_address, parse_cluster

PROG = "multiraft-admin"
STATUS_TIMEOUT_S = 5.0
CHANGE_TIMEOUT_S = 600.0
JOB_POLL_S = 0.2

_EPILOG = """\
commands that change the cluster (each prints its steps, waits until the change is
committed and applied, and exits 0 only then; --json prints the finished job as JSON):
  add-learner GROUP NODE        a non-voting replica of GROUP on NODE
  promote GROUP NODE            learner -> voter
  add-voter GROUP NODE          add as learner, wait until caught up, then promote
  remove-replica GROUP NODE     remove a voter or learner (leadership moves off NODE first)
  move-replica GROUP FROM TO    learner on TO, catch up, one joint change {+TO, -FROM}
  transfer-leader GROUP NODE    make NODE lead GROUP
  drain NODE                    move every replica off NODE, to the least loaded nodes
  rebalance [--dry-run]         even out replicas and leaders over nodes (and workers)
  remove-node NODE              retire a node that holds no replica
  jobs / job ID                 the changes a coordinator ran or is running

examples:
  multiraft-admin status                                   # ask 127.0.0.1:7100 (or $MULTIRAFT_CLUSTER)
  multiraft-admin --cluster 127.0.0.1:7100,127.0.0.1:7200 status
  multiraft-admin status --json | python -m json.tool      # nodes, workers, groups as JSON
  multiraft-admin add-voter 3 n4
  multiraft-admin drain n1 && multiraft-admin remove-node n1

Group ids and node ids are those `status` shows. Safety: one change at a time per
group; a change is refused if it would leave a group without a live majority (nodes
that are down do not count), remove its last voter, or add a replica on a node that
is down or already holds one. Every change of more than one voter goes through joint
consensus.

status --json prints one object with at least
  "nodes":  [{"id", "address", "up", "workers": [...]}, ...]
  "groups": [{"id", "leader", "term", "commit", "applied", "voters", "learners",
              "voters_outgoing", "joint", "replicas": [{"node", "worker", "up", "member", "lag", ...}]}, ...]
"""

_RULES = (
    "The command prints its steps, waits until the change is committed and applied, and exits 0 only "
    "then (1 if refused or failed, with the reason). If it is interrupted, the coordinator finishes the "
    "job anyway; running the same command again waits for it, finishes it, or reports that it is done."
)

# name -> (help, description, [(arg, help)], flags)
_COMMANDS: dict[str, tuple[str, str, list[tuple[str, str]], list[tuple[str, str]], str]] = {
    "add-learner": (
        "add a learner (non-voting replica) of GROUP on NODE",
        "Create an empty replica of GROUP on NODE (on its least loaded worker) and add it to the group's "
        "config as a learner: it receives the log but does not vote. Refused if NODE is down or already "
        "holds a replica of GROUP.",
        [("group", "group id"), ("node", "node id")], [], "multiraft-admin add-learner 3 n4",
    ),
    "promote": (
        "make a learner of GROUP on NODE a voter",
        "Wait until the learner on NODE is caught up with the leader's log, then make it a voter (one "
        "single-voter change). Refused if NODE is down or not a learner of GROUP.",
        [("group", "group id"), ("node", "node id")],
        [("--force", "do not wait for NODE to catch up (safe, but the group may commit more slowly until it does)")],
        "multiraft-admin promote 3 n4",
    ),
    "add-voter": (
        "add NODE to GROUP as a voter (learner, catch up, promote)",
        "Add NODE as a learner of GROUP, wait until it has caught up with the leader, then promote it to "
        "voter. Refused if NODE is down or already holds a replica of GROUP.",
        [("group", "group id"), ("node", "node id")],
        [("--force", "promote without waiting for NODE to catch up")],
        "multiraft-admin add-voter 3 n4",
    ),
    "remove-replica": (
        "remove NODE's replica of GROUP (voter or learner)",
        "Remove NODE from GROUP's config (if NODE leads GROUP, leadership moves to another caught-up voter "
        "first), then delete NODE's copy of the group. Refused if it would remove the last voter or leave "
        "the group without a live majority of voters (nodes that are down do not count).",
        [("group", "group id"), ("node", "node id")], [], "multiraft-admin remove-replica 3 n1",
    ),
    "move-replica": (
        "move GROUP's replica from node FROM to node TO",
        "Add TO as a learner, wait until it has caught up, then replace FROM by TO in one joint change "
        "(enter the joint config {old, new}, commit on both majorities, leave it), then delete FROM's copy. "
        "A learner moves as a learner. Refused if TO is down or holds a replica of GROUP already, or if the "
        "change would leave the group without a live majority.",
        [("group", "group id"), ("source", "the node to move the replica off (FROM)"),
         ("target", "the node to move it to (TO)")], [], "multiraft-admin move-replica 3 n1 n4",
    ),
    "transfer-leader": (
        "make NODE the leader of GROUP",
        "Ask GROUP's leader to hand leadership to NODE (which is caught up first), and wait until NODE "
        "leads. NODE must be a voter on a node that is up.",
        [("group", "group id"), ("node", "node id")], [], "multiraft-admin transfer-leader 3 n2",
    ),
    "drain": (
        "move every replica off NODE",
        "Plan and run a move-replica for every replica NODE holds, each to the least loaded node that is up "
        "and holds none of that group, leaving NODE empty (then `remove-node NODE` retires it). Refused "
        "up front if some group has nowhere to go.",
        [("node", "node id")], [], "multiraft-admin drain n1",
    ),
    "rebalance": (
        "even out replicas and leaders over the nodes (and workers)",
        "Plan moves that even out the number of replicas over the nodes that are up (to within one), then "
        "leader transfers that even out leaders, then moves between the workers of each node; every step "
        "follows the safety rules. Then run the plan, one step at a time.",
        [], [("--dry-run", "print the plan only")], "multiraft-admin rebalance --dry-run",
    ),
    "remove-node": (
        "retire NODE from the cluster (it must hold no replica)",
        "Retire NODE: the other coordinators stop polling it and it leaves the status and the routing. "
        "Refused while any group's config names NODE (drain it first). Ask another node's coordinator.",
        [("node", "node id")],
        [("--force", "NODE is down (so its own placement cannot be checked) but no group's config names it: "
                     "retire it anyway (safe: no group counts on it)")],
        "multiraft-admin drain n1 && multiraft-admin remove-node n1",
    ),
}


class UsageError(Exception):
    pass


class AdminFailed(Exception):
    """The change was refused or failed (exit 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _group_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a group id is a number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a group id is >= 0, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Inspect a multiraft cluster and change its membership and placement.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cluster", metavar="HOST:PORT[,...]",
                        help="coordinators to ask (default: $MULTIRAFT_CLUSTER or 127.0.0.1:7100)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help=f"give up after this long (default {STATUS_TIMEOUT_S:.0f} for status, "
                             f"{CHANGE_TIMEOUT_S:.0f} for changes)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cluster", metavar="HOST:PORT[,...]", default=argparse.SUPPRESS,
                        help="coordinators to ask")
    common.add_argument("--timeout", type=float, metavar="SECONDS", default=argparse.SUPPRESS,
                        help="give up waiting after this long")
    common.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    sub.add_parser(
        "status",
        help="nodes, workers and groups (leader, voters, learners, joint configs, lag)",
        description="Show the cluster's nodes (up or down), workers and groups: leader, term, commit, "
        "voters (with the outgoing voters of a joint config in progress), learners, and each replica's "
        "worker, applied index and lag behind the leader (in entries).",
        epilog="examples:\n  multiraft-admin status\n  multiraft-admin status --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    for name, (short, desc, args, flags, example) in _COMMANDS.items():
        p = sub.add_parser(
            name, help=short, description=textwrap.fill(desc, 78) + "\n\n" + textwrap.fill(_RULES, 78),
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common],
        )
        for arg, arg_help in args:
            metavar = {"source": "FROM", "target": "TO"}.get(arg, arg.upper())
            p.add_argument(arg, metavar=metavar, help=arg_help, type=_group_id if arg == "group" else str)
        for flag, flag_help in flags:
            p.add_argument(flag, action="store_true", help=flag_help)
    p = sub.add_parser("jobs", help="the changes this coordinator ran or is running",
                       description="List the admin jobs of the coordinator asked (kept until it restarts).",
                       parents=[common], epilog="example:\n  multiraft-admin jobs",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p = sub.add_parser(
        "job",
        help="one job's steps (and wait for it with --wait)",
        description="Print a job's steps; with --wait, follow it until it ends (exit 0 if it succeeded).",
        parents=[common],
        epilog="example:\n  multiraft-admin job n1-3 --wait",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    return parser


def _names(items: Any) -> str:
    items = list(items or [])
    return ",".join(str(i) for i in items) if items else "-"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def format_status(doc: dict) -> str:
    """The readable form of a cluster_status document."""
    nodes = doc.get("nodes", [])
    groups = doc.get("groups", [])
    up = sum(1 for n in nodes if n.get("up"))
    led = sum(1 for g in groups if g.get("leader"))
    joint = sum(1 for g in groups if g.get("voters_outgoing"))
    lines = [
        f"cluster: {len(nodes)} nodes ({up} up), {len(groups)} groups ({led} with a leader"
        + (f", {joint} joint" if joint else "")
        + f"), replicas {doc.get('replicas', '?')}; answered by {doc.get('node', '?')}",
        "",
    ]
    held: dict[str, int] = {}
    leads: dict[str, int] = {}
    for g in groups:
        for r in g.get("replicas") or []:
            if r.get("member") != "none":
                held[r.get("node")] = held.get(r.get("node"), 0) + 1
        if g.get("leader"):
            leads[g["leader"]] = leads.get(g["leader"], 0) + 1
    rows = [["NODE", "ADDRESS", "UP", "REPLICAS", "LEADS", "WORKERS"]]
    for n in nodes:
        workers = n.get("workers") or []
        parts = []
        for w in workers:
            state = f"pid {w.get('pid')}" if w.get("up") else "down"
            extra = f", {w.get('restarts')} restarts" if w.get("restarts") else ""
            count = f", {w.get('groups')} groups" if w.get("groups") is not None else ""
            parts.append(f"w{w.get('index')} {state}{count}{extra}")
        rows.append([str(n.get("id")), str(n.get("address")), "yes" if n.get("up") else "NO",
                     str(held.get(n.get("id"), 0)), str(leads.get(n.get("id"), 0)),
                     "; ".join(parts) if parts else ("?" if not n.get("up") else "-")])
    lines += _table(rows)
    lines.append("")
    rows = [["GROUP", "LEADER", "TERM", "COMMIT", "APPLIED", "VOTERS", "LEARNERS",
             "REPLICAS (node/worker: applied, lag)"]]
    for g in groups:
        voters = _names(g.get("voters"))
        if g.get("voters_outgoing"):
            voters += f" (JOINT with {_names(g.get('voters_outgoing'))})"
        reps = []
        for r in g.get("replicas") or []:
            where = f"{r.get('node')}/w{r.get('worker')}" if r.get("worker") is not None else str(r.get("node"))
            if r.get("member") == "learner":
                where += " (learner)"
            elif r.get("member") == "none":
                where += " (not in config)"
            if not r.get("up"):
                reps.append(f"{where}: down")
            elif r.get("applied") is None:
                reps.append(f"{where}: ?")
            else:
                lag = f", lag {r['lag']}" if r.get("lag") else ""
                reps.append(f"{where}: {r.get('applied')}{lag}")
        rows.append([
            str(g.get("id")), str(g.get("leader") or "-"), str(g.get("term", 0)),
            str(g.get("commit", 0)), str(g.get("applied", 0)), voters, _names(g.get("learners")),
            "  ".join(reps),
        ])
    lines += _table(rows)
    return "\n".join(lines)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


async def _first_coordinator(cluster: list[str], body: list, timeout_s: float) -> tuple[str, Any]:
    """(address that answered, payload): the first coordinator of `cluster` that answers."""
    from multiraft.client import ClusterUnavailable, coordinator_request

    problems = []
    for address in cluster:
        try:
            return address, await coordinator_request([address], body, timeout_s=timeout_s)
        except ClusterUnavailable as exc:
            problems.append(str(exc))
    raise ClusterUnavailable("; ".join(problems))


async def run_change(cluster: list[str], command: str, args: dict, *, timeout_s: float,
                     out: Any = None, quiet: bool = False) -> dict:
    """Start a job at the first coordinator that answers and follow it to its
    end, printing its steps to `out`. Returns the finished job's document;
    AdminFailed if refused or failed."""
    from multiraft.client import ClientError, RequestError, coordinator_request

    out = out or sys.stdout
    try:
        address, started = await _first_coordinator(cluster, ["admin", command, args], min(timeout_s, 10.0))
    except RequestError as exc:
        raise AdminFailed(str(exc).split(": ", 1)[-1]) from None
    job_id = started["job"]
    if not quiet:
        how = "already running as" if started.get("attached") else "started"
        print(f"{command}: {how} job {job_id} on {started.get('node')} ({address})", file=out, flush=True)
    deadline = trio.current_time() + timeout_s
    printed = 0
    failures = 0
    while True:
        try:
            doc = await coordinator_request([address], ["job", job_id], timeout_s=5.0)
            failures = 0
        except ClientError as exc:
            failures += 1
            if failures >= 10:
                raise AdminFailed(
                    f"lost the coordinator at {address} ({exc}); the change may be partly done: "
                    "run the same command again to finish it"
                ) from None
            await trio.sleep(0.5)
            continue
        steps = doc.get("steps") or []
        if not quiet:
            for text in steps[printed:]:
                print(f"  {text}", file=out, flush=True)
        printed = len(steps)
        if doc.get("state") == "done":
            return doc
        if doc.get("state") == "failed":
            raise AdminFailed(doc.get("error") or "the job failed", doc)
        if trio.current_time() >= deadline:
            raise AdminFailed(
                f"still running after {timeout_s:.0f}s as job {job_id} on {address}: "
                f"follow it with `{PROG} --cluster {address} job {job_id} --wait`", doc
            )
        await trio.sleep(JOB_POLL_S)


def main(argv: Sequence[str] | None = None) -> int:
    from multiraft.client import ClientError, coordinator_request

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.timeout is not None and args.timeout <= 0:
            raise UsageError("--timeout must be > 0")
        cluster = [format_address(h, p) for h, p in parse_cluster(args.cluster)]
        as_json = getattr(args, "json", False)
        if args.command == "status":
            timeout = args.timeout or STATUS_TIMEOUT_S
            doc = trio.run(lambda: coordinator_request(cluster, ["cluster_status"], timeout_s=timeout))
            if as_json:
                print(json.dumps(_jsonable(doc), indent=None, sort_keys=True))
            else:
                print(format_status(doc))
            return 0
        if args.command in ("jobs", "job"):
            return _jobs(args, cluster, as_json)
        names = _COMMANDS[args.command][2]
        body = {name: getattr(args, name) for name, _ in names}
        for flag in ("force", "dry_run"):
            if getattr(args, flag, False):
                body[flag] = True
        timeout = args.timeout or CHANGE_TIMEOUT_S
        try:
            doc = trio.run(lambda: run_change(cluster, args.command, body, timeout_s=timeout,
                                              out=sys.stderr if as_json else sys.stdout, quiet=False))
        except AdminFailed as exc:
            if as_json and len(exc.args) > 1:
                print(json.dumps(_jsonable(exc.args[1]), sort_keys=True))
            return _fail(f"{args.command}: {exc.args[0]}", 1)
        if as_json:
            print(json.dumps(_jsonable(doc), sort_keys=True))
        return 0
    except UsageError as exc:
        return _fail(str(exc), 2)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except ClientError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # never a traceback for the operator
        return _fail(f"unexpected failure: {type(exc).__name__}: {exc}", 1)


def _jobs(args: argparse.Namespace, cluster: list[str], as_json: bool) -> int:
    from multiraft.client import RequestError, coordinator_request

    timeout = args.timeout or STATUS_TIMEOUT_S
    if args.command == "jobs":
        docs = trio.run(lambda: coordinator_request(cluster, ["jobs"], timeout_s=timeout))
        if as_json:
            print(json.dumps(_jsonable(docs), sort_keys=True))
        else:
            for d in docs:
                line = f"{d['id']}  {d['state']:7}  {d['describe']}"
                if d.get("error"):
                    line += f"  ({d['error']})"
                print(line)
        return 0

    async def follow() -> dict:
        address, doc = await _first_coordinator(cluster, ["job", args.job_id], timeout)
        printed = 0
        deadline = trio.current_time() + (args.timeout or CHANGE_TIMEOUT_S)
        while True:
            if not as_json:
                for text in (doc.get("steps") or [])[printed:]:
                    print(f"  {text}", flush=True)
            printed = len(doc.get("steps") or [])
            if not args.wait or doc["state"] != "running" or trio.current_time() >= deadline:
                return doc
            await trio.sleep(JOB_POLL_S)
            doc = await coordinator_request([address], ["job", args.job_id], timeout_s=5.0)

    try:
        doc = trio.run(follow)
    except RequestError as exc:
        return _fail(str(exc), 1)
    if as_json:
        print(json.dumps(_jsonable(doc), sort_keys=True))
    else:
        print(
            f"job {doc['id']} ({doc['describe']}): {doc['state']}" + (f": {doc['error']}" if doc.get("error") else "")
        )
    return 0 if doc["state"] == "done" or (doc["state"] == "running" and not args.wait) else 1


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    return obj


if __name__ == "__main__":
    sys.exit(main())
