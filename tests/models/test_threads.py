"""The intra-op thread count while training on the CPU."""

from __future__ import annotations

import pytest
import torch

from models.threads import TRAINING_THREADS, training_threads


@pytest.fixture
def two_threads():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_training_threads_on_the_cpu_and_restored_after(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with training_threads(torch.device("cpu")):
        assert torch.get_num_threads() == TRAINING_THREADS
    assert torch.get_num_threads() == 2


def test_training_threads_restored_after_an_error(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with pytest.raises(RuntimeError), training_threads(torch.device("cpu")):
        raise RuntimeError("training failed")
    assert torch.get_num_threads() == 2


def test_training_threads_leave_an_explicit_omp_num_threads_alone(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with training_threads(torch.device("cpu")):
        assert torch.get_num_threads() == 2


def test_training_threads_leave_other_devices_alone(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with training_threads(torch.device("meta")):
        assert torch.get_num_threads() == 2
