"""Training steps on 1 and N threads, on quiet cores and on cores a busy loop competes for.

Every row is a fresh process (the OpenMP wait policy is read once, when torch loads its
runtime), timing steady-state SGD steps of the engine (``models.stepper.TrainSteps``, batch
256) on the real training images. "contended" rows run while one busy-loop process, pinned to
the same cores, spins for the whole row. The rows of a variant and condition run back to back
in each round, in an order that rotates between rounds, and the ratios are taken within a round.

    python -m bench --only cpu_threads
    python -m bench.cpu_threads step builtin 2     # one measurement (used by the section)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from models.threads import OPENMP_WAITS

TITLE = "Training threads: quiet and contended cores"
ROUNDS = int(os.environ.get("CPU_THREADS_ROUNDS", "3"))
SECONDS = float(os.environ.get("CPU_THREADS_SECONDS", "3"))  # timed steps per row, at least
LENET_FLOP = 1.69e6  # per example, forward and backward (the count)

# (label, environment, threads: 0 the engine's automatic choice): what each row runs with.
# Without the environment GNU OpenMP spins at a barrier (300,000 rounds) before it sleeps;
# bnlenet's entry points set OPENMP_WAITS (10,000 rounds).
OPENMP_ENV = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
ALL_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
CONFIGS: list[tuple[str, dict[str, str], int]] = [
    ("1 thread", OPENMP_WAITS, 1),
    ("all cores, fixed, GNU default spin", {}, ALL_CORES),
    ("all cores, fixed, passive waits", {"OMP_WAIT_POLICY": "PASSIVE"}, ALL_CORES),
    ("all cores, fixed, 10,000-round spin", OPENMP_WAITS, ALL_CORES),
    # bnlenet's automatic count (models/threads.py, models/thread_tuner.py): this row.
    ("bnlenet's default: every core or one, chosen per step", OPENMP_WAITS, 0),
]
# CPU_THREADS_ROWS=default: only the 1-thread row and bnlenet's default (a longer run of the promise's rows).
if os.environ.get("CPU_THREADS_ROWS") == "default":
    CONFIGS = [CONFIGS[0], CONFIGS[-1]]
NOTES = (
    "Each cell is a fresh process timing at least "
    f"{SECONDS:g} s of steady SGD steps (after 10 warm-up steps) of the engine on the real training images, "
    "batch 256. `contended`: one busy-loop process (`while True: pass`) pinned to the same cores runs "
    "throughout. `x 1 thread`: examples/s over the 1-thread row's in the same round and condition (the "
    "promise: never below 0.90 when contended). `threads used`: per round, the timed steps on each count "
    "(`180x2+10x1`: 180 steps on 2 threads, 10 on one) and how often the count changed. `% peak`: examples/s x 1.69 MFLOP over this CPU's fp32 peak "
    "(`bench.cpu_threads.fp32_peak_gflops`). Medians over rounds; the machine's other load is in "
    "`load` (1-minute load average when the row ended)."
)


def fp32_peak_gflops(cores: int, ghz: float, avx512: bool) -> float:
    """Cores x GHz x fp32 FLOP per cycle: two FMA units of 16 (AVX-512) or 8 (AVX2) lanes, 2 FLOP each."""
    lanes = 16 if avx512 else 8
    return cores * ghz * 2 * 2 * lanes


def cpu_ghz() -> float:
    """The nominal clock from /proc/cpuinfo's model name, else its MHz, else BogoMIPS / 2."""
    mhz = bogomips = 0.0
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and "GHz" in value:
                    return float(value.split("@")[-1].replace("GHz", "").strip())
                if key == "cpu MHz" and not mhz:
                    mhz = float(value)
                if key == "bogomips" and not bogomips:
                    bogomips = float(value)
    except (OSError, ValueError):
        pass
    return mhz / 1000 if mhz else bogomips / 2000


def _has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _step_main(variant: str, threads: int) -> None:
    """One measurement in this process; prints a JSON line: threads used and examples/s."""
    import torch

    from bench.data import fashion_mnist
    from models.lenet import build_lenet
    from models.memory import keep_large_buffers
    from models.stepper import TrainSteps, sgd
    from models.thread_tuner import schedule_steps
    from models.threads import training_threads

    data = fashion_mnist(download=False)
    device = torch.device("cpu")
    keep_large_buffers()
    torch.manual_seed(0)
    model = build_lenet(variant)
    # threads 0: the engine's automatic count (every usable core, adapting, models/thread_tuner.py).
    with training_threads(device, threads) as tuner:
        steps = TrainSteps(model, sgd(model, 1.0, device), data.train_images, data.train_labels, device,
                           batch_size=256)
        order = torch.randperm(len(data.train_images), generator=torch.Generator().manual_seed(0))
        batches = [order[i:i + 256] for i in range(0, len(order) - 255, 256)]
        for b in batches[:10]:  # warm-up, untimed: the tuner starts with the timed steps (and pays its start there)
            steps(b)
        step = 0
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < SECONDS:
            for b in batches[10 + done % (len(batches) - 20):][:10]:
                tuner.run(step, steps, b)
                step += 1
                done += 1
        seconds = time.perf_counter() - started
    used = schedule_steps(tuner.schedule, step)
    print(json.dumps({"threads": "+".join(f"{n}x{c}" for c, n in sorted(used.items(), reverse=True)),
                      "switches": len(tuner.schedule) - 1, "examples_per_sec": done * 256 / seconds}), flush=True)


def _busy_loop(cpus: set[int]) -> subprocess.Popen[bytes]:
    code = f"import os; os.sched_setaffinity(0, {sorted(cpus)!r})\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def _measure(variant: str, extra: dict[str, str], threads: int, env: dict[str, str]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.cpu_threads", "step", variant, str(threads)]
    run_env = {k: v for k, v in env.items() if k not in OPENMP_ENV}
    run_env.update(extra)
    proc = subprocess.run(argv, env=run_env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stderr[-2000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def run(quick: bool) -> list[dict[str, Any]]:
    from bench.machine import cpu_model
    from models.threads import usable_cores

    cpus = os.sched_getaffinity(0)
    peak = fp32_peak_gflops(usable_cores(), cpu_ghz(), _has_avx512())
    rounds = 1 if quick else ROUNDS
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    rows: list[dict[str, Any]] = []
    for variant in ("builtin", "scratch"):
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in range(rounds):
            for condition in ("quiet", "contended"):
                busy = _busy_loop(cpus) if condition == "contended" else None
                try:
                    order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
                    out = {}
                    for label, extra, threads in order:
                        out[label] = _measure(variant, extra, threads, env)
                        out[label]["load"] = os.getloadavg()[0]
                    base = out[CONFIGS[0][0]]["examples_per_sec"]
                    for label, m in out.items():
                        m["ratio"] = m["examples_per_sec"] / base
                        results.setdefault((condition, label), []).append(m)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
        for (condition, label), runs in results.items():
            rate = statistics.median(x["examples_per_sec"] for x in runs)
            rows.append({
                "variant": variant, "cores": condition, "threads": label,
                "threads used": ", ".join(f"{x['threads']} ({x['switches']} switches)" for x in runs),
                "examples/s": rate,
                "x 1 thread": f"{statistics.median(x['ratio'] for x in runs):.2f}",
                "x 1 thread per round": ", ".join(f"{x['ratio']:.2f}" for x in runs),
                "% peak": f"{100 * rate * LENET_FLOP / (peak * 1e9):.1f}",
                "load": f"{statistics.median(x['load'] for x in runs):.1f}",
            })
    rows.append({"variant": "-", "cores": f"peak {peak:.0f} GFLOP/s fp32", "threads": cpu_model()})
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "step":
        _step_main(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: python -m bench.cpu_threads step VARIANT THREADS")
