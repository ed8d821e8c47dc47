"""The Celery app and its configuration (tasks live in ``worker.tasks``).

Run one worker per GPU, each seeing only its own card and running one job at a time::

    CUDA_VISIBLE_DEVICES=0 celery -A worker.celery_app worker --concurrency 1 -n gpu0@%h
    CUDA_VISIBLE_DEVICES=1 celery -A worker.celery_app worker --concurrency 1 -n gpu1@%h

Without flags, ``celery -A worker.celery_app worker`` consumes the training queue.
CUDA is initialized only inside the pool process that trains (the task resolves the device),
never in the parent that forks the pool.
"""

from __future__ import annotations

from celery import Celery

from bnlenet.settings import get_settings

__all__ = ["TRAIN_TASK", "app"]

TRAIN_TASK = "bnlenet.train_job"  # the name the API publishes to; routed to the training queue

_settings = get_settings()

app = Celery("bnlenet", broker=_settings.REDIS_URL, backend=_settings.REDIS_URL, include=["worker.tasks"])
app.conf.update(
    task_routes={TRAIN_TASK: {"queue": _settings.TRAINING_QUEUE}},
    task_default_queue=_settings.TRAINING_QUEUE,
    # Long GPU jobs: acknowledge only after the job ends, put it back when a worker dies,
    # and take one job at a time so a second never waits behind a running one.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # Redis redelivers unacknowledged messages after this long: it must outlast any job.
    broker_transport_options={"visibility_timeout": _settings.VISIBILITY_TIMEOUT_S},
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,  # results live in the job store
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)
