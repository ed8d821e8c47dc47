from __future__ import annotations

import pytest
import torch
from torch import nn

from models.batchnorm import BatchNorm, batchnorm_layers
from models.lenet import build_lenet


def test_lenet_scratch_layout_is_the_chapters() -> None:
    net = build_lenet("scratch")
    assert isinstance(net, nn.Sequential)
    assert isinstance(net[1], BatchNorm)
    assert net[1].gamma.reshape(-1).shape == (6,)  # the chapter's net[1].gamma inspection
    assert [m.num_features for _, m in batchnorm_layers(net)] == [6, 16, 120, 84]
    assert [type(m).__name__ for m in net] == [
        "Conv2d", "BatchNorm", "Sigmoid", "MaxPool2d", "Conv2d", "BatchNorm", "Sigmoid", "MaxPool2d",
        "Flatten", "Linear", "BatchNorm", "Sigmoid", "Linear", "BatchNorm", "Sigmoid", "Linear",
    ]


def test_lenet_builtin_layout_is_the_chapters() -> None:
    net = build_lenet("builtin")
    assert isinstance(net[1], nn.BatchNorm2d) and net[1].weight.shape == (6,)
    assert [type(m).__name__ for _, m in batchnorm_layers(net)] == [
        "BatchNorm2d", "BatchNorm2d", "BatchNorm1d", "BatchNorm1d",
    ]


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_lenet_output_shape(variant: str) -> None:
    net = build_lenet(variant)
    assert net(torch.rand(4, 1, 28, 28)).shape == (4, 10)


def test_lenet_init_is_xavier_uniform() -> None:
    torch.manual_seed(0)
    net = build_lenet("builtin")
    conv = net[0]
    bound = (6 / (1 * 25 + 6 * 25)) ** 0.5  # xavier_uniform: sqrt(6 / (fan_in + fan_out))
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound  # the full range is used, not PyTorch's default


def test_lenet_same_seed_same_weights_across_variants() -> None:
    torch.manual_seed(3)
    a = build_lenet("scratch")
    torch.manual_seed(3)
    b = build_lenet("builtin")
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[15].weight, b[15].weight)


def test_lenet_unknown_variant_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown variant 'fancy'; choose one of scratch, builtin"):
        build_lenet("fancy")
