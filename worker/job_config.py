"""The run a job's stored parameters describe, on this worker: a ``TrainConfig``, and the weights it starts from."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor

from bnlenet.jobs import JOB_PARAMS
from bnlenet.model_store import ModelStore, ModelUnusable, UnknownModel
from bnlenet.settings import Settings
from models.devices import resolve_device
from models.training import TrainConfig

__all__ = ["job_config", "starting_state"]


def job_config(params: dict[str, Any], settings: Settings) -> TrainConfig:
    """The run a job's stored parameters describe (a job takes exactly the API's parameters).

    ``settings`` are the worker's: a setting that decides how this worker runs a job (not what
    it computes) is applied here: the CPU's thread count (``TRAINING_THREADS``, recorded in the
    checkpoint), and on CUDA the compile (``COMPILE_ON_CUDA``): the pool
    process compiles once, in its warm-up, and every job after reuses the graphs. Resolving the
    device here, in the pool process, is what initializes CUDA, never in the parent.
    """
    config = TrainConfig(**{k: v for k, v in params.items() if k in JOB_PARAMS})
    on_cuda = resolve_device(config.device).type == "cuda"
    return replace(config, compile=on_cuda and settings.COMPILE_ON_CUDA, threads=settings.TRAINING_THREADS)


def starting_state(config: TrainConfig, store: ModelStore) -> tuple[TrainConfig, dict[str, Tensor] | None]:
    """The config with ``init_model`` as the model id it names, and that model's state_dict (None: fresh weights).

    The API stored an id already; resolving again keeps the recorded parent an id whatever
    the record says. A model deleted or damaged since the job was queued fails the job, saying so
    (a ``ValueError``).
    """
    if config.init_model is None:
        return config, None
    try:
        model_id = store.resolve(config.init_model)
        state = store.get(model_id).model.state_dict()
    except (UnknownModel, ModelUnusable) as exc:
        raise ValueError(f"init_model {config.init_model!r} cannot start this job: {exc}") from None
    return replace(config, init_model=model_id), state
