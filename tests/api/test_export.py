"""GET /models/{id}/export: ONNX and pt2 files that answer as /predict does, cached, with clear errors."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.data import load_fashion_mnist
from models.export import EXPORT_FORMATS, INPUT_NAME, OUTPUT_NAME
from models.preprocess import to_model_input

ATOL = 1e-5


@pytest.fixture(scope="module")
def test_images(synthetic_data_dir: Path) -> np.ndarray:
    """100 test images as the network's input (100, 1, 28, 28) float32."""
    data = load_fashion_mnist(synthetic_data_dir, download=False)
    return to_model_input(data.test_images[:100]).numpy()


def _predicted(client, model_id: str, images: np.ndarray) -> np.ndarray:
    """/predict's probabilities for each image, one request per image."""
    rows = []
    for image in images:
        r = client.post("/predict", json={"pixels": image[0].tolist(), "model_id": model_id})
        assert r.status_code == 200, r.text
        rows.append(r.json()["probabilities"])
    return np.array(rows)


def _export(client, model_id: str, fmt: str) -> bytes:
    r = client.get(f"/models/{model_id}/export", params={"format": fmt})
    for _ in range(100):  # 202 while it is built: each request waits a few seconds for the build
        if r.status_code != 202:
            break
        r = client.get(r.headers["location"])
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == f'attachment; filename="{model_id}.{fmt}"'
    return r.content


@pytest.mark.parametrize("variant", ["builtin", "scratch"])
def test_export_onnx_and_pt2_answer_as_predict(make_client, checkpoint_dir, test_images, variant):
    client = make_client(CHECKPOINT_DIR=checkpoint_dir)
    model_id = f"model-{variant}"
    expected = _predicted(client, model_id, test_images)

    session = ort.InferenceSession(_export(client, model_id, "onnx"), providers=["CPUExecutionProvider"])
    (onnx_probs,) = session.run([OUTPUT_NAME], {INPUT_NAME: test_images})
    np.testing.assert_allclose(onnx_probs, expected, atol=ATOL, rtol=0)

    program = torch.export.load(io.BytesIO(_export(client, model_id, "pt2")))
    with torch.inference_mode():
        pt2_probs = program.module()(torch.from_numpy(test_images)).numpy()
    np.testing.assert_allclose(pt2_probs, expected, atol=ATOL, rtol=0)


def test_export_safetensors_is_the_checkpoint(client, trained_models):
    directory, ids = trained_models
    assert _export(client, ids[0], "safetensors") == (directory / f"{ids[0]}.safetensors").read_bytes()


def test_export_is_cached_per_model_and_format(make_client, checkpoint_dir, tmp_path, monkeypatch):
    import bnlenet.model_store.exports as exports

    calls: list[str] = []
    real = exports.export_bytes_in_subprocess

    def counting(model, metadata, fmt, **kwargs):
        calls.append(fmt)
        return real(model, metadata, fmt, **kwargs)

    monkeypatch.setattr(exports, "export_bytes_in_subprocess", counting)
    cache = tmp_path / "exports"
    client = make_client(CHECKPOINT_DIR=checkpoint_dir, EXPORT_DIR=cache)
    first = _export(client, "model-scratch", "pt2")
    assert _export(client, "model-scratch", "pt2") == first
    assert calls == ["pt2"]
    assert [p.suffix for p in cache.iterdir()] == [".pt2"]  # one whole file, no temporary left


def test_export_default_cache_is_under_the_checkpoint_dir(make_client, checkpoint_dir):
    client = make_client(CHECKPOINT_DIR=checkpoint_dir)
    _export(client, "model-builtin", "pt2")
    assert len(list((checkpoint_dir / "exports").glob("model-builtin.*.pt2"))) == 1
    assert client.get("/models").json()["count"] == 2  # the cache is not taken for models


def test_export_bad_format_is_422_listing_the_formats(client, trained_models):
    r = client.get(f"/models/{trained_models[1][0]}/export", params={"format": "torchscript"})
    assert r.status_code == 422
    assert all(fmt in json.dumps(r.json()) for fmt in EXPORT_FORMATS)


def test_export_unknown_model_is_404(client):
    assert client.get("/models/no-such-model/export").status_code == 404


def test_export_tampered_checkpoint_is_409_like_get_model(make_client, checkpoint_dir):
    path = checkpoint_dir / "model-scratch.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    client = make_client(CHECKPOINT_DIR=checkpoint_dir)
    r = client.get("/models/model-scratch/export", params={"format": "onnx"})
    assert r.status_code == 409
    assert str(checkpoint_dir) not in r.json()["detail"]


def test_export_closed_with_protect_reads(make_client, trained_models):
    client = make_client(API_TOKEN="tok", PROTECT_READS=True)
    url = f"/models/{trained_models[1][0]}/export?format=safetensors"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer tok"}).status_code == 200


def test_export_a_slow_build_never_holds_a_request_past_a_few_seconds(make_client, checkpoint_dir, tmp_path,
                                                                      monkeypatch):
    import bnlenet.model_store.exports as exports

    release = threading.Event()
    real = exports.export_bytes_in_subprocess

    def slow(model, metadata, fmt, **kwargs):  # an export slower than any request may wait (ONNX on a busy machine)
        release.wait(30)
        return real(model, metadata, fmt, **kwargs)

    monkeypatch.setattr(exports, "export_bytes_in_subprocess", slow)
    client = make_client(CHECKPOINT_DIR=checkpoint_dir, EXPORT_DIR=tmp_path / "exports")
    started = time.monotonic()
    r = client.get("/models/model-scratch/export", params={"format": "pt2"})
    waited = time.monotonic() - started
    release.set()
    assert waited < 10, f"the first request waited {waited:.1f} s for the build"
    assert r.status_code == 202, r.text
    assert r.headers["location"] == "/models/model-scratch/export?format=pt2"
    assert int(r.headers["retry-after"]) >= 1
    assert "being built" in r.json()["detail"]
    again = client.get(r.headers["location"])  # waits a few seconds for the build, which is released now
    for _ in range(20):
        if again.status_code != 202:
            break
        again = client.get(r.headers["location"])
    assert again.status_code == 200, again.text
    program = torch.export.load(io.BytesIO(again.content))
    assert program.module()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
