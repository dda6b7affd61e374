"""The coordinator <-> worker control pipe (multiraft.protocol, channel 3).

Frames are protocol frames (4-byte big-endian length, one cbor2 list) on the
worker's stdin (coordinator -> worker) and stdout (worker -> coordinator).
`run_worker_process` is what `python -m workers` runs:

1. read the first frame, which must be ``["config", {...}]``
   (`WorkerConfig.from_dict`); a bad or missing config writes
   ``["error", {"message": ...}]`` and exits 2;
2. start the Worker; once it listens, write
   ``["ready", {"raft_url", "client_address", "node_id", "worker_index",
   "address", "pid", "groups"}]``;
3. every `status_interval` seconds write ``["status", {group: status}, stats]``;
4. apply every ``["routing", table]`` and every ``["timing", {"ok", "why"}]``
   (the coordinator's verdict on its peers' timing: lease reads off unless
   ok); run every ``["add_group", g]``,
   ``["remove_group", g]``, ``["export_group", g]`` and
   ``["import_group", g, state]`` (workers.membership) and answer it with
   ``["group_op", kind, g, {"ok", "error", ...}]``; stop on ``["shutdown"]``, on end of
   stdin (the coordinator is gone) or on SIGTERM: the worker's tasks are
   cancelled (an fsync in progress completes), the log is closed (synced), and
   the exit status is 0.

Unknown frame kinds are counted and ignored (so a newer coordinator can talk
to an older worker). A fatal error writes ``["error", {"message"}]`` to
stdout, one line to stderr, and exits 1.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

import trio

from multiraft import protocol

from .config import WorkerConfig, WorkerConfigError
from .membership import GROUP_OPS

__all__ = ["ControlPipe", "run_worker_process", "EXIT_OK", "EXIT_FAILED", "EXIT_BAD_CONFIG"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2

_log = logging.getLogger("workers")


class ControlPipe:
    """Frames over a pair of byte streams (the worker's stdin and stdout)."""

    def __init__(
        self,
        receive_stream: trio.abc.ReceiveStream,
        send_stream: trio.abc.SendStream,
        frame_bytes_max: int = protocol.FRAME_SIZE_BYTES_MAX,
    ) -> None:
        self._rx = receive_stream
        self._tx = send_stream
        self._buf = protocol.FrameBuffer(frame_bytes_max)
        self._frames: list[list] = []
        self._lock = trio.Lock()
        self.eof = False

    async def receive(self) -> list | None:
        """The next frame, or None at end of input. ProtocolError on garbage."""
        while not self._frames:
            if self.eof:
                return None
            try:
                data = await self._rx.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.eof = True
                return None
            self._buf.feed(data)
            self._frames.extend(self._buf.frames())
        return self._frames.pop(0)

    async def send(self, frame: list) -> None:
        data = protocol.encode(frame)
        async with self._lock:
            await self._tx.send_all(data)


async def _status_reporter(pipe: ControlPipe, worker: Any, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        try:
            await pipe.send(["status", worker.status(), worker.stats()])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the coordinator stopped reading: stdin's end will stop us


async def _sigterm_watcher(stop: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            stop.set()
            return


async def run_worker_process(
    pipe: ControlPipe,
    *,
    status_interval: float = 0.5,
    handle_signals: bool = True,
    worker_kwargs: dict | None = None,
) -> int:
    """The control-pipe conversation (see the module docstring). Returns the exit status."""
    from .worker import RoutingError, Worker, WorkerError

    async def fatal(message: str, code: int) -> int:
        print(f"worker: {message}", file=sys.stderr, flush=True)
        try:
            await pipe.send(["error", {"message": message}])
        except Exception:
            pass
        return code

    try:
        first = await pipe.receive()
    except protocol.ProtocolError as exc:
        return await fatal(f"bad control frame: {exc}", EXIT_BAD_CONFIG)
    if first is None:
        return await fatal("stdin closed before the config frame", EXIT_BAD_CONFIG)
    if first[0] != "config" or len(first) != 2:
        return await fatal(
            f"the first control frame must be ['config', {{...}}], got kind {first[0]!r}", EXIT_BAD_CONFIG
        )
    try:
        config = WorkerConfig.from_dict(first[1])
    except WorkerConfigError as exc:
        return await fatal(f"bad config: {exc}", EXIT_BAD_CONFIG)

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s worker {config.address} %(levelname)s %(message)s",
    )
    worker = Worker(config, **(worker_kwargs or {}))
    stop = trio.Event()
    ignored = 0
    failure: WorkerError | None = None
    try:
        async with trio.open_nursery() as nursery:
            if handle_signals:
                await nursery.start(_sigterm_watcher, stop)
            info = await nursery.start(worker.run)
            try:
                await pipe.send(["ready", info])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                stop.set()  # the coordinator is gone
            nursery.start_soon(_status_reporter, pipe, worker, status_interval)

            async def read_control() -> None:
                nonlocal ignored
                while True:
                    try:
                        frame = await pipe.receive()
                    except protocol.ProtocolError as exc:
                        _log.error("bad control frame, stopping: %s", exc)
                        break
                    if frame is None or frame[0] == "shutdown":
                        break
                    if frame[0] == "routing" and len(frame) >= 2:
                        try:
                            worker.set_routing(frame[1])
                        except RoutingError as exc:
                            _log.error("ignoring a bad routing table: %s", exc)
                    elif frame[0] == "timing" and len(frame) >= 2 and isinstance(frame[1], dict):
                        # The coordinator's check of its peers' timing: lease
                        # reads only while every node runs ours.
                        worker.set_timing_ok(frame[1].get("ok") is True, str(frame[1].get("why", "")))
                    elif frame[0] in GROUP_OPS and len(frame) >= 2:
                        # ["add_group", g] and friends: answered with
                        # ["group_op", kind, g, {"ok", "error", ...}]
                        result = await worker.group_op(frame[0], frame[1], frame[2] if len(frame) > 2 else None)
                        try:
                            await pipe.send(["group_op", frame[0], frame[1], result])
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            break
                    else:
                        ignored += 1
                stop.set()

            nursery.start_soon(read_control)
            await stop.wait()
            worker.stop()
            nursery.cancel_scope.cancel()
    except* WorkerError as group:
        failure = group.exceptions[0]
    if failure is not None:
        return await fatal(str(failure), EXIT_FAILED)
    return EXIT_OK


def main() -> int:
    """`python -m workers`: stdin/stdout are the control pipe; logs go to stderr."""
    # The coordinator owns our lifetime (stdin, ["shutdown"], SIGTERM); a
    # terminal's Ctrl-C reaches the whole process group and is its to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Keep fd 1 for frames only: anything printed goes to stderr instead.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    in_fd = os.dup(0)
    sys.stdout = sys.stderr

    async def amain() -> int:
        pipe = ControlPipe(trio.lowlevel.FdStream(in_fd), trio.lowlevel.FdStream(out_fd))
        return await run_worker_process(pipe)

    profile_dir = os.environ.get("MULTIRAFT_WORKER_PROFILE")
    if profile_dir:
        # Developer aid: cProfile the whole process into
        # $MULTIRAFT_WORKER_PROFILE/worker-<pid>.prof (read with pstats).
        import cProfile

        profiler = cProfile.Profile(time.thread_time)  # CPU time of this thread
        try:
            return profiler.runcall(trio.run, amain)
        finally:
            os.makedirs(profile_dir, exist_ok=True)
            profiler.dump_stats(os.path.join(profile_dir, f"worker-{os.getpid()}.prof"))
    try:
        return trio.run(amain)
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is ignored
        return EXIT_FAILED

