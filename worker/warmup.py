"""Warm-up as each pool process starts: load the data set and pay the first step's one-off costs before a job waits."""

from __future__ import annotations

import gc
import logging
import threading
from dataclasses import asdict

from models.data import ImageDataset
from models.memory import release_memory
from models.training import TrainConfig, train
from worker import resources
from worker.job_config import job_config

__all__ = ["preload", "warm_up"]

log = logging.getLogger(__name__)


def warm_up(data: ImageDataset) -> None:
    """Train each variant for two batches on a slice of the data, the way a job with defaults does.

    The first step of a process pays one-off costs (lazy imports, the autograd engine's
    threads, the kernels' primitive caches for this batch shape): about a second on two CPU
    cores; on a GPU also the compile of each variant's step. Paying it here keeps it out of the
    first job's queueing delay, and jobs wait for it rather than compile beside it.
    """
    defaults = TrainConfig()
    n = 2 * defaults.batch_size
    tiny = ImageDataset(data.train_images[:n], data.train_labels[:n], data.test_images[:n], data.test_labels[:n],
                        classes=data.classes)
    with resources.engine_lock:
        for variant in ("scratch", "builtin"):
            params = {**asdict(defaults), "variant": variant, "epochs": 1, "precise_bn": False}
            train(job_config(params, resources.settings()), tiny)


def preload() -> None:
    """Load the data set and warm up in the background, so that a job starts at once."""

    def load() -> None:
        try:
            data = resources.training_data()
        except Exception as exc:  # the job that needs it will fail with the reason
            log.warning("could not preload Fashion-MNIST: %s", exc)
            return
        try:
            warm_up(data)
        except Exception as exc:  # only speed is at stake
            log.warning("could not warm up the training engine: %s", exc)
        release_memory()
        # What is alive now (modules, the data set) lives as long as the process: keep it out
        # of the collector's sweeps, so the full collection after each job takes milliseconds
        # instead of about 150 ms on these two cores.
        gc.freeze()

    threading.Thread(target=load, name="preload-data", daemon=True).start()
