"""The training queue: the task's name and routing, and publishing a job onto it.

Shared by the API (``POST /train``), the worker's reaper (a requeued job) and the Celery app
that consumes the queue (``worker.celery_app``). Publishing needs only the broker: this module
never imports the worker's code.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery
from kombu.connection import Connection

from bnlenet.settings import Settings

__all__ = ["TRAIN_TASK", "Publisher", "queue_config", "queue_key"]

TRAIN_TASK = "bnlenet.train_job"  # the name the task is registered and published under


def queue_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration that producer and consumer must agree on."""
    prefix = {"global_keyprefix": settings.CELERY_KEY_PREFIX} if settings.CELERY_KEY_PREFIX else {}
    return {
        "broker_url": settings.REDIS_URL,
        "task_routes": {TRAIN_TASK: {"queue": settings.TRAINING_QUEUE}},
        "task_default_queue": settings.TRAINING_QUEUE,
        # Redis redelivers unacknowledged messages after this long: it must outlast any job.
        # Every Celery key carries CELERY_KEY_PREFIX, so the broker's keys and the job store's
        # never mix in one Redis database.
        "broker_transport_options": {"visibility_timeout": settings.VISIBILITY_TIMEOUT_S, **prefix},
        "result_backend_transport_options": prefix,
        "task_serializer": "json",
        "accept_content": ["json"],
        # The job record is the result; the task's state (SUCCESS, FAILURE, REVOKED) is stored
        # too, so that AsyncResult, Flower and celery-exporter tell the truth about a job.
        "task_ignore_result": False,
        "task_track_started": True,
        "result_expires": 7 * 24 * 3600,
        # Events, so that Flower and `celery events` see every job from the moment it is queued.
        "task_send_sent_event": True,
        "worker_send_task_events": True,
    }


def queue_key(settings: Settings) -> str:
    """The Redis list holding the training queue's messages (its length is the queue length)."""
    return f"{settings.CELERY_KEY_PREFIX}{settings.TRAINING_QUEUE}"


class Publisher:
    """Publishes training tasks over one long-lived broker connection; thread-safe.

    Created once per process (with the API app, or by the worker's reaper). A failed publish
    drops the connection, so the next one reconnects: a Redis restart needs no API restart.
    """

    def __init__(self, settings: Settings) -> None:
        self._celery = Celery("bnlenet-publisher", set_as_current=False)
        config = queue_config(settings)
        # Fail fast when Redis is down (POST /train answers 503 at once; kombu's default is
        # three retries two seconds apart).
        config["broker_transport_options"] = {**config["broker_transport_options"], "max_retries": 1,
                                              "interval_start": 0, "interval_step": 0.2}
        config["broker_connection_timeout"] = settings.REDIS_TIMEOUT_S
        self._celery.config_from_object(config)
        self._lock = threading.Lock()
        self._connection: Connection | None = None

    def publish(self, job_id: str) -> str:
        """Queue a task for job ``job_id``; returns the task id. Raises when the broker is unreachable.

        The job record is the result; the task's final state is stored by the worker.
        """
        with self._lock:
            if self._connection is None:
                self._connection = self._celery.connection_for_write()
            try:
                result = self._celery.send_task(TRAIN_TASK, args=[job_id], connection=self._connection,
                                                retry=False)
            except Exception:
                self._drop()
                raise
        return str(result.id)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()  # type: ignore[no-untyped-call]  # kombu is untyped
            except Exception:  # closing a broken connection may fail the same way; nothing to keep
                pass
            self._connection = None
