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
* On CUDA only: SGD's fused kernel, cuDNN's autotuner for the fixed shapes, and
  ``cuda_graph``: the whole step (gather, forward, backward, SGD update, metric sums) is
  captured once as one CUDA graph and replayed per batch, which removes the per-kernel launch
  cost that dominates a network this small. With ``compile`` the captured step runs
  inductor's fused kernels.

The compiled forward is one per process and takes the model as an argument, so a second run
(the next job on a warm worker) reuses the graphs compiled by the first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.batchnorm import BatchNorm, batchnorm_layers
from models.data import FashionMNIST
from models.lenet import VARIANTS, build_lenet
from models.memory import keep_large_buffers
from models.params import check_params, describes_run, param
from models.threads import training_threads

log = logging.getLogger(__name__)

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


DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]{1,2})?"


@dataclass(frozen=True)
class TrainConfig:
    """Parameters of one run; the defaults are the chapter's, except precise BN and weight averaging (a better model).

    Each field is declared once, with ``param``: its default, help text and limits. The API's
    request schema, the CLI's options, the checks below and the checkpoint's hyperparameters
    are derived from these declarations (``models.params``).
    """

    variant: str = param("scratch", "BN written from scratch (the chapter's) or PyTorch's builtin layers",
                         choices=VARIANTS)
    epochs: int = param(10, "passes over the training set", ge=1)
    lr: float = param(1.0, "SGD learning rate; far larger than without BN (the chapter's value)", gt=0)
    batch_size: int = param(256, "examples per SGD step; BN learns nothing from one example", ge=2)
    seed: int = param(0, "weight init and shuffling", ge=0, le=2**63 - 1)
    # On by default: with lr 1.0 the moving averages lag the weights, and the model as stored
    # scores several points lower and swings between seeds (bench/quality.py).
    precise_bn: bool = param(
        True,
        "after training, recompute every BN layer's running statistics as a true average over "
        "training batches with the weights frozen (Wu and Johnson 2021); the moving averages lag "
        "the weights at lr 1.0, so this stores a better and steadier model. Off: the chapter's "
        "moving averages",
    )
    swa_epochs: int = param(
        5,
        "average the weights of the last N epochs (stochastic weight averaging, Izmailov et al. 2018), at most "
        "half the run, and give the average its own BN statistics with precise BN; about a point of test "
        "accuracy at lr 1.0 (bench/quality.py). 0 or 1: the last epoch's weights. With precise_bn false (the "
        "chapter's recipe) nothing is averaged",
        ge=0, le=1000,
    )
    precise_bn_images: int = param(4096, "training images precise BN averages over (\"a few thousand\")",
                                   ge=2, api=False, cli=False)
    device: str | None = param(None, "auto, cpu, cuda or cuda:N; unset or auto: CUDA when present",
                               pattern=DEVICE_PATTERN, describes_run=False)
    progress_every: int = param(10, "batches between progress reports (and divergence checks)",
                                ge=1, api=False, cli=False, describes_run=False)
    # How fast, not what: the compiled forward computes the same function.
    compile: bool = param(False, "torch.compile the step: pays a compile for faster steps (long runs, GPUs)",
                          api=False, describes_run=False)
    bf16: bool = param(False, "bfloat16 autocast: faster on AVX-512-bf16 CPUs and recent GPUs, slightly "
                       "different numbers", api=False)
    # CUDA only, and again how fast, not what (the checkpoint's "engine" metadata records both).
    cuda_graph: bool = param(True, "on CUDA, replay the whole step as one captured CUDA graph",
                             api=False, cli=False, describes_run=False)
    tf32: bool = param(True, "on CUDA, TensorFloat-32 for fp32 matmuls too, as PyTorch's cuDNN already does "
                       "for convolutions", api=False, cli=False, describes_run=False)

    def __post_init__(self) -> None:
        check_params(self)

    def averaged_epochs(self) -> int:
        """How many of the last epochs' weights the stored model averages (1: the last epoch's alone)."""
        if not self.precise_bn:
            return 1  # averaged weights need statistics of their own, which only precise BN gives them
        return max(1, min(self.swa_epochs, self.epochs // 2))

    def hyperparameters(self) -> dict[str, object]:
        """The fields that describe the run (not where or how fast it ran)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if describes_run(f)}


@dataclass(frozen=True)
class EpochMetrics:
    """One finished epoch. ``test_acc`` uses the BN moving averages as the epoch ended."""

    epoch: int
    loss: float  # mean training loss over the epoch
    train_acc: float  # on the training batches, in training mode
    test_acc: float  # eval mode with the moving averages, before any precise BN
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
    # Of the whole run, 0 to 1; always computed from the fields above (a field, not a
    # property, so that it is part of the record, the API's schema and ``asdict``).
    fraction: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", ((self.epoch - 1) + self.batch / self.batches) / self.epochs)


@dataclass
class TrainResult:
    model: nn.Sequential  # in eval mode, on the training device
    history: list[EpochMetrics] = field(default_factory=list)
    device: str = "cpu"
    precise_bn_test_acc: float | None = None  # test accuracy after precise BN, if applied
    averaged_epochs: int = 1  # the weights are the average of this many last epochs' (1: the last epoch's)
    compiled_graphs: int = 0  # graphs torch.compile compiled during this run (0: all reused)
    cuda_graph: bool = False  # whether the step ran as a captured CUDA graph

    @property
    def final_test_acc(self) -> float | None:
        """The test accuracy of the model as returned (and stored, and served)."""
        if self.precise_bn_test_acc is not None:
            return self.precise_bn_test_acc
        return self.history[-1].test_acc if self.history else None


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
    device = resolve_device(config.device)
    # One intra-op thread on the CPU (models/threads.py), restored afterwards.
    with training_threads(device):
        if device.type == "cpu":
            keep_large_buffers()  # reuse activation buffers instead of page-faulting fresh ones each step
        graphs_before = _compiled_graph_count()
        torch.manual_seed(config.seed)  # the weight init
        model = build_lenet(config.variant).to(device)
        optimizer = _optimizer(model, config.lr, device)
        shuffle = torch.Generator().manual_seed(config.seed)

        train_images = data.train_images.to(device)  # (N, 28, 28) uint8
        train_labels = data.train_labels.to(device)
        test_images = data.test_images.to(device)
        test_labels = data.test_labels.to(device)
        n = len(train_images)
        if n < 2:
            raise ValueError("the training set needs at least 2 images")
        batches = math.ceil(n / config.batch_size)
        result = TrainResult(model=model, device=str(device), averaged_epochs=config.averaged_epochs())
        average = _WeightAverage(model) if result.averaged_epochs > 1 else None

        with cuda_settings(device, tf32=config.tf32):
            steps = _TrainSteps(model, optimizer, config, device, train_images, train_labels)
            result.cuda_graph = steps.graph is not None
            for epoch in range(1, config.epochs + 1):
                model.train()
                steps.loss_sum.zero_()
                steps.correct.zero_()
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
                    steps(idx)
                    seen += len(idx)
                    # Also after the first batch: it marks when training really started (the queueing
                    # benchmark measures POST /train to this report).
                    if b == 0 or (b + 1) % config.progress_every == 0 or b + 1 == batches:
                        mean_loss = steps.loss_sum.item() / seen
                        _check_finite(mean_loss, config, epoch, b + 1)
                        if on_progress is not None:
                            on_progress(Progress(epoch, config.epochs, b + 1, batches, mean_loss,
                                                 steps.correct.item() / seen))
                _sync(device)
                seconds = time.perf_counter() - started
                mean_loss = steps.loss_sum.item() / seen
                _check_finite(mean_loss, config, epoch, batches)
                metrics = EpochMetrics(
                    epoch=epoch,
                    loss=mean_loss,
                    train_acc=steps.correct.item() / seen,
                    test_acc=evaluate_accuracy(model, test_images, test_labels),
                    examples_per_sec=seen / seconds,
                    seconds=seconds,
                )
                result.history.append(metrics)
                if average is not None and epoch > config.epochs - result.averaged_epochs:
                    average.add(model)
                if on_epoch is not None:
                    on_epoch(metrics)
        result.compiled_graphs = _compiled_graph_count() - graphs_before
        if average is not None:
            average.copy_to(model)  # precise BN below gives the averaged weights their statistics

        if config.precise_bn:
            recompute_bn_statistics(
                model, train_images, batch_size=config.batch_size,
                num_images=config.precise_bn_images, seed=config.seed,
            )
            result.precise_bn_test_acc = evaluate_accuracy(model, test_images, test_labels)
        model.eval()
        return result


class _WeightAverage:
    """The running mean of a model's parameters over the epochs it is given (SWA's average)."""

    def __init__(self, model: nn.Module) -> None:
        self.sums = [torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()]
        self.count = 0

    @torch.no_grad()
    def add(self, model: nn.Module) -> None:
        for total, p in zip(self.sums, model.parameters(), strict=True):
            total.add_(p.detach().double())  # float64: the sum of a few epochs' weights loses nothing
        self.count += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for total, p in zip(self.sums, model.parameters(), strict=True):
            p.copy_(total / self.count)  # in place: a captured CUDA graph's pointers stay valid


def _optimizer(model: nn.Module, lr: float, device: torch.device) -> torch.optim.SGD:
    # Plain SGD, the chapter's. On CUDA one fused kernel updates every parameter instead of
    # one launch per tensor; on the CPU the default per-tensor loop measured as fast.
    fused = True if device.type == "cuda" else None
    return torch.optim.SGD(model.parameters(), lr=lr, fused=fused)


def _forward_loss(model: nn.Module, images: Tensor, labels: Tensor, bf16: bool) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy loss and logits of a uint8 batch ``(B, 28, 28)``."""
    X = to_model_input(images)  # (B, 1, 28, 28)
    # No cast cache: the region is one step, and a cache is unsafe across CUDA graph capture.
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        logits = model(X)  # (B, 10)
        loss = F.cross_entropy(logits, labels)
    return loss, logits


ForwardLoss = Callable[[nn.Module, Tensor, Tensor, bool], tuple[Tensor, Tensor]]
_compiled_forward: dict[str | None, ForwardLoss] = {}


def compiled_forward_loss(mode: str | None = None) -> ForwardLoss:
    """``_forward_loss`` under ``torch.compile``, one per mode and process.

    The model is an argument, not a captured constant, so its parameters are graph inputs:
    a new model of the same variant (the next job) reuses the compiled graph.
    ``dynamic=False``: one graph per batch shape; the engine compiles the full batch only.
    """
    if mode not in _compiled_forward:
        _compiled_forward[mode] = torch.compile(_forward_loss, mode=mode, dynamic=False)
    return _compiled_forward[mode]


def _compiled_graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class _TrainSteps:
    """SGD steps on batches given as indices into the device-resident training set.

    Each step adds the batch's loss sum and correct count to ``loss_sum`` and ``correct`` in
    place; nothing reads a value back to the host, so on CUDA the steps queue up unhindered.
    On CUDA with ``cuda_graph``, full batches replay one captured graph; the short last batch
    of an epoch, and any run where capture fails, take the ordinary path.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                 device: torch.device, images: Tensor, labels: Tensor) -> None:
        self.model, self.optimizer, self.config = model, optimizer, config
        self.images, self.labels = images, labels
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.forward_full: ForwardLoss = _forward_loss
        use_graph = device.type == "cuda" and config.cuda_graph and len(images) >= config.batch_size
        if config.compile:
            # Inside our own CUDA graph the compiled kernels are captured with the rest of the
            # step; without it, "reduce-overhead" lets inductor graph the forward and backward.
            mode = "reduce-overhead" if device.type == "cuda" and not use_graph else None
            self.forward_full = compiled_forward_loss(mode)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_idx: Tensor | None = None
        if use_graph:
            try:
                self._capture(device)
            except Exception as exc:  # only speed is at stake: run the same step without the graph
                log.warning("CUDA graph capture failed, training without it: %s: %s", type(exc).__name__, exc)
                self.graph = None
                self.optimizer.zero_grad(set_to_none=True)

    def step(self, idx: Tensor) -> None:
        """One SGD step on ``images[idx]``, without the graph."""
        images, labels = self.images[idx], self.labels[idx]
        fn = self.forward_full if len(idx) == self.config.batch_size else _forward_loss
        loss, logits = fn(self.model, images, labels, self.config.bf16)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.loss_sum.add_(loss.detach().float(), alpha=len(idx))
            self.correct.add_((logits.argmax(dim=1) == labels).sum())

    def __call__(self, idx: Tensor) -> None:
        if self.graph is not None and self.static_idx is not None and len(idx) == len(self.static_idx):
            self.static_idx.copy_(idx)
            self.graph.replay()
        else:
            self.step(idx)

    def _capture(self, device: torch.device) -> None:
        """Record one full step as a CUDA graph, leaving the model, optimizer and sums as they were.

        A few warm-up steps on a side stream come first (PyTorch's recipe for whole-network
        capture): they run the compile, let cuDNN choose its algorithms and allocate the
        gradients; the weights and BN statistics they changed are then put back.
        """
        self.static_idx = torch.zeros(self.config.batch_size, dtype=torch.int64, device=device)
        saved = {k: v.clone() for k, v in self.model.state_dict().items()}
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.step(self.static_idx)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients
            with torch.cuda.graph(graph):
                self.step(self.static_idx)
            self.graph = graph
        finally:
            with torch.no_grad():  # capture runs nothing, but the warm-up steps did
                self.model.load_state_dict(saved)
                self.loss_sum.zero_()
                self.correct.zero_()


@contextlib.contextmanager
def cuda_settings(device: torch.device, *, tf32: bool) -> Iterator[None]:
    """While training on CUDA: cuDNN times its algorithms once for the fixed shapes, and fp32
    matmuls use TF32 tensor cores when ``tf32`` (PyTorch's default already does so for
    convolutions). Both are process-wide switches, restored on exit; nothing changes on the CPU.
    """
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = previous


def _check_finite(mean_loss: float, config: TrainConfig, epoch: int, batch: int) -> None:
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(
            f"training diverged: the loss became {mean_loss} in epoch {epoch} by batch {batch} "
            f"with learning rate {config.lr:g}; try a smaller lr"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
