from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from models.data import FashionMNIST
from models.train_state import TrainingState, TrainingStateError, state_from_bytes, state_to_bytes
from models.training import TrainConfig, TrainResult, train

# Precise BN and weight averaging on (the defaults), over enough epochs to average 2.
RUN = dict(epochs=4, batch_size=32, lr=1.0, swa_epochs=2, precise_bn_images=256, seed=3)


def _same_run(a: TrainResult, b: TrainResult) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    ignore = {"seconds", "examples_per_sec"}  # wall-clock figures
    rows = [[{k: v for k, v in dataclasses.asdict(m).items() if k not in ignore} for m in r.history] for r in (a, b)]
    assert rows[0] == rows[1]
    assert [m.epoch for m in b.history] == list(range(1, RUN["epochs"] + 1))
    assert a.final_test_acc == b.final_test_acc


# CPU thread counts that change inside epochs (models.thread_tuner), replayed by both runs of a comparison.
SCHEDULE = [(0, 2), (3, 1), (12, 2), (25, 1), (30, 2)]


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
@pytest.mark.parametrize("stop_after", [1, 3])
def test_train_state_resumed_run_is_bitwise_the_uninterrupted_one(data: FashionMNIST, variant: str,
                                                                   stop_after: int) -> None:
    config = TrainConfig(variant=variant, **RUN)
    states: list[TrainingState] = []
    whole = train(config, data, on_state=states.append, thread_schedule=SCHEDULE)
    assert [s.epoch for s in states] == [1, 2, 3, 4]

    # The "killed" run: the state of epoch k, through its bytes, continues in a new run.
    saved = state_from_bytes(state_to_bytes(states[stop_after - 1]))
    assert saved.epoch == stop_after and len(saved.history) == stop_after
    resumed = train(config, data, resume=saved, thread_schedule=SCHEDULE)
    _same_run(whole, resumed)
    assert resumed.thread_schedule == whole.thread_schedule == SCHEDULE


def test_train_state_resumed_automatic_run_replays_to_the_same_model(data: FashionMNIST,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The automatic count chooses from measured step times, so two runs differ in their switches:
    # a resumed run continues the schedule its state recorded, and replaying the schedule it ends
    # with from the start gives its model bit for bit (how tests/integration/test_resume.py checks a job).
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("models.threads.usable_cores", lambda: 2)
    config = TrainConfig(variant="builtin", **RUN)
    states: list[TrainingState] = []
    train(config, data, on_state=states.append)
    saved = state_from_bytes(state_to_bytes(states[1]))
    assert saved.threads == 0 and len(saved.thread_schedule) >= 2  # automatic; the tuner's start switched
    resumed = train(config, data, resume=saved)
    resumed_at = saved.epoch * math.ceil(len(data.train_images) / RUN["batch_size"])  # the first step it ran
    before = [p for p in saved.thread_schedule if p[0] < resumed_at]
    assert before and resumed.thread_schedule[:len(before)] == before
    _same_run(resumed, train(config, data, thread_schedule=resumed.thread_schedule))


def test_train_state_saved_after_the_last_epoch_resumes_to_the_same_model(data: FashionMNIST) -> None:
    config = TrainConfig(variant="scratch", **RUN)
    states: list[TrainingState] = []
    whole = train(config, data, on_state=states.append)
    epochs: list[int] = []
    resumed = train(config, data, resume=state_from_bytes(state_to_bytes(states[-1])),
                    on_epoch=lambda m: epochs.append(m.epoch))
    assert epochs == []  # nothing left to train: only the average and precise BN
    _same_run(whole, resumed)


def test_train_state_every_k_epochs_and_the_last(data: FashionMNIST) -> None:
    states: list[TrainingState] = []
    train(TrainConfig(variant="builtin", checkpoint_every=3, **RUN), data, on_state=states.append)
    assert [s.epoch for s in states] == [3, 4]


def test_train_state_bytes_round_trip_and_detect_tampering(data: FashionMNIST) -> None:
    states: list[TrainingState] = []
    train(TrainConfig(variant="scratch", **{**RUN, "epochs": 2, "swa_epochs": 0}), data, on_state=states.append)
    state = dataclasses.replace(states[0], extra={"job_id": "j", "attempt": 2})
    payload = state_to_bytes(state)
    back = state_from_bytes(payload)
    assert back.extra == {"job_id": "j", "attempt": 2} and back.average_sums is None
    assert set(back.rng) == {"shuffle", "torch"}
    for k, v in state.model.items():
        assert torch.equal(back.model[k], v)
    with pytest.raises(TrainingStateError):
        state_from_bytes(payload[: len(payload) // 2])
    flipped = bytearray(payload)
    flipped[-1] ^= 0xFF
    with pytest.raises(TrainingStateError, match="checksum"):
        state_from_bytes(bytes(flipped))


def test_train_state_of_another_kind_of_run_is_refused(data: FashionMNIST) -> None:
    states: list[TrainingState] = []
    train(TrainConfig(variant="scratch", **{**RUN, "epochs": 2}), data, on_state=states.append)
    with pytest.raises(TrainingStateError):
        train(TrainConfig(variant="builtin", **{**RUN, "epochs": 2}), data, resume=states[0])
    with pytest.raises(TrainingStateError):
        train(TrainConfig(variant="scratch", **{**RUN, "epochs": 1}), data, resume=states[1])


def test_train_state_resumes_on_the_threads_it_was_saved_from(data: FashionMNIST) -> None:
    # Results depend on the CPU thread count in the last bits: a resumed attempt whose automatic
    # count differs (the cores were busier) must still end with the uninterrupted run's model.
    states: list[TrainingState] = []
    whole = train(TrainConfig(variant="builtin", threads=2, **RUN), data, on_state=states.append)
    assert states[1].threads == 2
    saved = state_from_bytes(state_to_bytes(states[1]))
    resumed = train(TrainConfig(variant="builtin", threads=0, **RUN), data, resume=saved)
    assert resumed.threads == 2
    _same_run(whole, resumed)
