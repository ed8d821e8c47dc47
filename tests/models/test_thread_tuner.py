"""Choosing every core or one thread per step from measured times (models/thread_tuner.py).

The unit tests feed the tuner step times as a machine with free or busy cores gives them
(on free cores two threads step in 0.6 of one thread's time, beside a busy process in 2.5
of it: bench/RESULTS.md); the engine tests train for real.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from models.data import FashionMNIST
from models.thread_tuner import FIRST_RETRY, LAST_RETRY, ThreadTuner, schedule_steps
from models.training import TrainConfig, train

ONE = 0.010  # seconds of a step on one thread
FREE, BUSY = 0.006, 0.025  # a step on two threads, free cores and beside a busy process


def _run(step_seconds: Callable[[int, int], float], steps: int, most: int = 2) -> tuple[ThreadTuner, float, list[int]]:
    """Drive a tuner through ``steps`` steps; ``step_seconds(threads, step)``. The tuner, the time, the counts set."""
    counts: list[int] = []
    tuner = ThreadTuner(most, counts.append)
    total = 0.0
    for step in range(steps):
        tuner.before_step(step)
        assert tuner.current is not None
        seconds = step_seconds(tuner.current, step)
        total += seconds
        tuner.after_step(step, seconds)
    return tuner, total, counts


def test_thread_tuner_keeps_every_core_while_it_pays() -> None:
    tuner, total, counts = _run(lambda threads, _: ONE if threads == 1 else FREE, 3000)
    steps = schedule_steps(tuner.schedule, 3000)
    assert steps[1] <= 3 and steps[2] >= 2997  # one thread only for the start's measurement
    assert total <= 1.01 * 3000 * FREE
    assert counts == [2, 1, 2]  # torch's count was set at each switch only


def test_thread_tuner_moves_to_one_thread_beside_a_busy_process_and_tries_again_ever_later() -> None:
    tuner, total, _ = _run(lambda threads, _: ONE if threads == 1 else BUSY, 3000)
    # Within 3% of one thread all along (the floor is 10%).
    assert total <= 1.03 * 3000 * ONE
    tries = [step for step, threads in tuner.schedule[2:] if threads == 2]
    gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    # Each try that did not pay doubles the wait for the next (the steps between, plus the try itself).
    assert gaps[:3] == [2 * FIRST_RETRY + 1, 4 * FIRST_RETRY + 1, 8 * FIRST_RETRY + 1]
    assert max(gaps) <= LAST_RETRY + 1
    assert all(b - a == 1 for (a, t), (b, _) in zip(tuner.schedule, tuner.schedule[1:], strict=False)
               if t == 2 and a > 0)  # each try was one step: slower than one thread, it ended there


def test_thread_tuner_leaves_every_core_at_the_first_slow_step_and_returns_when_the_cores_are_free() -> None:
    def seconds(threads: int, step: int) -> float:
        return ONE if threads == 1 else (BUSY if 500 <= step < 1500 else FREE)

    tuner, _, _ = _run(seconds, 3000)
    assert (501, 1) in tuner.schedule  # the step after the first slow one
    back = [step for step, threads in tuner.schedule if threads == 2 and step >= 1500]
    assert back and back[0] <= 1500 + LAST_RETRY
    assert tuner.schedule[-1][1] == 2


def test_thread_tuner_ignores_short_batches() -> None:
    tuner = ThreadTuner(2, lambda _: None)
    for step in range(200):
        tuner.before_step(step)
        full = step % 10 != 9
        # A short batch is quick on any count: it must not make one thread look faster.
        tuner.after_step(step, 0.001 if not full else (ONE if tuner.current == 1 else FREE), full)
    assert tuner.current == 2 and schedule_steps(tuner.schedule, 200)[2] >= 190


def test_thread_tuner_on_one_core_never_switches() -> None:
    tuner, _, counts = _run(lambda threads, _: ONE, 100, most=1)
    assert tuner.schedule == [(0, 1)] and counts == [1] and not tuner.adaptive


def test_thread_tuner_replays_a_schedule_without_measuring() -> None:
    counts: list[int] = []
    tuner = ThreadTuner(2, counts.append, replay=[(0, 2), (5, 1), (9, 2)])
    seen = []
    for step in range(12):
        tuner.before_step(step)
        seen.append(tuner.current)
        tuner.after_step(step, 99.0)  # a slow step changes nothing in a replay
    assert seen == [2] * 5 + [1] * 4 + [2] * 3
    assert tuner.schedule == [(0, 2), (5, 1), (9, 2)]

    # A replay that starts mid-run (a resumed one) takes the count in force at its first step.
    late = ThreadTuner(2, counts.append, replay=[(0, 2), (5, 1), (9, 2)])
    late.before_step(7)
    assert late.current == 1


def test_schedule_steps_counts_steps_per_thread_count() -> None:
    assert schedule_steps([(0, 2), (10, 1), (15, 2)], 20) == {2: 15, 1: 5}
    assert schedule_steps([(0, 2), (30, 1)], 20) == {2: 20}


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("models.threads.usable_cores", lambda: 2)


RUN = dict(epochs=2, batch_size=32, lr=1.0, swa_epochs=0, precise_bn_images=256, seed=5)


def test_training_on_the_automatic_count_records_its_schedule_and_a_replay_gives_its_model(
        data: FashionMNIST, two_cores: None) -> None:
    config = TrainConfig(variant="scratch", **RUN)
    run = train(config, data)
    assert run.threads == 2 and run.thread_schedule[0] == (0, 2) and len(run.thread_schedule) >= 2
    replayed = train(config, data, thread_schedule=run.thread_schedule)
    assert replayed.thread_schedule == run.thread_schedule
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, replayed.model.state_dict()[name]), name


def test_training_thread_counts_change_the_last_bits(data: FashionMNIST, two_cores: None) -> None:
    # Why the schedule is recorded: the same run on another schedule is another model (in the last bits).
    config = TrainConfig(variant="builtin", **RUN)
    a = train(config, data, thread_schedule=[(0, 2)]).model.state_dict()
    b = train(config, data, thread_schedule=[(0, 2), (4, 1)]).model.state_dict()
    assert any(not torch.equal(a[name], b[name]) for name in a)


def test_training_metadata_records_the_schedule(data: FashionMNIST, two_cores: None) -> None:
    from models.training import training_metadata

    config = TrainConfig(variant="builtin", **RUN)
    result = train(config, data, thread_schedule=[(0, 2), (4, 1)])
    engine = training_metadata(config, result, data.classes)["engine"]
    assert engine["threads"] == 2 and engine["thread_schedule"] == [[0, 2], [4, 1]]
