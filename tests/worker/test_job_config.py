"""How a worker turns a job's stored parameters into a run: its own settings decide how, never what."""

from __future__ import annotations

from bnlenet.settings import Settings
from models.training import TrainConfig
from worker.job_config import job_config


def test_job_config_takes_the_workers_training_threads() -> None:
    params = {"variant": "builtin", "epochs": 2, "device": "cpu"}
    assert job_config(params, Settings(TRAINING_THREADS=3)).threads == 3
    assert job_config(params, Settings()).threads == 0  # automatic
    assert job_config(params, Settings(TRAINING_THREADS=3)).hyperparameters() == TrainConfig(**params).hyperparameters()


def test_job_config_ignores_a_thread_count_in_the_job() -> None:
    config = job_config({"variant": "scratch", "threads": 7}, Settings(TRAINING_THREADS=2))
    assert config.threads == 2
