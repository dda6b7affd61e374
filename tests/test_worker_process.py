"""`python -m workers` as a real subprocess, with the real nng transport and the
control pipe (multiraft.protocol channel 3): config -> ready -> status ->
routing -> client traffic -> shutdown (exit status 0). Real time, so every
wait is on a condition under trio.fail_after; short ticks keep it fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from conftest import ROOT

from workers.control import ControlPipe
from workers.testing import open_client

pytestmark = pytest.mark.integration
BOUND = 30  # seconds


class WorkerProcess:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.pipe = ControlPipe(proc.stdout, proc.stdin)
        self.ready: dict | None = None
        self.last_status: list | None = None

    async def send(self, frame: list) -> None:
        await self.pipe.send(frame)

    async def next_frame(self, kind: str) -> list:
        """The next frame of `kind`, skipping others (status frames keep coming)."""
        while True:
            frame = await self.pipe.receive()
            assert frame is not None, "the worker closed its stdout"
            if frame[0] == "status":
                self.last_status = frame
            if frame[0] == kind:
                return frame


async def spawn(config: dict) -> WorkerProcess:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "workers"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    w = WorkerProcess(proc)
    await w.send(["config", config])
    return w


def config(tmp_path: Path, node: str, groups: dict, **extra) -> dict:
    return {
        "node_id": node,
        "worker_index": 0,
        "data_dir": str(tmp_path / node),
        "raft_listen_url": "tcp://127.0.0.1:0",
        "client_listen_address": "127.0.0.1:0",
        "groups": groups,
        "groups_total": 4,
        "tick_ms": 20,
        "storage": {"min_free_disk_space": 0},
        **extra,
    }


def routing(workers: dict[str, WorkerProcess], groups: dict[int, list[str]]) -> dict:
    return {
        "version": 1,
        "groups_total": 4,
        "nodes": {
            n: {"address": "127.0.0.1:0", "up": True, "workers": [{
                "raft_url": w.ready["raft_url"], "client_address": w.ready["client_address"]}]}
            for n, w in workers.items()
        },
        "groups": {g: {"replicas": {n: 0 for n in nodes}, "leader": None, "term": 0}
                   for g, nodes in groups.items()},
    }


async def call_until_ok(address: str, *request) -> list:
    """Retry while the group has no leader yet (not_leader)."""
    async with open_client(address) as c:
        while True:
            answer = await c.call(*request)
            if answer[0] != "not_leader":
                return answer
            await trio.sleep(0.05)


async def test_control_pipe_config_ready_status_shutdown_and_restart(tmp_path):
    cfg = config(tmp_path, "n1", {0: ["n1"], 3: ["n1"]})
    with trio.fail_after(BOUND):
        w = await spawn(cfg)
        ready = (await w.next_frame("ready"))[1]
        w.ready = ready
        assert ready["raft_url"].startswith("tcp://127.0.0.1:")
        assert ready["client_address"].startswith("127.0.0.1:")
        assert ready["address"] == "n1/w0" and ready["groups"] == [0, 3]
        status = await w.next_frame("status")
        assert set(status[1]) == {0, 3}
        assert {"role", "leader", "term", "commit", "applied", "last_index", "voters",
                "learners", "voters_outgoing"} <= set(status[1][0])
        assert "fsyncs" in status[2] and "transport" in status[2]
        await w.send(["routing", routing({"n1": w}, {0: ["n1"], 3: ["n1"]})])
        await w.send(["some-future-frame", 1])  # ignored
        cid = (await call_until_ok(ready["client_address"], "register", 3))[1]
        assert await call_until_ok(ready["client_address"], "put", 3, b"k", b"v", cid, 1) == ["ok", False]
        assert await call_until_ok(ready["client_address"], "get", 3, b"k", "linearizable") == ["ok", b"v"]
        await w.send(["shutdown"])
        assert await w.proc.wait() == 0

        # A new process on the same data directory has the data; closing
        # stdin (the coordinator went away) also stops it cleanly.
        w = await spawn(cfg)
        w.ready = (await w.next_frame("ready"))[1]
        assert await call_until_ok(w.ready["client_address"], "get", 3, b"k", "linearizable") == ["ok", b"v"]
        await w.proc.stdin.aclose()
        assert await w.proc.wait() == 0


async def test_two_worker_processes_replicate_over_nng(tmp_path):
    groups = {0: ["n1", "n2"], 1: ["n1", "n2"]}
    with trio.fail_after(BOUND):
        ws = {n: await spawn(config(tmp_path, n, groups)) for n in ("n1", "n2")}
        try:
            for w in ws.values():
                w.ready = (await w.next_frame("ready"))[1]
            table = routing(ws, groups)
            for w in ws.values():
                await w.send(["routing", table])
            # Find each group's leader from the status frames.
            leaders: dict[int, str] = {}
            while len(leaders) < 2:
                for n, w in ws.items():
                    st = (await w.next_frame("status"))[1]
                    for g, s in st.items():
                        if s["role"] == "leader":
                            leaders[g] = n
            for g, n in leaders.items():
                addr = ws[n].ready["client_address"]
                cid = (await call_until_ok(addr, "register", g))[1]
                for i in range(20):
                    assert await call_until_ok(addr, "put", g, b"k%d" % i, b"v", cid, i + 1) == ["ok", False]
                other = ws["n2" if n == "n1" else "n1"].ready["client_address"]
                async with open_client(other) as c:
                    assert await c.call("put", g, b"x", b"y", 0, 0) == ["not_leader", n]
            # Both replicas applied everything (status frames report it).
            while True:
                sts = [(await w.next_frame("status"))[1] for w in ws.values()]
                if all(st[g]["applied"] == sts[0][g]["commit"] >= 21 for st in sts for g in (0, 1)):
                    break
            stats = ws["n1"].last_status[2]
            assert stats["transport"]["frames_received"] > 0
        finally:
            for w in ws.values():
                await w.send(["shutdown"])
            for w in ws.values():
                assert await w.proc.wait() == 0


async def test_a_bad_config_is_refused_with_an_error_frame_and_exit_status_2(tmp_path):
    with trio.fail_after(BOUND):
        w = await spawn({**config(tmp_path, "n1", {0: ["n1"]}), "tick_msec": 5})
        frame = await w.next_frame("error")
        assert "tick_msec" in frame[1]["message"]
        assert await w.proc.wait() == 2
        # stdin closed before any config: also a clean refusal.
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "workers"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd=ROOT,
        )
        await proc.stdin.aclose()
        assert await proc.wait() == 2


async def test_a_locked_data_dir_is_a_clean_failure(tmp_path):
    cfg = config(tmp_path, "n1", {0: ["n1"]})
    with trio.fail_after(BOUND):
        first = await spawn(cfg)
        await first.next_frame("ready")
        second = await spawn(cfg)
        frame = await second.next_frame("error")
        assert "storage" in frame[1]["message"]
        assert await second.proc.wait() == 1
        await first.send(["shutdown"])
        assert await first.proc.wait() == 0


async def test_sigterm_stops_the_worker_cleanly(tmp_path):
    import signal

    with trio.fail_after(BOUND):
        w = await spawn(config(tmp_path, "n1", {0: ["n1"]}))
        await w.next_frame("ready")
        w.proc.send_signal(signal.SIGTERM)
        assert await w.proc.wait() == 0


async def test_acknowledged_writes_survive_kill_9(tmp_path):
    import signal

    cfg = config(tmp_path, "n1", {0: ["n1"]})
    acked: dict[bytes, bytes] = {}
    with trio.fail_after(BOUND):
        w = await spawn(cfg)
        w.ready = (await w.next_frame("ready"))[1]
        await call_until_ok(w.ready["client_address"], "put", 0, b"first", b"x", 0, 0)
        async with open_client(w.ready["client_address"]) as c:

            async def writer(k):
                for i in range(1000):
                    key, value = b"w%d-%d" % (k, i), b"v%d" % i
                    try:
                        status, _ = await c.call("put", 0, key, value, 0, 0)
                    except ConnectionError:
                        return  # killed: this write's outcome is unknown
                    assert status == "ok"
                    acked[key] = value

            async with trio.open_nursery() as nursery:
                for k in range(8):
                    nursery.start_soon(writer, k)
                while len(acked) < 300:
                    await trio.sleep(0.005)
                w.proc.send_signal(signal.SIGKILL)  # mid-stream
        assert await w.proc.wait() == -signal.SIGKILL
        w = await spawn(cfg)
        w.ready = (await w.next_frame("ready"))[1]
        async with open_client(w.ready["client_address"]) as c:
            while (await c.call("get", 0, b"first"))[0] != "ok":
                await trio.sleep(0.05)
            answers = await c.call_many([["get", 0, key] for key in acked])
        assert answers == [["ok", acked[key]] for key in acked]
        await w.send(["shutdown"])
        assert await w.proc.wait() == 0
