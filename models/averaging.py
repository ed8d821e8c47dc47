"""Two averages that make the stored model better than the last step's: BN statistics and weights.

* Precise BN (Wu and Johnson 2021): after training, each BN layer's running mean and variance
  become a true average of its batch statistics over a few thousand training images, with the
  weights frozen. At the chapter's lr 1.0 the moving averages lag the weights.
* Weight averaging (SWA, Izmailov et al. 2018): the stored weights are the mean of the last few
  epochs' weights; they need statistics of their own, which precise BN then gives them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from models.batchnorm import BatchNorm, batchnorm_layers
from models.preprocess import to_model_input

__all__ = ["WeightAverage", "recompute_bn_statistics"]


@torch.no_grad()
def recompute_bn_statistics(
    model: nn.Module, images: Tensor, *, batch_size: int = 256, num_images: int = 4096, seed: int = 0
) -> None:
    """Precise BN: set every BN layer's running statistics to a true average over batches.

    The weights stay frozen. Forwards run in training mode, as during training, so each
    layer sees the features it was trained on; each layer's running mean and variance become
    the average of its per-batch statistics over ``num_images`` training images (Wu and
    Johnson 2021). Handles the from-scratch ``BatchNorm`` and the builtin one alike, keeping
    each variant's variance convention (biased for scratch, unbiased for builtin).
    """
    layers = [m for _, m in batchnorm_layers(model)]
    if not layers:
        return
    sums: dict[nn.Module, list[Tensor]] = {}

    def record(layer: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        X = inputs[0]
        dims = (0,) if X.dim() == 2 else (0, 2, 3)
        values = X.numel() // X.shape[1]
        mean = X.mean(dim=dims)
        var = X.var(dim=dims, correction=0 if isinstance(layer, BatchNorm) else 1)
        if values < 2:
            return
        if layer not in sums:
            sums[layer] = [torch.zeros_like(mean), torch.zeros_like(var), torch.zeros((), device=X.device)]
        acc = sums[layer]
        acc[0] += mean
        acc[1] += var
        acc[2] += 1

    was_training = model.training
    handles = [layer.register_forward_hook(record) for layer in layers]
    saved = {layer: {k: v.clone() for k, v in layer.state_dict().items()} for layer in layers}
    try:
        model.train()
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(images), generator=gen)[: min(num_images, len(images))]
        order = order.to(images.device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                break
            model(to_model_input(images[idx]))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for layer in layers:
        layer.load_state_dict(saved[layer])  # undo the forwards' moving-average updates
        if layer not in sums:
            continue
        mean_sum, var_sum, count = sums[layer]
        mean, var = mean_sum / count, var_sum / count
        if isinstance(layer, BatchNorm):
            layer.moving_mean.copy_(mean.reshape(layer.moving_mean.shape))
            layer.moving_var.copy_(var.reshape(layer.moving_var.shape))
        else:
            assert isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d))
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)


class WeightAverage:
    """The running mean of a model's parameters over the epochs it is given (SWA's average)."""

    def __init__(self, model: nn.Module) -> None:
        self.sums = [torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()]
        self.count = 0

    def add(self, model: nn.Module) -> None:
        """Add the model's current weights to the average."""
        self.add_weights(model.parameters())

    @torch.no_grad()
    def add_weights(self, weights: Iterable[Tensor]) -> None:
        """Add one set of weights (the model's parameters, in order, or a copy of them) to the average."""
        for total, p in zip(self.sums, weights, strict=True):
            total.add_(p.detach().double())  # float64: the sum of a few epochs' weights loses nothing
        self.count += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Set the model's weights to the average (its BN statistics are left for precise BN)."""
        for total, p in zip(self.sums, model.parameters(), strict=True):
            p.copy_(total / self.count)  # in place: a captured CUDA graph's pointers stay valid
