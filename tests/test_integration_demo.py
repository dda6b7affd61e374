"""`multiraft demo` and `python -m bench`, end to end, shortened."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.integration


def test_demo_runs_clean() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "multiraft.cli", "demo", "--seconds", "2", "--clients", "8", "--groups", "6"],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "All 6 groups have a leader" in out
    assert "kill -9" in out and "had new leaders" in out and "applied the" in out
    assert "every value is the last acknowledged write" in out
    assert "GROUP  LEADER" in out
    assert "Stopped cleanly; processes left: none." in out
    assert "Traceback" not in out + r.stderr


def test_bench_prints_an_honest_json_line_last() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bench", "--nodes", "3", "--workers", "1", "--groups", "6", "--seconds", "1.5",
         "--warmup", "0.5", "--clients", "8", "--reads", "0.3", "--json"],
        capture_output=True, text=True, timeout=240, cwd=ROOT, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("writes_per_s", "reads_per_s", "p50_ms", "p99_ms", "errors"):
        assert key in doc
    assert doc["writes"] > 0 and doc["reads"] > 0 and doc["errors"] == 0
    assert doc["p50_ms"] <= doc["p99_ms"]
