"""The job lease: a worker owns the job it claimed while its heartbeats say so.

The heartbeat thread keeps the record's ``heartbeat_at`` fresh, writes the latest progress,
and turns a cancel request into a ``threading.Event``, so the training loop never talks to
Redis per batch. Each beat also tells whether this attempt still owns the job (the attempt
number is the fencing token); a worker that lost it stops, and ``confirm_lease`` refuses to
publish a model once the lease cannot be vouched for. ``owner_gone`` lets a claim take over
at once from a worker process known dead.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from bnlenet.jobs import JobRecord, JobStore, StoreUnavailable
from bnlenet.logs import current_job

__all__ = ["Heartbeat", "LostJob", "owner_gone"]

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
