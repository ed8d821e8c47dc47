"""Training state at an epoch's end: everything a run needs to continue as if it had never stopped.

The weights and BN buffers (the model's state_dict), the optimizer's state, the state of every
random generator the run draws from (the shuffle's generator, torch's default CPU generator and,
on CUDA, the device's), the weight-average accumulators, the history and the epoch number.
Resuming from it gives the model the uninterrupted run gives, bit for bit on the same machine
(``tests/models/test_train_state.py``): the engine's CPU arithmetic is deterministic for a given
thread count, the state records the counts so far (the thread schedule, ``models.thread_tuner``),
and every input of the epochs still to come is in the state.

Serialized like a checkpoint, as safetensors (raw tensors and a JSON header, never a pickle):
the tensors under dotted names, everything else as one JSON document in the header. The format
knows tensors and JSON, not where the bytes go (``bnlenet.training_states`` stores them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from models.averaging import WeightAverage
from models.checkpoint import checksum
from models.sgd import Optimizer

__all__ = ["FORMAT", "TrainingState", "TrainingStateError", "capture_state", "global_rng_state", "restore_state",
           "state_from_bytes", "state_to_bytes"]

FORMAT = "bnlenet-training-state/1"
_META_KEY = "bnlenet"


class TrainingStateError(ValueError):
    """Bytes that are not a training state this code wrote (truncated, tampered, another format)."""


@dataclass
class TrainingState:
    """A run as it stood when epoch ``epoch`` ended (tensors on the CPU)."""

    epoch: int  # epochs finished
    model: dict[str, Tensor]  # the state_dict: weights and BN buffers
    optimizer: dict[str, Any]  # torch.optim's state_dict (its tensors inside)
    rng: dict[str, Tensor]  # generator name -> get_state(): "shuffle", "torch", "cuda"
    average_sums: list[Tensor] | None  # WeightAverage's float64 sums, when the run averages weights
    average_count: int
    history: list[dict[str, Any]] = field(default_factory=list)  # EpochMetrics as dicts, epochs 1..epoch
    # The CPU threads the run trained on (0: automatic, or not recorded): results depend on the
    # count in the last bits, so a resumed run takes the same count to end with the same model.
    threads: int = 0
    # The (step, threads) switches so far (models.thread_tuner): a resumed run continues them.
    thread_schedule: list[tuple[int, int]] = field(default_factory=list)
    # What the bytes carry besides the run (the job and attempt that wrote them, the run's
    # hyperparameters): JSON values, opaque here.
    extra: dict[str, Any] = field(default_factory=dict)


def state_to_bytes(state: TrainingState) -> bytes:
    """The safetensors file of ``state``, with a SHA-256 over tensors and header (as checkpoints have)."""
    tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in state.model.items()}
    tensors.update({f"rng.{k}": v for k, v in state.rng.items()})
    for i, total in enumerate(state.average_sums or []):
        tensors[f"average.{i}"] = total
    opt_state: dict[str, list[str]] = {}
    for pid, entries in state.optimizer.get("state", {}).items():
        names = []
        for name, value in entries.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"optimizer state {pid}.{name} is not a tensor")
            tensors[f"optimizer.{pid}.{name}"] = value
            names.append(name)
        opt_state[str(pid)] = names
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {
        "format": FORMAT, "epoch": state.epoch, "history": state.history,
        "optimizer": {"param_groups": state.optimizer.get("param_groups", []), "state": opt_state},
        "averaged": state.average_sums is not None, "average_count": state.average_count,
        "average_len": len(state.average_sums or []), "extra": state.extra, "threads": state.threads,
        "thread_schedule": [list(p) for p in state.thread_schedule],
    }
    meta["checksum"] = checksum(tensors, meta)
    return safetensors_save(tensors, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})


def state_from_bytes(payload: bytes) -> TrainingState:
    """The state ``state_to_bytes`` wrote; ``TrainingStateError`` for anything else."""
    try:
        tensors = safetensors_load(payload)
        header_len = int.from_bytes(payload[:8], "little")
        header = json.loads(payload[8:8 + header_len])
        meta = json.loads(header["__metadata__"][_META_KEY])
    except Exception as exc:
        raise TrainingStateError(f"not a training state (truncated, or another file): {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TrainingStateError(f"unknown training state format {meta.get('format') if isinstance(meta, dict) else None!r}")
    if checksum(tensors, meta) != meta.get("checksum"):
        raise TrainingStateError("the training state fails its checksum")

    def under(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    opt = meta["optimizer"]
    optimizer = {
        "param_groups": opt["param_groups"],
        "state": {int(pid): {name: tensors[f"optimizer.{pid}.{name}"] for name in names}
                  for pid, names in opt["state"].items()},
    }
    sums = [tensors[f"average.{i}"] for i in range(meta["average_len"])] if meta["averaged"] else None
    return TrainingState(epoch=int(meta["epoch"]), model=under("model."), optimizer=optimizer, rng=under("rng."),
                         average_sums=sums, average_count=int(meta["average_count"]), history=meta["history"],
                         extra=meta["extra"], threads=int(meta.get("threads", 0)),
                         thread_schedule=[(int(s), int(t)) for s, t in meta.get("thread_schedule", [])])


def global_rng_state(device: torch.device) -> dict[str, Tensor]:
    """The global generators' states a training state keeps: torch's CPU one ("torch"), and on CUDA the device's ("cuda")."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def capture_state(epoch: int, model: nn.Module, optimizer: Optimizer, shuffle: torch.Generator,
                  average: WeightAverage | None, history: list[dict[str, Any]], device: torch.device,
                  threads: int = 0, thread_schedule: Sequence[tuple[int, int]] = (),
                  global_rng: dict[str, Tensor] | None = None) -> TrainingState:
    """The run as it stands now, copied to the CPU (training may go on while the copy is written).

    ``global_rng``: ``global_rng_state`` as this run left it, where other runs in the process
    have reseeded the global generators since (a pack's trials); default: their states now.
    """
    rng = {"shuffle": shuffle.get_state(), **(global_rng_state(device) if global_rng is None else global_rng)}
    opt = optimizer.state_dict()
    return TrainingState(
        epoch=epoch,
        model={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        optimizer={"param_groups": opt["param_groups"],
                   "state": {pid: {k: v.detach().to("cpu", copy=True) for k, v in entries.items()}
                             for pid, entries in opt["state"].items()}},
        rng=rng,
        average_sums=None if average is None else [t.detach().to("cpu", copy=True) for t in average.sums],
        average_count=0 if average is None else average.count,
        history=list(history),
        threads=threads,
        thread_schedule=list(thread_schedule),
    )


def restore_state(state: TrainingState, model: nn.Module, optimizer: Optimizer,
                  shuffle: torch.Generator, average: WeightAverage | None, device: torch.device) -> None:
    """Put a freshly built run back where ``state`` left it (in place: tensors keep their storage).

    Raises ``TrainingStateError`` for a state of another kind of run (weights of another
    variant, averaging on in one and off in the other).
    """
    if (average is None) != (state.average_sums is None):
        raise TrainingStateError("the state's weight averaging does not match this run's")
    try:
        model.load_state_dict(state.model, strict=True)
    except RuntimeError as exc:
        raise TrainingStateError(f"the state's weights do not fit this model: {exc}") from exc
    optimizer.load_state_dict(state.optimizer)
    shuffle.set_state(state.rng["shuffle"])
    torch.set_rng_state(state.rng["torch"])
    if device.type == "cuda" and "cuda" in state.rng:
        torch.cuda.set_rng_state(state.rng["cuda"], device)
    if average is not None and state.average_sums is not None:
        if len(state.average_sums) != len(average.sums):
            raise TrainingStateError("the state's weight average does not fit this model")
        with torch.no_grad():
            for total, saved in zip(average.sums, state.average_sums, strict=True):
                total.copy_(saved)
        average.count = state.average_count
