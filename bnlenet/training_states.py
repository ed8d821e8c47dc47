"""Jobs' training states in the checkpoint storage: saved by the job's owner, loaded by its next attempt.

A job's state is ``state/<job_id>.safetensors`` beside the models (a directory or an S3 prefix,
``bnlenet.checkpoint_storage``); the model listing looks at the top level only, so states are
never listed, served or chosen as a model. The API deletes a job's state with the job; the
worker deletes it when the job ends.

Fencing, as for publication: ``save`` runs the lease's ``confirm_lease`` just before the bytes
take the name (and before every retry of an upload), so an attempt that lost the job writes
nothing. The state records the job and the attempt that wrote it, and ``load`` applies one rule:

    An attempt resumes only from a state of its own job written by an *earlier* attempt
    (``state attempt < attempt``), of the same run (equal hyperparameters). A state of a later
    attempt means that this attempt was superseded: ``Superseded`` is raised and it must stop
    without writing anything. Any other state (another job's, another run's, unreadable) is
    ignored and the attempt starts from the first batch.

Why that suffices: the lease lets an attempt write only while it owns the job, and a new attempt
owns it only after the old one's lease has run out, so states are written in attempt order; a
stale write that slipped through a lease would still be a state of the same deterministic run,
an earlier point of the same trajectory, costing work, never correctness.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bnlenet.checkpoint_storage import CheckpointStorage
from models.train_state import TrainingState, TrainingStateError, state_from_bytes, state_to_bytes

__all__ = ["STATE_DIR", "Superseded", "TrainingStates", "state_name"]

log = logging.getLogger(__name__)

STATE_DIR = "state"


class Superseded(RuntimeError):
    """The stored state was written by a later attempt of the job: this attempt no longer owns it."""


def state_name(job_id: str) -> str:
    """Where a job's training state is stored, relative to the storage's root."""
    return f"{STATE_DIR}/{job_id}.safetensors"


class TrainingStates:
    """The training states of jobs in one storage (job ids already validated by the job store)."""

    def __init__(self, storage: CheckpointStorage) -> None:
        self.storage = storage

    def save(self, job_id: str, attempt: int, hyperparameters: dict[str, Any], state: TrainingState,
             before_commit: Callable[[], None] | None = None) -> None:
        """Store ``state`` as the job's, marked with ``attempt`` (``before_commit``: the lease's check)."""
        extra = {"job_id": job_id, "attempt": attempt, "hyperparameters": hyperparameters}
        self.storage.put(state_name(job_id), state_to_bytes(replace(state, extra=extra)), before_commit)

    def load(self, job_id: str, attempt: int, hyperparameters: dict[str, Any]) -> TrainingState | None:
        """The state attempt ``attempt`` resumes from, or None (see the module docstring for the rule)."""
        try:
            payload = self.storage.get(state_name(job_id))
        except FileNotFoundError:
            return None
        try:
            state = state_from_bytes(payload)
        except TrainingStateError as exc:
            log.warning("job %s: ignoring its training state: %s", job_id, exc)
            return None
        written_by = state.extra.get("attempt")
        if state.extra.get("job_id") != job_id or not isinstance(written_by, int):
            log.warning("job %s: ignoring a training state that is not this job's", job_id)
            return None
        if written_by >= attempt:
            raise Superseded(f"job {job_id}: its training state was written by attempt {written_by}, "
                             f"not before attempt {attempt}")
        if state.extra.get("hyperparameters") != hyperparameters:
            log.warning("job %s: ignoring a training state of another run (other hyperparameters)", job_id)
            return None
        return state

    def delete(self, job_id: str) -> bool:
        """Remove the job's state; False when there was none."""
        return self.storage.remove(state_name(job_id))

    def discard(self, job_id: str) -> None:
        """Remove the state of a job that ended or was deleted; a failure is logged, as only bytes are left behind."""
        try:
            self.delete(job_id)
        except Exception as exc:
            log.warning("job %s: could not remove its training state: %s", job_id, exc)
