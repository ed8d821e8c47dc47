"""A sweep's trials packed onto one device against the same trials as separate jobs (issue 23).

8 trials (seeds 0-7) of one setting (the chapter's: scratch, lr 1.0, batch 256), 3 epochs.
Each layout runs its trials in fresh processes, as workers would, all at once; the aggregate
examples/s is every trial's training examples over the layout's wall time (per-epoch test
accuracy and precise BN included, as a sweep's user waits for them). On the CPU:

* separate jobs: one process per core, one thread each, the trials split between them and run
  one after the other (the best layout for separate jobs on the CPU: two one-thread
  processes beat one two-thread process, bench/RESULTS.md "Training on the cores");
* packed, one pack per core: the trials split into one pack per core, one thread each;
* packed, one pack on every core: all trials in one pack, one process, a thread per core.

Each trial's stored-model accuracy is compared with its own solo run (the separate layout).
With a GPU, the CUDA rows: 16 trials packed in one process against the same 16 run one after
the other in one process (the issue's target: 5,000,000 examples/s aggregate on an H100).

    python -m bench --only sweep
    SWEEP_TRAIN_IMAGES=12000 python -m bench --only sweep   # a subset, for a loaded machine
    SWEEP_CUDA_ROWS_DEVICE=cpu python -m bench --only sweep # the GPU rows' code path, on the CPU
    python -m bench.sweep job '<json>'                      # one process of a layout (used here)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from models.threads import OPENMP_WAITS, usable_cores

TITLE = "Sweeps: trials packed on one device against separate jobs"
EPOCHS = int(os.environ.get("SWEEP_EPOCHS", "3"))
TRAIN_IMAGES = int(os.environ.get("SWEEP_TRAIN_IMAGES", "0"))  # 0: the whole training set
TEST_IMAGES = int(os.environ.get("SWEEP_TEST_IMAGES", "0"))  # 0: the whole test set
SETTING: dict[str, Any] = {"variant": "scratch", "lr": 1.0, "batch_size": 256}
CPU_TRIALS = 8
ROUNDS = int(os.environ.get("SWEEP_ROUNDS", "2"))  # each comparison, in alternating order
CUDA_TRIALS = 16
CUDA_TARGET = 5_000_000  # examples/s aggregate, 16 trials, one H100
CUDA_ROWS_DEVICE = os.environ.get("SWEEP_CUDA_ROWS_DEVICE", "")  # run the GPU rows on this device instead


def _job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one process's share of a layout: its configs packed or one after the other; what it measured."""
    from bench.data import fashion_mnist
    from models.data import FashionMNIST
    from models.packed import train_packed
    from models.training import TrainConfig, TrainResult, train

    full = fashion_mnist(download=False)
    n, m = spec["train_images"] or len(full.train_images), spec["test_images"] or len(full.test_images)
    data = FashionMNIST(full.train_images[:n], full.train_labels[:n], full.test_images[:m], full.test_labels[:m],
                        full.classes)
    configs = [TrainConfig(**c) for c in spec["configs"]]
    if spec["packed"]:
        import tempfile

        from bnlenet.checkpoint_storage import LocalStorage
        from bnlenet.training_states import TrainingStates

        with tempfile.TemporaryDirectory(prefix="bench-sweep-states-") as store:
            states = TrainingStates(LocalStorage(store))

            def save(i: int, state: Any) -> None:  # as a worker's pack does: each trial's state to a directory store
                states.save(f"trial-{i}", 1, configs[i].hyperparameters(), state)

            results = train_packed(configs, data, formulation=spec.get("formulation"),
                                   on_state=save if spec.get("save_states") else None)
    else:
        results = [train(c, data) for c in configs]
    out = []
    for config, r in zip(configs, results, strict=True):
        assert isinstance(r, TrainResult), r
        out.append({"seed": config.seed, "final_test_acc": r.final_test_acc,
                    "examples": sum(round(h.examples_per_sec * h.seconds) for h in r.history)})
    return {"trials": out}


def _layout(groups: list[list[dict[str, Any]]], packed: bool, save_states: bool = False) -> dict[str, Any]:
    """Run the process groups of one layout at once; wall time and every trial's result.

    ``save_states``: a pack saves each trial's training state every epoch, as the worker's does.
    """
    env = {**os.environ, **OPENMP_WAITS, "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())}
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "bench.sweep", "job", json.dumps(
        {"configs": g, "packed": packed, "save_states": save_states, "train_images": TRAIN_IMAGES,
         "test_images": TEST_IMAGES})], stdout=subprocess.PIPE, env=env, text=True) for g in groups]
    outputs = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a sweep job failed with exit code {p.returncode}")
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    wall = time.perf_counter() - started
    trials = [t for o in outputs for t in o["trials"]]
    examples = sum(t["examples"] for t in trials)
    return {"wall": wall, "examples": examples, "rate": examples / wall,
            "accs": {t["seed"]: t["final_test_acc"] for t in trials}}


def _split(items: list[dict[str, Any]], parts: int) -> list[list[dict[str, Any]]]:
    return [items[i::parts] for i in range(parts) if items[i::parts]]


def _rows(device: str, trials: int, setting: dict[str, Any], cores: int, *, gpu_layout: bool = False
          ) -> list[dict[str, Any]]:
    """One comparison: the separate layout, then the packed ones, each with its ratio and accuracy gap.

    ``gpu_layout``: the GPU's layouts (one process), also on another device, to check the path.
    """
    gpu_layout = gpu_layout or device != "cpu"
    threads = 0 if gpu_layout else 1
    configs = [{**setting, "seed": s, "epochs": EPOCHS, "device": device, "threads": threads} for s in range(trials)]
    # (label, process groups, packed, each trial's training state saved every epoch)
    if not gpu_layout:
        layouts: list[tuple[str, list[list[dict[str, Any]]], bool, bool]] = [
            (f"separate jobs: {cores} processes x 1 thread, trials one after the other", _split(configs, cores), False,
             False),
            (f"packed: {cores} packs of {trials // cores}, 1 thread each", _split(configs, cores), True, False),
            (f"packed: 1 pack of {trials} on {cores} threads",
             [[{**c, "threads": cores} for c in configs]], True, False),
        ]
    else:
        layouts = [("separate jobs: 1 process, trials one after the other", [configs], False, False),
                   (f"packed: 1 pack of {trials}", [configs], True, False),
                   (f"packed: 1 pack of {trials}, each trial's training state saved every epoch (as the worker's)",
                    [configs], True, True)]
    # Rounds in alternating order (the load on a shared machine drifts); ratios within a round.
    rounds: list[dict[str, dict[str, Any]]] = []
    for r in range(ROUNDS):
        order = layouts if r % 2 == 0 else layouts[::-1]
        rounds.append({label: _layout(groups, packed, states) for label, groups, packed, states in order})
    base_label = layouts[0][0]
    rows = []
    for label, _, _, _ in layouts:
        m = rounds[-1][label]
        base = rounds[-1][base_label]
        gaps = [abs(m["accs"][s] - base["accs"][s]) for s in base["accs"]]
        ratios = [rd[label]["rate"] / rd[base_label]["rate"] for rd in rounds]
        rows.append({
            "device": device, "batch": setting["batch_size"], "layout": label, "trials": trials,
            "images x epochs": f"{(TRAIN_IMAGES or 60000):,} x {EPOCHS}",
            "aggregate examples/s": statistics.median(rd[label]["rate"] for rd in rounds),
            "x separate": statistics.median(ratios), "x separate per round": ", ".join(f"{x:.2f}" for x in ratios),
            "wall s": statistics.median(rd[label]["wall"] for rd in rounds),
            "final acc (mean)": sum(m["accs"].values()) / len(m["accs"]),
            "max gap to solo": max(gaps),
            "load": os.getloadavg()[0],
        })
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    global EPOCHS, TRAIN_IMAGES, TEST_IMAGES, ROUNDS
    if quick:
        EPOCHS, TRAIN_IMAGES, TEST_IMAGES, ROUNDS = 1, 2048, 1024, 1
    cores = max(1, min(2, usable_cores()))
    rows = _rows("cpu", CPU_TRIALS, SETTING, cores)
    # Where packing pays on the CPU (models.packed.packing_pays): small batches.
    rows += _rows("cpu", CPU_TRIALS, {**SETTING, "batch_size": 16}, cores)
    if torch.cuda.is_available() or CUDA_ROWS_DEVICE:
        # SWEEP_CUDA_ROWS_DEVICE=cpu runs the GPU's comparison on the CPU: the code path, not its speed.
        rows += _rows(CUDA_ROWS_DEVICE or "cuda", CUDA_TRIALS, SETTING, cores, gpu_layout=True)
    else:
        rows.append({"device": "cuda", "batch": SETTING["batch_size"],
                     "layout": f"packed: 1 pack of {CUDA_TRIALS} (target {CUDA_TARGET:,} examples/s)",
                     "trials": CUDA_TRIALS, "aggregate examples/s": "not measured: no GPU on this machine"})
    return rows


NOTES = ("Medians over rounds run in alternating layout order; `x separate` is taken within each round. "
         "Aggregate examples/s: every trial's training examples over the layout's wall time, per-epoch test "
         "accuracy and precise BN included. `max gap to solo`: the largest difference of a trial's stored-model "
         "accuracy from the same seed's separate (solo) run. The CUDA rows need a GPU; their last row saves each "
         "trial's training state every epoch to a directory store, as a worker's pack does.")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "job":
        print(json.dumps(_job(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit("usage: python -m bench.sweep job '<json>'  (the section runs with: python -m bench --only sweep)")
