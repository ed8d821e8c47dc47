"""A pack: a sweep's trials that can share a training step, trained at once by the task that claimed the first.

When a worker claims a trial of a sweep that asked for packing (``pack: true``) and packing pays
on its device (``models.packed.packing_pays``: CUDA, and the CPU at batches up to 32; anywhere with
``SWEEP_PACK_ON_CPU``), it also claims the sweep's other queued trials with the same
``pack_key``, up to ``SWEEP_PACK_MAX``, each through the job store's ordinary ``claim``. Each
claimed trial is then owned by this worker on its own attempt, with its own lease (heartbeat),
exactly as if it ran alone: its own task, when a worker takes it, finds it running under a live
worker and leaves it. ``train_packed`` trains them in one forward and backward per step; each
trial's record gets its progress, epochs and outcome, its model is published under its own lease
as the trial leaves the pack (its epochs done, its sweep's rule, its cancel), while the others
train on: a later cancel or crash of the pack cannot touch a trial that has ended.

Crashes follow the rules of a job: every trial of a pack whose worker died goes stale and the
reaper requeues it, as a job of its own, and its next attempt runs it alone (only trials that never
ran join a pack). Each trial saves the training state a lone job would save (every
``checkpoint_every`` epochs, under its own lease, before the epoch is reported), so that attempt
resumes from it: a crash costs each trial the epochs since its last state, never a second outcome.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

from bnlenet import job_stats
from bnlenet.jobs import JobRecord, StoreUnavailable
from bnlenet.sweeps.errors import SweepNotFound
from bnlenet.sweeps.store import SweepStore
from models.devices import resolve_device
from models.packed import pack_key, packing_pays, train_packed
from models.training import EpochMetrics, Progress, TrainingCancelled, TrainingDiverged, TrainResult
from worker import resources
from worker.job_config import job_config
from worker.job_run import Outcome, _Attempt
from worker.lease import owner_gone

__all__ = ["claim_pack", "run_pack"]

log = logging.getLogger(__name__)


def claim_pack(lead: JobRecord) -> list[JobRecord]:
    """The other trials this worker claimed to train with ``lead`` (none: it runs alone)."""
    s, store = resources.settings(), resources.job_store()
    if lead["sweep_id"] is None or lead["attempts"] != 1 or lead["params"].get("init_model") is not None:
        return []
    sweeps = SweepStore(store)
    try:
        sweep = sweeps.get(lead["sweep_id"])
        if not sweep["pack"] or s.SWEEP_PACK_MAX < 2:
            return []
        config = job_config(lead["params"], s)
        if not (packing_pays(resolve_device(config.device), config.batch_size) or s.SWEEP_PACK_ON_CPU):
            return []
        key = pack_key(config)
        candidates = [t for t in sweeps.trials(sweep) if t is not None and t["job_id"] != lead["job_id"]
                      and t["status"] == "queued" and t["attempts"] == 0 and not t["cancel_requested"]
                      and pack_key(job_config(t["params"], s)) == key]
    except (SweepNotFound, StoreUnavailable, ValueError) as exc:
        log.warning("job %s runs alone: %s", lead["job_id"], exc)
        return []
    members: list[JobRecord] = []
    for trial in candidates[: s.SWEEP_PACK_MAX - 1]:
        claim = store.claim(trial["job_id"], worker=resources.worker_name(), pid=os.getpid(), task_id=None,
                            max_attempts=s.MAX_ATTEMPTS, stale_after=s.JOB_STALE_AFTER_S, owner_gone=owner_gone)
        if claim.run and claim.record is not None:  # another worker may have taken it meanwhile
            job_stats.job_started(store.redis, claim.record)
            members.append(claim.record)
    return members


def run_pack(records: list[JobRecord], announce: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
    """Train the claimed trials as one pack and record each one's outcome; the first's outcome is the task's."""
    attempts = [_Attempt(r, announce if i == 0 else None) for i, r in enumerate(records)]
    ids = [a.job_id for a in attempts]
    log.info("training %d trials of sweep %s as one pack: %s", len(ids), records[0]["sweep_id"], ", ".join(ids))
    for a in attempts:
        a.lease.start()
    try:
        return _PackRun(attempts).run()
    finally:
        for a in attempts:
            a.lease.stop()


class _PackRun:
    def __init__(self, attempts: list[_Attempt]) -> None:
        self.attempts = attempts
        self.stop_reasons: list[str | None] = [None] * len(attempts)
        self.outcomes: list[Outcome | None] = [None] * len(attempts)  # set as each trial leaves the pack

    def run(self) -> Outcome:
        attempts = self.attempts
        try:
            configs = [job_config(a.params, a.settings) for a in attempts]
            device = str(resolve_device(configs[0].device))
            # The trials' data set (pack_key gave them all the same one), fetched and decoded as a lone job's is.
            dataset, data = resources.datasets().get(configs[0].dataset)
            configs = [replace(c, dataset=dataset) for c in configs]
            for a in attempts:
                if not a.store.resumed(a.job_id, **a.owner, epoch=0, history=[]):
                    a.lease.lost.set()
            with resources.engine_lock:
                # The sweep's rule is asked through should_stop: the pack takes a stopped trial out.
                train_packed(configs, data, device=device, progress=self._progress,
                             on_epoch=lambda i, m: attempts[i]._record_epoch(m, configs[i].variant, device),
                             on_state=lambda i, state: attempts[i]._save_state(state, configs[i]),
                             on_result=lambda i, result: self._settle(i, configs[i], result, data.classes),
                             cancelled=self._cancelled, should_stop=self._should_stop)
        except TrainingCancelled:
            return self._each(lambda a: a._finish("cancelled"))
        except Exception as exc:
            log.exception("pack %s failed", ", ".join(a.job_id for a in attempts))
            error = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            return self._each(lambda a: a._finish("failed", error=error))
        assert self.outcomes[0] is not None  # train_packed returns once every trial has left
        return self.outcomes[0]

    def _each(self, finish: Callable[[_Attempt], Outcome]) -> Outcome:
        """Every trial still in the pack ends with ``finish``; those that left keep their outcome."""
        for i, a in enumerate(self.attempts):
            if self.outcomes[i] is None:
                self.outcomes[i] = ("lost", None) if a.lease.lost.is_set() else finish(a)
        return cast(Outcome, self.outcomes[0])

    def _settle(self, i: int, config: Any, result: TrainResult | TrainingDiverged, classes: tuple[str, ...]) -> None:
        """Record trial i's outcome (its model published) as it leaves the pack; its lease ends with it."""
        a = self.attempts[i]
        self.outcomes[i] = self._outcome(a, config, result, classes, self.stop_reasons[i])
        a.lease.stop()

    @staticmethod
    def _outcome(a: _Attempt, config: Any, result: TrainResult | TrainingDiverged, classes: tuple[str, ...],
                 stopped: str | None) -> Outcome:
        if a.lease.lost.is_set():
            return "lost", None
        if isinstance(result, TrainingDiverged):
            return a._finish("failed", error=str(result))
        if a.lease.cancel.is_set():  # its cancel took it out of the pack after an epoch
            return a._finish("cancelled")
        return a._publish(config, result, classes, stopped=stopped if result.stopped_early else None)

    def _progress(self, i: int, p: Progress) -> None:
        self.attempts[i]._on_progress(p)

    def _cancelled(self) -> bool:
        """Every trial still in the pack is cancelled: the pack stops between batches."""
        return all(a.lease.cancel.is_set() for a, done in zip(self.attempts, self.outcomes, strict=True) if done is None)

    def _should_stop(self, i: int, m: EpochMetrics) -> bool:
        """A trial leaves the pack when its cancel (or loss of the job) came, or its sweep's rule ends it.

        The rule is asked where a lone trial asks it: after an epoch whose training state the trial holds.
        """
        a = self.attempts[i]
        if a.lease.cancel.is_set():
            return True
        self.stop_reasons[i] = a.trial.reason_after(a.last_state, m.epoch)
        return self.stop_reasons[i] is not None


