"""The training engine shared by the command line and the worker: config in, a trained model out.

``train`` is the chapter's loop (d2l's ``train_ch6``): build the network, then one
``train_one_epoch`` per epoch, each ending with the test accuracy; after the last epoch the
weights of the last few epochs are averaged and the BN statistics recomputed for them
(``models.averaging``). ``training_metadata`` turns a run into the metadata its checkpoint
carries (``models.checkpoint`` stores it and knows nothing of training).

The whole data set lives on the training device as uint8 tensors and is scaled there, batch
by batch (``models.preprocess.to_model_input``, the served images' scaling too); metrics are
summed on the device and read only when progress is reported, so the loop never waits for the
device between batches. How fast each step runs (compiled, bf16, a replayed CUDA graph) is
``models.stepper``'s; each option that can change the numbers is tested against a plain loop in
``tests/models/test_training_speed.py`` and measured in ``bench/train_speed.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from models.averaging import WeightAverage, recompute_bn_statistics
from models.checkpoint import MODEL_ID
from models.data import ImageDataset
from models.devices import DEVICE_PATTERN, cuda_settings, resolve_device, synchronize
from models.inference import evaluate_accuracy
from models.init_model import load_initial_state
from models.lenet import NUM_CLASSES, VARIANTS, build_lenet
from models.memory import keep_large_buffers
from models.params import check_params, describes_run, param
from models.stepper import TrainSteps, compiled_graph_count, sgd
from models.thread_tuner import ThreadTuner
from models.threads import training_threads
from models.train_state import TrainingState, TrainingStateError, capture_state, restore_state

__all__ = [
    "EpochMetrics",
    "Progress",
    "StateCallback",
    "TrainConfig",
    "TrainResult",
    "TrainingCancelled",
    "TrainingDiverged",
    "check_finite",
    "data_on_device",
    "finish_training",
    "initial_model",
    "train",
    "train_one_epoch",
    "training_metadata",
]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingCancelled(RuntimeError):
    """The stop check asked training to stop."""


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
    # A name, never weights: whoever runs the config resolves it and passes the state to ``train``.
    init_model: str | None = param(
        None,
        "start from this model's weights and BN statistics (a model id or alias; its variant): fine-tuning, or "
        "a new last layer when the classes differ. Unset: fresh weights",
        pattern=MODEL_ID,
    )
    # A name, never images: whoever runs the config resolves it (the API records the id it means).
    dataset: str = param(
        "fashion-mnist",
        "the data set to train on: a dataset id or alias (GET /datasets); the job and the model record its id. "
        "The model has one output per class of the data set",
        pattern=MODEL_ID,
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
    # How many threads, not what (the checkpoint's "engine" metadata records the counts used).
    threads: int = param(0, "a fixed count of intra-op CPU threads; 0: every core this process is given (its "
                         "affinity and cgroup quota) or one, chosen per step from the steps' times "
                         "(models/thread_tuner.py)", ge=0, le=1024, api=False, describes_run=False)
    # CUDA only, and again how fast, not what (the checkpoint's "engine" metadata records both).
    cuda_graph: bool = param(True, "on CUDA, replay the whole step as one captured CUDA graph",
                             api=False, cli=False, describes_run=False)
    tf32: bool = param(True, "on CUDA, TensorFloat-32 for fp32 matmuls too, as PyTorch's cuDNN already does "
                       "for convolutions", api=False, cli=False, describes_run=False)
    # What is at risk, not what is computed: a resumed run ends with the same model.
    checkpoint_every: int = param(1, "epochs between saved training states (a job resumes from the last one "
                                  "after a crash); the last epoch is always saved", ge=1, cli=False,
                                  describes_run=False)

    def __post_init__(self) -> None:
        check_params(self)

    def averaged_epochs(self) -> int:
        """How many of the last epochs' weights the stored model averages (1: the last epoch's alone)."""
        if not self.precise_bn:
            return 1  # averaged weights need statistics of their own, which only precise BN gives them
        return max(1, min(self.swa_epochs, self.epochs // 2))

    def of_run(self, epochs: int, averaged_epochs: int) -> TrainConfig:
        """The config whose run gives the model of this one stopped after ``epochs`` epochs, averaging
        ``averaged_epochs`` (a sweep's trial stopped early): what its checkpoint records."""
        run = replace(self, epochs=epochs)
        return run if run.averaged_epochs() == averaged_epochs else replace(run, swa_epochs=averaged_epochs)

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
    new_classifier: bool = False  # started from a model of other classes: its last layer was not kept
    cuda_graph: bool = False  # whether the step ran as a captured CUDA graph
    threads: int = 1  # intra-op CPU threads it ran on, at most (results depend on the count in the last bits)
    thread_schedule: list[tuple[int, int]] = field(default_factory=list)  # (step, threads) switches (thread_tuner)
    stopped_early: bool = False  # a packed trial its sweep stopped before config.epochs (models.packed)

    @property
    def final_test_acc(self) -> float | None:
        """The test accuracy of the model as returned (and stored, and served)."""
        if self.precise_bn_test_acc is not None:
            return self.precise_bn_test_acc
        return self.history[-1].test_acc if self.history else None


ProgressCallback = Callable[[Progress], None]
EpochCallback = Callable[[EpochMetrics], None]
StopCheck = Callable[[], bool]
StateCallback = Callable[[TrainingState], None]


def train(
    config: TrainConfig,
    data: ImageDataset,
    *,
    on_progress: ProgressCallback | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: StopCheck | None = None,
    resume: TrainingState | None = None,
    on_state: StateCallback | None = None,
    init_state: Mapping[str, Tensor] | None = None,
    thread_schedule: Sequence[Sequence[int]] | None = None,
) -> TrainResult:
    """Train a LeNet with BN on ``data``; returns the model in eval mode and the history.

    The LeNet is fresh, or starts from ``init_state``, the state_dict of the model
    ``config.init_model`` names (``models.init_model``; the caller resolves the name; a run that
    ``resume``s needs none, the state holds its weights).
    ``on_state`` is given the run's ``TrainingState`` every ``checkpoint_every`` epochs and
    after the last; ``resume`` (such a state, of a run of the same config) continues from it,
    ending with the model the uninterrupted run ends with. Raises ``TrainingDiverged`` when
    the loss stops being finite, ``TrainingCancelled`` when ``should_stop`` returns True
    (checked between batches), ``TrainingStateError`` for a ``resume`` of another kind of run.
    ``thread_schedule`` (a checkpoint's ``engine.thread_schedule``) replays the CPU thread counts
    of a run instead of choosing them, which gives that run's model bit for bit (``models.thread_tuner``).
    """
    # A resumed run's weights are its state's: the model it started from is not needed again.
    if (config.init_model is None) != (init_state is None) and not (resume is not None and init_state is None):
        raise ValueError("init_model names the model a run starts from and init_state holds its weights: "
                         "give both or neither")
    device = resolve_device(config.device)
    # The CPU's intra-op threads (models/threads.py), restored afterwards.
    # A resumed run trains on the threads its state was saved from, unless told otherwise, and
    # continues its thread schedule.
    with training_threads(device, config.threads or (resume.threads if resume is not None else 0),
                          recorded=resume.thread_schedule if resume is not None else (),
                          replay=thread_schedule) as tuner:
        if device.type == "cpu":
            keep_large_buffers()  # reuse activation buffers instead of page-faulting fresh ones each step
        graphs_before = compiled_graph_count()
        model, new_classifier = initial_model(config, init_state, len(data.classes))  # one output per class
        model = model.to(device)
        optimizer = sgd(model, config.lr, device)
        shuffle = torch.Generator().manual_seed(config.seed)

        train_images, train_labels, test_images, test_labels = data_on_device(data, device)
        result = TrainResult(model=model, device=str(device), averaged_epochs=config.averaged_epochs(),
                             new_classifier=new_classifier, threads=tuner.most)
        average = WeightAverage(model) if result.averaged_epochs > 1 else None
        done = 0  # epochs finished
        if resume is not None:
            if not 0 <= resume.epoch <= config.epochs:
                raise TrainingStateError(f"a state after epoch {resume.epoch} cannot resume a {config.epochs}-epoch run")
            restore_state(resume, model, optimizer, shuffle, average, device)
            result.history = [EpochMetrics(**m) for m in resume.history]
            done = resume.epoch

        with cuda_settings(device, tf32=config.tf32):
            steps = TrainSteps(model, optimizer, train_images, train_labels, device, batch_size=config.batch_size,
                               bf16=config.bf16, compile=config.compile, cuda_graph=config.cuda_graph)
            result.cuda_graph = steps.graph is not None
            for epoch in range(done + 1, config.epochs + 1):
                metrics = train_one_epoch(steps, config, epoch, shuffle, test_images, test_labels, tuner,
                                          on_progress=on_progress, should_stop=should_stop)
                result.history.append(metrics)
                if average is not None and epoch > config.epochs - result.averaged_epochs:
                    average.add(model)
                # Saved before the epoch is reported: whoever learns of epoch k can resume from it.
                if on_state is not None and (epoch % config.checkpoint_every == 0 or epoch == config.epochs):
                    on_state(capture_state(epoch, model, optimizer, shuffle, average,
                                           [asdict(m) for m in result.history], device,
                                           tuner.recorded_threads, tuner.schedule))
                if on_epoch is not None:
                    on_epoch(metrics)
        result.compiled_graphs = compiled_graph_count() - graphs_before
        tuner.end(config.epochs * batches_per_epoch(len(train_images), config.batch_size))  # precise BN's count
        result.thread_schedule = list(tuner.schedule)

        return finish_training(result, config, average, train_images, test_images, test_labels)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """SGD steps in one pass over ``n`` training examples (the last batch may be short)."""
    return math.ceil(n / batch_size)


def data_on_device(data: ImageDataset, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training images ``(N, 28, 28)`` uint8 and labels, test images and labels, on ``device``; at least 2 training images."""
    if len(data.train_images) < 2:
        raise ValueError("the training set needs at least 2 images")
    return (data.train_images.to(device), data.train_labels.to(device), data.test_images.to(device),
            data.test_labels.to(device))


def initial_model(config: TrainConfig, init_state: Mapping[str, Tensor] | None = None,
                  num_classes: int = NUM_CLASSES) -> tuple[nn.Sequential, bool]:
    """The LeNet a run of ``config`` starts from, on the CPU, and whether its last layer is new.

    Fresh weights drawn from ``config.seed`` (the global generator is seeded here), or
    ``init_state`` loaded over them. Also the packed trainer's start (``models.packed``).
    """
    torch.manual_seed(config.seed)  # the weight init
    model = build_lenet(config.variant, num_classes)  # one output per class of the data set
    new_classifier = init_state is not None and load_initial_state(model, init_state, name=str(config.init_model))
    return model, new_classifier


def finish_training(result: TrainResult, config: TrainConfig, average: WeightAverage | None, train_images: Tensor,
                    test_images: Tensor, test_labels: Tensor) -> TrainResult:
    """After the last epoch: the averaged weights, precise BN and its test accuracy; the model in eval mode.

    ``average`` holds the last ``result.averaged_epochs`` epochs' weights (None: keep the
    last epoch's). Shared with the packed trainer, which finishes each trial here.
    """
    model = result.model
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


def train_one_epoch(
    steps: TrainSteps,
    config: TrainConfig,
    epoch: int,
    shuffle: torch.Generator,
    test_images: Tensor,
    test_labels: Tensor,
    tuner: ThreadTuner,
    *,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> EpochMetrics:
    """One pass over the training set in a fresh ``shuffle`` order, then the test accuracy.

    ``tuner`` sets each step's CPU thread count and is told how long the step took.
    """
    model, device = steps.model, steps.device
    n = len(steps.images)
    batches = batches_per_epoch(n, config.batch_size)
    first_step = (epoch - 1) * batches  # steps are counted over the whole run (the thread schedule's steps)
    model.train()
    steps.zero_sums()
    seen = 0
    synchronize(device)
    started = time.perf_counter()
    order = torch.randperm(n, generator=shuffle).to(device)
    for b in range(batches):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"stopped in epoch {epoch}, batch {b}")
        idx = order[b * config.batch_size:(b + 1) * config.batch_size]
        if len(idx) < 2:
            break  # a last batch of one example: BN cannot normalize it
        tuner.run(first_step + b, steps, idx, full=len(idx) == config.batch_size)
        seen += len(idx)
        # Also after the first batch: it marks when training really started (the queueing
        # benchmark measures POST /train to this report).
        if b == 0 or (b + 1) % config.progress_every == 0 or b + 1 == batches:
            mean_loss = steps.loss_sum.item() / seen
            check_finite(mean_loss, config, epoch, b + 1)
            if on_progress is not None:
                on_progress(Progress(epoch, config.epochs, b + 1, batches, mean_loss, steps.correct.item() / seen))
    synchronize(device)
    seconds = time.perf_counter() - started
    mean_loss = steps.loss_sum.item() / seen
    check_finite(mean_loss, config, epoch, batches)
    return EpochMetrics(
        epoch=epoch,
        loss=mean_loss,
        train_acc=steps.correct.item() / seen,
        test_acc=evaluate_accuracy(model, test_images, test_labels),
        examples_per_sec=seen / seconds,
        seconds=seconds,
    )


def training_metadata(config: TrainConfig, result: TrainResult, classes: tuple[str, ...]) -> dict[str, Any]:
    """The metadata a checkpoint of a finished training run carries, for the CLI and the worker alike.

    ``final_test_acc`` is the accuracy of the model as stored (after precise BN when it ran);
    ``history`` keeps the per-epoch figures, whose ``test_acc`` uses the moving averages.
    """
    return {
        "variant": config.variant,
        "hyperparameters": config.hyperparameters(),
        "history": [asdict(m) for m in result.history],
        "final_test_acc": result.final_test_acc,
        "averaged_epochs": result.averaged_epochs,
        "dataset": config.dataset,  # the data set's id (the caller resolved any alias)
        "classes": list(classes),
        "parent": config.init_model,  # the model id it started from (the caller resolved any alias)
        "device": result.device,
        # How it ran, not what it computes: compiled or not, replayed as a CUDA graph or not,
        # how many graphs this run had to compile (0 when a warm process reused them), how
        # often its training state was saved, and on how many CPU threads it ran: at most
        # ``threads``, switching as ``thread_schedule`` says (replaying it reproduces the model).
        "engine": {"compile": config.compile, "cuda_graph": result.cuda_graph,
                   "tf32": config.tf32 and result.device.startswith("cuda"),
                   "compiled_graphs": result.compiled_graphs, "checkpoint_every": config.checkpoint_every,
                   "threads": result.threads, "thread_schedule": [list(p) for p in result.thread_schedule]},
    }


def check_finite(mean_loss: float, config: TrainConfig, epoch: int, batch: int) -> None:
    """Raise ``TrainingDiverged`` when the mean loss so far is NaN or infinite."""
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(
            f"training diverged: the loss became {mean_loss} in epoch {epoch} by batch {batch} "
            f"with learning rate {config.lr:g}; try a smaller lr"
        )
