"""The worker's housekeeping around the training task: the job's heartbeat, the owner check,
preloading and warm-up as a pool process starts, and the stale-job reaper.

The heartbeat thread keeps the record's ``heartbeat_at`` fresh, writes the latest progress,
and turns a cancel request into a ``threading.Event``, so the training loop never talks to
Redis per batch. The reaper runs in the worker's main process and requeues (or fails) jobs
whose worker went silent.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from celery import signals

from bnlenet.jobs import TERMINAL, JobNotFound, JobRecord, JobStore, MalformedJob, StoreUnavailable, is_stale
from bnlenet.logs import configure_handlers, current_job
from bnlenet.model_news import ModelNews
from bnlenet.model_store import ModelStore, ModelUnusable, ObjectStoreUnavailable, UnknownModel
from bnlenet.settings import Settings
from bnlenet.training_queue import TRAIN_TASK, Publisher
from models.data import FashionMNIST
from models.memory import release_memory
from models.training import TrainConfig, train
from worker import resources

__all__ = ["Heartbeat", "LostJob", "Reaper", "owner_gone", "publish_outbox", "reap_stale_jobs", "warm_up"]

log = logging.getLogger(__name__)


class LostJob(RuntimeError):
    """This worker no longer owns the job (or cannot tell within its lease): it must publish nothing."""


class Heartbeat(threading.Thread):
    """Keeps the job's heartbeat fresh, writes the latest progress, and watches for a cancel or a lost job.

    ``cancel`` is the training loop's stop signal: set on a cancel request, and when a beat finds
    that the job is no longer this attempt's (``lost`` set too), so a worker that was frozen or
    cut off past ``JOB_STALE_AFTER_S`` stops within a heartbeat of coming back.
    """

    def __init__(self, store: JobStore, job_id: str, *, worker: str, attempt: int, interval: float,
                 progress_interval: float, lease: float,
                 announce: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.store, self.job_id, self.worker, self.attempt = store, job_id, worker, attempt
        self.announce = announce  # told of each new progress written (the task's task-progress event)
        self.interval = min(interval, progress_interval)
        self.heartbeat_interval = interval
        self.lease = lease  # how long one confirmation of ownership lasts (well under JOB_STALE_AFTER_S)
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self.done = threading.Event()
        self.progress: dict[str, Any] | None = None  # set by the training thread, read here
        self.confirmed_at = time.monotonic()  # the claim just confirmed it
        self._written: dict[str, Any] | None = None
        self._beat_at = float("-inf")

    def run(self) -> None:
        current_job.set(self.job_id)  # a thread starts with a fresh context: its log lines name the job too
        while not self.done.wait(self.interval):
            self.beat()

    def beat(self, *, force: bool = False) -> None:
        """Write the heartbeat (and new progress), unless nothing changed and the last beat is recent."""
        progress = self.progress
        now = time.monotonic()
        if not force and progress is self._written and now - self._beat_at < self.heartbeat_interval:
            return
        try:
            cancel, owned = self.store.beat(self.job_id, worker=self.worker, attempt=self.attempt, progress=progress)
        except StoreUnavailable as exc:  # keep training; the next beat may get through
            log.warning("heartbeat for job %s failed: %s", self.job_id, exc)
            return
        fresh = progress is not None and progress is not self._written
        self._written, self._beat_at = progress, now
        if fresh and self.announce is not None and progress is not None:
            try:
                self.announce(progress)
            except Exception as exc:  # an event is for watchers; the job goes on without it
                log.warning("could not announce the progress of job %s: %s", self.job_id, exc)
        if not owned:
            if not self.lost.is_set():
                log.warning("job %s: attempt %d no longer owns the job (another attempt does, or it ended); "
                            "stopping without publishing", self.job_id, self.attempt)
            self.lost.set()
            self.cancel.set()
            return
        self.confirmed_at = now
        if cancel:
            self.cancel.set()

    def confirm_lease(self) -> None:
        """Raise ``LostJob`` unless this attempt certainly owns the job for the next moments.

        Called just before the checkpoint takes its name. A fresh beat confirms ownership
        (or finds it lost); with Redis away, the last confirmation counts while it is younger
        than the lease: nobody can take the job over before ``JOB_STALE_AFTER_S`` of silence.
        """
        self.beat(force=True)
        if self.lost.is_set():
            raise LostJob(f"job {self.job_id} is no longer attempt {self.attempt}'s")
        age = time.monotonic() - self.confirmed_at
        if age > self.lease:
            raise LostJob(f"ownership of job {self.job_id} last confirmed {age:.1f}s ago, beyond the "
                          f"{self.lease:.1f}s lease")

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


def owner_gone(record: JobRecord) -> bool:
    """Whether the record's worker process is known dead (same host, pid no longer alive)."""
    worker, pid = record["worker"] or "", record["worker_pid"]
    if not pid or not worker.startswith(f"{socket.gethostname()}:") or pid == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def reap_stale_jobs(store: JobStore, publisher: Publisher, settings: Settings) -> list[str]:
    """Requeue (or fail) running jobs whose worker stopped sending heartbeats; returns requeued ids."""
    requeued = []
    for record in store.running():
        if not is_stale(record, settings.JOB_STALE_AFTER_S):
            continue
        published = _published(record["job_id"], settings)
        if published is not None:  # recorded succeeded below: every API process serves it first
            _announce(f"model {record['job_id']} published", settings)
        back = store.reap(record["job_id"], stale_after=settings.JOB_STALE_AFTER_S,
                          max_attempts=settings.MAX_ATTEMPTS, published=published)
        if back is not None:
            log.warning("requeued job %s: %s", back["job_id"], back["note"])
            requeued.append(back["job_id"])
            try:
                store.published(back["job_id"], publisher.publish(back["job_id"]))
            except Exception as exc:  # it is in the outbox: the next sweep publishes it
                log.warning("could not publish requeued job %s yet: %s", back["job_id"], exc)
    return requeued


def _published(job_id: str, settings: Settings) -> dict[str, Any] | None:
    """The metadata of the job's checkpoint if one verifies (a vanished worker may have published it)."""
    try:
        return ModelStore.from_settings(settings).metadata(job_id)
    except (UnknownModel, ModelUnusable):
        return None
    except ObjectStoreUnavailable as exc:  # unknown yet: a later sweep looks again
        raise StoreUnavailable(str(exc)) from exc


def _announce(what: str, settings: Settings) -> None:
    news = ModelNews.from_url(settings.REDIS_URL, wait_s=settings.MODEL_NEWS_WAIT_S, timeout=settings.REDIS_TIMEOUT_S)
    try:
        news.announce(what)
    finally:
        news.close()


def publish_outbox(store: JobStore, publisher: Publisher, settings: Settings) -> list[str]:
    """Publish the queued jobs whose task was never confirmed on the broker; returns their ids.

    A job lands here when the API (or a reaper) stored it and then crashed, or lost the broker,
    before the publish was confirmed. If the first publish did get through, this one is a
    duplicate, which ``claim`` makes harmless.
    """
    published = []
    for job_id in store.pending_publish(settings.OUTBOX_GRACE_S):
        try:
            record = store.get(job_id)
        except (JobNotFound, MalformedJob):
            store.drop_from_outbox(job_id)
            continue
        if record["status"] != "queued" or record["cancel_requested"]:
            store.drop_from_outbox(job_id)  # it ran, ended or was cancelled: nothing to publish
            continue
        try:
            store.published(job_id, publisher.publish(job_id))
        except StoreUnavailable:
            raise
        except Exception as exc:
            log.warning("could not publish job %s from the outbox yet: %s", job_id, exc)
            continue
        log.warning("published job %s from the outbox: its first publish was never confirmed", job_id)
        published.append(job_id)
    return published


class Reaper(threading.Thread):
    """In the worker's main process: announces the worker, sweeps for stale jobs and expires old ones."""

    def __init__(self, name: str, store: JobStore, publisher: Publisher, settings: Settings) -> None:
        super().__init__(name="stale-job-reaper", daemon=True)
        self.worker, self.store, self.publisher, self.settings = name, store, publisher, settings
        self.stop = threading.Event()

    def run(self) -> None:
        beat_every = min(self.settings.REAPER_INTERVAL_S, self.settings.OUTBOX_GRACE_S, 5.0)
        next_sweep = 0.0
        while True:
            try:
                self.store.worker_seen(self.worker)
                publish_outbox(self.store, self.publisher, self.settings)  # one cheap read when empty
                if time.monotonic() >= next_sweep:
                    reap_stale_jobs(self.store, self.publisher, self.settings)
                    expired = self.store.expire()  # finished jobs past JOB_RETENTION_DAYS
                    if expired:
                        log.info("deleted %d finished job(s) past their retention", expired)
                    next_sweep = time.monotonic() + self.settings.REAPER_INTERVAL_S
            except StoreUnavailable as exc:
                log.warning("reaper: %s", exc)
            except Exception:
                log.exception("reaper sweep failed")
            if self.stop.wait(beat_every):
                return


def warm_up(data: FashionMNIST) -> None:
    """Train each variant for two batches on a slice of the data, the way a job with defaults does.

    The first step of a process pays one-off costs (lazy imports, the autograd engine's
    threads, the kernels' primitive caches for this batch shape): about a second on two CPU
    cores; on a GPU also the compile of each variant's step. Paying it here keeps it out of the
    first job's queueing delay, and jobs wait for it rather than compile beside it.
    """
    from worker.tasks import job_config  # the task module imports this one

    defaults = TrainConfig()
    n = 2 * defaults.batch_size
    tiny = FashionMNIST(data.train_images[:n], data.train_labels[:n], data.test_images[:n], data.test_labels[:n])
    with resources.engine_lock:
        for variant in ("scratch", "builtin"):
            params = {**asdict(defaults), "variant": variant, "epochs": 1, "precise_bn": False}
            train(job_config(params, resources.settings()), tiny)


# Worker lifecycle ------------------------------------------------------------------------

@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _job_logging(logger: logging.Logger | None = None, **_: Any) -> None:
    """Every handler Celery sets up names the job a line is about, in the format LOG_FORMAT says."""
    if logger is not None:
        configure_handlers(logger.handlers, resources.settings().LOG_FORMAT)


@signals.task_prerun.connect
def _enter_job(task: Any = None, args: Any = None, **_: Any) -> None:
    """In the pool process, from before the task starts until after Celery logs how it ended."""
    if getattr(task, "name", None) == TRAIN_TASK and args:
        current_job.set(str(args[0]))


@signals.task_postrun.connect
def _leave_job(**_: Any) -> None:
    current_job.set(None)


@signals.worker_process_init.connect
def _preload_data(**_: Any) -> None:
    """Load the data set in the background as each pool process starts, so a job starts at once."""

    def load() -> None:
        try:
            data = resources.training_data()
        except Exception as exc:  # the job that needs it will fail with the reason
            log.warning("could not preload Fashion-MNIST: %s", exc)
            return
        try:
            warm_up(data)
        except Exception as exc:  # only speed is at stake
            log.warning("could not warm up the training engine: %s", exc)
        release_memory()
        # What is alive now (modules, the data set) lives as long as the process: keep it out
        # of the collector's sweeps, so the full collection after each job takes milliseconds
        # instead of about 150 ms on these two cores.
        gc.freeze()

    threading.Thread(target=load, name="preload-data", daemon=True).start()


_reaper: Reaper | None = None


@signals.worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    global _reaper
    name = getattr(sender, "hostname", None) or resources.worker_name()
    _reaper = Reaper(str(name), resources.job_store(), resources.publisher(), resources.settings())
    _reaper.start()


@signals.task_revoked.connect
def _cancel_revoked_job(request: Any = None, terminated: bool = False, signum: Any = None, **_: Any) -> None:
    """A task revoked through Celery (Flower's Revoke or Terminate, ``celery control revoke``) cancels its job.

    Runs in the worker's main process. A terminated task's pool process is killed and can
    record nothing, so the job is cancelled here; without this, its heartbeat would go silent
    and the reaper would requeue it to train again.
    """
    args, task_id = list(getattr(request, "args", None) or []), getattr(request, "id", None)
    if not args:
        return
    job_id = str(args[0])
    store = resources.job_store()
    try:
        record = store.get(job_id)
        if record["task_id"] != task_id or record["status"] in TERMINAL:
            return  # a stale delivery of a job that moved on, or already ended
        store.request_cancel(job_id)  # a queued job is cancelled now
        if terminated:
            store.finish(job_id, "cancelled", note=f"its task was terminated through Celery (signal {signum})")
        log.info("job %s cancelled: its task %s was revoked%s", job_id, task_id,
                 " and terminated" if terminated else "")
    except (JobNotFound, StoreUnavailable) as exc:
        log.warning("could not cancel job %s after its task was revoked: %s", job_id, exc)
    except Exception as exc:  # JobFinished: it ended meanwhile
        log.info("job %s not cancelled after its task was revoked: %s", job_id, exc)


@signals.worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if _reaper is not None:
        _reaper.stop.set()
