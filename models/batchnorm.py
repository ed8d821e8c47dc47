"""Batch normalization from scratch: the book's arithmetic in a pure function, bookkeeping in a module.

Conventions, compared with PyTorch's ``nn.BatchNorm*d``:

* Momentum: the book's ``momentum = 0.9`` weighs the *old* running value,
  ``moving = 0.9 * moving + 0.1 * batch``. PyTorch's ``momentum = 0.1`` weighs the *new*
  value, which is the same update. ``BatchNorm.momentum`` keeps the book's meaning.
* Variance: the book normalizes with, and keeps a running average of, the *biased* batch
  variance (mean of squared deviations). PyTorch normalizes with the biased variance too
  but its ``running_var`` averages the *unbiased* one (times ``m / (m - 1)`` for ``m``
  values per channel). Outputs in training mode are identical; running variances differ by
  that factor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "BatchNorm",
    "batch_norm",
    "batchnorm_layers",
    "batchnorm_report",
    "batchnorm_state",
    "is_batchnorm",
]


def batch_norm(
    X: Tensor,
    gamma: Tensor,
    beta: Tensor,
    moving_mean: Tensor,
    moving_var: Tensor,
    eps: float,
    momentum: float,
    training: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize ``X`` and return ``(Y, new_moving_mean, new_moving_var)``.

    The book's arithmetic: ``Y = gamma * (X - mean) / sqrt(var + eps) + beta`` with the batch
    mean and *biased* variance in training mode (then ``moving = momentum * moving +
    (1 - momentum) * batch``), the moving averages otherwise (returned unchanged).
    """
    if not training:
        # The same expression regrouped so the full-size tensor is touched once:
        # gamma * (X - mean) / sqrt(var + eps) + beta == X * scale + (beta - mean * scale),
        # with scale = gamma / sqrt(var + eps) of shape (1, C[, 1, 1]).
        scale = gamma * torch.rsqrt(moving_var + eps)
        return torch.addcmul(beta - moving_mean * scale, X, scale), moving_mean, moving_var
    dims = (0,) if X.dim() == 2 else (0, 2, 3)  # (N, C) per feature; (N, C, H, W) per channel
    if X.device.type == "cpu":
        # The same arithmetic with its gradient written out: 1.09x a whole training step on
        # the CPU (bench/RESULTS.md). On a GPU, inductor fuses autograd's own derivation, and
        # that is the path measured on an H100.
        Y, mean, var = _BatchNormTraining.apply(X, gamma, beta, eps, dims)
    else:
        mean = X.mean(dim=dims, keepdim=True)
        var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)  # biased, as in the book
        scale = gamma * torch.rsqrt(var + eps)
        Y = torch.addcmul(beta - mean * scale, X, scale)
        mean, var = mean.detach(), var.detach()
    # The running averages carry no gradient: they are statistics, not part of the graph.
    new_mean = momentum * moving_mean + (1.0 - momentum) * mean
    new_var = momentum * moving_var + (1.0 - momentum) * var
    return Y, new_mean, new_var


class _BatchNormTraining(torch.autograd.Function):
    """Training-mode BN: the book's forward, and its gradient written out instead of taped.

    Autograd differentiating the book's elementwise ops keeps as many full-size intermediates
    and runs about a dozen full-size passes backward (the two means, the square, the
    subtraction, the affine map); the analytic gradient needs two reductions and three passes.
    The forward is the book's arithmetic: the batch mean, the mean of squared deviations, then
    ``(X - mean)`` times ``gamma / sqrt(var + eps)`` plus ``beta`` (the per-channel factor
    grouped first). Measured on LeNet's first BN, forward and backward: 5.8 -> 2.7 ms.
    """

    @staticmethod
    def forward(
        ctx: Any, X: Tensor, gamma: Tensor, beta: Tensor, eps: float, dims: tuple[int, ...]
    ) -> tuple[Tensor, Tensor, Tensor]:
        mean = X.mean(dim=dims, keepdim=True)  # (1, C[, 1, 1])
        centered = X - mean  # (N, C[, H, W])
        var = (centered**2).mean(dim=dims, keepdim=True)  # biased, as in the book
        inv_std = torch.rsqrt(var + eps)
        scale = gamma * inv_std  # gamma / sqrt(var + eps), one factor per channel
        # gamma * (X - mean) / sqrt(var + eps) + beta. (Not addcmul(beta, ...): with a broadcast
        # first argument its CPU kernel takes a slow path, 5x slower than these two passes.)
        Y = torch.mul(centered, scale).add_(beta)
        ctx.save_for_backward(centered, inv_std, scale)
        ctx.dims = dims
        ctx.mark_non_differentiable(mean, var)
        return Y, mean, var

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, dY: Tensor, _dmean: Tensor | None, _dvar: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        centered, inv_std, scale = ctx.saved_tensors
        dims = ctx.dims
        m = centered.numel() // centered.shape[1]  # values per channel
        dbeta = dY.sum(dim=dims, keepdim=True)  # (1, C[, 1, 1])
        d_centered = (dY * centered).sum(dim=dims, keepdim=True)  # sum of dY * (X - mean)
        dgamma = d_centered * inv_std if ctx.needs_input_grad[1] else None  # sum of dY * X_hat
        dX = None
        if ctx.needs_input_grad[0]:
            # dX = scale * (dY - mean(dY) - X_hat * mean(dY * X_hat)), as dY * scale + centered * k + c
            # with per-channel k and c: three full-size passes.
            k = scale * inv_std * inv_std * d_centered / -m
            c = scale * dbeta / -m
            dX = torch.mul(dY, scale).addcmul_(centered, k).add_(c)
        return dX, dgamma, (dbeta if ctx.needs_input_grad[2] else None), None, None


class BatchNorm(nn.Module):
    """The book's ``BatchNorm`` with its mode from ``self.training`` and its statistics as buffers.

    ``num_dims`` is 2 after a fully connected layer (input ``(N, C)``) and 4 after a
    convolution (input ``(N, C, H, W)``).
    """

    moving_mean: Tensor
    moving_var: Tensor

    def __init__(
        self, num_features: int, num_dims: int, eps: float = 1e-5, momentum: float = 0.9
    ) -> None:
        super().__init__()
        if num_dims not in (2, 4):
            raise ValueError(f"num_dims must be 2 (fully connected) or 4 (convolutional), got {num_dims}")
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.num_features = num_features
        self.num_dims = num_dims
        self.eps = eps
        self.momentum = momentum  # book convention: weight of the old running value
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))

    def forward(self, X: Tensor) -> Tensor:
        self._check_input(X)
        Y, new_mean, new_var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var,
            eps=self.eps, momentum=self.momentum, training=self.training,
        )
        if self.training:
            # In place, so the buffers stay the same tensors (state_dict views, CUDA graphs).
            with torch.no_grad():
                self.moving_mean.copy_(new_mean)
                self.moving_var.copy_(new_var)
        return Y

    def _check_input(self, X: Tensor) -> None:
        if X.dim() != self.num_dims:
            raise ValueError(
                f"BatchNorm(num_dims={self.num_dims}) expects a {self.num_dims}-D input, "
                f"got shape {tuple(X.shape)}"
            )
        if X.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm expects {self.num_features} channels, got {X.shape[1]} "
                f"(input shape {tuple(X.shape)})"
            )
        if self.training:
            values_per_channel = X.numel() // self.num_features
            if values_per_channel < 2:
                raise ValueError(
                    "BatchNorm in training mode needs more than one value per channel "
                    f"(input shape {tuple(X.shape)}); use a batch of at least 2, or call "
                    "model.eval() to predict single examples with the running statistics"
                )

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_dims={self.num_dims}, eps={self.eps}, momentum={self.momentum}"


_BUILTIN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def is_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a BN layer of either variant."""
    return isinstance(module, (BatchNorm, *_BUILTIN_TYPES))


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every BN layer of ``model`` with its name, in order."""
    return [(name, m) for name, m in model.named_modules() if is_batchnorm(m)]


def batchnorm_state(layer: nn.Module) -> dict[str, Tensor]:
    """A copy of one BN layer's gamma, beta, running mean and running variance as 1-D tensors.

    The same view of both variants: ``gamma``/``beta`` are the builtin's ``weight``/``bias``,
    ``running_*`` the scratch module's ``moving_*``.
    """
    if isinstance(layer, BatchNorm):
        tensors = (layer.gamma, layer.beta, layer.moving_mean, layer.moving_var)
    elif isinstance(layer, _BUILTIN_TYPES):
        if layer.weight is None or layer.running_mean is None or layer.running_var is None:
            raise ValueError("builtin BatchNorm without affine parameters or running statistics")
        tensors = (layer.weight, layer.bias, layer.running_mean, layer.running_var)
    else:
        raise TypeError(f"not a BatchNorm layer: {type(layer).__name__}")
    names = ("gamma", "beta", "running_mean", "running_var")
    return {name: t.detach().reshape(-1).clone() for name, t in zip(names, tensors, strict=True)}


def batchnorm_report(model: nn.Module) -> list[dict[str, Any]]:
    """Every BN layer of ``model`` as plain values: name, channel count, gamma, beta, running statistics.

    The chapter's look at ``net[1].gamma`` and ``net[1].beta``, for both variants; what the
    CLI's ``inspect`` prints and the API's ``/models/{id}/batchnorm`` answers.
    """
    report: list[dict[str, Any]] = []
    for name, layer in batchnorm_layers(model):
        state = {k: v.tolist() for k, v in batchnorm_state(layer).items()}
        report.append({"name": name, "num_features": len(state["gamma"]), **state})
    return report
