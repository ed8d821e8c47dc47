"""The chapter's LeNet with batch normalization, in its from-scratch and builtin variants."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from torch import Tensor, nn

from models.batchnorm import BatchNorm
from models.pooling import MaxPool2d

Variant = Literal["scratch", "builtin"]
VARIANTS: tuple[str, ...] = get_args(Variant)
NUM_CLASSES = 10  # Fashion-MNIST's, the default; a model of another data set has as many outputs as it has classes
MAX_CLASSES = 1000  # what one LeNet may be asked to tell apart (a bound for requests, far above any data set here)
CLASSIFIER = 15  # the index of the last ``nn.Linear`` (the classifier) in ``build_lenet``'s Sequential
IMAGE_SIZE = 28  # every data set's images are converted to 28x28 grayscale (models/preprocess.py)


def _bn(variant: str, num_features: int, num_dims: int) -> nn.Module:
    if variant == "scratch":
        return BatchNorm(num_features, num_dims=num_dims)
    if num_dims == 4:
        return nn.BatchNorm2d(num_features)
    return nn.BatchNorm1d(num_features)


def build_lenet(variant: str, num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """The chapter's ``nn.Sequential``; index 1 is the first BN layer (``net[1].gamma``).

    The last layer has ``num_classes`` outputs (Fashion-MNIST's 10 by default).

    The pooling layers are ``nn.MaxPool2d`` computed without PyTorch's slow CPU kernel
    (``models/pooling.py``): the same values and gradients.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"a LeNet tells 2 to {MAX_CLASSES} classes apart, not {num_classes}")
    net = nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), _bn(variant, 6, 4), nn.Sigmoid(),   # (N, 6, 24, 24)
        MaxPool2d(kernel_size=2, stride=2),                                 # (N, 6, 12, 12)
        nn.Conv2d(6, 16, kernel_size=5), _bn(variant, 16, 4), nn.Sigmoid(),  # (N, 16, 8, 8)
        MaxPool2d(kernel_size=2, stride=2), nn.Flatten(),                   # (N, 256)
        nn.Linear(16 * 4 * 4, 120), _bn(variant, 120, 2), nn.Sigmoid(),     # (N, 120)
        nn.Linear(120, 84), _bn(variant, 84, 2), nn.Sigmoid(),              # (N, 84)
        nn.Linear(84, num_classes),                                         # (N, num_classes)
    )
    assert isinstance(net[CLASSIFIER], nn.Linear)
    net.apply(_xavier_init)
    return net


def num_classes_of(state: Mapping[str, Tensor]) -> int | None:
    """How many classes the LeNet whose state_dict is ``state`` tells apart (its last layer's outputs), or None."""
    bias = state.get(f"{CLASSIFIER}.bias")
    return int(bias.shape[0]) if bias is not None and bias.ndim == 1 else None


def _xavier_init(module: nn.Module) -> None:
    # The chapter's d2l.train_ch6 init: Xavier-uniform weights for conv and linear layers,
    # biases left at PyTorch's default.
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)
