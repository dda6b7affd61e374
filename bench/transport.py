"""Transport throughput between two processes, against a raw-pynng baseline.

    python -m bench.transport [--json] [--seconds 2] [--batch 100]

For each message shape (an APPEND with one 16-byte entry; a HEARTBEAT):

- baseline: raw pynng Push0 -> Pull0 between two processes, driven through the
  pollable descriptors under trio exactly as the transport does, sending
  pre-encoded frames of `batch` messages; the receiver only counts frames
  (x batch). No codec, no outbox: the cost of moving the same bytes.
- transport: multiraft.transport.Transport in both processes; the sender
  calls send() per message (retrying after a checkpoint when the outbox is full),
  the receiver reads decoded (group, Message) batches from receive_channel.

Rates are logical messages per second at the receiver over a timed window after a
warm-up. Also reported: in-process codec rates (encode, decode) for the same
frames. The last line of output is one JSON object; `ratio` is transport /
baseline for APPEND messages.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import timeit

import pynng
import trio

from multiraft import wire
from multiraft.raft.types import Entry, Message, MessageType
from multiraft.transport import Transport

SRC, DST = "n1/w0", "n2/w0"


def sample(shape: str) -> Message:
    if shape == "append":
        return Message(MessageType.APPEND, "n1", "n2", 3, 1, 4, (Entry(2, 5, 0, b"x" * 16),), 4)
    return Message(MessageType.HEARTBEAT, "n1", "n2", 3, commit=4, context=7)


def frame_bytes(shape: str, batch: int) -> bytes:
    msg = sample(shape)
    return wire.encode_raft_batch(SRC, DST, [(g, msg) for g in range(batch)])


# ---------------------------------------------------------------------------
# Receivers: report (messages, seconds) measured over [warmup, warmup + seconds]


async def _measure(count_ref: list, warmup: float, seconds: float) -> tuple[int, float]:
    while count_ref[0] == 0:
        await trio.sleep(0.005)
    await trio.sleep(warmup)
    c0, t0 = count_ref[0], time.perf_counter()
    await trio.sleep(seconds)
    c1, t1 = count_ref[0], time.perf_counter()
    return c1 - c0, t1 - t0


async def _raw_receiver(conn, batch: int, warmup: float, seconds: float) -> None:
    sock = pynng.Pull0(recv_buffer_size=8)
    listener = sock.listen("tcp://127.0.0.1:0")
    import socket as _socket

    conn.send(f"tcp://127.0.0.1:{_socket.ntohs(listener.local_address.port)}")
    count = [0]
    fd = sock.recv_fd

    async def loop() -> None:
        n = 0
        while True:
            try:
                sock.recv(block=False)
            except pynng.TryAgain:
                await trio.lowlevel.wait_readable(fd)
                continue
            count[0] += batch
            n += 1
            if n % 16 == 0:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop)
        conn.send(await _measure(count, warmup, seconds))
        nursery.cancel_scope.cancel()
    sock.close()


async def _transport_receiver(conn, batch: int, warmup: float, seconds: float) -> None:
    t = Transport(DST, "tcp://127.0.0.1:0")
    conn.send(t.listen_url)
    count = [0]

    async def consume() -> None:
        # Drain without a checkpoint per batch: each `await receive()` yields to
        # the scheduler, so take everything already queued with receive_nowait.
        channel = t.receive_channel
        while True:
            items = await channel.receive()
            n = len(items)
            try:
                while True:
                    n += len(channel.receive_nowait())
            except trio.WouldBlock:
                pass
            count[0] += n

    async with trio.open_nursery() as nursery:
        await nursery.start(t.run)
        nursery.start_soon(consume)
        conn.send(await _measure(count, warmup, seconds))
        conn.send(t.stats())
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# Senders: run until terminated


async def _raw_sender(url: str, shape: str, batch: int) -> None:
    data = frame_bytes(shape, batch)
    sock = pynng.Push0(send_buffer_size=8)
    sock.dial(url, block=True)
    fd = sock.send_fd
    n = 0
    while True:
        try:
            sock.send(data, block=False)
        except pynng.TryAgain:
            await trio.lowlevel.wait_readable(fd)
            continue
        n += 1
        if n % 16 == 0:
            await trio.lowlevel.checkpoint()


async def _transport_sender(url: str, shape: str, batch: int) -> None:
    msg = sample(shape)
    t = Transport(SRC, "tcp://127.0.0.1:0", batch_messages_max=batch)
    t.add_peer(DST, url)
    send = t.send
    async with trio.open_nursery() as nursery:
        await nursery.start(t.run)
        await t.wait_connected(DST)
        while True:
            for g in range(batch):
                if not send(DST, g, msg):
                    break
            await trio.sleep(0)


def _receiver_main(kind, conn, batch, warmup, seconds):
    fn = _raw_receiver if kind == "raw" else _transport_receiver
    trio.run(fn, conn, batch, warmup, seconds)


def _sender_main(kind, url, shape, batch):
    fn = _raw_sender if kind == "raw" else _transport_sender
    trio.run(fn, url, shape, batch)


def run_pair(kind: str, shape: str, batch: int, warmup: float, seconds: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    receiver = ctx.Process(target=_receiver_main, args=(kind, child, batch, warmup, seconds))
    receiver.start()
    sender = None
    try:
        if not parent.poll(30):
            raise RuntimeError("receiver did not start")
        url = parent.recv()
        sender = ctx.Process(target=_sender_main, args=(kind, url, shape, batch), daemon=True)
        sender.start()
        if not parent.poll(30 + warmup + seconds):
            raise RuntimeError("receiver did not report")
        messages, elapsed = parent.recv()
        result = {"messages": messages, "seconds": round(elapsed, 3),
                  "msgs_per_s": round(messages / elapsed)}
        if kind == "transport" and parent.poll(10):
            stats = parent.recv()
            result["frames_received"] = stats["frames_received"]
            result["msgs_per_frame"] = round(stats["messages_received"] / max(1, stats["frames_received"]), 1)
        return result
    finally:
        if sender is not None:
            sender.terminate()
            sender.join(10)
        receiver.join(10)
        if receiver.is_alive():
            receiver.terminate()
            receiver.join(10)


# ---------------------------------------------------------------------------


def codec_rates(shape: str, batch: int) -> dict:
    msg = sample(shape)
    items = [(g, msg) for g in range(batch)]
    data = wire.encode_raft_batch(SRC, DST, items)

    def best(fn) -> float:
        number = 200
        return min(timeit.repeat(fn, number=number, repeat=5)) / number

    enc = best(lambda: wire.encode_raft_batch(SRC, DST, items))
    dec = best(lambda: wire.decode_frame(data))
    return {
        "frame_bytes": len(data),
        "encode_msgs_per_s": round(batch / enc),
        "decode_msgs_per_s": round(batch / dec),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transport", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=100, help="messages per frame")
    parser.add_argument("--shapes", default="append,heartbeat")
    args = parser.parse_args(argv)

    def say(*a) -> None:
        if not args.json:
            print(*a, flush=True)

    result: dict = {"bench": "transport", "batch": args.batch, "cpus": os.cpu_count(),
                    "python": sys.version.split()[0], "scenarios": {}}
    for shape in args.shapes.split(","):
        codec = codec_rates(shape, args.batch)
        say(f"{shape}: codec {codec}")
        raw = run_pair("raw", shape, args.batch, args.warmup, args.seconds)
        say(f"{shape}: baseline raw pynng {raw}")
        tr = run_pair("transport", shape, args.batch, args.warmup, args.seconds)
        say(f"{shape}: transport {tr}")
        ratio = tr["msgs_per_s"] / raw["msgs_per_s"] if raw["msgs_per_s"] else None
        result["scenarios"][shape] = {
            "codec": codec,
            "baseline_raw_pynng": raw,
            "transport": tr,
            "ratio": round(ratio, 4) if ratio is not None else None,
        }
        say(f"{shape}: ratio transport/baseline = {ratio:.3f}")
    first = next(iter(result["scenarios"].values()))
    result["msgs_per_s"] = first["transport"]["msgs_per_s"]
    result["baseline_msgs_per_s"] = first["baseline_raw_pynng"]["msgs_per_s"]
    result["ratio"] = first["ratio"]
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
