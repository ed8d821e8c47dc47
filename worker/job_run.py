"""One attempt at a job: claim it, train under the lease, publish the model, record how it ended.

Every write is conditional on still owning the job (worker and attempt): the claim makes this
attempt the owner, the lease (``worker.lease.Heartbeat``) says while it still is, and a model (or
a training state) is published only while the lease vouches for it. Once the model is published
the job is recorded succeeded, or left for the reaper to record from the checkpoint, but never failed.

An attempt continues from the training state an earlier one saved (``bnlenet.training_states``),
saves its own every ``checkpoint_every`` epochs before it reports them, and removes it once the
job has ended.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from bnlenet import job_stats
from bnlenet.jobs import TERMINAL, Claim, JobNotFound, JobRecord, JobStatus, JobStore, StoreUnavailable
from bnlenet.jobs.errors import MalformedJob
from bnlenet.training_states import Superseded
from models.devices import resolve_device
from models.train_state import TrainingState
from models.training import (
    EpochMetrics,
    Progress,
    TrainConfig,
    TrainingCancelled,
    TrainingDiverged,
    TrainResult,
    train,
    training_metadata,
)
from worker import resources
from worker.job_config import job_config, starting_state
from worker.lease import Heartbeat, LostJob, owner_gone
from worker.reaper import published_metadata
from worker.sweep_trial import StoppedEarly, TrialRule, stopped_result

__all__ = ["Outcome", "run_job"]

log = logging.getLogger(__name__)

# How a delivery ended: the job's final status (or ``missing``, ``duplicate``, ``lost``: nothing
# for this delivery to report) and the job's error, if it failed.
Outcome = tuple[str, str | None]


def run_job(job_id: str, task_id: str | None, announce: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
    """Claim and run the job; its final status and error. ``announce`` is told of each new progress."""
    s, store = resources.settings(), resources.job_store()
    claim = store.claim(job_id, worker=resources.worker_name(), pid=os.getpid(), task_id=task_id,
                        max_attempts=s.MAX_ATTEMPTS, stale_after=s.JOB_STALE_AFTER_S, owner_gone=owner_gone,
                        published=_published_if_running(store, job_id))
    if not claim.run or claim.record is None:
        if claim.record is not None and claim.record["status"] in TERMINAL:
            resources.training_states().discard(job_id)  # ended: nothing will resume it
        return _not_run(job_id, task_id, claim)
    job_stats.job_started(store.redis, claim.record)
    from worker.pack_run import claim_pack, run_pack  # a pack is a sweep's trials run by this one task

    members = claim_pack(claim.record)
    if members:
        return run_pack([claim.record, *members], announce)
    return _Attempt(claim.record, announce).run()


def _published_if_running(store: JobStore, job_id: str) -> dict[str, Any] | None:
    """The job's checkpoint, when this delivery may take a running job over: its worker died, perhaps after
    publishing (a redelivered task can come before the reaper, which checks the same)."""
    try:
        if store.get(job_id)["status"] != "running":
            return None
        return published_metadata(resources.model_store(), job_id)
    except (JobNotFound, MalformedJob):
        return None  # the claim says so
    except StoreUnavailable as exc:  # the model store cannot tell now: the job runs again, as before
        log.warning("job %s: cannot tell whether its model was published: %s", job_id, exc)
        return None


def _not_run(job_id: str, task_id: str | None, claim: Claim) -> Outcome:
    log.info("not running job %s: %s", job_id, claim.reason)
    if claim.record is None:
        return "missing", None
    if claim.record["task_id"] not in (None, task_id) and claim.record["status"] in TERMINAL:
        return "duplicate", None  # another delivery's job: its own task tells how it ended
    return claim.record["status"], claim.record["error"]


class _Attempt:
    """The attempt this worker just claimed: its lease, its progress reports and its outcome."""

    def __init__(self, record: JobRecord, announce: Callable[[dict[str, Any]], None] | None) -> None:
        self.settings, self.store = resources.settings(), resources.job_store()
        self.job_id, self.params, self.attempt = record["job_id"], record["params"], record["attempts"]
        self.owner: dict[str, Any] = {"worker": resources.worker_name(), "attempt": self.attempt}
        s = self.settings
        self.lease = Heartbeat(self.store, self.job_id, worker=self.owner["worker"], attempt=self.attempt,
                               interval=s.JOB_HEARTBEAT_INTERVAL_S, progress_interval=s.JOB_PROGRESS_INTERVAL_S,
                               lease=s.JOB_STALE_AFTER_S / 2, announce=announce)
        self.first_step_seen = False
        self.saved_epoch: int | None = None  # the last epoch whose training state this attempt saved
        self.last_state: TrainingState | None = None  # the latest the run handed over (saved or not)
        self.trial = TrialRule(self.store, record)  # a sweep's trial: its early-stopping rule

    def run(self) -> Outcome:
        """Train, then publish; whatever happens, this attempt's heartbeats end with it."""
        self.lease.start()
        try:
            return self._train_and_publish()
        finally:
            self.lease.stop()

    def _train_and_publish(self) -> Outcome:
        try:
            config = job_config(self.params, self.settings)
            try:
                config, init_state = starting_state(config, resources.model_store())
                parent_unusable: ValueError | None = None
            except ValueError as exc:  # deleted since: only a run that has no training state needs it
                init_state, parent_unusable = None, exc
            device = str(resolve_device(config.device))
            dataset, data = resources.datasets().get(config.dataset)  # fetched once per host, decoded once
            config = replace(config, dataset=dataset)  # the id, whatever name an older record holds
            resume = self._resume_from(config)
            if parent_unusable is not None and resume is None:
                raise parent_unusable
            with resources.engine_lock:  # after the warm-up, which compiles what this job reuses
                result = train(config, data, on_progress=self._on_progress,
                               on_epoch=lambda m: self._on_epoch(m, config.variant, device),
                               should_stop=self.lease.cancel.is_set, resume=resume,
                               on_state=lambda state: self._save_state(state, config), init_state=init_state)
        except StoppedEarly as stop:
            log.info("job %s: %s", self.job_id, stop.reason)
            result = stopped_result(stop.state, config, data, device)
            return self._publish(config, result, data.classes, stopped=stop.reason)
        except (Superseded, LostJob) as exc:
            log.warning("job %s: attempt %d stops: %s", self.job_id, self.attempt, exc)
            return "lost", None
        except TrainingCancelled:
            if self.lease.lost.is_set():
                return "lost", None  # another attempt owns the job: it writes the outcome
            return self._finish("cancelled")
        except (TrainingDiverged, ValueError) as exc:
            return self._finish("failed", error=str(exc))
        except Exception as exc:
            log.exception("job %s failed", self.job_id)
            return self._finish("failed", error=f"{type(exc).__name__}: {exc}")
        return self._publish(config, result, data.classes)

    def _publish(self, config: TrainConfig, result: TrainResult, classes: tuple[str, ...],
                 stopped: str | None = None) -> Outcome:
        """The checkpoint takes its name only while this attempt certainly owns the job (the lease).

        ``stopped``: why the sweep's rule ended the trial early (its model is the last epoch's).
        """
        if stopped is not None:  # the checkpoint records the run its model equals: the epochs it had
            config = config.of_run(len(result.history), result.averaged_epochs)
        metadata = {**training_metadata(config, result, classes), "job_id": self.job_id, "attempt": self.attempt}
        if stopped is not None:
            metadata.update(stopped_early=True, sweep_id=self.trial.sweep_id)
        try:
            resources.model_store().publish(self.job_id, result.model, metadata,
                                            before_commit=self.lease.confirm_lease)
        except LostJob as exc:
            log.warning("job %s: not publishing the model of attempt %d: %s", self.job_id, self.attempt, exc)
            return "lost", None
        except Exception as exc:  # nothing was published (a full disk, say): the job failed, and says why
            log.exception("job %s: could not publish its model", self.job_id)
            return self._finish("failed", error=f"could not publish the model: {type(exc).__name__}: {exc}")
        try:
            # Every API process serves the model before any client can learn of it (bnlenet.model_news).
            return self._finish("succeeded", within=self.settings.OUTCOME_RETRY_S, before=self._tell_every_api,
                                model_id=self.job_id, device=result.device, final_test_acc=result.final_test_acc,
                                stopped_early=stopped is not None, note=stopped)
        except StoreUnavailable:
            log.error("job %s: its model is published but Redis stayed away for %.0fs; the reaper records the "
                      "success from the checkpoint once it can", self.job_id, self.settings.OUTCOME_RETRY_S)
            return "succeeded", None

    def _resume_from(self, config: TrainConfig) -> TrainingState | None:
        """The training state an earlier attempt saved, if any, with the record's history set from it.

        Raises ``Superseded`` (or ``LostJob``) when a later attempt owns the job.
        """
        try:
            state = resources.training_states().load(self.job_id, self.attempt, config.hyperparameters())
        except Superseded:
            raise
        except Exception as exc:  # unreadable storage: start over, which costs work, not correctness
            log.warning("job %s: cannot read its training state, starting from the first batch: %s", self.job_id, exc)
            state = None
        epoch = 0 if state is None else state.epoch
        if not self.store.resumed(self.job_id, **self.owner, epoch=epoch, history=[] if state is None else state.history):
            raise LostJob(f"job {self.job_id} is no longer attempt {self.attempt}'s")
        if state is not None:
            log.info("job %s: attempt %d resumes after epoch %d", self.job_id, self.attempt, epoch)
        return state

    def _save_state(self, state: TrainingState, config: TrainConfig) -> None:
        """Store the run's state, only while this attempt owns the job; a failed save costs only work at risk."""
        self.last_state = state
        try:
            resources.training_states().save(self.job_id, self.attempt, config.hyperparameters(), state,
                                             before_commit=self.lease.confirm_lease)
        except LostJob as exc:  # the beat that found it lost also stops training
            log.warning("job %s: not saving the state of epoch %d: %s", self.job_id, state.epoch, exc)
            return
        except Exception as exc:
            log.warning("job %s: could not save the state of epoch %d: %s", self.job_id, state.epoch, exc)
            return
        self.saved_epoch = state.epoch

    def _tell_every_api(self) -> None:
        resources.model_news().announce(f"model {self.job_id} published")

    def _finish(self, status: JobStatus, *, within: float = 60.0, before: Callable[[], object] | None = None,
                **fields: Any) -> Outcome:
        """Record the outcome (after ``before``), retrying both for a while if Redis is briefly away."""
        deadline = time.monotonic() + within
        while True:
            try:
                if before is not None:
                    before()
                ended = self.store.finish(self.job_id, status, **self.owner, **fields)
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
                continue
            if ended is not None:
                resources.training_states().discard(self.job_id)
            return status, fields.get("error")

    def _on_progress(self, p: Progress) -> None:
        self.lease.progress = progress = asdict(p)
        if not self.first_step_seen:  # the first report comes after the first batch: stamp it now
            self.first_step_seen = True
            try:
                self.store.first_step(self.job_id, **self.owner, at=time.time(), progress=progress)
            except StoreUnavailable as exc:
                log.warning("could not record the first step of job %s: %s", self.job_id, exc)

    def _on_epoch(self, m: EpochMetrics, variant: str, device: str) -> None:
        """Record the epoch; then a sweep's trial asks its rule (``StoppedEarly`` ends the run here)."""
        self._record_epoch(m, variant, device)
        if m.epoch < int(self.params.get("epochs") or 0):  # the last epoch ends the run anyway
            self.trial.check(self.last_state, m.epoch)

    def _record_epoch(self, m: EpochMetrics, variant: str, device: str) -> None:
        """The epoch's metrics in the job's record (with the last epoch whose state is saved) and the statistics."""
        try:
            self.store.add_epoch(self.job_id, **self.owner, metrics=asdict(m), progress=self.lease.progress or {},
                                 saved_epoch=self.saved_epoch)
        except StoreUnavailable as exc:
            log.warning("could not record epoch %d of job %s: %s", m.epoch, self.job_id, exc)
        job_stats.epoch_done(self.store.redis, variant=variant, device=device, examples_per_sec=m.examples_per_sec)
