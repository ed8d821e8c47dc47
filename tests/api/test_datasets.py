"""POST /datasets, GET /datasets, GET and DELETE /datasets/{id}, aliases, samples.png, and POST /train's dataset,
on the app in-process with a real Redis and real Fashion-MNIST images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bnlenet.datasets.builtin import BUILTIN_ID
from bnlenet.model_store import ModelStore
from models.data import CLASS_NAMES
from models.lenet import build_lenet
from tests.bnlenet.datasets.builders import zeros_bomb
from tests.dataset_uploads import fashion_mnist_subset, folder_zip, idx_zip, npz

THREE = (0, 1, 7)  # T-shirt/top, Trouser, Sneaker


@pytest.fixture
def client(make_client, checkpoint_dir: Path):
    return make_client(CHECKPOINT_DIR=str(checkpoint_dir))


@pytest.fixture(scope="module")
def three_classes() -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    return fashion_mnist_subset(THREE, train=60, test=15)


def _upload(client, data: bytes, filename: str = "three.zip", **fields: str):
    return client.post("/datasets", files={"file": (filename, data, "application/octet-stream")}, data=fields)


def test_datasets_list_the_builtin_fashion_mnist(client):
    r = client.get("/datasets")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 1
    (builtin,) = body["data"]
    assert builtin["id"] == BUILTIN_ID and builtin["builtin"] is True
    assert builtin["aliases"] == ["fashion-mnist"]
    assert builtin["classes"] == list(CLASS_NAMES) and builtin["num_classes"] == 10
    assert (builtin["train_size"], builtin["test_size"]) == (60000, 10000)
    assert client.get("/datasets/fashion-mnist").json()["id"] == BUILTIN_ID


def test_datasets_upload_of_class_folders_is_stored_with_its_report(client, three_classes):
    arrays, names = three_classes
    r = _upload(client, folder_zip(arrays, names), name="three")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("ds-") and body["builtin"] is False
    assert body["classes"] == ["Sneaker", "T-shirt-top", "Trouser"]  # folder names, sorted
    assert (body["train_size"], body["test_size"]) == (60, 15)
    assert body["aliases"] == ["three"] and body["format"] == "zip-split"
    assert sum(body["report"]["counts"]["train"].values()) == 60
    assert r.headers["location"] == f"/datasets/{body['id']}"
    assert client.get("/datasets/three").json() == body
    listed = client.get("/datasets").json()
    assert listed["count"] == 2 and [d["id"] for d in listed["data"]] == [BUILTIN_ID, body["id"]]


def test_datasets_the_same_content_twice_is_one_dataset(client, three_classes, tmp_path):
    arrays, names = three_classes
    first = _upload(client, idx_zip(arrays, tmp_path), "three-idx.zip", classes=",".join(names))
    assert first.status_code == 201, first.text
    again = _upload(client, idx_zip(arrays, tmp_path), "three-idx.zip", classes=",".join(names))
    assert again.status_code == 200, again.text
    as_npz = _upload(client, npz(arrays), "three.npz", classes=",".join(names))
    assert as_npz.status_code == 200, as_npz.text  # another format, the same images, labels and classes
    assert first.json()["id"] == again.json()["id"] == as_npz.json()["id"]
    assert first.json()["classes"] == list(names)
    assert client.get("/datasets").json()["count"] == 2


def test_datasets_train_records_the_id_an_alias_names(client, three_classes):
    arrays, names = three_classes
    ds_id = _upload(client, folder_zip(arrays, names), name="three").json()["id"]
    r = client.post("/train", json={"epochs": 1, "dataset": "three"})
    assert r.status_code == 202, r.text
    assert r.json()["params"]["dataset"] == ds_id
    default = client.post("/train", json={"epochs": 1})
    assert default.status_code == 202 and default.json()["params"]["dataset"] == BUILTIN_ID
    null = client.post("/train", json={"epochs": 1, "dataset": None})  # the schema admits null: the default
    assert null.status_code == 202 and null.json()["params"]["dataset"] == BUILTIN_ID


def test_datasets_train_on_an_unknown_dataset_is_404(client):
    r = client.post("/train", json={"epochs": 1, "dataset": "no-such-set"})
    assert r.status_code == 404, r.text
    assert "no-such-set" in r.json()["detail"]
    assert client.get("/jobs").json()["count"] == 0  # nothing was queued


def test_datasets_delete_is_refused_while_a_job_uses_it(client, three_classes):
    arrays, names = three_classes
    ds_id = _upload(client, folder_zip(arrays, names)).json()["id"]
    job_id = client.post("/train", json={"epochs": 1, "dataset": ds_id}).json()["job_id"]
    r = client.delete(f"/datasets/{ds_id}")
    assert r.status_code == 409, r.text
    assert job_id in r.json()["detail"]
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    assert client.delete(f"/datasets/{ds_id}").status_code == 204
    assert client.get(f"/datasets/{ds_id}").status_code == 404
    assert client.get("/datasets").json()["count"] == 1


def test_datasets_delete_is_refused_while_a_model_uses_it(client, three_classes, checkpoint_dir):
    arrays, names = three_classes
    ds_id = _upload(client, folder_zip(arrays, names)).json()["id"]
    ModelStore(checkpoint_dir).publish("model-of-three", build_lenet("builtin", 3).eval(),
                                       {"variant": "builtin", "dataset": ds_id, "classes": list(names)})
    r = client.delete(f"/datasets/{ds_id}")
    assert r.status_code == 409, r.text
    assert "model-of-three" in r.json()["detail"]
    model = client.get("/models/model-of-three").json()
    assert model["dataset"] == ds_id and model["classes"] == list(names)
    assert client.delete("/models/model-of-three").status_code == 204
    assert client.delete(f"/datasets/{ds_id}").status_code == 204


def test_datasets_the_builtin_and_its_alias_stay(client):
    assert client.delete(f"/datasets/{BUILTIN_ID}").status_code == 409
    assert client.delete(f"/datasets/{BUILTIN_ID}/aliases/fashion-mnist").status_code == 409
    assert client.get("/datasets/fashion-mnist").json()["id"] == BUILTIN_ID


def test_datasets_aliases_point_and_move(client, three_classes):
    arrays, names = three_classes
    ds_id = _upload(client, folder_zip(arrays, names)).json()["id"]
    r = client.put(f"/datasets/{ds_id}/aliases/shop")
    assert r.status_code == 200 and r.json() == {"alias": "shop", "id": ds_id}
    assert client.get("/datasets/shop").json()["aliases"] == ["shop"]
    assert client.put(f"/datasets/{ds_id}/aliases/fashion-mnist").status_code == 409
    assert client.delete(f"/datasets/{ds_id}").status_code == 409  # an alias points at it
    assert client.delete(f"/datasets/{ds_id}/aliases/shop").status_code == 204
    assert client.get("/datasets/shop").status_code == 404


def test_datasets_a_zip_bomb_is_refused_and_nothing_is_stored(client):
    r = _upload(client, zeros_bomb("shirts/0001.png"), "bomb.zip")
    assert r.status_code in (413, 422), r.text
    body = r.json()
    assert body["problems"] and body["detail"]
    assert client.get("/datasets").json()["count"] == 1


def test_datasets_an_upload_past_the_cap_is_413(make_client, checkpoint_dir, three_classes):
    client = make_client(CHECKPOINT_DIR=str(checkpoint_dir), DATASET_MAX_UPLOAD_BYTES=4096)
    arrays, names = three_classes
    r = _upload(client, folder_zip(arrays, names))
    assert r.status_code == 413, r.text
    assert "4096" in r.json()["detail"]
    assert client.get("/datasets").json()["count"] == 1


def test_datasets_a_bad_form_field_is_422(client, three_classes):
    arrays, names = three_classes
    r = _upload(client, folder_zip(arrays, names), test_fraction="2")
    assert r.status_code == 422 and "test_fraction" in r.json()["detail"]
    r = client.post("/datasets", data={"name": "x"})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]


def test_datasets_samples_grid_has_a_row_per_class(client, three_classes):
    arrays, names = three_classes
    body = _upload(client, folder_zip(arrays, names)).json()
    r = client.get(f"/datasets/{body['id']}/samples.png?per_class=4")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    grid = np.asarray(Image.open(io.BytesIO(r.content)))
    assert grid.shape == (3 * 28, 4 * 28)
    # Row 0 is the first class in the dataset's order (Sneaker); its first tile is its first training image.
    sneakers = arrays["train_images"][arrays["train_labels"] == names.index("Sneaker")]
    assert any(np.array_equal(grid[:28, :28], img) for img in sneakers)


def test_datasets_samples_grid_is_cached_for_good_by_id_only_and_privately_behind_the_token(make_client,
                                                                                          three_classes):
    arrays, names = three_classes
    client = make_client()
    ds_id = _upload(client, folder_zip(arrays, names), name="grid-alias").json()["id"]
    try:
        assert client.get(f"/datasets/{ds_id}/samples.png").headers["cache-control"] == \
            "public, max-age=31536000, immutable"  # an id names its content
        by_alias = client.get("/datasets/grid-alias/samples.png")
        assert by_alias.headers["cache-control"] == "public, no-cache"  # an alias moves
        protected = make_client(API_TOKEN="s3cret", PROTECT_READS="true")
        r = protected.get(f"/datasets/{ds_id}/samples.png", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.headers["cache-control"] == "private, max-age=31536000, immutable"
    finally:  # the store outlives the test (the same images upload to the same id)
        client.delete(f"/datasets/{ds_id}/aliases/grid-alias")


def test_datasets_a_sweep_records_the_ids_its_dataset_names(client, three_classes):
    arrays, names = three_classes
    ds_id = _upload(client, folder_zip(arrays, names), name="three").json()["id"]
    grid = {"parameters": {"dataset": {"values": ["three", "fashion-mnist"]}}, "base": {"epochs": 1}}
    r = client.post("/sweeps", json=grid)
    assert r.status_code == 202, r.text
    jobs = client.get("/jobs", params={"sweep": r.json()["id"]}).json()["data"]
    assert [j["params"]["dataset"] for j in jobs] == [ds_id, BUILTIN_ID]  # resolved when the sweep is made
    unset = client.post("/sweeps", json={"parameters": {"seed": {"values": [0]}}, "base": {"epochs": 1}}).json()
    assert client.get("/jobs", params={"sweep": unset["id"]}).json()["data"][0]["params"]["dataset"] == BUILTIN_ID


def test_datasets_a_sweep_over_an_unknown_dataset_is_404_and_stores_nothing(client):
    r = client.post("/sweeps", json={"parameters": {"dataset": {"values": ["fashion-mnist", "no-such-set"]}}})
    assert r.status_code == 404, r.text
    assert "no-such-set" in r.json()["detail"]
    assert client.get("/jobs").json()["count"] == 0 and client.get("/sweeps").json()["count"] == 0


def test_datasets_delete_is_not_blocked_by_a_malformed_job_record(client, three_classes, redis_url):
    import redis

    from tests.bnlenet.test_jobs import MALFORMED

    arrays, names = three_classes
    ds_id = _upload(client, folder_zip(arrays, names)).json()["id"]
    planted = redis.Redis.from_url(redis_url)
    for job_id, raw in MALFORMED.items():  # records no worker can run (a hand edit, an older version's bug)
        planted.set(f"bnlenet:job:{job_id}", raw)
        planted.zadd("bnlenet:jobs:all", {job_id: 2.0})
        planted.zadd("bnlenet:jobs:status:queued", {job_id: 2.0})
    r = client.delete(f"/datasets/{ds_id}")
    assert r.status_code == 204, r.text
    assert client.get(f"/datasets/{ds_id}").status_code == 404
