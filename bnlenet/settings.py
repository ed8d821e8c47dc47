"""The one settings object shared by the API, the worker and the local launcher, read from the environment.

Nothing reads the environment at import: ``create_app(settings)``, ``make_celery(settings)``
and ``run_stack(settings, ...)`` take one, and ``get_settings()`` reads the process's once,
on first use.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Environment-driven configuration; every field is also an environment variable of the same name."""

    model_config = SettingsConfigDict(env_file=None, case_sensitive=False, extra="ignore")

    REDIS_URL: str = "redis://127.0.0.1:6379/0"  # broker, result backend and job store
    # The model registry: a directory, or an S3-compatible bucket (s3://bucket/prefix) shared by
    # workers and APIs on several hosts, reached with the standard AWS_* settings.
    CHECKPOINT_DIR: str = "./var/checkpoints"
    MODEL_CACHE_DIR: Path = Path("./var/model-cache")  # downloads from an s3:// CHECKPOINT_DIR (and their exports)
    MODEL_CACHE_MAX_BYTES: int = Field(1 << 30, ge=1 << 20)  # that cache's bound; least recently used files go first
    OBJECT_STORE_RETRY_S: float = Field(60.0, ge=0)  # a worker retries an upload this long, then fails the job
    DEFAULT_MODEL_ALIAS: str = "production"  # POST /predict without a model serves this alias's model, if set; else the newest
    DATA_DIR: Path | None = None  # Fashion-MNIST IDX files; None: the usual places
    DATA_DOWNLOAD: bool = True  # let the worker download Fashion-MNIST when it is nowhere on disk
    # Uploaded data sets (POST /datasets), stored beside the models under datasets/.
    DATASET_MAX_UPLOAD_BYTES: int = Field(256 << 20, ge=1 << 10)  # one upload; 413 while it streams past this
    DATASET_INGEST_WORKERS: int = Field(1, ge=1)  # uploads validated at once per API process (CPU-bound, off the event loop)
    DATASET_CACHE_DIR: Path = Path("./var/dataset-cache")  # a worker's downloads of data sets from an s3:// store
    DATASET_CACHE_MAX_BYTES: int = Field(2 << 30, ge=1 << 20)  # that cache's bound; least recently used files go first

    # Access control: with a token, writes need `Authorization: Bearer <token>`.
    API_TOKEN: str | None = None
    PROTECT_READS: bool = False  # also close reads and /predict behind the token
    # Empty: no CORS headers at all. A comma-separated list or a JSON list.
    CORS_ORIGINS: Annotated[list[str], NoDecode] = Field(default_factory=list)

    MAX_UPLOAD_BYTES: int = 1 << 20  # one uploaded image
    MAX_BODY_BYTES: int = 2 << 20  # any request body (a JSON pixel array is ~20 KB)
    MAX_PREDICT_BATCH: int = Field(256, ge=1)  # images in one POST /predict/batch
    MODEL_CACHE_SIZE: int = Field(8, ge=1)  # loaded models kept in memory per API process
    # What answers /predict: eager PyTorch, or onnxruntime on the model's ONNX export (built in
    # the background per model and process; eager answers until it is ready, or if it fails).
    # The choices are models.runtime.RUNTIMES, spelled out so settings import no torch (a test checks).
    PREDICT_RUNTIME: Literal["eager", "onnxruntime"] = "onnxruntime"
    PREDICT_THREADS: int = Field(1, ge=1)  # intra-op threads of one forward pass, either runtime, per API process
    # Cached model exports (GET /models/{id}/export); None: <CHECKPOINT_DIR>/exports, or <MODEL_CACHE_DIR>/exports for S3.
    EXPORT_DIR: Path | None = None
    # How stale the listing of models and aliases may be ("the newest model", an alias just moved,
    # a model deleted elsewhere), to keep the storage off the hot path.
    NEWEST_MODEL_REFRESH_S: float = 1.0
    # A writer (a worker that published a model, an API that moved an alias) waits this long at most for every
    # API process to list the change before it records the job succeeded or answers (bnlenet.model_news).
    MODEL_NEWS_WAIT_S: float = Field(5.0, ge=0)

    TRAINING_QUEUE: str = "training"
    # Celery's keys (the queue, unacked, _kombu.*, task results) carry this prefix, apart from
    # the job store's bnlenet:* keys. Changing it strands messages queued under the old one.
    CELERY_KEY_PREFIX: str = "celery:"
    MAX_QUEUED_JOBS: int = Field(100, ge=0)  # POST /train answers 429 while this many wait; 0: no limit
    JOB_RETENTION_DAYS: float = Field(30.0, ge=0)  # finished jobs are deleted this long after they end; 0 keeps them
    LOG_FORMAT: Literal["text", "json"] = "text"  # json: one JSON object per log line (API and worker)
    JOB_HEARTBEAT_INTERVAL_S: float = Field(1.0, gt=0)  # also how fast a cancel reaches a running job
    JOB_PROGRESS_INTERVAL_S: float = Field(0.5, gt=0)  # progress writes within an epoch, at most this often
    JOB_STALE_AFTER_S: float = Field(30.0, gt=0)  # a running job without a heartbeat this long lost its worker
    REAPER_INTERVAL_S: float = Field(10.0, gt=0)  # how often a worker looks for such jobs
    OUTBOX_GRACE_S: float = Field(3.0, gt=0)  # a queued job's task not confirmed this long is published again
    OUTCOME_RETRY_S: float = Field(300.0, gt=0)  # how long a worker retries recording a published model's success
    MAX_ATTEMPTS: int = Field(3, ge=1)  # deliveries of one job before it is failed as a worker killer
    VISIBILITY_TIMEOUT_S: int = 12 * 3600  # longer than the longest job, or Redis redelivers running jobs
    # Intra-op threads of a training run on the CPU (the worker's jobs, `bnlenet train`); 0: the cores the
    # process is given (affinity, cgroup quota; models/threads.py).
    TRAINING_THREADS: int = Field(0, ge=0, le=1024)
    COMPILE_ON_CUDA: bool = True  # torch.compile jobs that train on a GPU (the worker compiles once, at start)
    EVENTS_HEARTBEAT_S: float = Field(15.0, gt=0)  # a comment on an idle job event stream, this often
    REDIS_TIMEOUT_S: float = 2.0  # connect and read timeout: a down Redis answers 503 quickly, never hangs

    # The HTTP edge (app/edge.py): what a client may send, and how slowly.
    HTTP_HEADER_TIMEOUT_S: float = Field(10.0, gt=0)  # to send a whole request head (and a first request)
    HTTP_BODY_TIMEOUT_S: float = Field(30.0, gt=0)  # to send a body once the head is in (2 MiB at 70 KB/s) ...
    HTTP_BODY_MIN_BYTES_PER_S: int = Field(65536, gt=0)  # ... plus 1 s per this many bytes received (large uploads)
    HTTP_MAX_HEADER_BYTES: int = Field(16 * 1024, ge=1024)  # the request line and headers together
    HTTP_MAX_HEADERS: int = Field(100, ge=10)
    HTTP_KEEP_ALIVE_S: int = Field(5, ge=1)  # an idle kept-alive connection is closed after this
    HTTP_MAX_CONNECTIONS: int = Field(900, ge=1)  # per API process; more get 503 (under a 1024 fd limit)

    # Caps on POST /train, stated in its schema: ``MAX_<NAME>`` caps the job parameter ``<name>``
    # (declared with its default and lower limit on ``models.training.TrainConfig``).
    MAX_EPOCHS: int = Field(100, ge=1)
    MAX_LR: float = Field(100.0, gt=0)
    MAX_BATCH_SIZE: int = Field(8192, ge=2)
    # Caps on POST /sweeps (bnlenet.sweeps.spec): trials in one sweep, the epochs of all its
    # trials together, and the values listed for one parameter. Each trial is also a queued job
    # that MAX_QUEUED_JOBS counts.
    MAX_SWEEP_TRIALS: int = Field(64, ge=1)
    MAX_SWEEP_TOTAL_EPOCHS: int = Field(2000, ge=1)
    MAX_SWEEP_VALUES: int = Field(64, ge=1)
    # A worker that takes a trial of a sweep with `pack: true` trains up to this many of the sweep's queued
    # trials that can share a step as one pack (worker/pack_run.py), where packing pays (models/packed.py):
    # on CUDA, and on the CPU at batches up to 32. SWEEP_PACK_ON_CPU packs every CPU batch size (tests, measurements).
    SWEEP_PACK_MAX: int = Field(16, ge=1)
    SWEEP_PACK_ON_CPU: bool = False

    # `bnlenet up`, the local launcher only.
    BNLENET_VAR_DIR: Path = Path("var")  # Redis data, the lock, and checkpoints unless CHECKPOINT_DIR is set
    BNLENET_REDIS_PORT: int | None = None  # None: a free port
    BNLENET_API_WORKERS: int | None = Field(None, ge=1)  # API processes; None: one per core
    BNLENET_START_TIMEOUT: float = Field(180.0, gt=0)  # for the API to answer
    # A warm shutdown waits for the running task; past this the worker is killed and its job,
    # acknowledged late, goes back to the queue for the next worker.
    BNLENET_WORKER_STOP_TIMEOUT: float = Field(30.0, gt=0)

    @field_validator("CHECKPOINT_DIR", mode="before")
    @classmethod
    def _location(cls, value: Any) -> Any:
        return str(value) if isinstance(value, os.PathLike) else value

    @field_validator("CORS_ORIGINS", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [origin.strip() for origin in text.split(",") if origin.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
