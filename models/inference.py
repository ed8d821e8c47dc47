"""Inference in eval mode: running statistics, never batch statistics."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["predict_probabilities"]


@torch.inference_mode()
def predict_probabilities(model: nn.Module, X: Tensor) -> Tensor:
    """Class probabilities ``(N, 10)`` for inputs ``(N, 1, 28, 28)``.

    The model must be in eval mode: in training mode BN would normalize with the statistics
    of whatever else is in the batch and update its running statistics.
    """
    if model.training:
        raise RuntimeError("predict_probabilities needs a model in eval mode; call model.eval() first")
    return torch.softmax(model(X), dim=1)
