"""`multiraft-admin`: look at (and, in later releases, change) a cluster.

    multiraft-admin --cluster 127.0.0.1:7100 status          # a readable table
    multiraft-admin --cluster 127.0.0.1:7100 status --json   # one JSON object

Any coordinator of the cluster can answer: it merges what it polls from its
peers (about every half second), so the view may lag by a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import trio

from multiraft.nodeconfig import ConfigError, format_address, parse_cluster

PROG = "multiraft-admin"

_EPILOG = """\
examples:
  multiraft-admin status                                   # ask 127.0.0.1:7100 (or $MULTIRAFT_CLUSTER)
  multiraft-admin --cluster 127.0.0.1:7100,127.0.0.1:7200 status
  multiraft-admin status --json | python -m json.tool      # nodes, workers, groups as JSON

status --json prints one object with at least
  "nodes":  [{"id", "address", "up", "workers": [...]}, ...]
  "groups": [{"id", "leader", "term", "commit", "applied", "voters", "learners",
              "voters_outgoing", "replicas": [...]}, ...]
"""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Inspect a multiraft cluster.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cluster", metavar="HOST:PORT[,...]",
                        help="coordinators to ask (default: $MULTIRAFT_CLUSTER or 127.0.0.1:7100)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="give up after this long (default 5)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    status = sub.add_parser(
        "status",
        help="nodes, workers and groups (leader, term, commit, applied, voters, learners)",
        description="Show the cluster's nodes (up or down), workers and groups.",
        epilog="examples:\n  multiraft-admin status\n  multiraft-admin status --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    status.add_argument("--cluster", metavar="HOST:PORT[,...]", default=argparse.SUPPRESS,
                        help="coordinators to ask")
    return parser


def _names(items: Any) -> str:
    items = list(items or [])
    return ",".join(str(i) for i in items) if items else "-"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_status(doc: dict) -> str:
    """The readable form of a cluster_status document."""
    nodes = doc.get("nodes", [])
    groups = doc.get("groups", [])
    up = sum(1 for n in nodes if n.get("up"))
    led = sum(1 for g in groups if g.get("leader"))
    lines = [
        f"cluster: {len(nodes)} nodes ({up} up), {len(groups)} groups ({led} with a leader), "
        f"replicas {doc.get('replicas', '?')}; answered by {doc.get('node', '?')}",
        "",
    ]
    rows = [["NODE", "ADDRESS", "UP", "WORKERS"]]
    for n in nodes:
        workers = n.get("workers") or []
        parts = []
        for w in workers:
            state = f"pid {w.get('pid')}" if w.get("up") else "down"
            extra = f", {w.get('restarts')} restarts" if w.get("restarts") else ""
            parts.append(f"w{w.get('index')} {state}{extra}")
        rows.append([str(n.get("id")), str(n.get("address")), "yes" if n.get("up") else "NO",
                     "; ".join(parts) if parts else ("?" if not n.get("up") else "-")])
    lines += _table(rows)
    lines.append("")
    rows = [["GROUP", "LEADER", "TERM", "COMMIT", "APPLIED", "VOTERS", "LEARNERS", "REPLICAS (node/worker: applied)"]]
    for g in groups:
        voters = _names(g.get("voters"))
        if g.get("voters_outgoing"):
            voters += f" (joint with {_names(g.get('voters_outgoing'))})"
        reps = []
        for r in g.get("replicas") or []:
            where = f"{r.get('node')}/w{r.get('worker')}" if r.get("worker") is not None else str(r.get("node"))
            if not r.get("up"):
                reps.append(f"{where}: down")
            elif r.get("applied") is None:
                reps.append(f"{where}: ?")
            else:
                reps.append(f"{where}: {r.get('applied')}")
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


def main(argv: Sequence[str] | None = None) -> int:
    from multiraft.client import ClientError, coordinator_request

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.timeout <= 0:
            raise UsageError("--timeout must be > 0")
        cluster = [format_address(h, p) for h, p in parse_cluster(args.cluster)]
        doc = trio.run(lambda: coordinator_request(cluster, ["cluster_status"], timeout_s=args.timeout))
        if args.json:
            print(json.dumps(_jsonable(doc), indent=None, sort_keys=True))
        else:
            print(format_status(doc))
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
