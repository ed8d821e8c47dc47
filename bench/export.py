"""Inference speed: eager PyTorch against onnxruntime running the ONNX export of the same model.

For each variant, one model (seeded weights; speed does not depend on their values) is served
by both of ``models.runtime``'s runtimes: ``eager`` (``predict_probabilities``, what
``/predict`` runs) and ``onnxruntime`` (the ONNX export on the CPU provider). Both get the same
thread count (``torch.set_num_threads`` and onnxruntime's ``intra_op_num_threads``; one
inter-op thread, spinning off), the same input and the same output (probabilities, as a
tensor). Rounds alternate which runtime goes first; the table shows medians.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from models.lenet import VARIANTS, build_lenet
from models.runtime import RUNTIMES, make_predictor

TITLE = "Inference: eager PyTorch against onnxruntime (ONNX export), images/sec"
NOTES = (
    "`eager`: `predict_probabilities` on the model in eval mode (what `/predict` runs). `onnxruntime`: the ONNX "
    "export (`models/export.py`, opset 18, BN folded to constants) in an `InferenceSession` with the CPU provider, "
    "graph optimizations at their default (all), `intra_op_num_threads` = the torch thread count, "
    "`inter_op_num_threads` 1, `session.intra_op.allow_spinning` and `session.inter_op.allow_spinning` 0. "
    "Each cell: calls repeated for a fixed time after a warm-up, images/sec = images / seconds; medians over "
    "rounds, each round timing every row with the runtimes in alternating order. `ms/call`: the median call's "
    "latency in that round's timing. `max abs diff`: between the two runtimes' probabilities on the bench input. "
    "The API's processes run with one torch thread each (`app/main.py`), so the 1-thread rows are the serving case."
)
BATCHES = (1, 16, 256)


def _time(call: Callable[[], Any], batch: int, seconds: float) -> tuple[float, float]:
    """(images/sec, median ms per call) of ``call`` repeated for about ``seconds``."""
    for _ in range(3):
        call()  # warm-up: allocations, first-call paths
    laps: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        laps.append(t1 - t0)
        if t1 - start >= seconds and len(laps) >= 5:
            break
    return batch * len(laps) / (t1 - start), statistics.median(laps) * 1e3


def _rows(variant: str, threads: int, rounds: int, seconds: float) -> list[dict[str, Any]]:
    """One variant at one thread count: every batch size, both runtimes, side by side in rounds."""
    torch.manual_seed(0)
    model = build_lenet(variant).eval()
    predictors = {name: make_predictor(model, {"variant": variant}, name, threads=threads) for name in RUNTIMES}
    inputs = {
        b: torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(b)) for b in BATCHES
    }  # (b, 1, 28, 28)
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(rounds):
        for batch in BATCHES:
            for name in RUNTIMES if r % 2 == 0 else RUNTIMES[::-1]:
                call = functools.partial(predictors[name].predict_probabilities, inputs[batch])
                results.setdefault((name, batch), []).append(_time(call, batch, seconds))
    rows: list[dict[str, Any]] = []
    for batch in BATCHES:
        eager, onnx = (predictors[name].predict_probabilities(inputs[batch]) for name in RUNTIMES)
        diff = float((eager - onnx).abs().max())
        rates = {name: statistics.median(ips for ips, _ in results[(name, batch)]) for name in RUNTIMES}
        ms = {name: statistics.median(m for _, m in results[(name, batch)]) for name in RUNTIMES}
        rows.append(
            {
                "variant": variant,
                "threads": threads,
                "batch": batch,
                "eager images/s": rates["eager"],
                "onnxruntime images/s": rates["onnxruntime"],
                "onnxruntime / eager": round(rates["onnxruntime"] / rates["eager"], 2),
                "eager ms/call": ms["eager"],
                "onnxruntime ms/call": ms["onnxruntime"],
                "max abs diff": f"{diff:.1e}",
                "rounds": rounds,
            }
        )
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Rows per (variant, threads, batch): images/sec of each runtime and their ratio."""
    rounds, seconds = (2, 0.1) if quick else (5, 0.4)
    thread_counts = (1,) if quick else (1, 2)
    threads_before = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    try:
        for variant in VARIANTS:
            for threads in thread_counts:
                torch.set_num_threads(threads)
                rows += _rows(variant, threads, rounds, seconds)
    finally:
        torch.set_num_threads(threads_before)
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
