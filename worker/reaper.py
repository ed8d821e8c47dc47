"""The reaper: in the worker's main process, a thread that keeps the shared state tidy.

Every few seconds it announces the worker (``bnlenet:workers``) and sweeps the outbox; every
``REAPER_INTERVAL_S`` it requeues (or ends) running jobs whose worker went silent for
``JOB_STALE_AFTER_S`` and deletes finished jobs past their retention.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bnlenet.jobs import TERMINAL, JobStore, StoreUnavailable, is_stale
from bnlenet.model_news import ModelNews
from bnlenet.model_store import ModelStore, ModelUnusable, ObjectStoreUnavailable, UnknownModel
from bnlenet.settings import Settings
from bnlenet.sweeps.store import SweepStore
from bnlenet.training_queue import Publisher
from bnlenet.training_states import TrainingStates
from worker.outbox import publish_outbox

__all__ = ["Reaper", "published_metadata", "reap_stale_jobs"]

log = logging.getLogger(__name__)


def reap_stale_jobs(store: JobStore, publisher: Publisher, settings: Settings) -> list[str]:
    """Requeue (or fail) running jobs whose worker stopped sending heartbeats; returns requeued ids."""
    requeued = []
    for record in store.running():
        if not is_stale(record, settings.JOB_STALE_AFTER_S):
            continue
        published = published_metadata(ModelStore.from_settings(settings), record["job_id"])
        if published is not None:  # recorded succeeded below: every API process serves it first
            _announce(f"model {record['job_id']} published", settings)
        back = store.reap(record["job_id"], stale_after=settings.JOB_STALE_AFTER_S,
                          max_attempts=settings.MAX_ATTEMPTS, published=published)
        if back is None and store.get(record["job_id"])["status"] in TERMINAL:
            # Ended here: nothing will resume it.
            TrainingStates(ModelStore.from_settings(settings).storage).discard(record["job_id"])
        if back is not None:
            log.warning("requeued job %s: %s", back["job_id"], back["note"])
            requeued.append(back["job_id"])
            try:
                store.published(back["job_id"], publisher.publish(back["job_id"]))
            except Exception as exc:  # it is in the outbox: the next sweep publishes it
                log.warning("could not publish requeued job %s yet: %s", back["job_id"], exc)
    return requeued


def published_metadata(models: ModelStore, job_id: str) -> dict[str, Any] | None:
    """The metadata of the job's checkpoint if one verifies (a vanished worker may have published it)."""
    try:
        return models.metadata(job_id)
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
                    expired = SweepStore(self.store).expire()  # sweeps, with their trials, likewise
                    if expired:
                        log.info("deleted %d finished sweep(s) past their retention, with their trials", expired)
                    next_sweep = time.monotonic() + self.settings.REAPER_INTERVAL_S
            except StoreUnavailable as exc:
                log.warning("reaper: %s", exc)
            except Exception:
                log.exception("reaper sweep failed")
            if self.stop.wait(beat_every):
                return
