"""A whole job on the GPU through the real service: API, Redis and a Celery worker as processes.

Skipped without CUDA; ``scripts/gpu_check.sh`` runs it on a GPU.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from models.checkpoint import read_metadata
from tests.devices import needs_cuda
from tests.integration.conftest import running_stack
from tests.integration.test_service import _bnlenet_predict, _png

pytestmark = [*needs_cuda, pytest.mark.integration]


def gpu_processes() -> dict[int, str]:
    """Processes holding a CUDA context on the GPU, with the memory each uses (nvidia-smi's view)."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30, check=True)
    rows = [line.split(",", 1) for line in out.stdout.strip().splitlines() if line.strip()]
    return {int(pid): memory.strip() for pid, memory in rows}


def test_gpu_jobs_end_to_end(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path,
                             tmp_path: Path) -> None:
    with running_stack(tmp_path_factory.mktemp("gpu-stack"), synthetic_data_dir) as stack:
        worker = stack.workers[0].process
        assert worker is not None
        jobs, metadata = [], []
        for _ in range(2):  # the second job runs on the same warm pool process
            r = stack.client.post("/train", json={"variant": "scratch", "epochs": 2, "batch_size": 256})
            assert r.status_code == 202, r.text
            job = stack.wait_job(r.json()["job_id"], {"succeeded", "failed", "cancelled"}, timeout=300)
            assert job["status"] == "succeeded", job
            assert job["device"].startswith("cuda"), job
            jobs.append(job)
            metadata.append(read_metadata(stack.checkpoint_dir / f"{job['job_id']}.safetensors"))
        print("engines:", [m["engine"] for m in metadata])
        assert all(m["engine"]["compile"] and m["engine"]["cuda_graph"] for m in metadata), metadata
        assert metadata[1]["engine"]["compiled_graphs"] == 0, "the second job compiled again"

        # CUDA lives in the pool process that trains; the parent that forks it holds no CUDA
        # context. (On the H100 image the parent's address space does map the driver library,
        # with no context: the pool process it forks initializes CUDA and trains, as shown.)
        pool_pid = int(jobs[1]["worker"].rsplit(":", 1)[1])
        contexts = gpu_processes()
        print("GPU processes (pid: memory):", contexts, "worker parent:", worker.pid, "pool:", pool_pid)
        assert pool_pid != worker.pid
        assert pool_pid in contexts, contexts
        assert worker.pid not in contexts, "the worker's parent process holds a CUDA context"

        # The GPU-trained model serves on the API's CPU exactly as the command line predicts.
        image = tmp_path / "item.png"
        image.write_bytes(_png(3))
        job_id = jobs[1]["job_id"]
        r = stack.client.post("/predict", files={"file": ("item.png", image.read_bytes(), "image/png")},
                              data={"model_id": job_id})
        assert r.status_code == 200, r.text
        cli = _bnlenet_predict(stack.checkpoint_dir / f"{job_id}.safetensors", image)
        assert r.json()["class_index"] == cli["class_index"]
        np.testing.assert_allclose(r.json()["probabilities"], cli["probabilities"], atol=1e-5)
