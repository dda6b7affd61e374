"""Run many simulator seeds in parallel processes and print one JSON summary.

    python tools/sim_many.py --seeds 2000 [--first 0] [--jobs 2]

Each job runs `python -m multiraft.sim --seeds N --first S --json` on its own
slice; failing seeds are printed with their replay command.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=2000)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--steps", type=int, default=6000)
    args = p.parse_args()
    started = time.monotonic()
    per = -(-args.seeds // args.jobs)
    procs = []
    for j in range(args.jobs):
        first = args.first + j * per
        n = min(per, args.first + args.seeds - first)
        if n <= 0:
            break
        cmd = [sys.executable, "-m", "multiraft.sim", "--seeds", str(n), "--first", str(first),
               "--steps", str(args.steps), "--json"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    totals: collections.Counter = collections.Counter()
    failed: list[int] = []
    unknown: list[int] = []
    for proc in procs:
        out, _ = proc.communicate()
        lines = out.strip().splitlines()
        for line in lines[:-1]:
            print(line)
        summary = json.loads(lines[-1])
        failed += summary.pop("failed_seeds")
        unknown += summary.pop("lincheck_unknown_seeds")
        summary.pop("seconds")
        totals.update(summary)
    result = dict(totals)
    result["failed_seeds"] = sorted(failed)
    result["lincheck_unknown_seeds"] = sorted(unknown)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["jobs"] = len(procs)
    print(json.dumps(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
