"""`python -m multiraft.resp --listen HOST:PORT --cluster H:P[,...]`: the RESP front-end.

A process of its own: a trio TCP server speaking RESP2 that forwards every
command through a `multiraft.client.Client` straight to the owning group's
leader (the coordinators only give it routing). `multiraft node --redis
HOST:PORT` starts one as a supervised child of the node's coordinator, with
--exit-on-stdin-eof so that it cannot outlive it. See docs/resp.md.

Exit status: 0 on SIGINT/SIGTERM (or the end of stdin with
--exit-on-stdin-eof), 1 if it cannot listen, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import trio

from multiraft.client import ClusterUnavailable, open_client
from multiraft.nodeconfig import ConfigError, format_address, parse_address, parse_cluster

from .protocol import Limits
from .server import Server

_log = logging.getLogger("multiraft.resp")

# redis-py gives up on a reply after 5 s by default: answer (with an error)
# before that rather than leave a client guessing.
DEFAULT_TIMEOUT_S = 4.0
RETRY_CONNECT_S = 1.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m multiraft.resp",
        description="Serve the Redis protocol (RESP2) in front of a multiraft cluster.",
        epilog="example:\n  python -m multiraft.resp --listen 127.0.0.1:6379 --cluster 127.0.0.1:7100\n"
        "  redis-cli -p 6379 set greeting hello",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", default="127.0.0.1:6379", metavar="HOST:PORT",
                   help="where to serve RESP (default 127.0.0.1:6379)")
    p.add_argument("--cluster", metavar="HOST:PORT[,...]",
                   help="coordinators to ask for routing (default: $MULTIRAFT_CLUSTER or 127.0.0.1:7100)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"give up on a command after this long, with an error (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--connections-max", type=int, default=10_000, metavar="N",
                   help="client connections (default 10000)")
    p.add_argument("--log-level", default="info", help="debug, info, warning or error (default info)")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="exit when stdin closes (how a coordinator ties this process to itself)")
    return p


async def _watch_stdin(scope: trio.CancelScope) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    try:
        while await stdin.receive_some(4096):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    _log.info("stdin closed: stopping")
    scope.cancel()


async def serve(host: str, port: int, cluster: list[str], *, timeout_s: float, connections_max: int,
                exit_on_stdin_eof: bool, task_status: object = trio.TASK_STATUS_IGNORED) -> None:
    # Under a coordinator (exit_on_stdin_eof) SIGINT stays ignored: Ctrl-C in
    # a terminal reaches the whole process group, and the coordinator stops
    # its children itself.
    stop_signals = (signal.SIGTERM,) if exit_on_stdin_eof else (signal.SIGINT, signal.SIGTERM)
    with trio.open_signal_receiver(*stop_signals) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    _log.info("%s: stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
            if exit_on_stdin_eof:
                nursery.start_soon(_watch_stdin, nursery.cancel_scope)
            while True:  # the cluster may not be up yet: keep trying
                try:
                    async with open_client(cluster, timeout_s=timeout_s,
                                           attempt_timeout_s=min(3.0, timeout_s)) as client:
                        server = Server(client, limits=Limits(), connections_max=connections_max)
                        async with trio.open_nursery() as inner:
                            address = await inner.start(server.serve, host, port)
                            _log.info("RESP on %s -> cluster %s", address, ",".join(cluster))
                            task_status.started(address)  # type: ignore[attr-defined]
                except ClusterUnavailable as exc:
                    _log.warning("%s; retrying in %.0fs", exc, RETRY_CONNECT_S)
                    await trio.sleep(RETRY_CONNECT_S)


def _flatten(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        host, port = parse_address(args.listen, what="--listen address")
        cluster = [format_address(h, p) for h, p in parse_cluster(args.cluster)]
        if args.timeout <= 0 or args.connections_max < 1:
            raise ConfigError("--timeout and --connections-max must be > 0")
    except ConfigError as exc:
        print(f"multiraft.resp: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s resp: %(message)s",
        stream=sys.stderr,
    )
    try:
        trio.run(lambda: serve(host, port, cluster, timeout_s=args.timeout, connections_max=args.connections_max,
                               exit_on_stdin_eof=args.exit_on_stdin_eof))
    except BaseException as exc:  # noqa: BLE001 - one line for the operator, not a traceback
        inner = _flatten(exc)
        if isinstance(inner, KeyboardInterrupt):
            return 0
        if isinstance(inner, OSError):
            print(f"multiraft.resp: error: cannot listen on {args.listen}: {inner.strerror or inner}",
                  file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
