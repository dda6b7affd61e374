"""The deterministic simulator: the proof that the core is safe under faults.

`python -m multiraft.sim --seed S` runs one seed. Everything (options, faults,
workload, election timeouts) derives from the seed, and the loop is a plain
loop, so a failing seed replays exactly.
"""

from .run import SimResult, run_seed  # noqa: F401
