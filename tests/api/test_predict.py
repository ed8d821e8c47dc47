"""POST /predict: answers, eval mode under concurrency, and every error."""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from bnlenet.model_store import ModelStore
from models.checkpoint import load_checkpoint
from models.data import CLASS_NAMES
from models.inference import predict_probabilities
from models.lenet import build_lenet
from models.preprocess import image_to_tensor, load_image
from tests.api.conftest import png_bytes, sample_image


@pytest.fixture(scope="module")
def onnxruntime_client(redis_server, trained_models):
    """One app with PREDICT_RUNTIME=onnxruntime, its sessions built for both models, shared by this module's tests."""
    from app.main import create_app
    from bnlenet.settings import Settings

    directory, ids = trained_models
    settings = Settings(REDIS_URL=redis_server.database_url(7), CHECKPOINT_DIR=directory, PREDICT_RUNTIME="onnxruntime")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for model_id in ids:
            first = _upload(client, png_bytes(sample_image()), model_id)
            assert first.status_code == 200 and first.json()["runtime"] == "eager"  # until the session is ready
            loaded = client.app.state.model_store.get(model_id)
            assert client.app.state.predictors.wait(loaded, timeout=300) == "onnxruntime"
        yield client


@pytest.fixture(params=["eager", "onnxruntime"])
def any_client(request):
    """The app under each runtime: eager (this test's own), onnxruntime (the module's, sessions ready)."""
    return request.getfixturevalue("client" if request.param == "eager" else "onnxruntime_client")


def _expected(checkpoint_dir, model_id, data: bytes) -> list[float]:
    model = load_checkpoint(checkpoint_dir / f"{model_id}.safetensors").model
    return predict_probabilities(model, image_to_tensor(data))[0].tolist()


def _upload(client, data: bytes, model_id: str | None = None, filename="x.png"):
    fields = {"model_id": model_id} if model_id else None
    return client.post("/predict", files={"file": (filename, data, "image/png")}, data=fields)


def test_predict_upload_matches_the_checkpoint(any_client, trained_models):
    directory, ids = trained_models
    data = png_bytes(sample_image(3))
    r = _upload(any_client, data, ids[0])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == ids[0] and body["runtime"] == any_client.app.state.settings.PREDICT_RUNTIME
    np.testing.assert_allclose(body["probabilities"], _expected(directory, ids[0], data), atol=1e-6)
    assert body["class_index"] == int(np.argmax(body["probabilities"]))
    assert isinstance(body["class_name"], str)


def test_predict_defaults_to_the_newest_model(client, trained_models):
    r = _upload(client, png_bytes(sample_image(1)))
    assert r.status_code == 200
    assert r.json()["model_id"] == trained_models[1][-1]


def test_predict_json_pixels_equal_the_same_image_uploaded(any_client, trained_models):
    img = sample_image(5)
    by_json = any_client.post("/predict", json={"pixels": (img / 255.0).tolist()}).json()
    by_upload = _upload(any_client, png_bytes(img)).json()
    np.testing.assert_allclose(by_json["probabilities"], by_upload["probabilities"], atol=1e-6)


@pytest.mark.parametrize("mode", ["I;16", "P", "RGBA", "CMYK", "RGB", "LA", "1"])
def test_predict_accepts_common_image_modes(client, mode):
    img = Image.fromarray(sample_image(2)).convert("RGB" if mode in ("CMYK", "RGB") else "L")
    if mode == "I;16":
        img = Image.fromarray(sample_image(2).astype(np.uint16) * 257)  # 16-bit grayscale
        assert img.mode.startswith("I;16")
    else:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if mode == "CMYK" else ("TIFF" if mode == "LA" else "PNG"))
    r = _upload(client, buf.getvalue())
    assert r.status_code == 200, (mode, r.text)


def test_predict_resizes_large_images(client, trained_models):
    # The README: any size is read and reduced to the 28x28 grayscale the model sees. The answer is
    # the newest model's on that reduction (models.preprocess), not merely a 200.
    directory, ids = trained_models
    big = Image.fromarray(sample_image(4)).resize((300, 200))
    buf = io.BytesIO()
    big.save(buf, format="JPEG")
    data = buf.getvalue()
    assert load_image(data).size == (28, 28)
    r = _upload(client, data, filename="x.jpg")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == ids[-1]
    np.testing.assert_allclose(body["probabilities"], _expected(directory, ids[-1], data), atol=1e-6)
    assert body["class_index"] == int(np.argmax(body["probabilities"]))


def test_predict_unknown_model_is_404(client):
    r = _upload(client, png_bytes(sample_image()), "no-such-model")
    assert r.status_code == 404
    assert "no-such-model" in r.json()["detail"]


@pytest.mark.parametrize("model_id", ["../model-scratch", "..", "a/b", "/etc/passwd", "x.safetensors", "-x"])
def test_predict_model_ids_never_name_paths(client, model_id):
    r = client.post("/predict", json={"pixels": [[0.0] * 28] * 28, "model_id": model_id})
    assert r.status_code == 404


def test_predict_without_any_model_is_409(make_client, tmp_path):
    client = make_client(CHECKPOINT_DIR=tmp_path / "empty")
    r = client.post("/predict", json={"pixels": [[0.0] * 28] * 28})
    assert r.status_code == 409
    assert "train" in r.json()["detail"]


def test_predict_not_an_image_is_415(client):
    r = _upload(client, b"this is plain text, not a picture")
    assert r.status_code == 415


def test_predict_empty_upload_is_422(client):
    r = _upload(client, b"")
    assert r.status_code == 422
    assert "empty" in r.json()["detail"]


def test_predict_truncated_image_is_4xx(client):
    r = _upload(client, png_bytes(sample_image())[:60])
    assert r.status_code in (415, 422)


def test_predict_decompression_bomb_is_422(client):
    # A valid PNG header declaring 100000 x 100000 pixels, with almost no data.
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    r = _upload(client, png)
    assert r.status_code in (413, 415, 422)
    assert r.status_code == 422


def test_predict_upload_over_the_limit_is_413(make_client):
    client = make_client(MAX_UPLOAD_BYTES=1000)
    noisy = np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8)
    r = _upload(client, png_bytes(noisy))
    assert r.status_code == 413


def test_predict_body_over_the_limit_is_413(make_client):
    client = make_client(MAX_BODY_BYTES=10_000)
    r = client.post("/predict", content=b"x" * 20_000, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_predict_missing_file_field_is_422(client):
    r = client.post("/predict", files={"image": ("x.png", png_bytes(sample_image()), "image/png")})
    assert r.status_code == 422
    assert "'file'" in r.json()["detail"]


def test_predict_wrong_content_type_is_415(client):
    r = client.post("/predict", content=png_bytes(sample_image()), headers={"content-type": "image/png"})
    assert r.status_code == 415


@pytest.mark.parametrize("pixels", [
    [[0.0] * 28] * 27,
    [[0.0] * 27] * 28,
    [0.0] * 784,
    [[2.0] * 28] * 28,
    [[-0.1] * 28] * 28,
    "abc",
])
def test_predict_bad_pixels_are_422(client, pixels):
    r = client.post("/predict", json={"pixels": pixels})
    assert r.status_code == 422, r.text


def test_predict_nan_pixels_are_422(client):
    row = "[" + ",".join(["NaN"] + ["0"] * 27) + "]"
    body = '{"pixels": [' + ",".join([row] * 28) + "]}"
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "finite" in json.dumps(r.json())


def test_predict_unknown_json_field_is_422(client):
    r = client.post("/predict", json={"pixels": [[0.0] * 28] * 28, "extra": 1})
    assert r.status_code == 422


def test_predict_pickle_is_not_an_image(client):
    r = _upload(client, pickle.dumps({"a": 1}))
    assert r.status_code == 415


def test_predict_works_while_redis_is_down(make_client, dead_redis_url, trained_models):
    # The same answer as with Redis up: the newest model, its probabilities for this image.
    directory, ids = trained_models
    client = make_client(REDIS_URL=dead_redis_url)
    data = png_bytes(sample_image())
    r = _upload(client, data)
    assert r.status_code == 200, r.text
    assert r.json()["model_id"] == ids[-1]
    np.testing.assert_allclose(r.json()["probabilities"], _expected(directory, ids[-1], data), atol=1e-6)
    r = _upload(client, data, ids[0])  # and any other model by id
    assert r.status_code == 200 and r.json()["model_id"] == ids[0], r.text
    np.testing.assert_allclose(r.json()["probabilities"], _expected(directory, ids[0], data), atol=1e-6)


def test_predict_closed_with_protect_reads(make_client):
    client = make_client(API_TOKEN="tok", PROTECT_READS=True)
    assert _upload(client, png_bytes(sample_image())).status_code == 401
    r = client.post("/predict", json={"pixels": [[0.0] * 28] * 28}, headers={"Authorization": "Bearer no"})
    assert r.status_code == 403
    r = client.post("/predict", json={"pixels": [[0.0] * 28] * 28}, headers={"Authorization": "Bearer tok"})
    assert r.status_code == 200


def test_predict_open_by_default_even_with_a_token(make_client):
    client = make_client(API_TOKEN="tok")
    assert _upload(client, png_bytes(sample_image())).status_code == 200


def _bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_predict_is_eval_mode_under_concurrency(any_client, trained_models):
    """Many requests at once give each image the answer it gets alone, and change no statistics."""
    model_id = trained_models[1][-1]
    images = [png_bytes(sample_image(i)) for i in range(16)]
    alone = [_upload(any_client, data, model_id).json()["probabilities"] for data in images]
    store: ModelStore = any_client.app.state.model_store
    before = _bn_buffers(store.get(model_id).model)

    async def burst() -> list[list[float]]:
        transport = httpx.ASGITransport(app=any_client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            reqs = [
                ac.post("/predict", files={"file": ("x.png", images[i % 16], "image/png")},
                        data={"model_id": model_id})
                for i in range(128)
            ]
            return [r.json()["probabilities"] for r in await asyncio.gather(*reqs)]

    together = asyncio.run(burst())
    with ThreadPoolExecutor(8) as pool:  # and from threads, as a threaded server would
        threaded = list(pool.map(lambda i: _upload(any_client, images[i % 16], model_id).json()["probabilities"],
                                 range(64)))
    for i, probs in enumerate(together):
        assert probs == alone[i % 16]
    for i, probs in enumerate(threaded):
        assert probs == alone[i % 16]
    after = _bn_buffers(store.get(model_id).model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not store.get(model_id).model.training


def test_predict_slow_decode_never_stalls_other_requests(client, monkeypatch):
    # An upload whose decode takes a second (a big image within the budget, a slow codec):
    # it runs off the event loop, so /healthz answers at once meanwhile.
    import time

    import app.api.routes.predict as predict_route

    def slow_decode(data: bytes) -> torch.Tensor:
        time.sleep(1.0)
        return image_to_tensor(data)

    monkeypatch.setattr(predict_route, "image_to_tensor", slow_decode)
    with ThreadPoolExecutor(1) as pool:
        upload = pool.submit(_upload, client, png_bytes(sample_image()))
        time.sleep(0.2)  # the decode is under way
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        waited = time.perf_counter() - started
        assert upload.result().status_code == 200
    assert waited < 0.5, f"/healthz waited {waited:.2f} s behind a decode"


def test_predict_cheap_file_declaring_a_huge_image_is_refused(client):
    buf = io.BytesIO()
    Image.new("RGBA", (4096, 4096), (0, 0, 0, 0)).save(buf, format="PNG")
    r = _upload(client, buf.getvalue())
    assert r.status_code == 422
    assert "4096x4096" in r.json()["detail"] and "1024x1024" in r.json()["detail"]


# answers people read, and batches -------------------------------------------------------------

def test_predict_answer_names_the_classes(any_client, trained_models):
    r = any_client.post("/predict?top_k=3", files={"file": ("x.png", png_bytes(sample_image(7)), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    probs = body["probabilities"]
    assert body["bn_mode"] == "eval"
    assert list(body["scores"]) == list(CLASS_NAMES)
    assert list(body["scores"].values()) == probs
    assert body["probability"] == max(probs) == probs[body["class_index"]]
    assert [t["probability"] for t in body["top_k"]] == sorted(probs, reverse=True)[:3]
    assert body["top_k"][0] == {"class_index": body["class_index"], "class_name": body["class_name"],
                                "probability": body["probability"]}
    assert all(CLASS_NAMES[t["class_index"]] == t["class_name"] for t in body["top_k"])


@pytest.mark.parametrize("top_k", [0, 1001, "x"])
def test_predict_bad_top_k_is_422(client, top_k):
    r = client.post(f"/predict/pixels?top_k={top_k}", json={"pixels": [[0.0] * 28] * 28})
    assert r.status_code == 422


def test_predict_pixels_equal_the_same_image_uploaded(any_client):
    img = sample_image(6)
    by_pixels = any_client.post("/predict/pixels", json={"pixels": (img / 255.0).tolist()})
    assert by_pixels.status_code == 200, by_pixels.text
    by_upload = _upload(any_client, png_bytes(img)).json()
    np.testing.assert_allclose(by_pixels.json()["probabilities"], by_upload["probabilities"], atol=1e-6)


def test_predict_pixels_out_of_range_is_422_with_field_errors(client):
    r = client.post("/predict/pixels", json={"pixels": [[1.5] * 28] * 28})
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], str)


def test_predict_batch_equals_single_answers(any_client, trained_models):
    model_id = trained_models[1][0]
    images = [png_bytes(sample_image(i)) for i in range(20)]
    r = any_client.post("/predict/batch?top_k=2", files=[("files", (f"{i}.png", data, "image/png"))
                                                          for i, data in enumerate(images)], data={"model_id": model_id})
    assert r.status_code == 200, r.text
    batch = r.json()
    assert batch["count"] == len(batch["data"]) == 20 and batch["model_id"] == model_id
    for data, answer in zip(images, batch["data"], strict=True):
        single = any_client.post("/predict?top_k=2", files={"file": ("x.png", data, "image/png")},
                                 data={"model_id": model_id}).json()
        np.testing.assert_allclose(answer["probabilities"], single["probabilities"], atol=1e-6, rtol=0)
        assert answer["class_index"] == single["class_index"]
        assert [t["class_index"] for t in answer["top_k"]] == [t["class_index"] for t in single["top_k"]]


def test_predict_batch_pixels_equal_single_answers(any_client):
    arrays = [(sample_image(i) / 255.0).tolist() for i in range(8)]
    r = any_client.post("/predict/batch/pixels", json={"images": arrays})
    assert r.status_code == 200, r.text
    for pixels, answer in zip(arrays, r.json()["data"], strict=True):
        single = any_client.post("/predict/pixels", json={"pixels": pixels}).json()
        np.testing.assert_allclose(answer["probabilities"], single["probabilities"], atol=1e-6, rtol=0)
    # the JSON form on /predict/batch itself, for any_clients that post there
    again = any_client.post("/predict/batch", json={"images": arrays})
    assert again.status_code == 200 and again.json()["data"] == r.json()["data"]


def test_predict_batch_bad_image_names_its_index(client):
    files = [("files", ("a.png", png_bytes(sample_image(1)), "image/png")),
             ("files", ("b.png", png_bytes(sample_image(2)), "image/png")),
             ("files", ("c.png", b"not an image", "image/png"))]
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 415
    assert "image 2" in r.json()["detail"]
    arrays = [[[0.0] * 28] * 28, [[0.0] * 28] * 27]
    r = client.post("/predict/batch/pixels", json={"images": arrays})
    assert r.status_code == 422
    assert any(e["loc"][:3] == ["body", "images", 1] for e in r.json()["errors"])


def test_predict_batch_over_the_limit_names_the_limit(make_client):
    client = make_client(MAX_PREDICT_BATCH=4)
    data = png_bytes(sample_image(1))
    r = client.post("/predict/batch", files=[("files", (f"{i}.png", data, "image/png")) for i in range(5)])
    assert r.status_code == 413
    assert "4" in r.json()["detail"] and "MAX_PREDICT_BATCH" in r.json()["detail"]
    r = client.post("/predict/batch", files=[("files", (f"{i}.png", data, "image/png")) for i in range(4)])
    assert r.status_code == 200
    r = client.post("/predict/batch/pixels", json={"images": [[[0.0] * 28] * 28] * 5})
    assert r.status_code == 413 and "MAX_PREDICT_BATCH" in r.json()["detail"]


def test_predict_batch_default_limit_is_256(client):
    data = png_bytes(sample_image(1))
    r = client.post("/predict/batch", files=[("files", (f"{i}.png", data, "image/png")) for i in range(257)])
    assert r.status_code == 413 and "256" in r.json()["detail"]


def test_predict_unknown_multipart_field_is_422(client):
    r = client.post("/predict", files={"file": ("x.png", png_bytes(sample_image()), "image/png")},
                    data={"modelid": "typo"})
    assert r.status_code == 422 and "'modelid'" in r.json()["detail"]


def test_predict_names_the_classes_of_the_model_it_serves(make_client, checkpoint_dir, trained_models):
    """A model trained on other classes answers with its own names, taken from its checkpoint."""
    digits = [f"digit {word}" for word in ("zero", "one", "two", "three", "four", "five", "six", "seven",
                                           "eight", "nine")]
    source = load_checkpoint(checkpoint_dir / f"{trained_models[1][0]}.safetensors")
    ModelStore(checkpoint_dir).publish("model-digits", source.model, {**source.metadata, "classes": digits})
    client = make_client(CHECKPOINT_DIR=checkpoint_dir)
    pixels = (sample_image(8) / 255.0).tolist()
    single = client.post("/predict/pixels?top_k=10", json={"pixels": pixels, "model_id": "model-digits"})
    assert single.status_code == 200, single.text
    body = single.json()
    assert list(body["scores"]) == digits
    assert body["class_name"] == digits[body["class_index"]]
    assert [t["class_name"] for t in body["top_k"]] == [digits[t["class_index"]] for t in body["top_k"]]
    upload = client.post("/predict/batch", files=[("files", ("x.png", png_bytes(sample_image(8)), "image/png"))],
                         data={"model_id": "model-digits"})
    assert upload.status_code == 200, upload.text
    assert list(upload.json()["data"][0]["scores"]) == digits
    # The other models keep Fashion-MNIST's names.
    other = client.post("/predict/pixels", json={"pixels": pixels, "model_id": trained_models[1][0]}).json()
    assert list(other["scores"]) == list(CLASS_NAMES)


def test_predict_top_k_reaches_every_class_of_a_model_of_more_than_ten(make_client, checkpoint_dir, trained_models):
    """A model of 26 classes (a user's letters, say) lists up to all 26 in ``top_k``."""
    letters = [chr(ord("A") + i) for i in range(26)]
    source = load_checkpoint(checkpoint_dir / f"{trained_models[1][0]}.safetensors")
    torch.manual_seed(0)
    ModelStore(checkpoint_dir).publish("model-letters", build_lenet("scratch", len(letters)).eval(),
                                       {**source.metadata, "variant": "scratch", "classes": letters})
    client = make_client(CHECKPOINT_DIR=checkpoint_dir)
    body = {"pixels": (sample_image(8) / 255.0).tolist(), "model_id": "model-letters"}
    r = client.post("/predict/pixels?top_k=26", json=body)
    assert r.status_code == 200, r.text
    top = r.json()["top_k"]
    assert sorted(t["class_name"] for t in top) == letters
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    r = client.post("/predict/pixels?top_k=1001", json=body)
    assert r.status_code == 422 and "1000" in r.text, r.text


def test_predict_checkpoint_naming_the_wrong_number_of_classes_is_409(make_client, checkpoint_dir, trained_models):
    source = load_checkpoint(checkpoint_dir / f"{trained_models[1][0]}.safetensors")
    ModelStore(checkpoint_dir).publish("model-three", source.model, {**source.metadata, "classes": ["a", "b", "c"]})
    client = make_client(CHECKPOINT_DIR=checkpoint_dir)
    r = client.post("/predict/pixels", json={"pixels": [[0.0] * 28] * 28, "model_id": "model-three"})
    assert r.status_code == 409 and "10 outputs" in r.json()["detail"], r.text


# one place to name a model ------------------------------------------------------------------

@pytest.mark.parametrize(("path", "field"), [("/predict", "file"), ("/predict/batch", "files")])
def test_predict_model_id_sent_as_a_file_is_422_naming_the_field(client, trained_models, path, field):
    r = client.post(path, files=[(field, ("x.png", png_bytes(sample_image()), "image/png")),
                                 ("model_id", ("id.txt", trained_models[1][0].encode(), "text/plain"))])
    assert r.status_code == 422, r.text
    assert "model_id" in r.json()["detail"] and "file" in r.json()["detail"]


def test_predict_operations_name_the_model_in_one_place(client):
    """The document names the model in the body (or form) only, and an empty name is not one."""
    spec = client.get("/openapi.json").json()
    for path in ("/predict", "/predict/pixels", "/predict/batch", "/predict/batch/pixels"):
        op = spec["paths"][path]["post"]
        assert "model_id" not in {p["name"] for p in op.get("parameters", [])}, path
    for name in ("PredictRequest", "PredictBatchRequest"):
        model_id = spec["components"]["schemas"][name]["properties"]["model_id"]
        assert {"type": "string", "minLength": 1} in model_id["anyOf"], model_id


@pytest.mark.parametrize("path", ["/predict/pixels", "/predict/batch/pixels"])
def test_predict_empty_model_name_in_the_body_is_a_field_error(client, trained_models, path):
    pixels = [[0.0] * 28] * 28
    body = {"pixels": pixels} if path == "/predict/pixels" else {"images": [pixels]}
    r = client.post(f"{path}?model_id={trained_models[1][0]}", json={**body, "model_id": ""})
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["errors"]] == [["body", "model_id"]], r.text


@pytest.mark.parametrize("path", ["/predict/pixels", "/predict/batch/pixels"])
def test_predict_model_named_in_the_query_still_serves_outside_the_schema(client, trained_models, path):
    pixels = [[0.0] * 28] * 28
    body = {"pixels": pixels} if path == "/predict/pixels" else {"images": [pixels]}
    older, newer = trained_models[1]
    r = client.post(f"{path}?model_id={older}", json=body)
    assert r.status_code == 200 and r.json()["model_id"] == older, r.text
    r = client.post(f"{path}?model_id={older}", json={**body, "model_id": older})
    assert r.status_code == 200 and r.json()["model_id"] == older, r.text
    r = client.post(f"{path}?model_id={older}", json={**body, "model_id": newer})
    assert r.status_code == 422 and "name one model, once" in r.json()["detail"]
