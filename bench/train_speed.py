"""Training throughput: the chapter's pipeline against the engine, side by side in one run.

Every row trains the same network with the chapter's hyperparameters (SGD, lr 1.0, batch
256, Xavier init) for the same number of epochs on the same data, one row after another in
this one process, so the ratios are measured under the same conditions. ``examples/s`` counts
every epoch's training time (a compile included); ``steady ex/s`` is the last epoch alone.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from bench.chapter_pipeline import train_chapter
from models.data import FashionMNIST, load_fashion_mnist
from models.training import TrainConfig, train

TITLE = "Training throughput (examples/sec)"
NOTES = (
    "`x chapter` divides by the chapter pipeline (4 workers) of the same variant on the same "
    "device, measured minutes apart in this run. Accuracies are the last epoch's, without "
    "precise BN. The machine is shared with other jobs, so absolute numbers move between "
    "runs by tens of percent; compare the ratios."
)

# (row label, TrainConfig overrides): the engine configurations measured on each device.
ENGINE_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("engine (default: eager, fp32)", {}),
    ("engine + bf16 autocast", {"bf16": True}),
    ("engine + torch.compile (compile counted)", {"compile": True}),
]
GPU_ENGINE_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("engine (default: eager, fp32, fused SGD)", {}),
    ("engine + torch.compile (CUDA graphs, compile counted)", {"compile": True}),
    ("engine + torch.compile + bf16", {"compile": True, "bf16": True}),
]


def _subset(data: FashionMNIST, n_train: int) -> FashionMNIST:
    return replace(data, train_images=data.train_images[:n_train], train_labels=data.train_labels[:n_train])


def _engine_row(label: str, variant: str, device: str, epochs: int, data: FashionMNIST,
                overrides: dict[str, Any]) -> dict[str, Any]:
    config = TrainConfig(variant=variant, epochs=epochs, device=device, progress_every=50, **overrides)
    history = train(config, data).history
    seen = len(data.train_images) * epochs
    return _row(variant, label, device, epochs,
                seen / sum(m.seconds for m in history), history[-1].examples_per_sec,
                history[-1].train_acc, history[-1].test_acc)


def _row(variant: str, label: str, device: str, epochs: int | str, ex_s: float | str,
         steady: float | str, train_acc: float | str, test_acc: float | str) -> dict[str, Any]:
    return {"variant": variant, "pipeline": label, "device": device, "epochs": epochs,
            "examples/s": ex_s, "steady ex/s": steady, "x chapter": "",
            "train acc": train_acc, "test acc": test_acc}


def run(quick: bool) -> list[dict[str, Any]]:
    data = load_fashion_mnist()
    epochs = 1 if quick else 2
    if quick:
        data = _subset(data, 8192)
    rows: list[dict[str, Any]] = []
    for device in ("cpu", "cuda"):
        if device == "cuda" and not torch.cuda.is_available():
            for variant in ("builtin", "scratch"):
                for label, _ in [("chapter pipeline (DataLoader, ToTensor, 4 workers)", {}), *GPU_ENGINE_ROWS]:
                    rows.append(_row(variant, label, "cuda", "-", "not measured: no GPU on this machine",
                                     "-", "-", "-"))
            continue
        engine_rows = ENGINE_ROWS if device == "cpu" else GPU_ENGINE_ROWS
        for variant in ("builtin", "scratch"):
            chapter = train_chapter(variant, data, epochs=epochs, device=device)
            base = _row(variant, "chapter pipeline (DataLoader, ToTensor, 4 workers)", device, epochs,
                        chapter.examples_per_sec, "-", chapter.train_acc, chapter.test_acc)
            base["x chapter"] = "1.0"
            rows.append(base)
            if device == "cpu":
                # The same code with the data loaded in-process: what the chapter's loop does
                # on two cores once four workers stop fighting the training threads for them.
                tuned = train_chapter(variant, data, epochs=epochs, device=device, num_workers=0)
                rows.append(_row(variant, "chapter pipeline, 0 workers", device, epochs,
                                 tuned.examples_per_sec, "-", tuned.train_acc, tuned.test_acc))
            for label, overrides in engine_rows:
                rows.append(_engine_row(label, variant, device, epochs, data, overrides))
            for row in rows:
                if row["variant"] == variant and row["device"] == device and isinstance(row["examples/s"], float):
                    row["x chapter"] = f"{row['examples/s'] / chapter.examples_per_sec:.1f}"
    return rows
