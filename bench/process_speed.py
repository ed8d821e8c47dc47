"""Whole-process training speed: the chapter's pipeline against ``bnlenet train``, each a fresh process.

Every row is a subprocess timed from its start to its exit, so Python and torch start-up,
reading the data set, every epoch's evaluation on the test set and (for the engine) writing
the checkpoint are all counted, as a person running the command would feel them. The rows of
a variant run one after another in each round, in an order that rotates between rounds, and
the ratio to the chapter's pipeline is taken within a round.

    python -m bench --only process_speed
    PROCESS_SPEED_EPOCHS=1 PROCESS_SPEED_ROUNDS=1 PROCESS_SPEED_ROWS=targets python -m bench --only process_speed
    python -m bench.process_speed chapter scratch 3 4   # one chapter run (used by the section)

``PROCESS_SPEED_ROWS=targets`` runs only the issue's comparison (the chapter with 4 loader
workers against ``bnlenet train`` with its defaults); the default runs every row.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TITLE = "Whole-process training speed (start to exit)"
# Long enough that start-up is a fraction, short enough for 3 rounds in ~15 min on 2 quiet cores.
# PROCESS_SPEED_EPOCHS / PROCESS_SPEED_ROUNDS override them (a loaded machine is 5-10x slower).
EPOCHS = int(os.environ.get("PROCESS_SPEED_EPOCHS", "3"))
ROUNDS = int(os.environ.get("PROCESS_SPEED_ROUNDS", "3"))
ROWS = os.environ.get("PROCESS_SPEED_ROWS", "all")  # "targets": the chapter and the engine's defaults only
QUICK_TRAIN, QUICK_TEST = 8192, 2048  # --quick: a subset written as IDX files, 1 epoch, 1 round
CHAPTER = "chapter pipeline (DataLoader, ToTensor, 4 workers)"
CHAPTER_0 = "chapter pipeline, 0 workers"
CHAPTER_1T = "chapter pipeline, 4 workers, 1 intra-op thread (OMP_NUM_THREADS=1)"
ENGINE = "bnlenet train (engine, default options)"
ENGINE_1T = "bnlenet train --threads 1"
TARGET_ROWS = (CHAPTER, ENGINE)
NOTES = (
    "Each row is one process, timed from its start to its exit: interpreter and torch start-up, "
    "reading Fashion-MNIST, training, the per-epoch test-set evaluation and, for `bnlenet train`, "
    "writing the checkpoint. `examples/s` is training examples (epochs x 60,000) over that whole "
    "time. The chapter rows run `bench/chapter_pipeline.py` (d2l's `train_ch6`, which evaluates on "
    "the test set every epoch through its own DataLoader) in a fresh interpreter. Per round the "
    "rows of a variant run back to back in a rotating order; the table shows medians over "
    "rounds of the time, the rate and `x chapter` (the rate over the 4-worker chapter pipeline's "
    "in the same round). `load` is the 1-minute load average when the run ended (2 cores: above 2, "
    "other processes were waiting for a core). `threads`: the engine's intra-op threads per round "
    "(its own choice: every usable core). Accuracies are the last epoch's, without precise BN, "
    "from the median round."
)


def _chapter_main(variant: str, epochs: int, workers: int) -> None:
    """One chapter run in this process; prints its accuracies as one JSON line."""
    from bench.chapter_pipeline import train_chapter
    from bench.data import fashion_mnist

    data = fashion_mnist()  # the subset's DATA_DIR in a quick run
    result = train_chapter(variant, data, epochs=epochs, num_workers=workers)
    print(json.dumps({"train_acc": result.train_acc, "test_acc": result.test_acc}), flush=True)


def _bnlenet() -> list[str]:
    script = Path(sys.executable).with_name("bnlenet")
    if script.exists():
        return [str(script)]
    found = shutil.which("bnlenet")
    if found is None:
        raise RuntimeError("the bnlenet command is not installed (scripts/setup.sh installs it)")
    return [found]


def timed(command: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Wall seconds from start to exit, and the last JSON line the process printed."""
    if command[0] == "OMP_NUM_THREADS=1":
        command, env = command[1:], dict(env, OMP_NUM_THREADS="1")
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}:\n{proc.stderr[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return seconds, json.loads(lines[-1]) if lines else {}


def chapter_command(variant: str, epochs: int, workers: int) -> list[str]:
    """The chapter's pipeline as a fresh process (``train_chapter`` with ``workers`` loader processes)."""
    return [sys.executable, "-m", "bench.process_speed", "chapter", variant, str(epochs), str(workers)]


def _commands(variant: str, epochs: int) -> dict[str, list[str]]:
    engine = [*_bnlenet(), "train", "--variant", variant, "--epochs", str(epochs), "--json"]
    commands = {
        CHAPTER: chapter_command(variant, epochs, 4),
        CHAPTER_0: chapter_command(variant, epochs, 0),
        # The chapter's loop on one intra-op thread: what GNU OpenMP's spinning barriers cost it
        # beside its own four loader processes.
        CHAPTER_1T: ["OMP_NUM_THREADS=1", *chapter_command(variant, epochs, 4)],
        # The engine picks its threads (models/threads.py); --threads 1 shows what the rest buy.
        ENGINE: [*engine],
        ENGINE_1T: [*engine, "--threads", "1"],
    }
    return {k: v for k, v in commands.items() if k in TARGET_ROWS} if ROWS == "targets" else commands


def write_subset(directory: Path) -> None:
    from bench.data import fashion_mnist
    from models.data import FILES, write_idx

    data = fashion_mnist()
    for key, tensor in (("train_images", data.train_images[:QUICK_TRAIN]), ("train_labels", data.train_labels[:QUICK_TRAIN]),
                        ("test_images", data.test_images[:QUICK_TEST]), ("test_labels", data.test_labels[:QUICK_TEST])):
        write_idx(directory / FILES[key], tensor.numpy())


def child_env(tmp: Path, quick: bool) -> tuple[dict[str, str], int]:
    """The environment of the timed child processes (this checkout first on the path, checkpoints
    in ``tmp``; a quick run's subset written there as its ``DATA_DIR``) and the training set's size."""
    from bench.data import fashion_mnist

    env = dict(os.environ, CHECKPOINT_DIR=str(tmp / "checkpoints"))
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    if quick:
        write_subset(tmp)
        env["DATA_DIR"] = str(tmp)
    return env, QUICK_TRAIN if quick else len(fashion_mnist().train_images)


def run(quick: bool) -> list[dict[str, Any]]:
    epochs, rounds = (1, 1) if quick else (EPOCHS, ROUNDS)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="process-speed-") as tmp:
        env, n_train = child_env(Path(tmp), quick)
        for variant in ("builtin", "scratch"):
            commands = _commands(variant, epochs)
            labels = list(commands)
            results: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
            for r in range(rounds):
                order = labels[r % len(labels):] + labels[:r % len(labels)]
                for label in order:
                    seconds, out = timed(commands[label], env)
                    results[label].append({"seconds": seconds, "rate": epochs * n_train / seconds,
                                           "load": os.getloadavg()[0], **out})
                base = results[CHAPTER][-1]["rate"]
                for label in labels:
                    results[label][-1]["ratio"] = results[label][-1]["rate"] / base
            for label in labels:
                runs = results[label]
                median_run = sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2]
                rows.append({
                    "variant": variant, "pipeline": label, "epochs": epochs,
                    "seconds": statistics.median(x["seconds"] for x in runs),
                    "examples/s": statistics.median(x["rate"] for x in runs),
                    "x chapter": f"{statistics.median(x['ratio'] for x in runs):.2f}",
                    "x chapter per round": ", ".join(f"{x['ratio']:.2f}" for x in runs),
                    "load": f"{statistics.median(x['load'] for x in runs):.1f}",
                    "threads": ", ".join(str(x.get("threads", "-")) for x in runs),
                    "train acc": _acc(median_run.get("train_acc")),
                    "test acc": _acc(median_run.get("test_acc")),
                    "rounds": len(runs),
                })
    return rows


def _acc(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "chapter":
        _chapter_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit("usage: python -m bench.process_speed chapter VARIANT EPOCHS WORKERS")
