"""What one worker process keeps between jobs: its settings, the stores, the data sets, a publisher."""

from __future__ import annotations

import os
import socket
import threading

from bnlenet.datasets.cache import DatasetCache
from bnlenet.datasets.store import DatasetStore
from bnlenet.jobs import JobStore
from bnlenet.model_news import ModelNews
from bnlenet.model_store import ModelStore
from bnlenet.settings import Settings, get_settings
from bnlenet.training_queue import Publisher
from bnlenet.training_states import TrainingStates
from models.data import ImageDataset, load_fashion_mnist

__all__ = ["datasets", "engine_lock", "job_store", "model_news", "model_store", "publisher", "settings",
           "training_data", "training_states", "worker_name"]

# One training run at a time per process: the warm-up (which compiles on a GPU), then jobs,
# which reuse what it compiled instead of compiling beside it.
engine_lock = threading.Lock()
_lock = threading.Lock()
_data_lock = threading.Lock()  # its own: loading takes seconds, and must not hold up the store
_store: JobStore | None = None
_publisher: Publisher | None = None
_models: ModelStore | None = None
_news: ModelNews | None = None
_data: ImageDataset | None = None
_datasets: DatasetCache | None = None


def settings() -> Settings:
    return get_settings()


def job_store() -> JobStore:
    global _store
    with _lock:
        if _store is None:
            s = settings()
            _store = JobStore.from_url(s.REDIS_URL, timeout=s.REDIS_TIMEOUT_S, retention_s=s.JOB_RETENTION_DAYS * 86400)
        return _store


def publisher() -> Publisher:
    global _publisher
    with _lock:
        if _publisher is None:
            _publisher = Publisher(settings())
        return _publisher


def model_store() -> ModelStore:
    global _models
    with _lock:
        if _models is None:
            _models = ModelStore.from_settings(settings())
        return _models


def training_states() -> TrainingStates:
    """Jobs' training states, in the same storage as the models."""
    return TrainingStates(model_store().storage)


def model_news() -> ModelNews:
    global _news
    with _lock:
        if _news is None:
            s = settings()
            _news = ModelNews.from_url(s.REDIS_URL, wait_s=s.MODEL_NEWS_WAIT_S, timeout=s.REDIS_TIMEOUT_S)
        return _news


def training_data() -> ImageDataset:
    """Fashion-MNIST (the built-in data set), loaded once per worker process and kept for the next jobs."""
    global _data
    with _data_lock:
        if _data is None:
            s = settings()
            _data = load_fashion_mnist(s.DATA_DIR, download=s.DATA_DOWNLOAD)
        return _data


def datasets() -> DatasetCache:
    """The data sets jobs train on: the built-in one (``training_data``) and uploaded ones, fetched once."""
    global _datasets
    storage = model_store().storage  # before taking the lock, which model_store takes too
    with _lock:
        if _datasets is None:
            _datasets = DatasetCache(DatasetStore.on(storage, settings()), training_data)
        return _datasets


def worker_name() -> str:
    """This process's name in job records: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"
