"""Log records name their job; LOG_FORMAT=json writes one JSON object per line."""

from __future__ import annotations

import io
import json
import logging

from bnlenet.logs import JobContext, JsonFormatter, TextFormatter, configure_handlers, current_job


def _logger(stream: io.StringIO, log_format: str) -> logging.Logger:
    logger = logging.getLogger(f"test-logs-{log_format}")
    logger.handlers = [logging.StreamHandler(stream)]
    logger.handlers[0].setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.propagate = False
    logger.setLevel(logging.INFO)
    configure_handlers(logger.handlers, log_format)
    return logger


def test_logs_text_lines_name_the_current_job() -> None:
    stream = io.StringIO()
    logger = _logger(stream, "text")
    logger.info("outside %d", 1)
    token = current_job.set("abc123")
    try:
        logger.info("inside %d", 2)
    finally:
        current_job.reset(token)
    assert stream.getvalue().splitlines() == ["INFO outside 1", "INFO [job abc123] inside 2"]


def test_logs_json_one_object_per_line_with_job_and_extras() -> None:
    stream = io.StringIO()
    logger = _logger(stream, "json")
    token = current_job.set("abc123")
    try:
        logger.info("epoch %d", 3, extra={"task_id": "t-1"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("job failed")
    finally:
        current_job.reset(token)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{"))
    assert first["message"] == "epoch 3" and first["job_id"] == "abc123" and first["task_id"] == "t-1"
    assert first["level"] == "INFO" and first["time"].endswith("Z")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc_info"]
    assert len(stream.getvalue().splitlines()) == 2  # the traceback stays inside the object


def test_logs_configure_is_idempotent() -> None:
    handler = logging.StreamHandler(io.StringIO())
    configure_handlers([handler], "json")
    configure_handlers([handler], "json")
    assert sum(isinstance(f, JobContext) for f in handler.filters) == 1
    assert isinstance(handler.formatter, JsonFormatter) and not isinstance(handler.formatter, TextFormatter)
