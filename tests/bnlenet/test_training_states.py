"""Jobs' training states in the checkpoint storage: the load rule, and both storages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bnlenet.checkpoint_storage import CheckpointStorage, LocalStorage, S3Storage
from bnlenet.model_store import ModelStore
from bnlenet.training_states import Superseded, TrainingStates, state_name
from models.lenet import build_lenet
from models.train_state import TrainingState

HP = {"variant": "scratch", "epochs": 3, "lr": 1.0}


def _state(epoch: int = 2) -> TrainingState:
    model = build_lenet("scratch")
    return TrainingState(epoch=epoch, model=dict(model.state_dict()), optimizer={"state": {}, "param_groups": []},
                         rng={"shuffle": torch.Generator().get_state(), "torch": torch.get_rng_state()},
                         average_sums=None, average_count=0, history=[{"epoch": e} for e in range(1, epoch + 1)])


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStorage:
    if request.param == "local":
        return LocalStorage(tmp_path / "models")
    return S3Storage(request.getfixturevalue("s3_url"), tmp_path / "cache")


def test_training_states_load_what_an_earlier_attempt_saved(storage: CheckpointStorage) -> None:
    states = TrainingStates(storage)
    assert states.load("j1", 1, HP) is None
    states.save("j1", 1, HP, _state(2))
    back = states.load("j1", 2, HP)
    assert back is not None and back.epoch == 2 and back.history == [{"epoch": 1}, {"epoch": 2}]
    assert back.extra == {"job_id": "j1", "attempt": 1, "hyperparameters": HP}
    assert states.load("j2", 2, HP) is None  # another job's name holds nothing


def test_training_states_of_a_later_attempt_mean_this_one_was_superseded(storage: CheckpointStorage) -> None:
    states = TrainingStates(storage)
    states.save("j1", 3, HP, _state())
    with pytest.raises(Superseded, match="attempt 3"):
        states.load("j1", 3, HP)
    with pytest.raises(Superseded):
        states.load("j1", 2, HP)
    assert states.load("j1", 4, HP) is not None


def test_training_states_of_another_run_or_unreadable_are_ignored(storage: CheckpointStorage) -> None:
    states = TrainingStates(storage)
    states.save("j1", 1, HP, _state())
    assert states.load("j1", 2, {**HP, "lr": 0.5}) is None
    storage.put(state_name("j1"), b"not a state")
    assert states.load("j1", 2, HP) is None


def test_training_states_save_is_fenced_and_delete_removes(storage: CheckpointStorage) -> None:
    states = TrainingStates(storage)
    states.save("j1", 1, HP, _state(1))

    def lost() -> None:
        raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):
        states.save("j1", 2, HP, _state(2), before_commit=lost)
    back = states.load("j1", 3, HP)
    assert back is not None and back.epoch == 1 and back.extra["attempt"] == 1  # the stale write left nothing
    assert states.delete("j1") and not states.delete("j1")
    assert states.load("j1", 3, HP) is None
    states.discard("j1")  # nothing there: no error


def test_training_states_are_never_listed_as_models(storage: CheckpointStorage) -> None:
    TrainingStates(storage).save("j1", 1, HP, _state())
    assert storage.versions() == {}
    assert ModelStore(storage).list() == []
