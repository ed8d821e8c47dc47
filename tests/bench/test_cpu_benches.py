"""The CPU benches' own code runs (reduced): their numbers are for bench/RESULTS.md, not for tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_step_options_rows_run_on_the_engines_count() -> None:
    from bench.step_options import DEFAULT, _variant_rows

    rows = _variant_rows("builtin", quick=True)
    options = {row["option"]: row for row in rows}
    assert options[DEFAULT]["x default"] == "1.00" and options[DEFAULT]["same numbers"] == "yes"
    assert all(isinstance(row["threads"], int) and row["threads"] >= 1 for row in rows)


def test_cpu_threads_step_on_the_automatic_count_reports_its_schedule() -> None:
    # A fresh process, as the bench runs it: the automatic count and its tuner, unpatched.
    env = {**os.environ, "CPU_THREADS_SECONDS": "0.5", "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-m", "bench.cpu_threads", "step", "builtin", "0"], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    counts = dict(part.split("x")[::-1] for part in out["threads"].split("+"))  # {"2": "40", "1": "3"}
    assert out["examples_per_sec"] > 0 and sum(int(n) for n in counts.values()) >= 1
    if len(os.sched_getaffinity(0)) > 1:  # the tuner's start: one step on every core, then one thread
        assert "1" in counts and out["switches"] >= 1
