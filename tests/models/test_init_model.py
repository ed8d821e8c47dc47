"""Starting a run from a model's weights and BN statistics (``init_model``): fine-tuning, or a new classifier."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from models.data import FashionMNIST
from models.init_model import load_initial_state
from models.lenet import build_lenet
from models.preprocess import to_model_input
from models.training import Progress, TrainConfig, train, training_metadata

SMALL = dict(epochs=1, batch_size=32, lr=1.0, precise_bn=False)


def _trained_state(data: FashionMNIST, variant: str) -> dict[str, torch.Tensor]:
    """A model trained a little (its BN statistics far from a fresh layer's)."""
    result = train(TrainConfig(variant=variant, seed=3, **SMALL), data)
    return {k: v.clone() for k, v in result.model.state_dict().items()}


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_init_model_load_copies_weights_and_bn_statistics(data: FashionMNIST, variant: str) -> None:
    state = _trained_state(data, variant)
    model = build_lenet(variant)
    assert load_initial_state(model, state) is False  # the classifier is kept: same classes
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    stats = [n for n in state if n.endswith(("moving_mean", "moving_var", "running_mean", "running_var",
                                              "num_batches_tracked"))]
    assert len(stats) == 4 * (2 if variant == "scratch" else 3)  # the BN buffers are among them
    if variant == "builtin":
        assert int(loaded["1.num_batches_tracked"]) == int(state["1.num_batches_tracked"]) > 0


def test_init_model_run_begins_at_the_models_weights(data: FashionMNIST) -> None:
    """The first batch's loss is the starting model's loss on that batch (a fresh init's is far from it)."""
    state = _trained_state(data, "scratch")
    config = TrainConfig(variant="scratch", seed=5, init_model="parent", **SMALL)
    reports: list[Progress] = []
    train(config, data, init_state=state, on_progress=reports.append)

    start = build_lenet("scratch")
    start.load_state_dict(state)
    start.train()
    first = torch.randperm(len(data.train_images), generator=torch.Generator().manual_seed(5))[:32]
    with torch.no_grad():
        expected = F.cross_entropy(start(to_model_input(data.train_images[first])), data.train_labels[first]).item()
    fresh: list[Progress] = []
    train(dataclasses.replace(config, init_model=None), data, on_progress=fresh.append)
    assert reports[0].batch == 1
    assert reports[0].loss == pytest.approx(expected, rel=1e-5)
    assert abs(fresh[0].loss - expected) > 0.1  # the check can tell a fresh start from this one


def test_init_model_new_classes_get_a_new_last_layer_from_the_runs_seed(data: FashionMNIST) -> None:
    """A model trained on 5 classes: everything but the last Linear layer is kept, which starts as a fresh run's."""
    state = _trained_state(data, "builtin")
    last = f"{len(build_lenet('builtin')) - 1}."  # the classifier, nn.Linear(84, 10)
    state[last + "weight"] = torch.randn(5, 84)  # (classes, features) of another data set
    state[last + "bias"] = torch.randn(5)
    torch.manual_seed(11)
    fresh = build_lenet("builtin").state_dict()
    torch.manual_seed(11)
    model = build_lenet("builtin")
    assert load_initial_state(model, state) is True
    loaded = model.state_dict()
    for name, tensor in loaded.items():
        expected = fresh[name] if name.startswith(last) else state[name]
        assert torch.equal(tensor, expected), name
    result = train(TrainConfig(variant="builtin", seed=11, init_model="five-classes", **SMALL), data,
                   init_state=state)
    assert result.model[-1].out_features == 10 and result.history[0].test_acc > 0.5


def test_init_model_of_the_other_variant_is_refused(data: FashionMNIST) -> None:
    state = build_lenet("builtin").state_dict()
    with pytest.raises(ValueError, match="builtin.*scratch|variant"):
        load_initial_state(build_lenet("scratch"), state)


def test_init_model_shapes_that_differ_elsewhere_are_refused() -> None:
    state = build_lenet("scratch").state_dict()
    state["0.weight"] = torch.zeros(6, 1, 3, 3)
    with pytest.raises(ValueError, match="0.weight"):
        load_initial_state(build_lenet("scratch"), state)


def test_init_model_names_and_weights_come_together(data: FashionMNIST) -> None:
    """The engine resolves no names: a named start needs its weights, and weights need the name they record."""
    with pytest.raises(ValueError, match="init_state"):
        train(TrainConfig(variant="scratch", init_model="a", **SMALL), data)
    with pytest.raises(ValueError, match="init_model"):
        train(TrainConfig(variant="scratch", **SMALL), data, init_state=build_lenet("scratch").state_dict())


def test_init_model_is_recorded_as_the_parent(data: FashionMNIST) -> None:
    state = _trained_state(data, "scratch")
    config = TrainConfig(variant="scratch", init_model="model-a", **SMALL)
    result = train(config, data, init_state=state)
    meta = training_metadata(config, result, data.classes)
    assert meta["parent"] == "model-a" and meta["hyperparameters"]["init_model"] == "model-a"
    plain = TrainConfig(variant="scratch", **SMALL)
    assert training_metadata(plain, train(plain, data), data.classes)["parent"] is None


@pytest.mark.parametrize("name", ["../etc", "a b", "", "x" * 65])
def test_init_model_must_look_like_a_model_id(name: str) -> None:
    with pytest.raises(ValueError, match="init_model"):
        TrainConfig(init_model=name)
