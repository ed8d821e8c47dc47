"""Fixtures shared by the whole suite: small synthetic Fashion-MNIST, a real Redis server, a real S3 server."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from bnlenet.local.redis_server import RedisServer
from bnlenet.local.s3_server import S3Server, WeedNotFound, find_weed
from models.data import FILES, write_idx
from tests.ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401  (hooks: under CI a skip fails)

# Results depend in the last bits on how operations are split between threads (models/threads.py),
# so tests that compare the engine with a plain loop in this process run both on this many.
TEST_THREADS = 1
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def training_on_test_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training in this process takes TEST_THREADS as its automatic count: one fixed count, no switching.

    On more cores the count would change step by step with the measured times
    (models/thread_tuner.py), and two runs that a test compares bit for bit would differ in
    their last bits. The switching has tests of its own (tests/models/test_thread_tuner.py);
    workers and the CLI, in processes of their own, run it as users do.
    """
    monkeypatch.setattr("models.threads.usable_cores", lambda: TEST_THREADS)

def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a server is an integration test: the S3 tests (their own ``s3`` marker, or
    the session's S3 server) and the browser tests get the marker here, so ``-m "not integration"``
    is the fast part."""
    for item in items:
        if (item.get_closest_marker("s3") or item.get_closest_marker("browser")
                or "s3_server" in getattr(item, "fixturenames", ())) and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)


SYNTHETIC_TRAIN = 512
SYNTHETIC_TEST = 128


def make_synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 uint8 images: class k is a bright bar at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.int32)
    for i, k in enumerate(labels):
        row = 2 + 2 * int(k)
        images[i, row:row + 3, 4:24] += 180
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_synthetic_fashion_mnist(directory: Path, *, n_train: int = SYNTHETIC_TRAIN,
                                  n_test: int = SYNTHETIC_TEST, gzip: bool = True) -> Path:
    """Write the four IDX files of a small synthetic data set into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gzip else ""
    train_x, train_y = make_synthetic_images(n_train, seed=1)
    test_x, test_y = make_synthetic_images(n_test, seed=2)
    write_idx(directory / (FILES["train_images"] + suffix), train_x)
    write_idx(directory / (FILES["train_labels"] + suffix), train_y)
    write_idx(directory / (FILES["test_images"] + suffix), test_x)
    write_idx(directory / (FILES["test_labels"] + suffix), test_y)
    return directory


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a small synthetic Fashion-MNIST (gzip IDX), shared by the session."""
    return write_synthetic_fashion_mnist(tmp_path_factory.mktemp("fashion-mnist"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 for the session, stopped at the end."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


def empty_database(server: RedisServer, db: int) -> str:
    """The URL of database ``db`` on the test Redis, emptied: a suite's own, fresh for each test."""
    url = server.database_url(db)
    redis.Redis.from_url(url).flushdb()
    return url


@contextlib.contextmanager
def own_s3_server(directory: Path) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS's ``weed mini``) on 127.0.0.1 with its data in ``directory``, stopped on exit;
    the test skips where the ``weed`` binary is missing."""
    try:
        find_weed()
    except WeedNotFound as exc:
        pytest.skip(str(exc))
    with S3Server(directory) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3 server for the session's tests that do not stop it."""
    with own_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh ``s3://bucket/prefix`` of its own for one test, with this process's AWS settings pointing at it."""
    for key, value in s3_server.client_env().items():
        monkeypatch.setenv(key, value)
    return f"s3://{s3_server.bucket}/test-{uuid.uuid4().hex[:12]}"
