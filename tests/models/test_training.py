from __future__ import annotations

import dataclasses

import pytest
import torch

from models.data import DataError, FashionMNIST, load_fashion_mnist
from models.lenet import build_lenet
from models.stepper import TrainSteps, sgd
from models.thread_tuner import ThreadTuner
from models.training import (
    Progress,
    TrainConfig,
    TrainingCancelled,
    TrainingDiverged,
    train,
    train_one_epoch,
)
from tests.conftest import TEST_THREADS

SMALL = dict(epochs=2, batch_size=32, lr=1.0)


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_training_end_to_end_on_synthetic_data(data: FashionMNIST, variant: str) -> None:
    epochs: list[int] = []
    result = train(TrainConfig(variant=variant, **SMALL), data, on_epoch=lambda m: epochs.append(m.epoch))
    assert epochs == [1, 2] and len(result.history) == 2
    last = result.history[-1]
    assert last.loss < result.history[0].loss
    assert last.test_acc > 0.9  # the synthetic classes are easy
    assert last.examples_per_sec > 0 and last.seconds > 0
    assert not result.model.training and result.device == "cpu"


def test_training_is_reproducible_with_a_seed(data: FashionMNIST) -> None:
    a = train(TrainConfig(variant="scratch", seed=7, **SMALL), data)
    b = train(TrainConfig(variant="scratch", seed=7, **SMALL), data)
    c = train(TrainConfig(variant="scratch", seed=8, **SMALL), data)
    assert [m.loss for m in a.history] == [m.loss for m in b.history]
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert [m.loss for m in a.history] != [m.loss for m in c.history]


def test_training_reports_progress_within_an_epoch(data: FashionMNIST) -> None:
    reports: list[Progress] = []
    train(TrainConfig(variant="builtin", progress_every=4, **SMALL), data, on_progress=reports.append)
    batches = reports[0].batches
    assert batches == 16  # 512 images / 32
    assert [r.batch for r in reports if r.epoch == 1] == [1, 4, 8, 12, 16]
    assert reports[-1].fraction == 1.0 and 0 < reports[0].fraction < 0.5
    assert all(r.loss > 0 and 0 <= r.train_acc <= 1 for r in reports)


def test_training_stops_between_batches_when_asked(data: FashionMNIST) -> None:
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 5

    with pytest.raises(TrainingCancelled, match="epoch 1, batch 5"):
        train(TrainConfig(variant="scratch", **SMALL), data, should_stop=should_stop)


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_training_divergence_is_a_clear_error(data: FashionMNIST, variant: str) -> None:
    with pytest.raises(TrainingDiverged, match=r"diverged.*learning rate 1e\+36"):
        train(TrainConfig(variant=variant, epochs=1, batch_size=32, lr=1e36), data)


def test_training_is_one_train_one_epoch_per_epoch(data: FashionMNIST) -> None:
    config = TrainConfig(variant="scratch", precise_bn=False, device="cpu", threads=TEST_THREADS, **SMALL)
    torch.manual_seed(config.seed)
    model = build_lenet(config.variant)
    steps = TrainSteps(model, sgd(model, config.lr, torch.device("cpu")), data.train_images, data.train_labels,
                       torch.device("cpu"), batch_size=config.batch_size)
    shuffle = torch.Generator().manual_seed(config.seed)
    tuner = ThreadTuner(TEST_THREADS, torch.set_num_threads, replay=[(0, TEST_THREADS)])
    history = [train_one_epoch(steps, config, epoch, shuffle, data.test_images, data.test_labels, tuner)
               for epoch in range(1, config.epochs + 1)]
    result = train(config, data)
    for ours, theirs in zip(history, result.history, strict=True):
        assert (ours.epoch, ours.loss, ours.train_acc, ours.test_acc) == (
            theirs.epoch, theirs.loss, theirs.train_acc, theirs.test_acc)
    for key, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_training_with_precise_bn_reports_its_accuracy(data: FashionMNIST) -> None:
    result = train(TrainConfig(variant="builtin", precise_bn=True, precise_bn_images=256, **SMALL), data)
    assert result.precise_bn_test_acc is not None and 0 <= result.precise_bn_test_acc <= 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("variant", "fancy", "unknown variant"),
        ("epochs", 0, "epochs"),
        ("lr", float("nan"), "lr"),
        ("lr", -1.0, "lr"),
        ("batch_size", 1, "at least 2"),
    ],
)
def test_training_config_rejects_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def _real_data() -> FashionMNIST:
    try:
        return load_fashion_mnist(download=False)
    except DataError as exc:
        pytest.skip(f"the real Fashion-MNIST cannot be had here: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_training_one_epoch_on_real_fashion_mnist(variant: str) -> None:
    data = _real_data()
    result = train(TrainConfig(variant=variant, epochs=1, precise_bn=True), data)
    assert result.precise_bn_test_acc is not None and result.precise_bn_test_acc >= 0.80
    assert dataclasses.asdict(result.history[0])["train_acc"] > 0.7


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_weight_averaging_stores_the_mean_of_the_last_epochs_weights(data: FashionMNIST, variant: str) -> None:
    def weights(epochs: int, swa_epochs: int) -> list[torch.Tensor]:
        config = TrainConfig(variant=variant, epochs=epochs, batch_size=32, lr=1.0, swa_epochs=swa_epochs)
        return [p.detach().clone() for p in train(config, data).model.parameters()]

    after_3, after_4 = weights(3, 0), weights(4, 0)  # the same run, stopped one epoch apart
    averaged = train(TrainConfig(variant=variant, epochs=4, batch_size=32, lr=1.0, swa_epochs=2), data)
    assert averaged.averaged_epochs == 2
    for a, b, mean in zip(after_3, after_4, averaged.model.parameters(), strict=True):
        torch.testing.assert_close(mean.detach(), (a + b) / 2, rtol=0, atol=1e-6)
    assert not torch.equal(after_3[0], after_4[0])  # the epochs differ, so the mean means something


@pytest.mark.parametrize(("epochs", "swa_epochs", "precise_bn", "averaged"),
                         [(10, 5, True, 5), (10, 8, True, 5), (3, 5, True, 1), (10, 0, True, 1), (10, 5, False, 1)])
def test_weight_averaging_covers_at_most_half_the_run_and_needs_precise_bn(
        epochs: int, swa_epochs: int, precise_bn: bool, averaged: int) -> None:
    config = TrainConfig(epochs=epochs, swa_epochs=swa_epochs, precise_bn=precise_bn)
    assert config.averaged_epochs() == averaged


@pytest.mark.parametrize(("epochs_run", "averaged", "expected_swa"), [(4, 2, 5), (4, 1, 1), (2, 1, 5), (6, 3, 5)])
def test_the_config_a_stopped_run_equals_trains_that_run(epochs_run: int, averaged: int, expected_swa: int) -> None:
    # A trial stopped after epochs_run of 10 epochs, its model averaging `averaged` epochs (1: the last alone).
    asked = TrainConfig(epochs=10, swa_epochs=5)
    run = asked.of_run(epochs_run, averaged)
    assert run.epochs == epochs_run and run.swa_epochs == expected_swa and run.averaged_epochs() == averaged
    assert dataclasses.replace(run, epochs=10, swa_epochs=5) == asked  # nothing else differs
