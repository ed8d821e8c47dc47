"""Many workers: 16 Celery worker processes (solo pool) run 1,000 short jobs, each exactly once.

Starts its own Redis and 16 ``celery worker --pool solo`` processes on a tiny synthetic data
set (64 training images: two batches of 32 a job), queues 1,000 jobs the way the API does
(the record with its outbox entry, then the task), and waits until none is queued or running.
Every job must succeed on its first attempt, publish exactly one checkpoint, and leave nothing
behind. Redis's own command counter gives the commands per job, which must not grow with the
history (the job store's calls are O(1) or O(log N) in the number of records): measured on an
empty store and again with 100,000 records.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bnlenet.jobs import JobStore
from bnlenet.local import procs
from bnlenet.local.redis_server import RedisServer
from bnlenet.settings import Settings
from bnlenet.training_queue import Publisher
from models.data import FILES, write_idx

TITLE = "Many workers: 16 solo Celery workers run 1,000 short jobs"
NOTES = (
    "All on this machine's two cores: 16 worker processes (each with PyTorch loaded), Redis and the "
    "submitting process. A job is one epoch of 2 batches of 32 synthetic images, precise BN and a checkpoint "
    "write. `Redis commands / job` counts every command Redis processed (the job store's, Celery's and the "
    "workers' idle polling, less the benchmark's own) per job: for the first half of the jobs on an empty store, "
    "and for the second half after 100,000 finished records were added."
)
ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ("succeeded", "failed", "cancelled")


def _synthetic(directory: Path, n_train: int = 64, n_test: int = 32) -> Path:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for images, labels, n in (("train_images", "train_labels", n_train), ("test_images", "test_labels", n_test)):
        write_idx(directory / FILES[images], rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8))
        write_idx(directory / FILES[labels], rng.integers(0, 10, size=n, dtype=np.uint8))
    return directory


def _counts(store: JobStore) -> dict[str, int]:
    pipe = store.redis.pipeline(transaction=False)
    for status in ("queued", "running", *TERMINAL):
        pipe.zcard(JobStore.index_key(status))
    return dict(zip(("queued", "running", *TERMINAL), pipe.execute(), strict=True))


def _run_jobs(store: JobStore, publisher: Publisher, count: int, first_seed: int) -> tuple[list[str], float, float]:
    """Queue ``count`` jobs as the API does and wait until they have all ended: (ids, seconds, Redis commands / job).

    The commands are every command Redis processed meanwhile (the job store's, Celery's, the
    workers' idle polling) less this function's own polling.
    """
    params = {"variant": "scratch", "epochs": 1, "lr": 0.5, "batch_size": 32, "precise_bn": True, "device": "cpu"}
    ended_before = sum(_counts(store)[s] for s in TERMINAL)
    before = int(store.redis.info("stats")["total_commands_processed"])
    own = 1 + 5  # that INFO, and the counts before it
    started = time.monotonic()
    ids = []
    for seed in range(first_seed, first_seed + count):
        record, _ = store.submit({**params, "seed": seed})  # what POST /train does
        store.published(record["job_id"], publisher.publish(record["job_id"]))
        ids.append(record["job_id"])
    while time.monotonic() - started < 3600:
        ended = sum(_counts(store)[s] for s in TERMINAL) - ended_before
        own += 5
        if ended >= count:
            break
        time.sleep(1.0)
    seconds = time.monotonic() - started
    after = int(store.redis.info("stats")["total_commands_processed"])
    return ids, seconds, (after - before - own) / count


def run(quick: bool = False) -> list[dict[str, Any]]:
    from bench.jobstore import fill

    workers, jobs, history = (4, 40, 2_000) if quick else (16, 1000, 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        redis = RedisServer(tmpdir / "redis", persistence=False).start()
        children = []
        try:
            env = {**os.environ, "REDIS_URL": redis.url, "CHECKPOINT_DIR": str(tmpdir / "checkpoints"),
                   "DATA_DIR": str(_synthetic(tmpdir / "data")), "DATA_DOWNLOAD": "false",
                   "MODEL_CACHE_DIR": str(tmpdir / "cache")}
            for i in range(workers):
                children.append(procs.start(
                    [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo",
                     "-Q", "training", "-n", f"w{i}@%h", "--without-gossip", "--without-mingle",
                     "--loglevel", "WARNING"], env=env, cwd=ROOT, log=tmpdir / f"worker-{i}.log"))
            store = JobStore.from_url(redis.url)
            procs.wait_until(lambda: len(store.live_workers(60)) >= workers, 600, f"{workers} workers to announce")
            publisher = Publisher(Settings(REDIS_URL=redis.url))
            half = jobs // 2
            first_ids, first_s, first_cmds = _run_jobs(store, publisher, half, 0)
            fill(store, history)  # a long history of finished jobs, then the second half
            last_ids, last_s, last_cmds = _run_jobs(store, publisher, jobs - half, half)
            records = [store.get(job_id) for job_id in first_ids + last_ids]
            counts = _counts(store)
            checkpoints = sorted((tmpdir / "checkpoints").glob("*.safetensors"))
        finally:
            for child in children:
                procs.stop(child, 30)
            redis.stop()
    succeeded = sum(r["status"] == "succeeded" for r in records)
    retried = sum(r["attempts"] != 1 for r in records)
    stuck = counts["queued"] - 50 + counts["running"]  # fill() leaves 50 records queued on purpose, with no task
    return [{
        "workers": workers, "jobs": jobs, "succeeded": succeeded, "attempts != 1": retried, "stuck": stuck,
        "checkpoints": len(checkpoints), "jobs/s": round(jobs / (first_s + last_s), 2),
        "Redis commands / job, empty history": round(first_cmds, 1),
        f"with {history:,} records": round(last_cmds, 1),
        "exactly once": "yes" if succeeded == jobs == len(checkpoints) and not retried and not stuck else "no",
        "constant": "yes" if last_cmds <= 1.25 * first_cmds else "no",
        "median job s": round(statistics.median(r["finished_at"] - r["started_at"] for r in records
                                                if r["finished_at"] and r["started_at"]), 3),
    }]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
