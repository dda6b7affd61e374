"""Fuzz a node's client-protocol ports with hostile frames (issue 13).

Each frame is a client or coordinator request with one hostile part
(multiraft.sim.hostile: shared-reference cycles and DAGs, deep nesting,
bignums, tags, string references, trailing bytes, flipped bits) or random
bytes, sent on its own connection to a worker's client port or the
coordinator's port. After each one a ping on a fresh connection must be
answered within --hang-s seconds: otherwise a hang (slow) or a crash (no
connection) is reported.

    python tools/fuzz_client_port.py --local --frames 500 --seed 1
    python tools/fuzz_client_port.py --coordinator 127.0.0.1:7100 --worker 127.0.0.1:7151

Exit status 0 when nothing crashed or hung; the last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import trio

from multiraft import protocol
from multiraft.sim.hostile import hostile_frame

_WORKER_REQUESTS = (
    [1, "put", 0, b"k", b"v", 1, 1],
    [2, "get", 0, b"k", "linearizable"],
    [b"x", "scan", 0, b"", b"", 10],
    [None, "mput", 0, [[b"a", b"1"], [b"b", None]], 0, 0],
    [3, "conf_change", 0, [["add_learner", "n9"]], False],
    [4, "ping"],
)
_COORDINATOR_REQUESTS = (
    [1, "ping"],
    [2, "routing"],
    [3, "job", "j1"],
    [4, "admin", "transfer-leader", {"group": 0, "node": "n1"}],
    [5, "add_replica", 0],
)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def _send(address: str, body: bytes, read_s: float) -> None:
    """Send one frame, read whatever comes back for a moment, close."""
    host, port = _split(address)
    stream = await trio.open_tcp_stream(host, port)
    try:
        await stream.send_all(len(body).to_bytes(4, "big") + body)
        with trio.move_on_after(read_s):
            while await stream.receive_some(1 << 16):
                pass
    except (trio.BrokenResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _ping(address: str, hang_s: float) -> str:
    """"ok", "hang" (no answer within hang_s) or "crash" (no connection)."""
    host, port = _split(address)
    try:
        with trio.fail_after(hang_s):
            stream = await trio.open_tcp_stream(host, port)
            try:
                await stream.send_all(protocol.encode([0, "ping"]))
                buf = protocol.FrameBuffer()
                while not buf.frames():
                    data = await stream.receive_some(1 << 16)
                    if not data:
                        return "crash"
                    buf.feed(data)
            finally:
                await trio.aclose_forcefully(stream)
    except trio.TooSlowError:
        return "hang"
    except OSError:
        return "crash"
    return "ok"


def _mutate(rng: random.Random, requests: tuple) -> tuple[str, bytes]:
    if rng.random() < 0.1:
        return "random", bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return hostile_frame(rng, list(rng.choice(requests)))


async def fuzz(targets: dict[str, str], frames: int, seed: int, hang_s: float) -> dict:
    rng = random.Random(seed)
    findings: list[dict] = []
    sent = {name: 0 for name in targets}
    for i in range(frames):
        name = rng.choice(sorted(targets))
        address = targets[name]
        kind, body = _mutate(rng, _WORKER_REQUESTS if name == "worker" else _COORDINATOR_REQUESTS)
        started = time.monotonic()
        try:
            await _send(address, body, read_s=0.05)
        except OSError:
            pass
        verdict = await _ping(address, hang_s)
        sent[name] += 1
        if verdict != "ok":
            findings.append({"frame": i, "port": name, "kind": kind, "verdict": verdict,
                             "seconds": round(time.monotonic() - started, 3), "body": body.hex()[:400]})
            print(f"frame {i} to the {name}: {verdict} after {kind} {body.hex()[:80]}", file=sys.stderr)
            if verdict == "crash":
                break  # the rest would only count the same crash
    return {"frames": sum(sent.values()), "sent": sent, "seed": seed,
            "crashes": sum(f["verdict"] == "crash" for f in findings),
            "hangs": sum(f["verdict"] == "hang" for f in findings), "findings": findings}


async def fuzz_local(frames: int, seed: int, hang_s: float) -> dict:
    """Start a one-node cluster (real workers) in a temporary directory, fuzz it."""
    from multiraft.localcluster import ProcessCluster

    with tempfile.TemporaryDirectory() as tmp:
        cluster = ProcessCluster(Path(tmp), nodes=1, workers=1, groups=2, replicas=1)
        cluster.start()
        try:
            await cluster.wait_healthy(timeout_s=60)
            port = cluster.nodes["n1"].port
            from multiraft.nodeconfig import worker_client_port

            targets = {"coordinator": f"127.0.0.1:{port}", "worker": f"127.0.0.1:{worker_client_port(port, 0)}"}
            return await fuzz(targets, frames, seed, hang_s)
        finally:
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", action="store_true", help="start a one-node cluster and fuzz it")
    parser.add_argument("--coordinator", help="host:port of a coordinator")
    parser.add_argument("--worker", help="host:port of a worker's client port")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hang-s", type=float, default=1.0, help="a ping slower than this is a hang")
    args = parser.parse_args(argv)
    if args.local:
        summary = trio.run(fuzz_local, args.frames, args.seed, args.hang_s)
    else:
        targets = {k: v for k, v in (("coordinator", args.coordinator), ("worker", args.worker)) if v}
        if not targets:
            parser.error("give --local, or --coordinator and/or --worker")
        summary = trio.run(fuzz, targets, args.frames, args.seed, args.hang_s)
    print(json.dumps(summary))
    return 0 if not summary["crashes"] and not summary["hangs"] else 1


if __name__ == "__main__":
    sys.exit(main())
