"""Training throughput: the chapter's pipeline against the engine, side by side in one run.

Every row trains the same network with the chapter's hyperparameters (SGD, lr 1.0, batch
256, Xavier init) for the same number of epochs on the same data, one row after another in
this one process, in rounds, so the ratios are measured under the same conditions.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from bench.chapter_pipeline import train_chapter
from bench.data import fashion_mnist
from models.data import FashionMNIST
from models.training import Progress, TrainConfig, train

TITLE = "Training throughput (examples/sec)"
CHAPTER = "chapter pipeline (DataLoader, ToTensor, 4 workers)"
NOTES = (
    "Each round trains every row of a variant back to back; the table shows medians over rounds. "
    "`examples/s`: examples over the training time of every epoch (as d2l reports it: evaluation "
    "excluded; the engine compiles and captures its CUDA graph before the first epoch, so that is "
    "in `wall s`, the whole call with data transfer and evaluation). `steady ex/s`: the same over "
    "epochs 2 on, without the first epoch's one-offs (with one epoch: from batch 50 to the end). "
    "`x chapter`: examples/s over the chapter pipeline's in the same round. CPU rows: one epoch, "
    "accuracies without precise BN. The machine is shared with other jobs, so absolute numbers "
    "move between runs by tens of percent; compare the ratios."
)

# (row label, TrainConfig overrides): the engine configurations measured on each device.
ENGINE_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("engine (default: eager, fp32)", {}),
    ("engine + bf16 autocast", {"bf16": True}),
    ("engine + torch.compile", {"compile": True}),
    ("engine + torch.compile + bf16", {"compile": True, "bf16": True}),
]
GPU_ENGINE_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("engine, eager steps (fused SGD), no graph", {"cuda_graph": False}),
    ("engine, eager steps in a CUDA graph", {}),
    ("engine + torch.compile in a CUDA graph, fp32 matmuls", {"compile": True, "tf32": False}),
    ("engine + torch.compile in a CUDA graph (the worker's default)", {"compile": True}),
    ("engine + torch.compile + bf16, in a CUDA graph", {"compile": True, "bf16": True}),
    ("engine + torch.compile reduce-overhead, no whole-step graph", {"compile": True, "cuda_graph": False}),
]
# Targets on one H100 (issue 14): steady examples/sec of the best engine row, per variant.
GPU_TARGETS = {"builtin": 1_000_000, "scratch": 700_000}


def _subset(data: FashionMNIST, n_train: int) -> FashionMNIST:
    return replace(data, train_images=data.train_images[:n_train], train_labels=data.train_labels[:n_train])


def _engine_row(label: str, variant: str, device: str, epochs: int, data: FashionMNIST,
                overrides: dict[str, Any]) -> dict[str, Any]:
    # Steady rate: from the first progress report (batch 50, after any compile) to the end.
    marks: list[tuple[float, int]] = []

    def mark(p: Progress) -> None:
        marks.append((time.perf_counter(), (p.epoch - 1) * p.batches + p.batch))

    # On the GPU the rows also record the accuracy of the model as served (precise BN), to set
    # beside the CPU's quality benchmark; it runs after the timed epochs.
    overrides = {"precise_bn": device == "cuda", **overrides}
    config = TrainConfig(variant=variant, epochs=epochs, device=device, progress_every=50, **overrides)
    started = time.perf_counter()
    result = train(config, data, on_progress=mark)
    wall = time.perf_counter() - started
    history = result.history
    n = len(data.train_images)
    seen = n * epochs
    steady: float | str = "-"
    if len(history) >= 2:
        # Training time of epochs 2 on: the first epoch also pays one-offs (cuDNN timing its
        # algorithms for the short last batch and the evaluation's shapes, the first graph replay).
        later = history[1:]
        steady = sum(m.examples_per_sec * m.seconds for m in later) / sum(m.seconds for m in later)
    elif len(marks) >= 2 and marks[-1][0] > marks[0][0]:
        batches = marks[-1][1] - marks[0][1]
        steady = batches * config.batch_size / (marks[-1][0] - marks[0][0])
    row = _row(variant, label, device, epochs, seen / sum(m.seconds for m in history), steady,
               history[-1].train_acc, history[-1].test_acc)
    row["wall s"] = wall  # the whole call: data to the device, compile, capture, every epoch
    if device == "cuda":
        row["test acc, precise BN"] = result.precise_bn_test_acc if result.precise_bn_test_acc is not None else "-"
        row["CUDA graph"] = "yes" if result.cuda_graph else "no"
        row["new graphs compiled"] = result.compiled_graphs
    return row


def _row(variant: str, label: str, device: str, epochs: int | str, ex_s: float | str,
         steady: float | str, train_acc: float | str, test_acc: float | str) -> dict[str, Any]:
    return {"variant": variant, "pipeline": label, "device": device, "epochs": epochs,
            "examples/s": ex_s, "steady ex/s": steady, "x chapter": "",
            "train acc": train_acc, "test acc": test_acc}


def one_round(device: str, variant: str, epochs: int, data: FashionMNIST,
              chapter_epochs: int | None = None, gpu_rows: list[int] | None = None) -> list[dict[str, Any]]:
    """Every pipeline once, back to back, for one variant on one device.

    ``chapter_epochs`` (default ``epochs``) shortens the chapter pipeline's run, whose rate
    does not change from epoch to epoch (a DataLoader has nothing to warm up beyond its first batch).
    """
    chapter_epochs = chapter_epochs or epochs
    chapter = train_chapter(variant, data, epochs=chapter_epochs, device=device)
    rows = [_row(variant, CHAPTER, device, chapter_epochs, chapter.examples_per_sec, "-",
                 chapter.train_acc, chapter.test_acc)]
    if device == "cpu":
        # The same code with the data loaded in-process: what the chapter's loop does on two
        # cores once four worker processes stop fighting the training threads for them.
        tuned = train_chapter(variant, data, epochs=epochs, device=device, num_workers=0)
        rows.append(_row(variant, "chapter pipeline, 0 workers", device, epochs,
                         tuned.examples_per_sec, "-", tuned.train_acc, tuned.test_acc))
    engine_rows = ENGINE_ROWS if device == "cpu" else [
        row for i, row in enumerate(GPU_ENGINE_ROWS) if gpu_rows is None or i in gpu_rows]
    for label, overrides in engine_rows:
        rows.append(_engine_row(label, variant, device, epochs, data, overrides))
    for row in rows:
        row["x chapter"] = row["examples/s"] / chapter.examples_per_sec
        if isinstance(row["steady ex/s"], float):
            row["steady x chapter"] = row["steady ex/s"] / chapter.examples_per_sec
    return rows


def _median_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per row: the median over rounds of each rate and of the ratio; accuracies of the median round."""
    merged = []
    for same in zip(*rounds, strict=True):
        row = dict(same[len(same) // 2])
        for key in ("examples/s", "steady ex/s", "x chapter", "steady x chapter", "wall s"):
            values = [r[key] for r in same if isinstance(r.get(key), float)]
            if values:
                row[key] = statistics.median(values)
        for key in ("x chapter", "steady x chapter"):
            if isinstance(row.get(key), float):
                row[key] = f"{row[key]:.1f}"
        row["rounds"] = len(same)
        merged.append(row)
    return merged


def run(quick: bool) -> list[dict[str, Any]]:
    data = fashion_mnist()
    epochs, rounds = 1, (1 if quick else 3)
    if quick:
        data = _subset(data, 8192)
    rows: list[dict[str, Any]] = []
    for device in ("cpu", "cuda"):
        if device == "cuda" and not torch.cuda.is_available():
            for variant in ("builtin", "scratch"):
                for label, _ in [(CHAPTER, {}), *GPU_ENGINE_ROWS]:
                    rows.append(_row(variant, label, "cuda", "-", "not measured: no GPU on this machine",
                                     "-", "-", "-"))
            continue
        for variant in ("builtin", "scratch"):
            rows.extend(_median_rows([one_round(device, variant, epochs, data) for _ in range(rounds)]))
    return rows


def run_cuda(epochs: int, rounds: int, chapter_epochs: int, data: FashionMNIST,
             variants: tuple[str, ...] = ("builtin", "scratch"), gpu_rows: list[int] | None = None,
             ) -> list[dict[str, Any]]:
    """The CUDA rows alone (the GPU check's measurement; ``gpu_rows`` picks from ``GPU_ENGINE_ROWS``),
    medians over ``rounds``."""
    rows: list[dict[str, Any]] = []
    for variant in variants:
        rounds_rows = [one_round("cuda", variant, epochs, data, chapter_epochs, gpu_rows) for _ in range(rounds)]
        rows.extend(_median_rows(rounds_rows))
    return rows
