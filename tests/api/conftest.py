"""API fixtures: the app in-process on a real Redis, and a checkpoint directory with trained models."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from bnlenet.local.redis_server import RedisServer, free_port
from bnlenet.model_store import ModelStore
from bnlenet.settings import Settings
from models.data import load_fashion_mnist
from models.training import TrainConfig, train, training_metadata
from tests.conftest import empty_database

API_DB = 7  # a database of its own on the shared test Redis, flushed before each test


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> tuple[Path, list[str]]:
    """A checkpoint directory with two small trained models; ids oldest first (the last is the newest)."""
    directory = tmp_path_factory.mktemp("checkpoints")
    data = load_fashion_mnist(synthetic_data_dir, download=False)
    store = ModelStore(directory)
    ids = []
    for variant in ("builtin", "scratch"):
        config = TrainConfig(variant, epochs=1, batch_size=64, lr=0.9, device="cpu")
        result = train(config, data)
        model_id = f"model-{variant}"
        store.publish(model_id, result.model, {**training_metadata(config, result, data.classes), "job_id": model_id})
        ids.append(model_id)
    return directory, ids


@pytest.fixture
def checkpoint_dir(trained_models: tuple[Path, list[str]], tmp_path: Path) -> Path:
    """A private copy of the trained models, for tests that add files."""
    target = tmp_path / "checkpoints"
    shutil.copytree(trained_models[0], target)
    return target


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    url = empty_database(redis_server, API_DB)
    return url


@pytest.fixture
def dead_redis_url() -> str:
    """A Redis URL where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def make_client(redis_url: str, trained_models: tuple[Path, list[str]]) -> Iterator[Callable[..., TestClient]]:
    """Build a TestClient for an app with these settings overrides (default: real Redis, trained models)."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        # Eager unless a test asks: an onnxruntime app spends seconds of CPU per model building
        # its sessions (tests/api/test_predict.py shares one such app among its tests).
        fields: dict[str, Any] = {"REDIS_URL": redis_url, "CHECKPOINT_DIR": trained_models[0],
                                  "PREDICT_RUNTIME": "eager", **overrides}
        client = TestClient(create_app(Settings(**fields)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def sample_image(seed: int = 0) -> np.ndarray:
    """A 28x28 uint8 image like the synthetic data: noise and a bright bar."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(28, 28)).astype(np.int32)
    row = 2 + 2 * (seed % 10)
    img[row:row + 3, 4:24] += 180
    return np.clip(img, 0, 255).astype(np.uint8)
