"""Find seeds that reach each pinned planted bug (tests/planted_bugs.py).

The planted-bug tests in tests/test_sim.py pin seeds that depend on the
simulator's random stream; a new option drawn in SimOptions.draw shifts it.
This finds new seeds: for each planted bug, it runs seeds in a fresh process
with the bug planted until it has found `--want` whose violation contains the
expected text, and checks that those seeds pass without the bug.

    python tools/planted_seeds.py [--name NAME] [--seeds 400] [--want 2]

Then copy the seeds it prints into PINNED in tests/planted_bugs.py.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _search(name: str, seeds: int, want: int) -> list[int]:
    from planted_bugs import PINNED, run_pinned_seed

    PINNED[name].plant(setattr)
    found = []
    for seed in range(seeds):
        violation = run_pinned_seed(name, seed, setattr).violation
        if violation is not None and PINNED[name].text in violation:
            found.append(seed)
            if len(found) >= want:
                break
    return found


def _passes(name: str, seed: int) -> bool:
    from planted_bugs import run_pinned_seed

    return run_pinned_seed(name, seed, setattr).ok


def main(argv: list[str] | None = None) -> int:
    from planted_bugs import PINNED

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", choices=sorted(PINNED), help="one planted bug (default: all)")
    p.add_argument("--seeds", type=int, default=400, help="search seeds 0..N-1")
    p.add_argument("--want", type=int, default=2, help="seeds to find per bug")
    args = p.parse_args(argv)
    names = [args.name] if args.name else sorted(PINNED)
    ctx = multiprocessing.get_context("spawn")  # each plant in a process of its own
    ok = True
    with ctx.Pool(2, maxtasksperchild=1) as pool:  # a fresh process per task: plants stay put
        results = {n: pool.apply_async(_search, (n, args.seeds, args.want)) for n in names}
        for name in names:
            found = results[name].get()
            clean = [s for s in found if pool.apply(_passes, (name, s))]
            print(f"{name}: {tuple(clean)}" + ("" if clean else "  (none found: raise --seeds)"))
            ok = ok and bool(clean)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
