"""Packed training: every trial of a pack ends as the same trial trained alone by train()."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
import torch

from models.data import FashionMNIST
from models.packed import FORMULATIONS, PackedLeNet, pack_key, packing_pays, train_packed
from models.train_state import TrainingState, state_from_bytes, state_to_bytes
from models.training import EpochMetrics, TrainConfig, TrainingDiverged, TrainResult, train
from tests.conftest import TEST_THREADS

# Short runs: at lr 1.0 a difference in the last bit grows with every step, so few steps
# keep the packed and solo runs within float tolerance of each other.
BASE = dict(epochs=2, batch_size=64, device="cpu", threads=TEST_THREADS, swa_epochs=2, precise_bn_images=256)
TRIALS = [(3, 1.0), (11, 0.3), (29, 0.1)]  # (seed, lr)
ATOL = 2e-4


def _configs(variant: str, **overrides: object) -> list[TrainConfig]:
    return [TrainConfig(variant=variant, seed=seed, lr=lr, **{**BASE, **overrides}) for seed, lr in TRIALS]


def _assert_same_run(packed: TrainResult | TrainingDiverged, solo: TrainResult) -> None:
    assert isinstance(packed, TrainResult)
    packed_state, solo_state = packed.model.state_dict(), solo.model.state_dict()
    assert packed_state.keys() == solo_state.keys()
    for name, tensor in solo_state.items():  # weights and BN buffers (running statistics, batch counters)
        torch.testing.assert_close(packed_state[name], tensor, atol=ATOL, rtol=1e-3, msg=name)
    assert [m.epoch for m in packed.history] == [m.epoch for m in solo.history]
    for p, s in zip(packed.history, solo.history, strict=True):
        assert p.loss == pytest.approx(s.loss, abs=1e-4)
        assert p.train_acc == pytest.approx(s.train_acc, abs=2 / 512)  # a borderline example may flip
        assert p.test_acc == pytest.approx(s.test_acc, abs=2 / 256)
    assert packed.averaged_epochs == solo.averaged_epochs
    assert packed.final_test_acc == pytest.approx(solo.final_test_acc, abs=2 / 256)
    assert not packed.model.training


def _solo(configs: Sequence[TrainConfig], data: FashionMNIST) -> list[TrainResult]:
    return [train(c, data) for c in configs]


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_packed_trials_equal_solo_runs(data: FashionMNIST, variant: str, formulation: str) -> None:
    configs = _configs(variant)
    packed = train_packed(configs, data, formulation=formulation)
    for p, s in zip(packed, _solo(configs, data), strict=True):
        _assert_same_run(p, s)
        assert isinstance(p, TrainResult) and not p.stopped_early


def test_packed_trials_differ_from_each_other(data: FashionMNIST) -> None:
    packed = train_packed(_configs("scratch"), data)
    first = [r.model.state_dict()["0.weight"] for r in packed if isinstance(r, TrainResult)]
    assert not torch.allclose(first[0], first[1], atol=1e-2)


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_packed_stopped_trial_equals_a_solo_run_of_its_epochs(data: FashionMNIST, variant: str) -> None:
    configs = _configs(variant, epochs=3, swa_epochs=1)
    seen: list[tuple[int, int]] = []

    def stop_second(i: int, metrics: EpochMetrics) -> bool:
        seen.append((i, metrics.epoch))
        return i == 1  # trial 1 leaves after its first epoch

    packed = train_packed(configs, data, should_stop=stop_second)
    assert seen == [(0, 1), (1, 1), (2, 1), (0, 2), (2, 2)]  # never asked after a trial's last epoch
    stopped = packed[1]
    assert isinstance(stopped, TrainResult) and stopped.stopped_early and len(stopped.history) == 1
    _assert_same_run(stopped, train(replace(configs[1], epochs=1), data))
    _assert_same_run(packed[0], train(configs[0], data))


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_a_packed_trial_saves_the_state_train_saves_and_goes_on_alone_from_it(data: FashionMNIST, variant: str) -> None:
    configs = _configs(variant, epochs=4, swa_epochs=2, batch_size=128)  # averaging epochs 3 and 4; as many steps as BASE
    configs[2] = replace(configs[2], checkpoint_every=2)
    saved: dict[int, list[TrainingState]] = {i: [] for i in range(len(configs))}
    packed = train_packed(configs, data, on_state=lambda i, state: saved[i].append(state))
    assert {i: [s.epoch for s in states] for i, states in saved.items()} == {0: [1, 2, 3, 4], 1: [1, 2, 3, 4], 2: [2, 4]}
    for i, config in enumerate(configs):
        alone: list[TrainingState] = []
        train(config, data, on_state=alone.append)
        for ours, its in zip(saved[i], alone, strict=True):  # the same state, to float tolerance
            assert ours.epoch == its.epoch and ours.optimizer == its.optimizer
            assert ours.average_count == its.average_count and ours.threads == its.threads
            for name in ("shuffle", "torch"):  # what the epochs still to come draw: equal bit for bit
                assert torch.equal(ours.rng[name], its.rng[name]), name
            for name, tensor in its.model.items():
                torch.testing.assert_close(ours.model[name], tensor, atol=ATOL, rtol=1e-3, msg=name)
            for mine, theirs in zip(ours.average_sums or [], its.average_sums or [], strict=True):
                torch.testing.assert_close(mine, theirs, atol=2 * ATOL, rtol=1e-3)
            assert [m["loss"] for m in ours.history] == pytest.approx([m["loss"] for m in its.history], abs=1e-4)
        # A crash in epoch 4: the trial alone, from its last state as stored, ends as its pack ended it.
        state = state_from_bytes(state_to_bytes(saved[i][-2]))
        assert state.average_count == (1 if state.epoch == 3 else 0)  # epoch 3's weights are in the average
        _assert_same_run(train(config, data, resume=state), packed[i])


def test_packed_trials_with_different_epochs_leave_when_done(data: FashionMNIST) -> None:
    configs = [replace(c, epochs=e) for c, e in zip(_configs("builtin"), (1, 3, 2), strict=True)]
    events: list[tuple[str, int, int]] = []
    handed: dict[int, TrainResult | TrainingDiverged] = {}

    def on_result(i: int, result: TrainResult | TrainingDiverged) -> None:
        handed[i] = result
        events.append(("result", i, len(result.history) if isinstance(result, TrainResult) else 0))

    packed = train_packed(configs, data, on_epoch=lambda i, m: events.append(("epoch", i, m.epoch)),
                          on_result=on_result)
    assert [len(r.history) for r in packed if isinstance(r, TrainResult)] == [1, 3, 2]
    # Each result is handed over as its trial leaves, while the others train on (a worker publishes it then).
    assert events == [("epoch", 0, 1), ("result", 0, 1), ("epoch", 1, 1), ("epoch", 2, 1),
                      ("epoch", 1, 2), ("epoch", 2, 2), ("result", 2, 2), ("epoch", 1, 3), ("result", 1, 3)]
    assert all(handed[i] is packed[i] for i in range(3))
    assert not any(isinstance(r, TrainResult) and r.stopped_early for r in packed)
    _assert_same_run(packed[1], train(configs[1], data))


def test_packed_diverged_trial_leaves_the_others_unharmed(data: FashionMNIST) -> None:
    configs = _configs("scratch")
    configs[1] = replace(configs[1], lr=1e36)
    handed: list[int] = []
    packed = train_packed(configs, data, on_result=lambda i, result: handed.append(i))
    assert isinstance(packed[1], TrainingDiverged) and "learning rate 1e+36" in str(packed[1])
    assert handed[0] == 1 and sorted(handed) == [0, 1, 2]  # the diverged trial's outcome comes first, at once
    _assert_same_run(packed[0], train(configs[0], data))
    _assert_same_run(packed[2], train(configs[2], data))


def test_packed_weights_are_written_back_per_model(data: FashionMNIST) -> None:
    """Pack then unpack, without a step: every tensor of every model comes back bit for bit."""
    from models.training import initial_model

    models = [initial_model(c)[0] for c in _configs("builtin")]
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    net = PackedLeNet(models)
    fresh = [initial_model(replace(c, seed=c.seed + 100))[0] for c in _configs("builtin")]
    for k, m in enumerate(fresh):
        net.unpack_into(k, m)
        for name, t in m.state_dict().items():
            assert torch.equal(t, states[k][name]), name


def test_pack_key_groups_what_can_share_a_step() -> None:
    a = TrainConfig(variant="scratch", lr=1.0, seed=1, epochs=3, device="cpu")
    assert pack_key(a) == pack_key(replace(a, lr=0.1, seed=2, epochs=5, precise_bn=False, swa_epochs=0))
    assert pack_key(a) != pack_key(replace(a, variant="builtin"))
    assert pack_key(a) != pack_key(replace(a, batch_size=128))
    assert pack_key(a) != pack_key(replace(a, bf16=True))
    with pytest.raises(ValueError, match="cannot share a step"):
        train_packed([a, replace(a, batch_size=128)], FashionMNIST(*(torch.zeros(0),) * 4))


def test_packing_pays_on_the_cpu_only_for_small_batches() -> None:
    assert not packing_pays("cpu")  # the chapter's batch 256: separate jobs (bench/RESULTS.md)
    assert packing_pays("cpu", batch_size=16)
    assert not packing_pays("cpu", batch_size=64)


def test_packed_trials_have_the_data_sets_class_count(data: FashionMNIST) -> None:
    keep = data.train_labels < 3, data.test_labels < 3  # a 3-class data set: LeNet's last layer has 3 outputs
    three = FashionMNIST(data.train_images[keep[0]], data.train_labels[keep[0]], data.test_images[keep[1]],
                         data.test_labels[keep[1]], classes=data.classes[:3])
    configs = _configs("builtin", epochs=1, swa_epochs=0)[:2]
    for p, s in zip(train_packed(configs, three), _solo(configs, three), strict=True):
        assert isinstance(p, TrainResult) and p.model[-1].out_features == 3
        _assert_same_run(p, s)
