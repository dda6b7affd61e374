"""Helpers shared by the test files, and the `integration` marker.

`@pytest.mark.integration` (or `pytestmark = pytest.mark.integration` for a
whole file) marks a test that starts real processes: a node, a worker
process, the demo, the bench, a crash child, a tool run as a script.
`python3 -m pytest -q -m "not integration"` leaves them out: the fast inner
loop. The marker cannot go stale: a test without it that starts a process
(subprocess, trio.run_process, or a fixture it uses) fails with
UnmarkedProcessError.

Helpers are plain functions and constants, imported as `from conftest import
...` (tests/ is on sys.path, as for raftnet.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

ROOT = Path(__file__).resolve().parents[1]

#: Nodes started with this environment run tests/fake_worker.py instead of the
#: real worker: the control pipe and the client protocol over a real KV state
#: machine, without Raft.
FAKE_WORKER_ARGV = json.dumps([sys.executable, str(ROOT / "tests" / "fake_worker.py")])
FAKE_WORKER_ENV = {"MULTIRAFT_WORKER_ARGV": FAKE_WORKER_ARGV}

#: Tests that count on process groups and /proc.
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="process groups and /proc")

T = TypeVar("T")


class UnmarkedProcessError(RuntimeError):
    """The test's fault: it starts a process but is not marked `integration`."""


# --- the marker's guard ---------------------------------------------------------

_processes_allowed = True  # outside a test (collection, the session's end)
_popen_init = subprocess.Popen.__init__


def _guarded_popen_init(self: subprocess.Popen, *args: Any, **kwargs: Any) -> None:
    if not _processes_allowed:
        raise UnmarkedProcessError(
            "this test starts a process: mark it @pytest.mark.integration (see tests/conftest.py)"
        )
    _popen_init(self, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    # Every way of starting a process here goes through Popen (trio's
    # run_process/open_process create one on a thread).
    subprocess.Popen.__init__ = _guarded_popen_init  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _popen_init  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    # Set for the whole protocol (setup, call, teardown) so that the module
    # fixtures an item sets up or tears down are judged by that item's marker.
    global _processes_allowed
    _processes_allowed = item.get_closest_marker("integration") is not None
    try:
        return (yield)
    finally:
        _processes_allowed = True


# --- processes -------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """True if `pid` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


async def wait_until(predicate: Callable[[], Awaitable[T]], timeout_s: float = 20.0, interval_s: float = 0.1) -> T:
    """The first truthy value of `await predicate()`, polled every interval_s."""
    with trio.fail_after(timeout_s):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(interval_s)


# --- in-process workers (workers.testing) ---------------------------------------


async def put(client: Any, group: int, key: bytes, value: bytes, cid: int = 0, seq: int = 0) -> list:
    """A put on a worker's client port: [status, payload]."""
    return await client.call("put", group, key, value, cid, seq)


async def group_status(client: Any, group: int = 0) -> dict:
    """A worker's group_status answer for `group`, which must be ok."""
    status, st = await client.call("group_status", group)
    assert status == "ok", st
    return st


async def fill(cluster: Any, groups: Iterable[int], n: int = 40) -> None:
    """n puts through each group's leader, then wait until the leader applied them."""
    for g in groups:
        leader = await cluster.wait_leader(g)
        async with cluster.client(leader) as c:
            for i in range(n):
                assert (await put(c, g, b"k%d" % i, b"v"))[0] == "ok"
        await cluster.wait_applied(g, cluster.workers[leader].groups[g].raft.log.applied)
