"""The run a job's stored parameters describe, on this worker: a ``TrainConfig``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bnlenet.jobs import JOB_PARAMS
from bnlenet.settings import Settings
from models.devices import resolve_device
from models.training import TrainConfig

__all__ = ["job_config"]


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
