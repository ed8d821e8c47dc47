"""The worker's Celery signal handlers: its log format, the job each log line is about, warm-up as a
pool process starts, the reaper's start and stop, and a cancel for a task revoked through Celery.

Celery imports this module with the tasks (``include`` in ``worker.celery_app``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from bnlenet.jobs import TERMINAL, JobNotFound, StoreUnavailable
from bnlenet.logs import configure_handlers, current_job
from bnlenet.training_queue import TRAIN_TASK
from worker import resources
from worker.reaper import Reaper
from worker.warmup import preload

log = logging.getLogger(__name__)


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
def _preload(**_: Any) -> None:
    """Load the data set and warm up in the background as each pool process starts."""
    preload()


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
            note = f"its task was terminated through Celery (signal {signum})"
            store.finish(job_id, "cancelled", note=note)
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
