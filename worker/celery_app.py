"""The Celery app and its configuration (tasks live in ``worker.tasks``, signal handlers in ``worker.signals``).

Run one worker per GPU, each seeing only its own card and running one job at a time::

    CUDA_VISIBLE_DEVICES=0 celery -A worker.celery_app worker --concurrency 1 -n gpu0@%h
    CUDA_VISIBLE_DEVICES=1 celery -A worker.celery_app worker --concurrency 1 -n gpu1@%h

Without flags, ``celery -A worker.celery_app worker`` consumes the training queue.
CUDA is initialized only inside the pool process that trains (the task resolves the device),
never in the parent that forks the pool.
"""

from __future__ import annotations

from typing import Any

from models.threads import short_openmp_waits

# Before the tasks' modules load torch, whose OpenMP runtime reads its wait policy once, and
# inherited by the pool processes (models/threads.py).
short_openmp_waits()

from celery import Celery  # noqa: E402

from bnlenet.settings import Settings, get_settings  # noqa: E402
from bnlenet.training_queue import TRAIN_TASK, queue_config  # noqa: E402

__all__ = ["TRAIN_TASK", "app", "make_celery"]

# Long GPU jobs: acknowledge only after the job ends, put it back when a worker dies,
# and take one job at a time so a second never waits behind a running one.
WORKER_CONFIG: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_connection_retry_on_startup": True,
    "worker_hijack_root_logger": False,
    "worker_send_task_events": True,  # Flower and `celery events` follow every job live
}


def make_celery(settings: Settings | None = None) -> Celery:
    """The worker's Celery app; its configuration is read from ``settings`` (default: the
    environment's) when first needed, not at import."""
    celery = Celery("bnlenet", include=["worker.tasks", "worker.signals"])
    celery.add_defaults(lambda: {**queue_config(settings or get_settings()), **WORKER_CONFIG,
                                 "result_backend": (settings or get_settings()).REDIS_URL})
    return celery


app = make_celery()
