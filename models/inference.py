"""Inference in eval mode: running statistics, never batch statistics.

Served images (class probabilities) and the test set (accuracy, during and after training)
are both run here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.lenet import IMAGE_SIZE
from models.preprocess import to_model_input

__all__ = ["INPUT_SHAPE", "evaluate_accuracy", "predict_batch", "predict_probabilities", "stack_images"]

INPUT_SHAPE = (1, 1, IMAGE_SIZE, IMAGE_SIZE)  # one image as preprocess.py makes it


@torch.inference_mode()
def predict_probabilities(model: nn.Module, X: Tensor) -> Tensor:
    """Class probabilities ``(N, K)`` (K: the model's classes) for inputs ``(N, 1, 28, 28)``.

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
    """Class probabilities ``(N, K)`` for ``N`` single images ``(1, 1, 28, 28)``, in order, in one forward pass.

    In eval mode BN uses its running statistics, so each row equals that image predicted
    alone (to float rounding). A malformed image is a ValueError naming its index.
    """
    return predict_probabilities(model, stack_images(images))  # (N, K)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int | None = None) -> float:
    """Accuracy in eval mode on uint8 images ``(N, 28, 28)`` already on the model's device; restores the mode.

    Default batches: 256 on the CPU, where the test set took 2.0-2.6x longer in batches of 2048,
    whose activations (19 MB after the first convolution) fall out of the cores' caches; 2048 on
    a GPU, where fewer launches matter more.
    """
    if batch_size is None:
        batch_size = 256 if images.device.type == "cpu" else 2048
    was_training = model.training
    model.eval()
    try:
        correct = torch.zeros((), dtype=torch.int64, device=images.device)
        for start in range(0, len(images), batch_size):
            X = to_model_input(images[start:start + batch_size])  # (B, 1, 28, 28)
            correct += (model(X).argmax(dim=1) == labels[start:start + batch_size]).sum()
        return correct.item() / max(len(images), 1)
    finally:
        model.train(was_training)
