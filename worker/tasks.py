"""The training task and the worker's housekeeping: data preloading and the stale-job reaper.

The task is thin: it claims the job in the store, calls ``models.training.train`` with plain
callbacks, publishes the checkpoint through the model store and records the outcome. A
heartbeat thread keeps the record's ``heartbeat_at`` fresh, writes the latest progress, and
turns a cancel request into a ``threading.Event``, so the training loop never talks to Redis
per batch.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from dataclasses import asdict
from typing import Any

from celery import signals
from celery.app.task import Task

from bnlenet.jobs import JobStore, Record, StoreUnavailable
from bnlenet.model_store import ModelStore
from bnlenet.settings import get_settings
from models.checkpoint import training_metadata
from models.data import FashionMNIST, load_fashion_mnist
from models.memory import release_memory
from models.training import (
    EpochMetrics,
    Progress,
    TrainConfig,
    TrainingCancelled,
    TrainingDiverged,
    resolve_device,
    train,
)
from worker.celery_app import TRAIN_TASK, app

__all__ = ["publish_train_job", "train_job"]

log = logging.getLogger(__name__)

_store: JobStore | None = None
_data: FashionMNIST | None = None
_data_lock = threading.Lock()
_engine_lock = threading.Lock()  # one training run at a time per process: the warm-up, then jobs


def job_store() -> JobStore:
    global _store
    if _store is None:
        s = get_settings()
        _store = JobStore.from_url(s.REDIS_URL, timeout=s.REDIS_TIMEOUT_S)
    return _store


def model_store() -> ModelStore:
    return ModelStore(get_settings().CHECKPOINT_DIR)


def training_data() -> FashionMNIST:
    """Fashion-MNIST, loaded once per worker process and kept for the next jobs."""
    global _data
    with _data_lock:
        if _data is None:
            s = get_settings()
            _data = load_fashion_mnist(s.DATA_DIR, download=s.DATA_DOWNLOAD)
        return _data


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def publish_train_job(job_id: str, broker_url: str | None = None) -> str:
    """Queue a task for the job on ``broker_url`` (default: the configured one); returns the task id.

    Raises when the broker is unreachable. Results are never stored (``ignore_result``): the
    job record is the result, and no result subscription is opened.
    """
    if broker_url is None:
        result = app.send_task(TRAIN_TASK, args=[job_id], retry=False, ignore_result=True)
    else:
        with app.connection_for_write(broker_url) as conn:
            result = app.send_task(TRAIN_TASK, args=[job_id], connection=conn, retry=False, ignore_result=True)
    return str(result.id)


class _Heartbeat(threading.Thread):
    """Keeps the job's heartbeat fresh, writes the latest progress, and watches for a cancel."""

    def __init__(self, job_id: str, worker: str, interval: float, progress_interval: float) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id, self.worker = job_id, worker
        self.interval = min(interval, progress_interval)
        self.heartbeat_interval = interval
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.progress: dict[str, Any] | None = None  # set by the training thread, read here
        self._written: dict[str, Any] | None = None
        self._beat_at = 0.0

    def run(self) -> None:
        while not self.done.wait(self.interval):
            progress = self.progress
            now = time.monotonic()
            if progress is self._written and now - self._beat_at < self.heartbeat_interval:
                continue
            try:
                if job_store().heartbeat(self.job_id, worker=self.worker, progress=progress):
                    self.cancel.set()
                self._written, self._beat_at = progress, now
            except StoreUnavailable as exc:  # keep training; the next beat may get through
                log.warning("heartbeat for job %s failed: %s", self.job_id, exc)


def _progress(p: Progress) -> dict[str, Any]:
    return {
        "epoch": p.epoch, "epochs": p.epochs, "batch": p.batch, "batches": p.batches,
        "fraction": p.fraction, "loss": p.loss, "train_acc": p.train_acc,
    }


def _pid_gone(record: Record) -> bool:
    """Whether the record's worker process is known dead (same host, pid no longer alive)."""
    worker, pid = record.get("worker") or "", record.get("worker_pid")
    if not pid or not worker.startswith(f"{socket.gethostname()}:") or pid == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _finish_reliably(job_id: str, status: str, **fields: Any) -> None:
    """Record the outcome, retrying for a while if Redis is briefly away."""
    deadline = time.monotonic() + 60
    while True:
        try:
            job_store().finish(job_id, status, **fields)
            return
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def job_config(params: dict[str, Any]) -> TrainConfig:
    """The engine's configuration for a job's parameters, with this worker's speed options.

    On CUDA the step is compiled (``COMPILE_ON_CUDA``): the pool process compiles once, in its
    warm-up, and every job after reuses the graphs.
    """
    device = resolve_device(params.get("device"))  # in the pool process: CUDA is initialized here
    return TrainConfig(
        variant=params["variant"], epochs=params["epochs"], lr=params["lr"], batch_size=params["batch_size"],
        seed=params["seed"], precise_bn=params["precise_bn"], device=params.get("device"),
        compile=device.type == "cuda" and get_settings().COMPILE_ON_CUDA,
    )


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self: Task, job_id: str) -> str:
    """Run training job ``job_id`` from its record; returns its final status."""
    try:
        return _run_job(job_id, self.request.id)
    finally:
        release_memory()


def _run_job(job_id: str, task_id: str | None) -> str:
    s = get_settings()
    store = job_store()
    me = worker_name()
    claim = store.claim(
        job_id, worker=me, pid=os.getpid(), task_id=task_id, max_attempts=s.MAX_ATTEMPTS,
        stale_after=s.JOB_STALE_AFTER_S, owner_gone=_pid_gone,
    )
    if not claim.run or claim.record is None:
        log.info("not running job %s: %s", job_id, claim.reason)
        return claim.record["status"] if claim.record else "missing"
    params = claim.record["params"]

    beat = _Heartbeat(job_id, me, s.JOB_HEARTBEAT_INTERVAL_S, s.JOB_PROGRESS_INTERVAL_S)
    beat.start()

    first_step_seen = False

    def on_progress(p: Progress) -> None:
        nonlocal first_step_seen
        beat.progress = progress = _progress(p)
        if not first_step_seen:  # the first report comes after the first batch: stamp it now
            first_step_seen = True
            try:
                store.first_step(job_id, worker=me, at=time.time(), progress=progress)
            except StoreUnavailable as exc:
                log.warning("could not record the first step of job %s: %s", job_id, exc)

    def on_epoch(m: EpochMetrics) -> None:
        progress = beat.progress or {}
        try:
            store.add_epoch(job_id, worker=me, metrics=asdict(m), progress=progress)
        except StoreUnavailable as exc:
            log.warning("could not record epoch %d of job %s: %s", m.epoch, job_id, exc)

    try:
        config = job_config(params)
        data = training_data()
        with _engine_lock:  # after the warm-up, which compiles what this job reuses
            result = train(config, data, on_progress=on_progress, on_epoch=on_epoch, should_stop=beat.cancel.is_set)
        metadata = {**training_metadata(config, result, data.classes), "job_id": job_id}
        model_store().publish(job_id, result.model, metadata)
        _finish_reliably(job_id, "succeeded", model_id=job_id, device=result.device)
        return "succeeded"
    except TrainingCancelled:
        _finish_reliably(job_id, "cancelled")
        return "cancelled"
    except (TrainingDiverged, ValueError) as exc:
        _finish_reliably(job_id, "failed", error=str(exc))
        return "failed"
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _finish_reliably(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    finally:
        beat.done.set()
        beat.join(timeout=5)


# Worker lifecycle ------------------------------------------------------------------------

@signals.worker_process_init.connect
def _preload_data(**_: Any) -> None:
    """Load the data set in the background as each pool process starts, so a job starts at once."""

    def load() -> None:
        try:
            data = training_data()
        except Exception as exc:  # the job that needs it will fail with the reason
            log.warning("could not preload Fashion-MNIST: %s", exc)
            return
        try:
            _warm_up(data)
        except Exception as exc:  # only speed is at stake
            log.warning("could not warm up the training engine: %s", exc)
        release_memory()
        # What is alive now (modules, the data set) lives as long as the process: keep it out
        # of the collector's sweeps, so the full collection after each job takes milliseconds
        # instead of about 150 ms on these two cores.
        gc.freeze()

    threading.Thread(target=load, name="preload-data", daemon=True).start()


def _warm_up(data: FashionMNIST) -> None:
    """Train each variant for two batches on a slice of the data, the way a job with defaults does.

    The first step of a process pays one-off costs (lazy imports, the autograd engine's
    threads, the kernels' primitive caches for this batch shape): about a second on two CPU
    cores; on a GPU also the compile of each variant's step. Paying it here keeps it out of the
    first job's queueing delay, and jobs wait for it rather than compile beside it.
    """
    defaults = TrainConfig()
    n = 2 * defaults.batch_size
    tiny = FashionMNIST(data.train_images[:n], data.train_labels[:n], data.test_images[:n], data.test_labels[:n])
    with _engine_lock:
        for variant in ("scratch", "builtin"):
            params = {**asdict(defaults), "variant": variant, "epochs": 1}
            train(job_config(params), tiny)


def reap_stale_jobs(store: JobStore) -> list[str]:
    """Requeue (or fail) running jobs whose worker stopped sending heartbeats; returns requeued ids."""
    s = get_settings()
    requeued = []
    for record in store.running():
        if record["heartbeat_at"] and time.time() - record["heartbeat_at"] < s.JOB_STALE_AFTER_S:
            continue
        back = store.reap(record["job_id"], stale_after=s.JOB_STALE_AFTER_S, max_attempts=s.MAX_ATTEMPTS)
        if back is not None:
            try:
                store.set_task_id(back["job_id"], publish_train_job(back["job_id"]))
                requeued.append(back["job_id"])
                log.warning("requeued job %s: %s", back["job_id"], back["note"])
            except Exception:
                log.exception("could not requeue job %s; the next sweep retries", back["job_id"])
    return requeued


class _Reaper(threading.Thread):
    """In the worker's main process: announces the worker and sweeps for stale jobs."""

    def __init__(self, name: str) -> None:
        super().__init__(name="stale-job-reaper", daemon=True)
        self.worker = name
        self.stop = threading.Event()

    def run(self) -> None:
        s = get_settings()
        store = job_store()
        beat_every = min(s.REAPER_INTERVAL_S, 5.0)
        next_sweep = 0.0
        while True:
            try:
                store.worker_seen(self.worker)
                if time.monotonic() >= next_sweep:
                    reap_stale_jobs(store)
                    next_sweep = time.monotonic() + s.REAPER_INTERVAL_S
            except StoreUnavailable as exc:
                log.warning("reaper: %s", exc)
            except Exception:
                log.exception("reaper sweep failed")
            if self.stop.wait(beat_every):
                return


_reaper: _Reaper | None = None


@signals.worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    global _reaper
    name = getattr(sender, "hostname", None) or worker_name()
    _reaper = _Reaper(str(name))
    _reaper.start()


@signals.worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if _reaper is not None:
        _reaper.stop.set()
