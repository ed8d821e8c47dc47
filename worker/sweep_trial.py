"""A job that is a sweep's trial: after each epoch, whether its sweep's early-stopping rule ends it, and its model then.

The rule (``bnlenet.sweeps.stopping``) compares the trial's per-epoch test accuracy with the
other trials' histories as they stand in Redis. A trial is stopped only after an epoch whose
training state it holds (every ``checkpoint_every`` epochs, 1 by default): its model is that
state's, the model after the epochs it ran, finished as a run of that many epochs is (precise BN
when the job asks for it; no weight averaging, which needs the earlier epochs' weights: a trial
stopped in a pack has them, and is averaged as that shorter run would be). The job then ends
``succeeded`` with ``stopped_early: true`` (a model was trained and is served; the flag and the
note say it was cut short), not with a status of its own that every reader of a job's status
would have to learn.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from torch import nn

from bnlenet.jobs import JobRecord, JobStore, StoreUnavailable
from bnlenet.sweeps.errors import SweepNotFound
from bnlenet.sweeps.spec import StoppingRule
from bnlenet.sweeps.stopping import should_stop
from bnlenet.sweeps.store import SweepStore
from models.data import ImageDataset
from models.lenet import build_lenet
from models.train_state import TrainingState
from models.training import EpochMetrics, TrainConfig, TrainResult, finish_training

__all__ = ["StoppedEarly", "TrialRule", "stopped_result"]

log = logging.getLogger(__name__)


class StoppedEarly(Exception):  # noqa: N818  # not an error: how a trial that is behind leaves training
    """Raised from the epoch callback: the sweep's rule ends this trial after the epoch just finished."""

    def __init__(self, reason: str, state: TrainingState) -> None:
        super().__init__(reason)
        self.reason, self.state = reason, state


class TrialRule:
    """The early-stopping rule of the sweep a job belongs to, asked after each epoch."""

    def __init__(self, store: JobStore, record: JobRecord) -> None:
        self.store, self.job_id = store, record["job_id"]
        self.sweeps = SweepStore(store)
        self.rule: StoppingRule | None = None
        self.sweep_id = record["sweep_id"]
        if self.sweep_id is None:
            return
        try:
            raw = self.sweeps.get(self.sweep_id)["early_stopping"]
        except (SweepNotFound, StoreUnavailable) as exc:
            log.warning("job %s: no early stopping, its sweep cannot be read: %s", self.job_id, exc)
            return
        if raw is not None:
            self.rule = StoppingRule(**raw)

    def check(self, state: TrainingState | None, epoch: int) -> None:
        """Raise ``StoppedEarly`` when the rule ends the trial after ``epoch`` (whose state is ``state``)."""
        reason = self.reason_after(state, epoch)
        if reason is not None and state is not None:
            raise StoppedEarly(reason, state)

    def reason_after(self, state: TrainingState | None, epoch: int) -> str | None:
        """Why the rule ends the trial after ``epoch``; asked only where ``state`` is that epoch's. None: it goes on."""
        if state is None or state.epoch != epoch:
            return None
        return self.reason([m["test_acc"] for m in state.history])

    def reason(self, mine: list[float]) -> str | None:
        """Why the rule ends the trial whose per-epoch test accuracies are ``mine``; None: it goes on."""
        if self.rule is None or self.sweep_id is None:
            return None
        try:
            trials = self.sweeps.trials(self.sweeps.get(self.sweep_id))
        except (SweepNotFound, StoreUnavailable) as exc:  # cannot compare now: it goes on, and asks again
            log.warning("job %s: early stopping skipped after epoch %d: %s", self.job_id, len(mine), exc)
            return None
        others = [[m["test_acc"] for m in t["history"]] for t in trials if t is not None and t["job_id"] != self.job_id]
        why = should_stop(self.rule, mine, others)
        return None if why is None else f"stopped early after epoch {len(mine)} of {self.sweep_id}: {why}"


def stopped_result(state: TrainingState, config: TrainConfig, data: ImageDataset, device: str) -> TrainResult:
    """What a stopped trial publishes: its training state's weights, finished as a run of that many epochs
    is (``finish_training``: precise BN when the job asks for it), without weight averaging (the state
    keeps no earlier epochs' weights)."""
    model: nn.Sequential = build_lenet(config.variant, len(data.classes))  # one output per class of its data set
    model.load_state_dict(state.model)
    result = TrainResult(model=model, history=[EpochMetrics(**m) for m in state.history], device=device,
                         averaged_epochs=1, stopped_early=True,
                         threads=config.threads or state.threads or max((t for _, t in state.thread_schedule), default=1),
                         thread_schedule=list(state.thread_schedule))
    return finish_training(result, replace(config, epochs=state.epoch), None, data.train_images, data.test_images,
                           data.test_labels)
