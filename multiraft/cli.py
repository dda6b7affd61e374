"""`multiraft`: run a node, read and write keys, run the demo.

Every mistake (bad flags, malformed addresses, an unreachable cluster, a data
directory written by something else) ends with one line on stderr and a
non-zero exit code, never a traceback:

    0  success
    1  the operation failed (missing key for `get`, cluster unavailable, timeout)
    2  bad usage or configuration
    130 interrupted
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import trio

from multiraft.nodeconfig import ConfigError, RawOptions, format_address, load_toml, parse_cluster

PROG = "multiraft"

_MAIN_EPILOG = """\
examples:
  multiraft node --workers 8                     # a one-node cluster in ./multiraft-data/n1 on 127.0.0.1:7100
  multiraft put greeting hello                   # write a key
  multiraft get greeting                         # prints: hello
  multiraft del greeting
  multiraft --cluster 127.0.0.1:7100,127.0.0.1:7200 get greeting
  multiraft demo                                 # a local 3-node cluster, a workload, a crash, a recovery
  multiraft-admin status                         # the cluster's nodes and groups

A 3-node cluster on one machine (one terminal each):
  multiraft node --node-id n1 --listen 127.0.0.1:7100 --data-dir d/n1 --workers 2 \\
      --peers n1=127.0.0.1:7100,n2=127.0.0.1:7200,n3=127.0.0.1:7300
  (the same with n2 / 127.0.0.1:7200 / d/n2, and n3 / 127.0.0.1:7300 / d/n3)

The cluster address defaults to $MULTIRAFT_CLUSTER, else 127.0.0.1:7100.
See docs/operations.md.
"""

_NODE_EPILOG = """\
examples:
  multiraft node --workers 8
      one-node cluster: node n1, 127.0.0.1:7100, ./multiraft-data/n1, 64 groups, replicas 1
  multiraft node --node-id n2 --listen 127.0.0.1:7200 --data-dir /var/lib/multiraft/n2 --workers 2 \\
      --groups 64 --replicas 3 --peers n1=127.0.0.1:7100,n2=127.0.0.1:7200,n3=127.0.0.1:7300
      one node of a 3-node cluster (run the same on n1 and n3 with their own id, address, data dir)
  multiraft node --config node.toml
      the same options from a TOML file (keys are the flag names: node_id = "n2", workers = 2,
      peers = {n1 = "127.0.0.1:7100", ...}); flags given on the command line win

Ports: with --listen HOST:P the coordinator uses P, worker i uses P+1+i (Raft, nng)
and P+51+i (clients): at most 49 workers, and nodes on one host at least 100 ports apart.
Group g's replicas are nodes[(g+k) % N] for k < replicas (nodes sorted by id).
Restarting with the same --data-dir resumes the node (same groups, same data); layout
options left out are read back from the data directory. Stop with Ctrl-C or SIGTERM.

Growing a running cluster: start the new node with --join instead of --peers; it holds no
replicas until multiraft-admin adds some (see multiraft-admin --help, docs/operations.md):
  multiraft node --node-id n4 --listen 127.0.0.1:7400 --join 127.0.0.1:7100 --data-dir d/n4 --workers 2
"""


class UsageError(Exception):
    """Bad command line (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="A sharded, replicated key-value store (Multi-Raft).",
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cluster",
        metavar="HOST:PORT[,...]",
        help="coordinators to ask for routing (default: $MULTIRAFT_CLUSTER or 127.0.0.1:7100)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="give up on an operation after this long (default 10)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    node = sub.add_parser(
        "node",
        help="run a node (a coordinator and its workers)",
        description="Run one node of a cluster: a coordinator process and W worker processes.",
        epilog=_NODE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    node.add_argument("--config", metavar="FILE", help="read options from a TOML file")
    node.add_argument("--node-id", metavar="ID", help="this node's id (default n1)")
    node.add_argument("--listen", metavar="HOST:PORT", help="coordinator address (default 127.0.0.1:7100)")
    node.add_argument("--peers", metavar="ID=HOST:PORT,...", help="every node of the cluster, this one included")
    node.add_argument("--join", metavar="HOST:PORT",
                      help="join the running cluster of this coordinator as an empty node (first start only; "
                           "then multiraft-admin adds replicas to it)")
    node.add_argument("--data-dir", metavar="DIR", help="data directory (default ./multiraft-data/NODE_ID)")
    node.add_argument("--workers", type=int, metavar="W", help="worker processes (default 2, at most 49)")
    node.add_argument("--groups", type=int, metavar="G", help="Raft groups (shards) in the cluster (default 64)")
    node.add_argument("--replicas", type=int, metavar="R", help="replicas per group (default min(3, nodes))")
    node.add_argument("--tick-ms", type=int, metavar="MS", help="Raft tick (default 100)")
    node.add_argument("--election-tick", type=int, metavar="N", help="election timeout in ticks (default 10)")
    node.add_argument("--heartbeat-tick", type=int, metavar="N", help="heartbeat interval in ticks (default 2)")
    node.add_argument("--no-sync", dest="sync_on_write", action="store_const", const=False,
                      help="skip fsync (UNSAFE: benchmarks only)")
    node.add_argument("--no-lease-reads", dest="lease_reads", action="store_const", const=False,
                      help="serve clients' lease reads with ReadIndex instead")
    node.add_argument("--max-clock-drift-ms", type=int, metavar="MS",
                      help="how far two nodes' clocks may drift apart within an election timeout; the lease is "
                           "election timeout - this - one tick (default 200; every node must use the same)")
    node.add_argument("--snapshot-threshold-entries", type=int, metavar="N",
                      help="snapshot a group once its log holds this many entries (default 10000)")
    node.add_argument("--compact-lag-entries", type=int, metavar="N",
                      help="entries kept behind a snapshot for slow followers (default 1000)")
    node.add_argument("--poll-interval-ms", type=int, metavar="MS",
                      help="how often the coordinator polls its peers (default 500)")
    node.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error (default info)")
    node.add_argument("--redis", metavar="HOST:PORT",
                      help="also serve the Redis protocol there (a supervised child process; docs/resp.md)")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cluster", metavar="HOST:PORT[,...]", default=argparse.SUPPRESS,
                        help="coordinators to ask for routing (default: $MULTIRAFT_CLUSTER or 127.0.0.1:7100)")
    common.add_argument("--timeout", type=float, metavar="SECONDS", default=argparse.SUPPRESS,
                        help="give up after this long (default 10)")
    put = sub.add_parser("put", help="set a key", description="Set KEY to VALUE.", parents=[common],
                         epilog="example:\n  multiraft put greeting hello",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    put.add_argument("key")
    put.add_argument("value")
    get = sub.add_parser("get", help="print a key's value", parents=[common],
                         description="Print KEY's value. A missing key exits 1 with a message on stderr.",
                         epilog="example:\n  multiraft get greeting",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    get.add_argument("key")
    get.add_argument("--lease", action="store_true", help="a leader-lease read (no quorum round)")
    delete = sub.add_parser(
        "del",
        help="delete a key",
        parents=[common],
        description="Delete KEY (absent keys are fine).",
        epilog="example:\n  multiraft del greeting",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    delete.add_argument("key")

    demo = sub.add_parser(
        "demo",
        help="start a local 3-node cluster, run a workload through a crash and a recovery",
        description="Start a local 3-node cluster in a temporary directory, run a mixed workload, "
        "kill a node with SIGKILL, show the cluster continuing and the node catching up, then stop.",
        epilog="example:\n  multiraft demo\n  multiraft demo --seconds 5 --workers 2 --groups 12",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--workers", type=int, default=2, help="workers per node (default 2)")
    demo.add_argument("--groups", type=int, default=12, help="groups (default 12)")
    demo.add_argument("--clients", type=int, default=32, help="concurrent client tasks (default 32)")
    demo.add_argument("--seconds", type=float, default=8.0, help="length of each workload phase (default 8)")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser


def _raw_node_options(args: argparse.Namespace) -> RawOptions:
    flags = RawOptions(
        node_id=args.node_id,
        listen=args.listen,
        peers=args.peers,
        data_dir=args.data_dir,
        workers=args.workers,
        groups=args.groups,
        replicas=args.replicas,
        tick_ms=args.tick_ms,
        election_tick=args.election_tick,
        heartbeat_tick=args.heartbeat_tick,
        sync_on_write=args.sync_on_write,
        snapshot_threshold_entries=args.snapshot_threshold_entries,
        compact_lag_entries=args.compact_lag_entries,
        poll_interval_ms=args.poll_interval_ms,
        log_level=args.log_level,
        lease_reads=args.lease_reads,
        max_clock_drift_ms=args.max_clock_drift_ms,
        join=args.join,
        redis=args.redis,
    )
    if args.config:
        flags = flags.merged_over(load_toml(args.config))
    return flags


def _setup_logging(level: str, node_id: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s %(levelname)-7s {node_id} coordinator: %(message)s",
        stream=sys.stderr,
    )


def cmd_node(args: argparse.Namespace) -> int:
    from multiraft import coordinator

    raw = _raw_node_options(args)
    setup = coordinator.prepare_node(raw)
    o = setup.options
    _setup_logging(o.log_level, o.node_id)
    try:
        trio.run(coordinator.run_node, setup)
    finally:
        setup.release()
    return 0


async def _kv(args: argparse.Namespace) -> int:
    from multiraft.client import open_client

    cluster = [format_address(h, p) for h, p in parse_cluster(args.cluster)]
    async with open_client(cluster, timeout_s=args.timeout) as client:
        if args.command == "put":
            await client.put(args.key, args.value)
            return 0
        if args.command == "del":
            await client.delete(args.key)
            return 0
        value = await client.get(args.key, lease=args.lease)
        if value is None:
            print(f"{PROG}: key {args.key!r} not found", file=sys.stderr)
            return 1
        out = sys.stdout.buffer
        out.write(value + b"\n")
        out.flush()
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    from multiraft.client import ClientError

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.timeout <= 0:
            raise UsageError("--timeout must be > 0")
        if args.command == "node":
            return cmd_node(args)
        if args.command == "demo":
            from multiraft import demo

            return demo.main_from_args(args)
        return trio.run(_kv, args)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except ClientError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 1
    except BaseExceptionGroup as eg:
        inner = eg
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if isinstance(inner, (ConfigError, UsageError)):
            return _fail(str(inner), 2)
        if isinstance(inner, ClientError):
            return _fail(str(inner), 1)
        if isinstance(inner, KeyboardInterrupt):
            return 130
        return _fail(f"unexpected failure: {type(inner).__name__}: {inner}", 1)
    except Exception as exc:  # never a traceback for the operator
        if os.environ.get("MULTIRAFT_DEBUG"):
            raise
        return _fail(f"unexpected failure: {type(exc).__name__}: {exc}", 1)


if __name__ == "__main__":
    sys.exit(main())
