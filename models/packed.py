"""Packed training: K LeNets trained at once, one forward and one backward per step.

A sweep's trials that can share a step (``pack_key``: same variant, batch size, data set,
device and precision) run as one *pack*. ``PackedLeNet`` puts the K networks side by side as
one network: activations are ``(B, K*C, H, W)`` in the convolutional part (model k owns
channels ``k*C .. (k+1)*C``) and ``(B, K, F)`` in the fully connected part, so batch
normalization's per-channel statistics are per model by construction. Each trial keeps
everything train() gives it: its own initialization (``initial_model``, from its seed), its
own shuffle (a generator seeded like train()'s, one ``randperm`` per epoch: each model sees
its own batch of images in each step), its own learning rate (the SGD update multiplies each
model's slice of the gradient by that model's rate), BN parameters and running statistics
(the scratch variant through the book's ``batch_norm``, the builtin one through
``F.batch_norm``, nn.BatchNorm's own arithmetic), and its own history.

Only the SGD epochs are packed. At the end of each epoch the pack is written back into
ordinary LeNets, one per trial, and everything else is train()'s own code run per trial: the
test accuracy (``evaluate_accuracy``), weight averaging and precise BN (``finish_training``),
and the training state train() would save then (``on_state``), from which the trial can go on
alone (``train(config, data, resume=state)``) where a crash stopped its pack.
A trial whose ``should_stop`` answers True, or whose epochs are done, leaves the pack; the
others go on in a smaller pack. A trial whose loss stops being finite leaves it too, with its
``TrainingDiverged`` in its result slot (one diverging learning rate does not end a sweep).

How the K convolutions and matrix products run is ``formulation`` (``FORMULATIONS``); the
arithmetic is the same up to float rounding. Measured in ``bench/sweep.py``: on this
project's 2-core CPU no formulation beat separate jobs at the chapter's batch 256, and packs
paid at small batches (``packing_pays``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.averaging import WeightAverage
from models.batchnorm import BatchNorm, batch_norm, is_batchnorm
from models.data import ImageDataset
from models.devices import cuda_settings, resolve_device, synchronize
from models.inference import evaluate_accuracy
from models.memory import keep_large_buffers
from models.preprocess import to_model_input
from models.stepper import sgd
from models.thread_tuner import ThreadTuner
from models.threads import training_threads
from models.train_state import TrainingState, capture_state, global_rng_state
from models.training import (
    EpochMetrics,
    Progress,
    TrainConfig,
    TrainingCancelled,
    TrainingDiverged,
    TrainResult,
    batches_per_epoch,
    check_finite,
    data_on_device,
    finish_training,
    initial_model,
)

__all__ = [
    "CPU_PACK_MAX_BATCH",
    "FORMULATIONS",
    "PackedLeNet",
    "PackedSteps",
    "default_formulation",
    "pack_key",
    "packing_pays",
    "train_packed",
]

# How K small convolutions and matrix products run as one operation:
# "grouped": one grouped convolution (groups=K) per layer, einsum for the linear layers.
# "unfold":  the convolutions as batched matrix products over unfolded patches (im2col + einsum/bmm).
# "loop":    each model's convolution on its own (K calls), everything else (BN, sigmoid,
#            pooling, linear layers, loss, SGD) packed.
FORMULATIONS: tuple[str, ...] = ("grouped", "unfold", "loop")
CPU_PACK_MAX_BATCH = 32  # the largest batch size at which a pack beat separate jobs on the CPU (packing_pays)


def default_formulation(device: torch.device) -> str:
    """The fastest measured formulation for the device (``bench/sweep.py``)."""
    return "loop" if device.type == "cpu" else "grouped"


def packing_pays(device: torch.device | str, batch_size: int = 256) -> bool:
    """Whether a pack trains more examples per second than the same trials as separate jobs.

    CUDA: yes. One LeNet step leaves an H100 idle between ~95 small kernels (bench/RESULTS.md),
    and a pack of K runs as many kernels on K times the work. Not measured on a GPU in this
    session (none was lent); the CUDA path of ``bench/sweep.py`` measures it.

    CPU: only for small batches (``batch_size <= CPU_PACK_MAX_BATCH``). Measured on the 2-core
    Xeon (bench/RESULTS.md, "Sweeps"): 8 trials of batch 256 as two packs of 4 on one thread
    each ran at 0.96-0.97x the same trials as separate one-thread jobs (layouts interleaved,
    quiet machine), and the packed step alone at 0.85-0.90x one model's; at batch 64 1.11x, at
    batch 16 1.37-1.4x. At batch 256 a LeNet step is bound by arithmetic and memory traffic, not
    by the per-operation overhead a pack shares, and K models' activations (28 MB for the first
    layer at K = 8) fall out of the caches one model's (3.5 MB) fits in. So the sweep layer
    runs CPU trials of larger batches as separate jobs. A worker's layout (one process on every
    core: one pack of 8 against the 8 trials one after another) measured 1.73x at batch 16,
    1.71x at 32, 1.45x at 64 and 0.93x at 256 (8,192 images, 2 epochs, 2 rounds).
    """
    dev = resolve_device(str(device))
    return dev.type == "cuda" or (dev.type == "cpu" and batch_size <= CPU_PACK_MAX_BATCH)


def pack_key(config: TrainConfig) -> tuple[object, ...]:
    """Configs with equal keys can share a step: same variant, batch size, device and precision.

    Epochs, learning rate, seed and the after-training options (precise BN, weight averaging)
    may differ: trials leave the pack when their epochs are done. The data set is the
    caller's to match (``train_packed`` takes one data set; TrainConfig's ``dataset`` field,
    once it has one, is part of the key). A run that starts from another model's weights is
    not packed (its init is resolved per job).
    """
    return (
        config.variant,
        config.batch_size,
        str(resolve_device(config.device)),
        config.bf16,
        getattr(config, "dataset", None),
        config.init_model is None,
    )


class _PackedLayer(nn.Module):
    """A packed layer with state: it writes model k's slice back into that model's layer."""

    def unpack_into(self, k: int, layer: nn.Module) -> None:
        raise NotImplementedError


class _PackedConv2d(_PackedLayer):
    """K ``nn.Conv2d`` side by side: ``(B, K*I, H, W)`` to ``(B, K*O, H', W')``."""

    def __init__(self, convs: Sequence[nn.Conv2d], formulation: str) -> None:
        super().__init__()
        self.formulation = formulation
        self.weight = nn.Parameter(torch.stack([c.weight.detach() for c in convs]))  # (K, O, I, kh, kw)
        self.bias = nn.Parameter(torch.stack([cast(Tensor, c.bias).detach() for c in convs]))  # (K, O)

    def forward(self, X: Tensor) -> Tensor:
        K, C_out, C_in, kh, kw = self.weight.shape
        B, _, H, W = X.shape
        if self.formulation == "grouped":
            return F.conv2d(X, self.weight.reshape(K * C_out, C_in, kh, kw), self.bias.reshape(K * C_out), groups=K)
        if self.formulation == "loop":
            parts = X.split(C_in, dim=1)  # K views (B, C_in, H, W)
            return torch.cat([F.conv2d(parts[k], self.weight[k], self.bias[k]) for k in range(K)], dim=1)
        # unfold: im2col, then one batched matrix product with the models as the batch
        Ho, Wo = H - kh + 1, W - kw + 1
        cols = F.unfold(X, (kh, kw)).view(B, K, C_in * kh * kw, Ho * Wo)  # (B, K, P, L)
        Y = torch.einsum("bkpl,kop->bkol", cols, self.weight.reshape(K, C_out, C_in * kh * kw))  # (B, K, C_out, L)
        return (Y + self.bias.view(1, K, C_out, 1)).reshape(B, K * C_out, Ho, Wo)

    @torch.no_grad()
    def unpack_into(self, k: int, conv: nn.Module) -> None:
        assert isinstance(conv, nn.Conv2d) and conv.bias is not None
        conv.weight.copy_(self.weight[k])
        conv.bias.copy_(self.bias[k])


class _PackedLinear(_PackedLayer):
    """K ``nn.Linear`` side by side: ``(B, K, I)`` to ``(B, K, O)``."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in linears]))  # (K, O, I)
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in linears]))  # (K, O)

    def forward(self, X: Tensor) -> Tensor:
        return torch.einsum("bki,koi->bko", X, self.weight) + self.bias  # (B, K, O)

    @torch.no_grad()
    def unpack_into(self, k: int, linear: nn.Module) -> None:
        assert isinstance(linear, nn.Linear)
        linear.weight.copy_(self.weight[k])
        linear.bias.copy_(self.bias[k])


class _PackedBatchNorm(_PackedLayer):
    """K BN layers side by side; per channel, so per model. Training mode only (evaluation unpacks).

    Scratch: the book's ``batch_norm`` on the packed tensor, with K*C channels. Builtin:
    ``F.batch_norm``, as ``nn.BatchNorm*d`` calls it (momentum 0.1 on the new value, the
    unbiased variance in the running average, a batch counter).
    """

    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        first = layers[0]
        self.scratch = isinstance(first, BatchNorm)
        params: list[tuple[Tensor | None, ...]]
        if isinstance(first, BatchNorm):
            params = [(m.gamma, m.beta, m.moving_mean, m.moving_var) for m in cast(Sequence[BatchNorm], layers)]
            self.momentum: float = first.momentum
        else:
            assert isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)) and first.momentum is not None
            params = [(m.weight, m.bias, m.running_mean, m.running_var)
                      for m in cast(Sequence[nn.BatchNorm2d], layers)]
            self.momentum = first.momentum
            self.register_buffer("num_batches_tracked", cast(Tensor, first.num_batches_tracked).detach().clone())
        self.eps: float = first.eps

        def stacked(i: int) -> Tensor:
            return torch.stack([cast(Tensor, p[i]).detach().reshape(-1) for p in params])  # (K, C)

        self.gamma = nn.Parameter(stacked(0))
        self.beta = nn.Parameter(stacked(1))
        self.register_buffer("running_mean", stacked(2).clone())
        self.register_buffer("running_var", stacked(3).clone())

    def forward(self, X: Tensor) -> Tensor:
        K, C = self.gamma.shape
        conv = X.dim() == 4
        X2 = X if conv else X.reshape(X.shape[0], K * C)  # (B, K*C, H, W) or (B, K*C)
        if self.scratch:
            shape = (1, K * C, 1, 1) if conv else (1, K * C)
            Y, new_mean, new_var = batch_norm(
                X2, self.gamma.view(shape), self.beta.view(shape), self.running_mean.view(shape),
                self.running_var.view(shape), eps=self.eps, momentum=self.momentum, training=True,
            )
            with torch.no_grad():
                self.running_mean.copy_(new_mean.view(K, C))
                self.running_var.copy_(new_var.view(K, C))
        else:
            Y = F.batch_norm(X2, self.running_mean.view(-1), self.running_var.view(-1), self.gamma.view(-1),
                             self.beta.view(-1), training=True, momentum=self.momentum, eps=self.eps)
            self.num_batches_tracked.add_(1)
        return Y if conv else Y.view(X.shape)

    @torch.no_grad()
    def unpack_into(self, k: int, layer: nn.Module) -> None:
        targets: tuple[Tensor | None, ...]
        if isinstance(layer, BatchNorm):
            targets = (layer.gamma, layer.beta, layer.moving_mean, layer.moving_var)
        else:
            assert isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d))
            targets = (layer.weight, layer.bias, layer.running_mean, layer.running_var)
            cast(Tensor, layer.num_batches_tracked).copy_(self.num_batches_tracked)
        for target, source in zip(targets, (self.gamma, self.beta, self.running_mean, self.running_var), strict=True):
            assert target is not None
            target.copy_(source[k].view_as(target))


class _PackedFlatten(nn.Module):
    """``nn.Flatten`` per model: ``(B, K*C, H, W)`` to ``(B, K, C*H*W)`` (model k's channels are contiguous)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, X: Tensor) -> Tensor:
        return X.reshape(X.shape[0], self.k, -1)


class PackedLeNet(nn.Module):
    """K LeNets (``build_lenet``'s layers) as one network, for training steps; built from and written back to LeNets.

    Input ``(B, K, 28, 28)`` floats, model k's batch in ``[:, k]``; output logits ``(B, K, classes)``.
    """

    def __init__(self, models: Sequence[nn.Sequential], formulation: str = "grouped") -> None:
        super().__init__()
        if formulation not in FORMULATIONS:
            raise ValueError(f"unknown formulation {formulation!r}; choose one of {', '.join(FORMULATIONS)}")
        if not models:
            raise ValueError("a pack needs at least one model")
        self.k = len(models)
        layers: list[nn.Module] = []
        self.packed_indices: list[int] = []  # which of the LeNet's layers hold state
        for i, group in enumerate(zip(*[list(m) for m in models], strict=True)):
            first = group[0]
            if any(type(m) is not type(first) for m in group):
                raise ValueError(f"layer {i} differs between the models: a pack needs one architecture")
            packed: nn.Module
            if isinstance(first, nn.Conv2d):
                packed = _PackedConv2d(cast(Sequence[nn.Conv2d], group), formulation)
            elif isinstance(first, nn.Linear):
                packed = _PackedLinear(cast(Sequence[nn.Linear], group))
            elif is_batchnorm(first):
                packed = _PackedBatchNorm(group)
            elif isinstance(first, nn.Flatten):
                packed = _PackedFlatten(self.k)
            elif not any(True for _ in first.parameters()) and not any(True for _ in first.buffers()):
                packed = first  # stateless and elementwise per channel (sigmoid, max-pooling)
            else:
                raise ValueError(f"cannot pack layer {i}: {type(first).__name__}")
            if isinstance(packed, _PackedLayer):
                self.packed_indices.append(i)
            layers.append(packed)
        self.layers = nn.Sequential(*layers)

    def forward(self, X: Tensor) -> Tensor:
        return cast(Tensor, self.layers(X))

    @torch.no_grad()
    def unpack_into(self, k: int, model: nn.Sequential) -> None:
        """Write model k's weights and BN state into ``model`` (a LeNet of the same shape)."""
        for i in self.packed_indices:
            cast(_PackedLayer, self.layers[i]).unpack_into(k, model[i])


def _lr_views(params: Sequence[Tensor], lrs: Tensor) -> list[Tensor]:
    """``-lr`` per model, shaped to broadcast over each packed parameter's leading K dimension."""
    return [(-lrs).view(-1, *([1] * (p.dim() - 1))) for p in params]


class PackedSteps:
    """SGD steps of a pack on ``(K, B)`` index batches into the device-resident training set.

    Per model: the batch's mean cross-entropy, its gradient (the pack's loss is the sum of the
    K means, so each model's gradient is its own mean's), ``w -= lr_k * grad`` (plain SGD, as
    ``models.stepper.sgd``), and the loss sum and correct count in ``loss_sum`` and ``correct``
    (each ``(K,)``).
    """

    def __init__(self, net: PackedLeNet, lrs: Sequence[float], images: Tensor, labels: Tensor,
                 device: torch.device, *, bf16: bool = False) -> None:
        self.net, self.device, self.bf16 = net, device, bf16
        self.images, self.labels = images, labels  # (N, 28, 28) uint8 and (N,), on ``device``
        self.params = [p for p in net.parameters()]
        self.neg_lrs = _lr_views(self.params, torch.tensor(list(lrs), dtype=torch.float32, device=device))
        self.loss_sum = torch.zeros(net.k, device=device)
        self.correct = torch.zeros(net.k, dtype=torch.int64, device=device)

    def zero_sums(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def __call__(self, idx: Tensor) -> None:
        """One SGD step; ``idx`` is ``(K, B)``, model k's batch in row k."""
        K, B = idx.shape
        X = to_model_input(self.images[idx.T].reshape(B * K, *self.images.shape[1:]))  # (B*K, 1, 28, 28)
        X = X.view(B, K, *self.images.shape[1:])  # (B, K, 28, 28): model k's images at [:, k]
        labels = self.labels[idx]  # (K, B)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            logits = self.net(X)  # (B, K, classes)
            losses = F.cross_entropy(logits.permute(0, 2, 1), labels.T, reduction="none").mean(dim=0)  # (K,)
        for p in self.params:
            p.grad = None
        losses.sum().backward()
        with torch.no_grad():
            for p, neg_lr in zip(self.params, self.neg_lrs, strict=True):
                p.addcmul_(cast(Tensor, p.grad), neg_lr)
            self.loss_sum.add_(losses.detach().float() * B)
            self.correct.add_((logits.detach().argmax(dim=2) == labels.T).sum(dim=0))


class _Trial:
    """One trial's own state while its pack trains: the LeNet it is written back into, its shuffle, history."""

    def __init__(self, index: int, config: TrainConfig, model: nn.Sequential, new_classifier: bool,
                 device: torch.device) -> None:
        self.index, self.config, self.model = index, config, model
        self.new_classifier = new_classifier
        # The global generators as this trial's init left them (the next trial's init reseeds them):
        # what train() of this config holds there, since its epochs draw nothing from them.
        self.global_rng = global_rng_state(device)
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.optimizer = sgd(model, config.lr, device)  # train()'s optimizer, for the state it saves (no state of its own)
        self.history: list[EpochMetrics] = []
        # The weights of the last epochs, for weight averaging at whatever epoch the trial ends.
        self.snapshots: deque[list[Tensor]] = deque(maxlen=config.averaged_epochs())

    def weight_average(self, epochs: int) -> WeightAverage:
        """The average of the last ``epochs`` epochs' weights (0: an empty average)."""
        average = WeightAverage(self.model)
        for weights in list(self.snapshots)[len(self.snapshots) - epochs:]:
            average.add_weights(weights)
        return average

    def training_state(self, epoch: int, device: torch.device, tuner: ThreadTuner) -> TrainingState:
        """What train() of this trial's config saves after ``epoch``: a lone run resumes from it."""
        averaged = self.config.averaged_epochs()
        # train() has added the epochs after ``epochs - averaged`` so far.
        average = self.weight_average(max(0, epoch - (self.config.epochs - averaged))) if averaged > 1 else None
        return capture_state(epoch, self.model, self.optimizer, self.shuffle, average,
                             [asdict(m) for m in self.history], device, tuner.recorded_threads, tuner.schedule,
                             global_rng=self.global_rng)


PackedProgress = Callable[[int, Progress], None]
PackedEpoch = Callable[[int, EpochMetrics], None]
PackedStop = Callable[[int, EpochMetrics], bool]
PackedState = Callable[[int, TrainingState], None]
PackedResult = Callable[[int, TrainResult | TrainingDiverged], None]


class _Results:
    """Each trial's result, set as the trial leaves the pack and handed to ``on_result`` at once."""

    def __init__(self, count: int, tuner: ThreadTuner, on_result: PackedResult | None) -> None:
        self.slots: list[TrainResult | TrainingDiverged | None] = [None] * count
        self.tuner, self.on_result = tuner, on_result

    def settle(self, index: int, result: TrainResult | TrainingDiverged) -> None:
        if isinstance(result, TrainResult):  # the threads of the steps it took part in
            result.threads, result.thread_schedule = self.tuner.most, list(self.tuner.schedule)
        self.slots[index] = result
        if self.on_result is not None:
            self.on_result(index, result)


def train_packed(
    configs: Sequence[TrainConfig],
    data: ImageDataset,
    *,
    device: torch.device | str | None = None,
    progress: PackedProgress | None = None,
    on_epoch: PackedEpoch | None = None,
    cancelled: Callable[[], bool] | None = None,
    should_stop: PackedStop | None = None,
    on_state: PackedState | None = None,
    on_result: PackedResult | None = None,
    formulation: str | None = None,
) -> list[TrainResult | TrainingDiverged]:
    """Train ``configs`` as one pack; result i is what ``train(configs[i], data)`` returns, to float tolerance.

    ``progress(i, Progress)`` every ``progress_every`` batches and ``on_epoch(i, metrics)``
    after each epoch of trial i; ``should_stop(i, metrics)`` after each epoch but a trial's
    last: True ends trial i there (its result equals a run of that many epochs, with
    ``stopped_early``). ``cancelled()`` is checked between batches and raises
    ``TrainingCancelled`` for the whole pack. A trial whose loss stops being finite leaves
    the pack; its slot holds the ``TrainingDiverged``. ``on_state(i, state)``: trial i's
    ``TrainingState`` when train() would save it (every ``checkpoint_every`` epochs and after the
    last), before ``on_epoch`` reports that epoch. ``on_result(i, result)``: trial i's result as
    it leaves the pack (done, stopped or diverged), while the others train on. ``device``: where
    the pack runs (default the first config's). The CPU threads are the first config's ``threads``.
    """
    if not configs:
        return []
    keys = {pack_key(c) for c in configs}
    if len(keys) > 1:
        raise ValueError(f"these configs cannot share a step (pack_key differs: {sorted(map(str, keys))})")
    if configs[0].init_model is not None:
        raise ValueError("a run that starts from another model's weights is trained alone (train), not packed")
    dev = resolve_device(str(device) if device is not None else configs[0].device)
    form = formulation or default_formulation(dev)
    with training_threads(dev, configs[0].threads) as tuner:
        results = _Results(len(configs), tuner, on_result)
        if dev.type == "cpu":
            keep_large_buffers()
        trials = []
        for i, config in enumerate(configs):
            model, new_classifier = initial_model(config, num_classes=len(data.classes))
            trials.append(_Trial(i, config, model.to(dev), new_classifier, dev))
        train_images, train_labels, test_images, test_labels = data_on_device(data, dev)
        with cuda_settings(dev, tf32=configs[0].tf32):
            epoch = 0
            while trials:
                epoch += 1
                trials = _train_epoch(trials, epoch, form, dev, train_images, train_labels, test_images, test_labels,
                                      results, progress, on_epoch, cancelled, should_stop, on_state, tuner)
    # Each trial was finished (weight average, precise BN) and handed over as it left.
    assert all(r is not None for r in results.slots)
    return cast(list[TrainResult | TrainingDiverged], results.slots)


def _train_epoch(
    trials: list[_Trial], epoch: int, formulation: str, device: torch.device, train_images: Tensor,
    train_labels: Tensor, test_images: Tensor, test_labels: Tensor,
    results: _Results, progress: PackedProgress | None,
    on_epoch: PackedEpoch | None, cancelled: Callable[[], bool] | None, should_stop: PackedStop | None,
    on_state: PackedState | None, tuner: ThreadTuner,
) -> list[_Trial]:
    """One epoch of every trial in the pack; the trials that go on to the next epoch."""
    batch_size = trials[0].config.batch_size
    n = len(train_images)
    batches = batches_per_epoch(n, batch_size)
    net = PackedLeNet([t.model for t in trials], formulation).to(device)
    net.train()
    steps = PackedSteps(net, [t.config.lr for t in trials], train_images, train_labels, device,
                        bf16=trials[0].config.bf16)
    orders = torch.stack([torch.randperm(n, generator=t.shuffle) for t in trials]).to(device)  # (K, N)
    alive = list(range(len(trials)))  # rows of the pack still trained (a diverged one is dropped)
    seen = 0
    synchronize(device)
    started = time.perf_counter()
    for b in range(batches):
        if cancelled is not None and cancelled():
            raise TrainingCancelled(f"stopped in epoch {epoch}, batch {b}")
        idx = orders[:, b * batch_size:(b + 1) * batch_size]  # (K, B)
        if idx.shape[1] < 2:
            break  # a last batch of one example: BN cannot normalize it
        # The CPU thread count of each step, chosen as a solo run's is.
        tuner.run((epoch - 1) * batches + b, steps, idx, full=idx.shape[1] == batch_size)
        seen += idx.shape[1]
        due = [r for r, k in enumerate(alive)
               if b == 0 or (b + 1) % trials[k].config.progress_every == 0 or b + 1 == batches]
        if due:
            losses = (steps.loss_sum / seen).tolist()
            accs = (steps.correct.double() / seen).tolist() if progress is not None else []
            diverged = [r for r in due if not math.isfinite(losses[r])]
            for r in due:
                if r not in diverged and progress is not None:
                    k = alive[r]
                    progress(trials[k].index, Progress(epoch, trials[k].config.epochs, b + 1, batches, losses[r],
                                                       accs[r]))
            if diverged:
                net, steps, orders, alive = _drop(net, steps, orders, alive, trials, diverged, epoch, b + 1,
                                                  losses, results, formulation, device)
                if not alive:
                    return []
    synchronize(device)
    seconds = time.perf_counter() - started
    losses = (steps.loss_sum / seen).tolist()
    correct = steps.correct.tolist()
    going_on: list[_Trial] = []
    for r, k in enumerate(alive):
        trial = trials[k]
        net.unpack_into(r, trial.model)
        try:
            check_finite(losses[r], trial.config, epoch, batches)
        except TrainingDiverged as exc:
            results.settle(trial.index, exc)
            continue
        metrics = EpochMetrics(epoch=epoch, loss=losses[r], train_acc=correct[r] / seen,
                               test_acc=evaluate_accuracy(trial.model, test_images, test_labels),
                               examples_per_sec=seen / seconds, seconds=seconds)
        trial.history.append(metrics)
        if trial.snapshots.maxlen:
            trial.snapshots.append([p.detach().clone() for p in trial.model.parameters()])
        # Saved before the epoch is reported, as train() does: whoever learns of epoch k can resume from it.
        if on_state is not None and (epoch % trial.config.checkpoint_every == 0 or epoch == trial.config.epochs):
            on_state(trial.index, trial.training_state(epoch, device, tuner))
        if on_epoch is not None:
            on_epoch(trial.index, metrics)
        last = epoch == trial.config.epochs
        stop = not last and should_stop is not None and should_stop(trial.index, metrics)
        if last or stop:
            results.settle(trial.index, _finish(trial, epoch, stop, device, train_images, test_images, test_labels))
        else:
            going_on.append(trial)
    return going_on


def _drop(
    net: PackedLeNet, steps: PackedSteps, orders: Tensor, alive: list[int], trials: list[_Trial], rows: list[int],
    epoch: int, batch: int, losses: list[float], results: _Results,
    formulation: str, device: torch.device,
) -> tuple[PackedLeNet, PackedSteps, Tensor, list[int]]:
    """Take diverged rows out of the pack mid-epoch: the rest are written back and repacked, sums kept."""
    for r in rows:
        trial = trials[alive[r]]
        try:
            check_finite(losses[r], trial.config, epoch, batch)
        except TrainingDiverged as exc:
            results.settle(trial.index, exc)
    keep = [r for r in range(len(alive)) if r not in rows]
    for r in keep:
        net.unpack_into(r, trials[alive[r]].model)
    new_alive = [alive[r] for r in keep]
    if not new_alive:
        return net, steps, orders, []
    new_net = PackedLeNet([trials[k].model for k in new_alive], formulation).to(device)
    new_net.train()
    new_steps = PackedSteps(new_net, [trials[k].config.lr for k in new_alive], steps.images, steps.labels, device,
                            bf16=steps.bf16)
    rows_kept = torch.tensor(keep, device=device)
    new_steps.loss_sum.copy_(steps.loss_sum[rows_kept])
    new_steps.correct.copy_(steps.correct[rows_kept])
    return new_net, new_steps, orders[rows_kept], new_alive


def _finish(trial: _Trial, epochs_run: int, stopped: bool, device: torch.device, train_images: Tensor,
            test_images: Tensor, test_labels: Tensor) -> TrainResult:
    """The trial's result as train() of ``epochs_run`` epochs makes it: weight average, precise BN."""
    config = replace(trial.config, epochs=epochs_run) if stopped else trial.config
    result = TrainResult(model=trial.model, history=trial.history, device=str(device),
                         averaged_epochs=config.averaged_epochs(), new_classifier=trial.new_classifier,
                         stopped_early=stopped)
    average = trial.weight_average(result.averaged_epochs) if result.averaged_epochs > 1 else None
    return finish_training(result, config, average, train_images, test_images, test_labels)

