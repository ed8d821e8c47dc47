"""Log lines that say which job they are about, as text or one JSON object per line (``LOG_FORMAT``).

The worker sets ``current_job`` while it runs a job's task; ``JobContext``, a filter on the
handlers, copies it onto every record as ``job_id``, so that Celery's own lines about the
task ("succeeded", "raised unexpected") carry the job too, not just the task id.
"""

from __future__ import annotations

import ast
import json
import logging
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

__all__ = ["JobContext", "JsonFormatter", "TextFormatter", "configure_handlers", "current_job"]

current_job: ContextVar[str | None] = ContextVar("current_job", default=None)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "job_id"}


class JobContext(logging.Filter):
    """Adds ``job_id`` (the job being run, or one passed in ``extra``) to every record; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = current_job.get() or _job_of_task(getattr(record, "data", None))
        return True


def _job_of_task(data: Any) -> str | None:
    """The job of a Celery line about a training task (its ``data`` carries the task's name and args)."""
    from bnlenet.training_queue import TRAIN_TASK

    if not isinstance(data, dict) or data.get("name") != TRAIN_TASK:
        return None
    args = data.get("args")
    if isinstance(args, str):  # Celery logs the arguments' repr: "['<job id>']"
        try:
            args = ast.literal_eval(args)
        except (ValueError, SyntaxError):
            return None
    return str(args[0]) if isinstance(args, list | tuple) and args else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message, job_id, and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            out["job_id"] = job_id
        for key, value in vars(record).items():  # extra= fields, Celery's task_id and task_name among them
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The handler's own text format, with ``[job <id>]`` before the message when there is a job."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        if job_id is None:
            return self.inner.format(record)
        original = record.msg, record.args
        record.msg, record.args = f"[job {job_id}] {record.getMessage()}", None
        try:
            return self.inner.format(record)
        finally:
            record.msg, record.args = original

    def formatException(self, ei: Any) -> str:  # noqa: N802  # logging's name
        return self.inner.formatException(ei)


def configure_handlers(handlers: Iterable[logging.Handler], log_format: str) -> None:
    """Give each handler the job filter and the format ``LOG_FORMAT`` names (``text`` or ``json``)."""
    for handler in handlers:
        if not any(isinstance(f, JobContext) for f in handler.filters):
            handler.addFilter(JobContext())
        if isinstance(handler.formatter, JsonFormatter | TextFormatter):
            continue
        handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(handler.formatter))
