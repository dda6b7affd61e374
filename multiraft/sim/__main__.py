"""python -m multiraft.sim --seed S | --seeds N [--first S] [--json]"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time

from .run import REPORTED_COUNTERS, run_seed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m multiraft.sim",
        description=(
            "Run the deterministic Raft simulator: many nodes x groups of the real core and "
            "KV state machine under loss, duplication, reordering, partitions, crashes and "
            "membership changes, checking safety after every step and linearizability and "
            "liveness at the end. A failing seed replays exactly."
        ),
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, help="run this one seed (verbose)")
    which.add_argument("--seeds", type=int, help="run this many seeds, starting at --first")
    p.add_argument("--first", type=int, default=0, help="first seed of --seeds (default 0)")
    p.add_argument("--steps", type=int, default=6000, help="chaos steps per seed (default 6000)")
    p.add_argument("--json", action="store_true", help="last line: one JSON summary object")
    args = p.parse_args(argv)

    if args.seed is not None:
        seeds = [args.seed]
    else:
        seeds = list(range(args.first, args.first + (args.seeds or 1)))

    totals: collections.Counter[str] = collections.Counter()
    failed: list[int] = []
    unknown: list[int] = []
    started = time.monotonic()
    for seed in seeds:
        if len(seeds) == 1:
            print(f"SEED={seed}", flush=True)
        result = run_seed(seed, chaos_steps=args.steps)
        if len(seeds) == 1:
            print(f"options: {result.options.describe()}", flush=True)
        totals.update(result.counters)
        status = "ok" if result.ok else "VIOLATION"
        if result.linearizable == "unknown":
            unknown.append(seed)
        if not result.ok:
            failed.append(seed)
            print(f"SEED={seed} VIOLATION {result.violation}", flush=True)
            if len(seeds) > 1:
                print(f"  replay: python -m multiraft.sim --seed {seed}", flush=True)
        if len(seeds) == 1 or not args.json:
            counters = " ".join(f"{k}={result.counters.get(k, 0)}" for k in REPORTED_COUNTERS)
            print(f"seed {seed}: {status} in {result.seconds:.2f}s, {counters}", flush=True)
    summary = {
        "seeds": len(seeds),
        "violations": len(failed),
        "failed_seeds": failed,
        "lincheck_unknown_seeds": unknown,
        "seconds": round(time.monotonic() - started, 2),
    }
    for k in REPORTED_COUNTERS:
        summary[k] = totals.get(k, 0)
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{len(seeds)} seeds, {len(failed)} violations"
            + (f" (failed: {failed})" if failed else "")
            + f", {summary['seconds']}s"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
