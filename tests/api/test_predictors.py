"""The predictor cache: one per loaded model and checkpoint, built once, eager until onnxruntime is ready."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from app.predictors import Predictors
from bnlenet.model_store import LoadedModel
from models.checkpoint import load_checkpoint
from models.inference import predict_batch


def _loaded(trained_models: tuple[Path, list[str]], index: int, **metadata: object) -> LoadedModel:
    directory, ids = trained_models
    checkpoint = load_checkpoint(directory / f"{ids[index]}.safetensors")
    return LoadedModel(ids[index], checkpoint.model, {**checkpoint.metadata, **metadata})


def _images(n: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 1, 28, 28, generator=generator) for _ in range(n)]


def test_predictors_eager_answers_as_predict_batch(trained_models):
    predictors = Predictors("eager")
    loaded = _loaded(trained_models, 0)
    images = _images(5)
    runtime, probabilities = predictors.predict(loaded, images)
    assert runtime == "eager" and predictors.wait(loaded, timeout=0) == "eager"
    assert torch.equal(probabilities, predict_batch(loaded.model, images))


def test_predictors_concurrent_first_requests_build_one_session(trained_models, caplog):
    caplog.set_level(logging.INFO, logger="app.predictors")
    predictors = Predictors("onnxruntime")
    loaded = _loaded(trained_models, 1)
    images = _images(16)
    try:
        with ThreadPoolExecutor(8) as pool:  # all before the session can be ready: every one is eager
            first = list(pool.map(lambda i: predictors.predict(loaded, images[i:i + 1]), range(16)))
        assert {runtime for runtime, _ in first} == {"eager"}
        assert predictors.wait(loaded, timeout=300) == "onnxruntime"
        runtime, batch = predictors.predict(loaded, images)
        assert runtime == "onnxruntime"
        singles = torch.cat([predictors.predict(loaded, [image])[1] for image in images])
        torch.testing.assert_close(batch, singles, rtol=0, atol=1e-6)  # batching changes no answer
        eager = torch.cat([probabilities for _, probabilities in first])
        torch.testing.assert_close(batch, eager, rtol=0, atol=1e-5)  # and the runtimes agree
    finally:
        predictors.close()
    built = [r for r in caplog.records if "served by onnxruntime" in r.getMessage()]
    assert len(built) == 1, [r.getMessage() for r in caplog.records]


def test_predictors_a_replaced_checkpoint_gets_its_own_predictor(trained_models):
    predictors = Predictors("eager")
    images = _images(3)
    old = _loaded(trained_models, 0)
    replaced = LoadedModel(old.model_id, _loaded(trained_models, 1).model, {**old.metadata, "checksum": "another"})
    _, before = predictors.predict(old, images)
    _, after = predictors.predict(replaced, images)  # same id, new checkpoint
    assert torch.equal(after, predict_batch(replaced.model, images))
    assert not torch.equal(after, before)


def test_predictors_keep_as_many_as_the_model_cache(trained_models):
    predictors = Predictors("eager", size=2)
    loaded = _loaded(trained_models, 0)
    for n in range(4):
        predictors.predict(LoadedModel(f"m{n}", loaded.model, {**loaded.metadata, "checksum": str(n)}), _images(1))
    assert len(predictors) == 2


def test_predictors_failed_export_falls_back_to_eager(trained_models, caplog):
    predictors = Predictors("onnxruntime")
    loaded = _loaded(trained_models, 0, variant="no-such-variant")  # the export process cannot rebuild it
    images = _images(4)
    try:
        assert predictors.wait(loaded, timeout=300) == "eager"
        runtime, probabilities = predictors.predict(loaded, images)
    finally:
        predictors.close()
    assert runtime == "eager"
    assert torch.equal(probabilities, predict_batch(loaded.model, images))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(loaded.model_id in w and "no-such-variant" in w for w in warnings), warnings


def _export_processes() -> list[int]:
    """This process's children that are exporting (``models.export.export_bytes_in_subprocess``)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"\nPPid:\t{os.getpid()}\n" in status and any(b"models.export" in part for part in cmdline):
            found.append(int(entry.name))
    return found


def test_predictors_close_stops_a_build_under_way(trained_models, caplog):
    predictors = Predictors("onnxruntime")
    loaded = _loaded(trained_models, 0)
    predictors.predict(loaded, _images(1))
    deadline = time.monotonic() + 30
    while not _export_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _export_processes(), "no export process started"
    predictors.close()
    assert predictors.wait(loaded, timeout=1) == "eager"
    deadline = time.monotonic() + 5
    while _export_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _export_processes(), "the export process outlived close()"
    assert predictors.predict(loaded, _images(1))[0] == "eager"  # answers go on
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("threads", [0, -1])
def test_predictors_threads_must_be_positive(threads):
    with pytest.raises(ValueError, match="threads"):
        Predictors("onnxruntime", threads=threads)
