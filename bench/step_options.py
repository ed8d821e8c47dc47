"""Steady training steps on the CPU under options that keep the book's arithmetic, side by side in one process.

Each option is a fresh model (same seed) stepping through the same batches of the real
training images (batch 256, the engine's ``TrainSteps``, the engine's thread count); the
options of a variant take turns in every round, in an order that rotates between rounds,
and each is set against the engine's default (fp32, oneDNN, contiguous) in the same round.
A share of the CPU's fp32 peak (``bench.cpu_threads.fp32_peak_gflops``) goes with each rate.

    python -m bench --only step_options
    STEP_OPTIONS_ROUNDS=2 STEP_OPTIONS_SECONDS=1 python -m bench --only step_options   # reduced
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from bench.cpu_threads import LENET_FLOP, _has_avx512, cpu_ghz, fp32_peak_gflops

TITLE = "Steady training steps on the CPU: options that keep the book's arithmetic"
ROUNDS = int(os.environ.get("STEP_OPTIONS_ROUNDS", "3"))
SECONDS = float(os.environ.get("STEP_OPTIONS_SECONDS", "3"))  # timed steps per option and round, at least
DEFAULT = "fp32, oneDNN convolutions (the engine's default)"
NOTES = (
    "One process per variant's rows; each option builds its model from the same seed and times at least "
    f"{SECONDS:g} s of steady SGD steps (after 5 warm-up steps) on the same batches, in turns. `x default`: "
    "examples/s over the default's in the same round, then the median over rounds. `same numbers`: the loss sum "
    "of 20 steps from the seed equals the default's bit for bit (only the default's own arithmetic does; bf16 "
    "changes it by design and records itself in the checkpoint). `% peak`: examples/s x 1.69 MFLOP over the "
    "fp32 peak of the cores used. `load`: the 1-minute load average when the variant's rows ended."
)


def _mkldnn(enabled: bool) -> Any:
    """Within the block, convolutions use oneDNN or not (``torch.backends.mkldnn.flags``)."""
    import torch

    return torch.backends.mkldnn.flags(enabled=enabled)


def _options() -> dict[str, dict[str, Any]]:
    """Label -> how its model and steps are set up."""
    return {
        DEFAULT: {},
        "channels_last model and activations": {"channels_last": True},
        "ATen's im2col + GEMM convolutions (oneDNN off)": {"mkldnn": False},
        "bf16 autocast (AMX where present; other numbers)": {"bf16": True},
    }


def _steps(variant: str, option: dict[str, Any], data: Any) -> Any:
    """A fresh model from seed 0 and its ``TrainSteps`` as ``option`` sets them up."""
    import torch

    from models.lenet import build_lenet
    from models.stepper import TrainSteps, sgd

    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_lenet(variant)
    if option.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return TrainSteps(model, sgd(model, 1.0, device), data.train_images, data.train_labels, device,
                      batch_size=256, bf16=bool(option.get("bf16")))


def _context(option: dict[str, Any]) -> Any:
    return _mkldnn(False) if option.get("mkldnn") is False else nullcontext()


def _rate(variant: str, option: dict[str, Any], batches: list[Any], data: Any, seconds: float) -> float:
    """Examples/s of ``option``'s steady steps."""
    steps = _steps(variant, option, data)
    with _context(option):
        for b in batches[:5]:
            steps(b)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            steps(batches[5 + done % (len(batches) - 5)])
            done += 1
        elapsed = time.perf_counter() - started
    return done * 256 / elapsed


def run(quick: bool) -> list[dict[str, Any]]:
    """Each variant's rows in a fresh process with the engine's passive OpenMP waits (read as torch loads)."""
    from models.threads import OPENMP_WAITS

    env = dict(os.environ, **OPENMP_WAITS)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    rows: list[dict[str, Any]] = []
    for variant in ("builtin", "scratch"):
        argv = [sys.executable, "-m", "bench.step_options", variant, "quick" if quick else "full"]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stderr[-2000:]}")
        rows += json.loads([line for line in proc.stdout.splitlines() if line.startswith("[")][-1])
    return rows


def _variant_rows(variant: str, quick: bool) -> list[dict[str, Any]]:
    import torch

    from bench.data import fashion_mnist
    from models.memory import keep_large_buffers
    from models.threads import training_threads

    rounds, seconds = (1, 0.5) if quick else (ROUNDS, SECONDS)
    data = fashion_mnist(download=False)
    keep_large_buffers()
    order = torch.randperm(len(data.train_images), generator=torch.Generator().manual_seed(0))
    batches = [order[i:i + 256] for i in range(0, len(order) - 255, 256)]
    options = _options()
    rows: list[dict[str, Any]] = []
    # Every usable core, fixed (the options are compared on the count the engine uses on free cores).
    with training_threads(torch.device("cpu")) as tuner:
        threads = tuner.most
        peak = fp32_peak_gflops(threads, cpu_ghz(), _has_avx512())
        results: dict[str, list[dict[str, float]]] = {label: [] for label in options}
        for r in range(rounds):
            labels = list(options)
            turn = labels[r % len(labels):] + labels[:r % len(labels)]
            for label in turn:
                results[label].append({"rate": _rate(variant, options[label], batches, data, seconds)})
            base = results[DEFAULT][-1]["rate"]
            for label in labels:
                results[label][-1]["ratio"] = results[label][-1]["rate"] / base
        losses = {label: _fixed_loss(variant, options[label], batches, data) for label in options}
    load = os.getloadavg()[0]
    for label, runs in results.items():
        rate = statistics.median(x["rate"] for x in runs)
        rows.append({
            "variant": variant, "option": label, "threads": threads, "examples/s": rate,
            "x default": f"{statistics.median(x['ratio'] for x in runs):.2f}",
            "x default per round": ", ".join(f"{x['ratio']:.2f}" for x in runs),
            "same numbers": "yes" if losses[label] == losses[DEFAULT] else "no",
            "% peak": f"{100 * rate * LENET_FLOP / (peak * 1e9):.1f}",
            "load": f"{load:.1f}",
        })
    if variant == "scratch":
        rows.append({"variant": "-", "option": f"peak {peak:.0f} GFLOP/s fp32 on {threads} cores "
                     f"({cpu_ghz():g} GHz x {'32' if _has_avx512() else '16'} FMA lanes x 2 FLOP)"})
    return rows


def _fixed_loss(variant: str, option: dict[str, Any], batches: list[Any], data: Any) -> float:
    """The loss sum of 20 steps from the seed: equal to the default's when the arithmetic is."""
    steps = _steps(variant, option, data)
    with _context(option):
        for b in batches[:20]:
            steps(b)
    return float(steps.loss_sum)


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(_variant_rows(sys.argv[1], sys.argv[2] == "quick")), flush=True)
    else:
        sys.exit("usage: python -m bench.step_options VARIANT quick|full")
