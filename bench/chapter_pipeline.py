"""The chapter's own training pipeline, as the reference the engine is measured against.

Reproduces d2l's ``load_data_fashion_mnist`` + ``train_ch6`` (PyTorch edition) without a
download: a torchvision-style data set over the same IDX tensors that turns each sample into
a PIL image and back through ``transforms.ToTensor()``, a ``DataLoader`` with
``batch_size=256, shuffle=True, num_workers=4``, Xavier init, SGD with lr 1.0,
cross-entropy, and d2l's ``Accumulator`` of per-batch ``.item()`` sums.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from models.data import FashionMNIST
from models.lenet import build_lenet

__all__ = ["ChapterResult", "PILFashionMNIST", "train_chapter"]


class PILFashionMNIST(Dataset[tuple[Tensor, int]]):
    """What ``torchvision.datasets.FashionMNIST`` does per sample: uint8 -> PIL -> transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: transforms.ToTensor) -> None:
        self.images = images  # (N, 28, 28) uint8
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = Image.fromarray(self.images[index].numpy(), mode="L")
        return self.transform(img), int(self.labels[index])


class Accumulator:
    """d2l's Accumulator: sums over ``n`` variables, fed Python floats."""

    def __init__(self, n: int) -> None:
        self.data = [0.0] * n

    def add(self, *args: float) -> None:
        self.data = [a + float(b) for a, b in zip(self.data, args, strict=True)]

    def __getitem__(self, idx: int) -> float:
        return self.data[idx]


def _accuracy(y_hat: Tensor, y: Tensor) -> float:
    """d2l.accuracy: the number of correct predictions."""
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def _evaluate_accuracy(net: nn.Module, data_iter: DataLoader[tuple[Tensor, int]], device: str) -> float:
    """d2l.evaluate_accuracy_gpu."""
    net.eval()
    metric = Accumulator(2)
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            metric.add(_accuracy(net(X), y), y.numel())
    return metric[0] / metric[1]


@dataclass(frozen=True)
class ChapterResult:
    loss: float
    train_acc: float
    test_acc: float
    examples_per_sec: float  # training examples over training time only, as d2l reports
    train_seconds: float


def train_chapter(
    variant: str, data: FashionMNIST, *, epochs: int = 10, lr: float = 1.0, batch_size: int = 256,
    num_workers: int = 4, seed: int = 0, device: str = "cpu",
) -> ChapterResult:
    """d2l.train_ch6; times the training loops (not the per-epoch evaluation), as d2l does."""
    torch.manual_seed(seed)
    net = build_lenet(variant).to(device)  # Xavier-uniform init, as train_ch6's init_weights
    trans = transforms.ToTensor()
    train_set = PILFashionMNIST(data.train_images, data.train_labels, trans)
    test_set = PILFashionMNIST(data.test_images, data.test_labels, trans)
    train_iter = DataLoader(train_set, batch_size, shuffle=True, num_workers=num_workers)
    test_iter = DataLoader(test_set, batch_size, shuffle=False, num_workers=num_workers)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    seconds = 0.0
    train_l = train_acc = test_acc = 0.0
    examples = 0
    for _ in range(epochs):
        metric = Accumulator(3)
        net.train()
        _sync(device)
        started = time.perf_counter()
        for X, y in train_iter:
            X, y = X.to(device), y.to(device)
            optimizer.zero_grad()
            y_hat = net(X)
            l = loss(y_hat, y)  # noqa: E741 - the book's name
            l.backward()
            optimizer.step()
            with torch.no_grad():
                metric.add(l * X.shape[0], _accuracy(y_hat, y), X.shape[0])
        _sync(device)
        seconds += time.perf_counter() - started
        examples += int(metric[2])
        train_l = metric[0] / metric[2]
        train_acc = metric[1] / metric[2]
        test_acc = _evaluate_accuracy(net, test_iter, device)
    return ChapterResult(train_l, train_acc, test_acc, examples / seconds, seconds)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
