"""A training job through the service against the chapter's pipeline: POST /train to succeeded.

Starts ``bnlenet up`` (its own Redis, one CPU worker with the cores ``bnlenet up`` gives it,
the API) on a free port, warms the worker with a one-epoch job (the pool process has then
loaded torch and the data set, as a worker that has been up a while has), then for each
variant, in each round: a job of ``EPOCHS`` epochs posted with the defaults, timed from the
POST to the record's ``succeeded`` (polled every 0.1 s), and beside it the chapter's pipeline
for as many epochs as a fresh process, start to exit (``bench.process_speed``'s chapter row).
The order alternates between rounds; the ratio is taken within a round.

    python -m bench --only service_speed
    SERVICE_SPEED_EPOCHS=2 SERVICE_SPEED_ROUNDS=1 python -m bench --only service_speed   # reduced
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.process_speed import CHAPTER, chapter_command, child_env, timed
from bench.queueing import wait_job_end
from bench.service import http, running_stack

TITLE = "A training job through the service (POST /train to succeeded) against the chapter's pipeline"
EPOCHS = int(os.environ.get("SERVICE_SPEED_EPOCHS", "10"))
ROUNDS = int(os.environ.get("SERVICE_SPEED_ROUNDS", "2"))
JOB = "job through bnlenet up (warm worker, defaults)"
NOTES = (
    "`job` is `POST /train` with the defaults and the row's variant and epochs, timed from the POST to the job "
    "record's `succeeded` (polled every 0.1 s): queueing, the worker's training on the cores `bnlenet up` gives it, "
    "every epoch's evaluation, precise BN, averaging, the checkpoint's upload and the success record. The worker is "
    "warm: a one-epoch job ran first. The chapter row is `bench/chapter_pipeline.py` (d2l's `train_ch6`, DataLoader "
    "with 4 workers, default threads) as a fresh process, start to exit, run while the stack sits idle. "
    "`x chapter`: the chapter's seconds over the job's, per round, then the median. `load`: the 1-minute load "
    "average when the row ended."
)


def job_seconds(base: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """POST /train to the record's end; the seconds and the final record (raises unless it succeeded)."""
    started = time.perf_counter()
    status, job = http("POST", base + "/train", body)
    if status != 202:
        raise RuntimeError(f"POST /train answered {status}: {job}")
    record = wait_job_end(base, job["job_id"], timeout=3600)
    seconds = time.perf_counter() - started
    if record["status"] != "succeeded":
        raise RuntimeError(f"job {job['job_id']} ended {record['status']}: {record.get('error')}")
    return seconds, record


def run(quick: bool) -> list[dict[str, Any]]:
    epochs, rounds = (1, 1) if quick else (EPOCHS, ROUNDS)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="service-speed-") as tmp:
        env, n_train = child_env(Path(tmp), quick)
        stack_env = {"DATA_DIR": env["DATA_DIR"]} if quick else {}
        with running_stack(Path(tmp), env_extra=stack_env) as (base, _):
            job_seconds(base, {"epochs": 1})  # warm the worker's pool process
            for variant in ("builtin", "scratch"):
                runs: dict[str, list[dict[str, Any]]] = {JOB: [], CHAPTER: []}
                for r in range(rounds):
                    for label in ((JOB, CHAPTER) if r % 2 == 0 else (CHAPTER, JOB)):
                        if label == JOB:
                            seconds, record = job_seconds(base, {"epochs": epochs, "variant": variant})
                            out = {"test_acc": record.get("final_test_acc")}
                        else:
                            seconds, out = timed(chapter_command(variant, epochs, 4), env)
                        runs[label].append({"seconds": seconds, "load": os.getloadavg()[0], **out})
                    ratio = runs[CHAPTER][-1]["seconds"] / runs[JOB][-1]["seconds"]
                    runs[JOB][-1]["ratio"], runs[CHAPTER][-1]["ratio"] = ratio, 1.0
                for label, results in runs.items():
                    rows.append({
                        "variant": variant, "pipeline": label, "epochs": epochs,
                        "seconds": statistics.median(x["seconds"] for x in results),
                        "examples/s": statistics.median(epochs * n_train / x["seconds"] for x in results),
                        "x chapter": f"{statistics.median(x['ratio'] for x in results):.2f}",
                        "x chapter per round": ", ".join(f"{x['ratio']:.2f}" for x in results),
                        "final test acc": ", ".join(f"{x['test_acc']:.4f}" if isinstance(x.get("test_acc"), float)
                                                    else "-" for x in results),
                        "load": f"{statistics.median(x['load'] for x in results):.1f}",
                    })
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
