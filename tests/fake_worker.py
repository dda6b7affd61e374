"""A stand-in worker that speaks the control pipe and the client protocol.

Used by the coordinator, client and CLI tests (MULTIRAFT_WORKER_ARGV) so they do
not depend on the real worker. It replicates nothing: each group it hosts is led
by its first initial voter; on that node the fake worker applies commands to a
real KVStateMachine (so exactly-once sessions behave as in the real thing), on
the others it answers not_leader with that node as the hint.

Environment knobs: FAKE_WORKER_EXIT_AFTER_S (exit with code 3 after that long);
FAKE_WORKER_SILENT_KEY_PREFIX (writes to keys with that prefix are applied but
never answered, as if the answer were lost).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio  # noqa: E402

from multiraft import kv, protocol  # noqa: E402


async def main() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    buf = protocol.FrameBuffer()
    config = None
    while config is None:
        data = await stdin.receive_some(65536)
        if not data:
            return
        buf.feed(data)
        frames = buf.frames()
        for frame in frames:
            if frame[0] == "config":
                config = frame[1]
    node = config["node_id"]
    groups = {int(g): list(v) for g, v in config["groups"].items()}
    machines = {g: kv.KVStateMachine() for g in groups}
    index = {g: 0 for g in groups}
    host, _, port = config["client_listen_address"].rpartition(":")
    listeners = await trio.open_tcp_listeners(int(port), host=host)
    Path(config["data_dir"], "fake.pid").write_text(str(os.getpid()))

    def leader(g: int) -> str:
        return groups[g][0]

    def status() -> dict:
        return {
            g: {
                "role": "leader" if leader(g) == node else "follower",
                "leader": leader(g),
                "term": 1,
                "commit": index[g],
                "applied": index[g],
                "last_index": index[g],
                "voters": sorted(groups[g]),
                "learners": [],
                "voters_outgoing": [],
            }
            for g in groups
        }

    def answer(req: list) -> list:
        req_id, op = req[0], req[1]
        if op == "ping":
            return [req_id, "ok", config["client_listen_address"]]
        g = req[2]
        if g not in groups:
            return [req_id, "no_group", None]
        if leader(g) != node:
            return [req_id, "not_leader", leader(g)]
        m = machines[g]
        if op == "get":
            return [req_id, "ok", m.read(kv.Get(req[3])).value]
        if op == "register":
            cmd = kv.encode_command(kv.Register())
        elif op == "put":
            cmd = kv.encode_command(kv.Put(req[3], req[4], client_id=req[5], seq=req[6]))
        elif op == "delete":
            cmd = kv.encode_command(kv.Delete(req[3], client_id=req[4], seq=req[5]))
        elif op == "cas":
            cmd = kv.encode_command(kv.Cas(req[3], req[4], req[5], client_id=req[6], seq=req[7]))
        else:
            return [req_id, "error", f"unknown op {op!r}"]
        index[g] += 1
        result = m.apply(index[g], cmd)
        if isinstance(result, kv.Registered):
            return [req_id, "ok", result.client_id]
        if isinstance(result, kv.SessionExpired):
            return [req_id, "session_expired", repr(result)]
        if isinstance(result, kv.PutResult):
            return [req_id, "ok", result.prev_existed]
        if isinstance(result, kv.DeleteResult):
            return [req_id, "ok", result.existed]
        if isinstance(result, kv.CasResult):
            return [req_id, "ok", [result.ok, result.current]]
        return [req_id, "error", repr(result)]

    async def serve(stream: trio.SocketStream) -> None:
        b = protocol.FrameBuffer()
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                b.feed(data)
                out = bytearray()
                silent = os.environ.get("FAKE_WORKER_SILENT_KEY_PREFIX", "").encode()
                for req in b.frames():
                    response = answer(req)
                    if silent and req[1] in ("put", "delete", "cas") and req[3].startswith(silent):
                        continue
                    out += protocol.encode(response)
                await stream.send_all(bytes(out))
        except (trio.BrokenResourceError, protocol.ProtocolError, OSError):
            return

    async def control() -> None:
        while True:
            for frame in buf.frames():
                if frame[0] == "shutdown":
                    return
            data = await stdin.receive_some(65536)
            if not data:
                return
            buf.feed(data)

    async def report() -> None:
        while True:
            await stdout.send_all(protocol.encode(["status", status()]))
            await trio.sleep(0.1)

    async def exit_later(seconds: float) -> None:
        await trio.sleep(seconds)
        os._exit(3)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        raft_url = config["raft_listen_url"]
        await stdout.send_all(
            protocol.encode(["ready", {"raft_url": raft_url, "client_address": config["client_listen_address"]}])
        )
        nursery.start_soon(report)
        if os.environ.get("FAKE_WORKER_EXIT_AFTER_S"):
            nursery.start_soon(exit_later, float(os.environ["FAKE_WORKER_EXIT_AFTER_S"]))
        await control()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
