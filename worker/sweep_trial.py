"""A job that is a sweep's trial: after each epoch, whether its sweep's early-stopping rule ends it, and its model then.

The rule (``bnlenet.sweeps.stopping``) compares the trial's per-epoch test accuracy with the
other trials' histories as they stand in Redis. A trial is stopped only after an epoch whose
training state it holds (every ``checkpoint_every`` epochs, 1 by default): its model is that
state's, the model after the epochs it ran, with the BN moving averages (no precise BN, no weight
averaging), so its ``final_test_acc`` is that epoch's ``test_acc``. The job then ends
``succeeded`` with ``stopped_early: true`` (a model was trained and is served; the flag and the
note say it was cut short), not with a status of its own that every reader of a job's status
would have to learn.
"""

from __future__ import annotations

import logging

from torch import nn

from bnlenet.jobs import JobRecord, JobStore, StoreUnavailable
from bnlenet.sweeps.errors import SweepNotFound
from bnlenet.sweeps.spec import StoppingRule
from bnlenet.sweeps.stopping import should_stop
from bnlenet.sweeps.store import SweepStore
from models.lenet import build_lenet
from models.train_state import TrainingState
from models.training import EpochMetrics, TrainResult

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
        if self.rule is None or self.sweep_id is None or state is None or state.epoch != epoch:
            return
        try:
            sweep = self.sweeps.get(self.sweep_id)
            trials = self.sweeps.trials(sweep)
        except (SweepNotFound, StoreUnavailable) as exc:  # cannot compare now: it goes on, and asks again
            log.warning("job %s: early stopping skipped after epoch %d: %s", self.job_id, epoch, exc)
            return
        mine = [m["test_acc"] for m in state.history]
        others = [[m["test_acc"] for m in t["history"]] for t in trials if t is not None and t["job_id"] != self.job_id]
        reason = should_stop(self.rule, mine, others)
        if reason is not None:
            raise StoppedEarly(f"stopped early after epoch {epoch} of {sweep['sweep_id']}: {reason}", state)


def stopped_result(state: TrainingState, variant: str, device: str, threads: int) -> TrainResult:
    """The model and history a stopped trial publishes: its training state's, in eval mode."""
    model: nn.Sequential = build_lenet(variant)
    model.load_state_dict(state.model)
    model.eval()
    return TrainResult(model=model, history=[EpochMetrics(**m) for m in state.history], device=device,
                       averaged_epochs=1, threads=threads or state.threads)
