"""The pure core's replication path, in one process: how many entries/s three
RaftStates move (propose -> append -> ack -> commit -> apply), per batch size.

    python -m bench.core [--rounds 2000] [--batches 1,16,64,256] [--json]

Baseline, measured in the same run: the floor any driver pays for the same
work done with no Raft at all: building the same Entry tuples once and
copying them into three logs and one apply list. ratio = core / baseline
(1.0 would mean Raft costs nothing beyond moving the entries).
"""

from __future__ import annotations

import argparse
import json
import random
import time

from multiraft.raft.config import Config
from multiraft.raft.state import RaftState
from multiraft.raft.types import Entry, StateRole

IDS = ("n1", "n2", "n3")


def _cluster():
    nodes = {
        i: RaftState(Config(id=i), random.Random(k), initial_voters=IDS) for k, i in enumerate(IDS)
    }

    def pump() -> None:
        msgs = []
        moved = True
        while moved:
            moved = False
            for n in nodes.values():
                while n.has_ready():
                    rd = n.ready()
                    msgs.extend(rd.messages)
                    msgs.extend(rd.messages_after_persist)
                    n.advance(rd)
                    moved = True
            while msgs:
                batch, msgs = msgs, []
                for m in batch:
                    nodes[m.to].step(m)
                moved = True

    for _ in range(30):
        for n in nodes.values():
            n.tick()
        pump()
    leader = next(n for n in nodes.values() if n.role == StateRole.LEADER)
    return leader, pump


def measure_core(batch: int, rounds: int, value: bytes) -> float:
    leader, pump = _cluster()
    data = [value] * batch
    t = time.perf_counter()
    for _ in range(rounds):
        leader.propose_many(data)
        pump()
    return rounds * batch / (time.perf_counter() - t)


def measure_baseline(batch: int, rounds: int, value: bytes) -> float:
    logs: list[list] = [[], [], []]
    applied: list = []
    data = [value] * batch
    index = 0
    t = time.perf_counter()
    for _ in range(rounds):
        entries = [Entry(2, index + k + 1, 0, d) for k, d in enumerate(data)]
        index += batch
        for log in logs:
            log.extend(entries)
        applied.extend(entries)
    return rounds * batch / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument("--batches", default="1,16,64,256")
    p.add_argument("--value-size", type=int, default=16)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    value = b"x" * args.value_size
    results = []
    print(f"{'batch':>6} | {'core entries/s':>15} | {'baseline entries/s':>18} | ratio")
    for b in (int(x) for x in args.batches.split(",")):
        rounds = max(50, args.rounds * 16 // max(b, 16))
        core = measure_core(b, rounds, value)
        base = measure_baseline(b, rounds, value)
        results.append(
            {"batch_entries": b, "core_entries_per_s": round(core), "baseline_entries_per_s": round(base),
             "ratio": round(core / base, 4)}
        )
        print(f"{b:>6} | {core:>15,.0f} | {base:>18,.0f} | {core / base:.3f}")
    if args.json:
        print(json.dumps({"bench": "core", "value_size": args.value_size, "results": results}))


if __name__ == "__main__":
    main()
