"""What the job store raises, and why. The exception tree::

    StoreUnavailable (RuntimeError)      Redis cannot be reached or answered with an error
    JobNotFound (LookupError)            no job with this id
    MalformedJob (ValueError)            a stored record this code cannot read (that job alone)
    IdempotencyConflict (ValueError)     an Idempotency-Key reused with other parameters
    JobFinished (RuntimeError)           the job already ended: it cannot be changed any more
    JobRunning (RuntimeError)            deleting a running job: it must be cancelled (and end) first

``app.errors`` maps each to its HTTP status, in one table.
"""

from __future__ import annotations

__all__ = ["IdempotencyConflict", "JobFinished", "JobNotFound", "JobRunning", "MalformedJob", "StoreUnavailable"]


class StoreUnavailable(RuntimeError):
    """Redis cannot be reached or answered with an error."""


class JobNotFound(LookupError):
    """No job with this id."""


class MalformedJob(ValueError):
    """A stored job record this code cannot read; reported for that job, never for a whole listing."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"the record of job {job_id!r} is malformed ({reason}); delete the key or restore it")
        self.job_id = job_id


class IdempotencyConflict(ValueError):
    """An ``Idempotency-Key`` reused with different parameters."""


class JobFinished(RuntimeError):
    """The job already ended; it cannot be changed any more."""


class JobRunning(RuntimeError):
    """The job is running; it must be cancelled (and end) before it can be deleted."""
