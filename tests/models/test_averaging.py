from __future__ import annotations

import pytest
import torch

from models.averaging import WeightAverage, recompute_bn_statistics
from models.batchnorm import batchnorm_layers, batchnorm_state
from models.data import FashionMNIST
from models.lenet import build_lenet
from models.training import TrainConfig, train


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_averaging_precise_bn_changes_running_statistics_and_leaves_weights(data: FashionMNIST, variant: str) -> None:
    result = train(TrainConfig(variant=variant, epochs=2, batch_size=32, lr=1.0), data)
    model = result.model
    stats_before = [batchnorm_state(m) for _, m in batchnorm_layers(model)]
    params_before = {k: v.clone() for k, v in model.named_parameters()}
    recompute_bn_statistics(model, data.train_images, batch_size=32, num_images=256)
    for before, (_, layer) in zip(stats_before, batchnorm_layers(model), strict=True):
        after = batchnorm_state(layer)
        assert not torch.allclose(before["running_mean"], after["running_mean"])
        assert not torch.allclose(before["running_var"], after["running_var"])
    for k, v in model.named_parameters():
        assert torch.equal(v, params_before[k]), k
    assert not model.training  # the mode is restored


def test_averaging_precise_bn_is_the_average_of_batch_statistics() -> None:
    torch.manual_seed(0)
    model = build_lenet("scratch")
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    recompute_bn_statistics(model, images, batch_size=16, num_images=64, seed=0)
    # Recompute the first layer's statistics by hand over the same four batches.
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    conv = model[0]
    means, variances = [], []
    for start in range(0, 64, 16):
        X = conv(images[order[start:start + 16]].unsqueeze(1).float() / 255)
        means.append(X.mean(dim=(0, 2, 3)))
        variances.append(X.var(dim=(0, 2, 3), correction=0))
    torch.testing.assert_close(model[1].moving_mean.reshape(-1), torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].moving_var.reshape(-1), torch.stack(variances).mean(0), rtol=1e-5, atol=1e-6)


def test_averaging_weight_average_is_the_mean_written_in_place() -> None:
    torch.manual_seed(0)
    model = build_lenet("builtin")
    average = WeightAverage(model)
    seen = []
    for scale in (1.0, 2.0, 4.0):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
        seen.append([p.detach().clone() for p in model.parameters()])
        average.add(model)
    storage = [p.data_ptr() for p in model.parameters()]
    average.copy_to(model)
    for p, *values in zip(model.parameters(), *seen, strict=True):
        torch.testing.assert_close(p.detach(), sum(values) / 3, rtol=1e-6, atol=1e-7)
    assert [p.data_ptr() for p in model.parameters()] == storage  # a captured CUDA graph still sees them
