"""A job whose worker is SIGKILLed again and again resumes each time from its last saved epoch.

It ends ``succeeded`` with each epoch listed once, with the model the uninterrupted run with the
same seed ends with (bitwise: same machine, same arithmetic), and each kill costs at most the
epoch it interrupted (from the attempts' records). Without resuming, every attempt starts from
the first batch: the attempts' ``resumed_from`` stay 0 (and with the old attempt count the job
fails, its MAX_ATTEMPTS spent).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bnlenet.settings import Settings
from bnlenet.training_states import state_name
from models.checkpoint import load_checkpoint
from models.data import load_fashion_mnist
from models.training import train
from tests.conftest import write_synthetic_fashion_mnist
from tests.integration.conftest import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration

EPOCHS = 10
KILLS = 5
# Precise BN and weight averaging on (the defaults); 1024 images in batches of 8: an epoch of 128
# steps lasts long enough to be caught in the middle.
JOB = {"epochs": EPOCHS, "batch_size": 8, "seed": 11, "swa_epochs": 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_fashion_mnist(tmp_path_factory.mktemp("resume-data"), n_train=1024)


@pytest.fixture(scope="module")
def resume_stack(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("resume"), data_dir) as s:
        yield s


def _pid(job: dict) -> int:
    return int(job["worker"].rsplit(":", 1)[1])  # the pool process that trains


def _position(job: dict) -> float:
    """Epochs done, as the record last showed them (a lower bound: progress is written every 0.2 s)."""
    p = job["progress"]
    return 0.0 if p is None else p["fraction"] * p["epochs"]


def test_resume_job_killed_five_times_ends_with_the_uninterrupted_model(resume_stack: Stack, data_dir: Path):
    s = resume_stack
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    # Five kills at random batches, in five different epochs before the last.
    targets = [e - 1 + rng.uniform(0.2, 0.8) for e in sorted(rng.sample(range(1, EPOCHS), KILLS))]
    job_id = s.client.post("/train", json=JOB).json()["job_id"]
    seen_at_kill: list[float] = []
    for attempt, target in enumerate(targets, start=1):
        def reached(attempt: int = attempt, target: float = target) -> bool:
            job = s.job(job_id)
            assert job["status"] in ("queued", "running"), job
            return job["status"] == "running" and job["attempts"] == attempt and _position(job) >= target

        wait_for(reached, 120, lambda a=attempt, t=target: f"attempt {a} never reached epoch {t:.2f} (seed {seed}): "
                 f"{s.job(job_id)}\n{s.workers[-1].tail()}", interval=0.02)
        job = s.job(job_id)
        os.kill(_pid(job), signal.SIGKILL)
        seen_at_kill.append(_position(job))

    job = s.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=180)
    assert job["status"] == "succeeded", (seed, job)
    assert [m["epoch"] for m in job["history"]] == list(range(1, EPOCHS + 1)), seed
    log = job["attempt_log"]
    assert [a["attempt"] for a in log] == list(range(1, KILLS + 2)) and job["attempts"] == KILLS + 1
    assert log[0]["resumed_from"] == 0
    # The count of attempts in a row that saved nothing new, by the lifecycle's rule. Not simply 0: on
    # a quiet machine an epoch can end between two progress writes (0.2 s apart), so a kill lands past
    # its target, the next attempt resumes later than planned and may die before saving an epoch.
    fruitless = 0
    for a in log[:-1]:
        fruitless = 0 if (a["saved_epoch"] or 0) > (a["resumed_from"] or 0) else fruitless + 1
    assert job["fruitless_attempts"] == fruitless < KILLS, (seed, log)
    saved = 0
    for killed, nxt, seen in zip(log[:-1], log[1:], seen_at_kill, strict=True):
        saved = max(saved, killed["saved_epoch"] or 0)
        assert nxt["resumed_from"] == saved, (seed, log)  # every saved epoch is kept ...
        # ... and every epoch that had finished when the worker died: only the one it was in is lost (at a
        # whole number the record shows an epoch's last batch done before its state is written: that one).
        assert nxt["resumed_from"] >= math.ceil(seen) - 1, (seed, seen_at_kill, log)
    # Never back: each attempt resumes from where the last left off or later (a kill inside epoch 1
    # leaves the next attempt at 0 again, so not strictly later).
    resumed = [a["resumed_from"] for a in log]
    assert resumed == sorted(resumed), (seed, log)
    assert not (s.checkpoint_dir / state_name(job_id)).exists()  # removed once the job ended
    print(f"seed {seed}: killed at epochs {[round(x, 2) for x in seen_at_kill]}; attempts {log}")

    # The uninterrupted run with the same seed, here, ends with the same model, bit for bit.
    from worker.job_config import job_config

    # On the CPU thread counts the attempts trained on: the schedule each continued (models/thread_tuner.py).
    checkpoint = load_checkpoint(s.checkpoint_dir / f"{job_id}.safetensors")
    config = dataclasses.replace(job_config(job["params"], Settings()), threads=checkpoint.metadata["engine"]["threads"])
    expected = train(config, load_fashion_mnist(data_dir, download=False),
                     thread_schedule=checkpoint.metadata["engine"]["thread_schedule"]).model.state_dict()
    stored = checkpoint.model.state_dict()
    assert list(stored) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(stored[name], tensor.cpu()), (name, seed)


def test_a_job_resumes_from_its_state_when_the_model_it_started_from_was_deleted(resume_stack: Stack):
    s = resume_stack
    parent = s.client.post("/train", json={"epochs": 1, "batch_size": 64}).json()["job_id"]
    assert s.wait_job(parent, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
    job_id = s.client.post("/train", json={**JOB, "epochs": 4, "init_model": parent}).json()["job_id"]

    def saved_an_epoch() -> bool:
        job = s.job(job_id)
        assert job["status"] in ("queued", "running"), job
        return bool(job["history"])  # a state is saved before its epoch is reported

    wait_for(saved_an_epoch, 120, lambda: f"{s.job(job_id)}\n{s.workers[-1].tail()}", interval=0.02)
    assert s.client.delete(f"/models/{parent}").status_code == 204
    os.kill(_pid(s.job(job_id)), signal.SIGKILL)
    # The state holds every weight the run goes on from: the parent's are not needed again.
    job = s.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=180)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2 and job["attempt_log"][1]["resumed_from"] >= 1, job["attempt_log"]
    assert [m["epoch"] for m in job["history"]] == [1, 2, 3, 4]
    model = s.client.get(f"/models/{job_id}").json()
    assert model["parent"] == parent, model  # what it started from, though that model is gone
