"""Inference in eval mode: running statistics, never batch statistics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.lenet import IMAGE_SIZE

__all__ = ["INPUT_SHAPE", "predict_batch", "predict_probabilities", "stack_images"]

INPUT_SHAPE = (1, 1, IMAGE_SIZE, IMAGE_SIZE)  # one image as preprocess.py makes it


@torch.inference_mode()
def predict_probabilities(model: nn.Module, X: Tensor) -> Tensor:
    """Class probabilities ``(N, 10)`` for inputs ``(N, 1, 28, 28)``.

    The model must be in eval mode: in training mode BN would normalize with the statistics
    of whatever else is in the batch and update its running statistics.
    """
    if model.training:
        raise RuntimeError("predict_probabilities needs a model in eval mode; call model.eval() first")
    return torch.softmax(model(X), dim=1)


def stack_images(images: Sequence[Tensor]) -> Tensor:
    """``N`` single images ``(1, 1, 28, 28)`` as one batch ``(N, 1, 28, 28)``, in order; a malformed one is a
    ValueError naming its index. What every runtime takes (``models.runtime``)."""
    if not images:
        raise ValueError("no images to predict")
    for index, image in enumerate(images):
        if tuple(image.shape) != INPUT_SHAPE or image.dtype != torch.float32:
            raise ValueError(
                f"image {index} is {image.dtype} of shape {tuple(image.shape)}; "
                f"expected float32 of shape {INPUT_SHAPE} (as models.preprocess makes it)"
            )
    return torch.cat(list(images))  # (N, 1, 28, 28)


@torch.inference_mode()
def predict_batch(model: nn.Module, images: Sequence[Tensor]) -> Tensor:
    """Class probabilities ``(N, 10)`` for ``N`` single images ``(1, 1, 28, 28)``, in order, in one forward pass.

    In eval mode BN uses its running statistics, so each row equals that image predicted
    alone (to float rounding). A malformed image is a ValueError naming its index.
    """
    return predict_probabilities(model, stack_images(images))  # (N, 10)
