"""The intra-op thread count while training on the CPU: the cores given, or one; short OpenMP spins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.data import FashionMNIST
from models.threads import (
    OPENMP_WAITS,
    cgroup_cpu_quota,
    cpu_quota,
    short_openmp_waits,
    training_threads,
    usable_cores,
)
from models.training import TrainConfig, train, training_metadata


@pytest.fixture
def two_threads():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_cpu_quota_reads_cgroup_v2_cpu_max() -> None:
    assert cpu_quota("150000 100000\n") == 1.5
    assert cpu_quota("400000 100000") == 4.0
    assert cpu_quota("max 100000\n") is None
    assert cpu_quota("") is None


def test_usable_cores_are_the_affinity_set_capped_by_the_quota() -> None:
    assert usable_cores({0, 1, 2, 3, 4, 5, 6, 7}, None, read_quota=False) == 8
    assert usable_cores({2, 5}, None, read_quota=False) == 2  # taskset -c 2,5 on a bigger host
    assert usable_cores(set(range(64)), cpu_quota("200000 100000"), read_quota=False) == 2  # docker --cpus 2
    assert usable_cores(set(range(64)), cpu_quota("150000 100000"), read_quota=False) == 1  # never a throttled thread
    assert usable_cores(set(range(64)), cpu_quota("50000 100000"), read_quota=False) == 1
    assert usable_cores({0, 1}, cpu_quota("800000 100000"), read_quota=False) == 2


def test_usable_cores_of_this_process_follow_its_affinity() -> None:
    assert usable_cores() <= len(os.sched_getaffinity(0))


def test_cgroup_cpu_quota_takes_the_smallest_limit_on_the_v2_path(tmp_path: Path) -> None:
    (tmp_path / "kubepods" / "pod1").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods" / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    assert cgroup_cpu_quota(tmp_path, proc) == 3.0
    proc.write_text("0::/\n")
    assert cgroup_cpu_quota(tmp_path, proc) is None


def test_cgroup_cpu_quota_reads_cgroup_v1(tmp_path: Path) -> None:
    (tmp_path / "cpu" / "docker" / "abc").mkdir(parents=True)
    (tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("250000\n")
    (tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cgroup_cpu_quota(tmp_path, proc) == 2.5


def test_training_threads_on_the_cpu_and_restored_after(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with training_threads(torch.device("cpu"), 3) as tuner:
        assert tuner.most == 3 and not tuner.adaptive and torch.get_num_threads() == 3
        tuner.before_step(0)
        assert torch.get_num_threads() == 3 and tuner.schedule == [(0, 3)]
    assert torch.get_num_threads() == 2


def test_training_threads_automatic_uses_the_usable_cores(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("models.threads.usable_cores", lambda: 4)
    with training_threads(torch.device("cpu")) as tuner:
        assert tuner.most == 4 and tuner.adaptive and torch.get_num_threads() == 4
    assert torch.get_num_threads() == 2


def test_training_threads_restored_after_an_error(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with pytest.raises(RuntimeError), training_threads(torch.device("cpu"), 1):
        raise RuntimeError("training failed")
    assert torch.get_num_threads() == 2


def test_training_threads_leave_an_explicit_omp_num_threads_alone(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with training_threads(torch.device("cpu"), 1) as tuner:
        assert tuner.most == 2 and not tuner.adaptive and torch.get_num_threads() == 2


def test_training_threads_leave_other_devices_alone(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with training_threads(torch.device("meta"), 1):
        assert torch.get_num_threads() == 2


def test_short_openmp_waits_set_what_is_unset_only() -> None:
    env = {"KMP_BLOCKTIME": "5"}
    added = short_openmp_waits(env)
    assert env["KMP_BLOCKTIME"] == "5"  # a user's choice stays
    assert added == {"GOMP_SPINCOUNT": "10000"} and env["GOMP_SPINCOUNT"] == "10000"


def test_short_openmp_waits_leave_a_users_wait_policy_alone() -> None:
    env = {"OMP_WAIT_POLICY": "PASSIVE"}
    assert short_openmp_waits(env) == {} and env == {"OMP_WAIT_POLICY": "PASSIVE"}


# Fails when an entry point loads torch before it sets the spin count (the runtime reads it once).
ENTRY_POINT_CHECK = """
import builtins, os, sys
real_import = builtins.__import__
def checked(name, *args, **kwargs):
    if name == "torch" and os.environ.get("GOMP_SPINCOUNT") != "10000":
        print("torch loaded before GOMP_SPINCOUNT was set", flush=True)
        os._exit(3)
    return real_import(name, *args, **kwargs)
builtins.__import__ = checked
import {module}
import torch
print(os.environ["GOMP_SPINCOUNT"], os.environ["KMP_BLOCKTIME"])
"""


@pytest.mark.parametrize("module", ["bnlenet.local.cli", "worker.celery_app"])
def test_entry_points_set_short_spins_before_torch_loads(module: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (*OPENMP_WAITS, "OMP_WAIT_POLICY")}
    proc = subprocess.run([sys.executable, "-c", ENTRY_POINT_CHECK.replace("{module}", module)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["10000", "1"]


def _weights(config: TrainConfig, data: FashionMNIST) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    result = train(config, data)
    return {k: v.clone() for k, v in result.model.state_dict().items()}, training_metadata(config, result, data.classes)


def test_training_is_reproducible_for_a_seed_and_thread_count_which_the_checkpoint_records(
    data: FashionMNIST, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config = TrainConfig(variant="builtin", epochs=2, batch_size=64, seed=3, threads=2, swa_epochs=0)
    first, meta = _weights(config, data)
    second, _ = _weights(config, data)
    assert meta["engine"]["threads"] == 2  # type: ignore[index]
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    _, one = _weights(TrainConfig(variant="builtin", epochs=1, batch_size=64, threads=1, swa_epochs=0), data)
    assert one["engine"]["threads"] == 1  # type: ignore[index]
