"""The training engine shared by the command line and the worker.

The whole data set lives on the training device as uint8 tensors and is normalized there,
batch by batch; metrics are summed on the device and read only when progress is reported,
so the loop never waits for the device between batches.

Speed options (each one measured in ``bench/train_speed.py``, each one that can change the
numbers tested against a plain loop in ``tests/models/test_training_speed.py``):

* ``compile``: ``torch.compile`` of forward and loss. It fuses the from-scratch BN's
  elementwise arithmetic (the book's mean/var/normalize ops stay; inductor only fuses them,
  it never swaps in ``native_batch_norm``). It costs a compile (about 10-30 s on two CPU
  cores, cached on disk between processes), so it pays off on long runs only; off by default.
* ``bf16``: autocast to bfloat16 (CPU with AVX-512 bf16, or CUDA). Changes the arithmetic
  slightly; off by default.
* On CUDA only: SGD's fused kernel, and with ``compile`` the "reduce-overhead" mode (CUDA
  graphs), which removes the per-kernel launch cost that dominates a network this small.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from models.batchnorm import BatchNorm, batchnorm_layers
from models.data import FashionMNIST
from models.lenet import VARIANTS, build_lenet
from models.memory import keep_large_buffers
from models.threads import training_threads

__all__ = [
    "EpochMetrics",
    "Progress",
    "TrainConfig",
    "TrainResult",
    "TrainingCancelled",
    "TrainingDiverged",
    "evaluate_accuracy",
    "recompute_bn_statistics",
    "resolve_device",
    "to_model_input",
    "train",
]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingCancelled(RuntimeError):
    """The stop check asked training to stop."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one run; the defaults are the chapter's."""

    variant: str = "scratch"
    epochs: int = 10
    lr: float = 1.0  # far larger than without BN; the chapter's value
    batch_size: int = 256
    seed: int = 0
    precise_bn: bool = False  # recompute BN statistics as true averages after training
    precise_bn_images: int = 4096  # "a few thousand" (Wu and Johnson 2021)
    device: str | None = None  # None: CUDA when present, else CPU
    progress_every: int = 10  # batches between progress reports (and divergence checks)
    compile: bool = False  # torch.compile the forward; pays a compile for faster steps
    bf16: bool = False  # autocast to bfloat16: faster on AVX-512-bf16 CPUs and GPUs, slightly different numbers

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (BN learns nothing from one example), got {self.batch_size}")
        if self.precise_bn_images < 2:
            raise ValueError(f"precise_bn_images must be at least 2, got {self.precise_bn_images}")
        if self.progress_every < 1:
            raise ValueError(f"progress_every must be at least 1, got {self.progress_every}")

    def hyperparameters(self) -> dict[str, object]:
        """The fields that describe the run (not where it ran)."""
        d = asdict(self)
        d.pop("device")
        d.pop("progress_every")
        d.pop("compile")  # how fast, not what: the compiled forward computes the same function
        return d


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    loss: float
    train_acc: float
    test_acc: float
    examples_per_sec: float
    seconds: float


@dataclass(frozen=True)
class Progress:
    """Where training is; sent to the progress callback every few batches."""

    epoch: int  # 1-based
    epochs: int
    batch: int  # batches done in this epoch
    batches: int  # batches per epoch
    loss: float  # mean loss so far in this epoch
    train_acc: float

    @property
    def fraction(self) -> float:
        return ((self.epoch - 1) + self.batch / self.batches) / self.epochs


@dataclass
class TrainResult:
    model: nn.Sequential  # in eval mode, on the training device
    history: list[EpochMetrics] = field(default_factory=list)
    device: str = "cpu"
    precise_bn_test_acc: float | None = None  # test accuracy after precise BN, if applied


ProgressCallback = Callable[[Progress], None]
EpochCallback = Callable[[EpochMetrics], None]
StopCheck = Callable[[], bool]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """CUDA when present for None or "auto"; otherwise the named device, checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
    return dev


def to_model_input(images: Tensor) -> Tensor:
    """uint8 images ``(N, 28, 28)`` to the network's float input ``(N, 1, 28, 28)`` in [0, 1].

    The same scaling as torchvision's ``ToTensor``, which the chapter uses.
    """
    return images.unsqueeze(1).to(torch.float32).div_(255.0)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 2048) -> float:
    """Accuracy in eval mode on uint8 images already on the model's device; restores the mode."""
    was_training = model.training
    model.eval()
    try:
        correct = torch.zeros((), dtype=torch.int64, device=images.device)
        for start in range(0, len(images), batch_size):
            X = to_model_input(images[start:start + batch_size])
            correct += (model(X).argmax(dim=1) == labels[start:start + batch_size]).sum()
        return correct.item() / max(len(images), 1)
    finally:
        model.train(was_training)


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


def train(
    config: TrainConfig,
    data: FashionMNIST,
    *,
    on_progress: ProgressCallback | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: StopCheck | None = None,
) -> TrainResult:
    """Train a fresh LeNet with BN on ``data``; returns the model in eval mode and the history.

    Raises ``TrainingDiverged`` when the loss stops being finite and ``TrainingCancelled``
    when ``should_stop`` returns True (checked between batches).
    """
    # One intra-op thread on the CPU (models/threads.py), restored afterwards.
    with training_threads(resolve_device(config.device)):
        return _train(config, data, on_progress=on_progress, on_epoch=on_epoch, should_stop=should_stop)


def _train(
    config: TrainConfig,
    data: FashionMNIST,
    *,
    on_progress: ProgressCallback | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: StopCheck | None = None,
) -> TrainResult:
    """``train``'s body, run with the CPU thread setting in force."""
    device = resolve_device(config.device)
    if device.type == "cpu":
        keep_large_buffers()  # reuse activation buffers instead of page-faulting fresh ones each step
    torch.manual_seed(config.seed)  # the weight init
    model = build_lenet(config.variant).to(device)
    optimizer = _optimizer(model, config.lr, device)
    step = _train_step(model, optimizer, config, device)
    shuffle = torch.Generator().manual_seed(config.seed)

    train_images = data.train_images.to(device)  # (N, 28, 28) uint8
    train_labels = data.train_labels.to(device)
    test_images = data.test_images.to(device)
    test_labels = data.test_labels.to(device)
    n = len(train_images)
    if n < 2:
        raise ValueError("the training set needs at least 2 images")
    batches = math.ceil(n / config.batch_size)
    result = TrainResult(model=model, device=str(device))

    for epoch in range(1, config.epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        _sync(device)
        started = time.perf_counter()
        order = torch.randperm(n, generator=shuffle).to(device)
        for b in range(batches):
            if should_stop is not None and should_stop():
                raise TrainingCancelled(f"stopped in epoch {epoch}, batch {b}")
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            if len(idx) < 2:
                break  # a last batch of one example: BN cannot normalize it
            step(train_images[idx], train_labels[idx], loss_sum, correct)
            seen += len(idx)
            # Also after the first batch: it marks when training really started (the queueing
            # benchmark measures POST /train to this report).
            if b == 0 or (b + 1) % config.progress_every == 0 or b + 1 == batches:
                mean_loss = loss_sum.item() / seen
                _check_finite(mean_loss, config, epoch, b + 1)
                if on_progress is not None:
                    on_progress(Progress(epoch, config.epochs, b + 1, batches, mean_loss, correct.item() / seen))
        _sync(device)
        seconds = time.perf_counter() - started
        mean_loss = loss_sum.item() / seen
        _check_finite(mean_loss, config, epoch, batches)
        metrics = EpochMetrics(
            epoch=epoch,
            loss=mean_loss,
            train_acc=correct.item() / seen,
            test_acc=evaluate_accuracy(model, test_images, test_labels),
            examples_per_sec=seen / seconds,
            seconds=seconds,
        )
        result.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)

    if config.precise_bn:
        recompute_bn_statistics(
            model, train_images, batch_size=config.batch_size,
            num_images=config.precise_bn_images, seed=config.seed,
        )
        result.precise_bn_test_acc = evaluate_accuracy(model, test_images, test_labels)
    model.eval()
    return result


TrainStep = Callable[[Tensor, Tensor, Tensor, Tensor], None]


def _optimizer(model: nn.Module, lr: float, device: torch.device) -> torch.optim.SGD:
    # Plain SGD, the chapter's. On CUDA one fused kernel updates every parameter instead of
    # one launch per tensor; on the CPU the default per-tensor loop measured as fast.
    fused = True if device.type == "cuda" else None
    return torch.optim.SGD(model.parameters(), lr=lr, fused=fused)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                device: torch.device) -> TrainStep:
    """One SGD step on a uint8 batch; adds the batch's loss sum and correct count in place.

    Nothing here reads a value back to the host, so on CUDA the steps queue up unhindered.
    """
    loss_fn = nn.CrossEntropyLoss()

    def forward_loss(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        X = to_model_input(images)  # (B, 1, 28, 28)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            logits = model(X)  # (B, 10)
            loss = loss_fn(logits, labels)
        return loss, logits

    compiled = forward_loss
    if config.compile:
        # "reduce-overhead" adds CUDA graphs; on the CPU it means nothing, so use the default.
        mode = "reduce-overhead" if device.type == "cuda" else None
        # dynamic=False: one graph for the full batch size; the short last batch of an epoch
        # runs the eager function instead of paying a second compile.
        compiled = torch.compile(forward_loss, mode=mode, dynamic=False)

    def step(images: Tensor, labels: Tensor, loss_sum: Tensor, correct: Tensor) -> None:
        fn = compiled if len(images) == config.batch_size else forward_loss
        loss, logits = fn(images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            loss_sum.add_(loss.detach().float(), alpha=len(images))
            correct.add_((logits.argmax(dim=1) == labels).sum())

    return step


def _check_finite(mean_loss: float, config: TrainConfig, epoch: int, batch: int) -> None:
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(
            f"training diverged: the loss became {mean_loss} in epoch {epoch} by batch {batch} "
            f"with learning rate {config.lr:g}; try a smaller lr"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
