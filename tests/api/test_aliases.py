"""The model registry's aliases over HTTP: PUT/DELETE /models/{id}/aliases/{alias}, the default alias, model_id in the query."""

from __future__ import annotations

import time

from tests.api.conftest import png_bytes, sample_image

PIXELS = {"pixels": [[0.5] * 28] * 28}


def _served(client, **params) -> str:
    r = client.post("/predict/pixels", json=PIXELS, params=params)
    assert r.status_code == 200, r.text
    return r.json()["model_id"]


def test_an_alias_decides_what_predict_serves(make_client, checkpoint_dir, trained_models):
    older, newest = trained_models[1]
    client = make_client(CHECKPOINT_DIR=checkpoint_dir)
    assert _served(client) == newest
    r = client.put(f"/models/{older}/aliases/production")
    assert r.status_code == 200 and r.json() == {"alias": "production", "model_id": older}
    assert _served(client) == older  # the default alias wins over the newest model
    upload = client.post("/predict", files={"file": ("x.png", png_bytes(sample_image(3)), "image/png")})
    assert upload.json()["model_id"] == older
    assert _served(client, model_id=newest) == newest  # named models still win
    listing = client.get("/models").json()
    assert listing["aliases"] == {"production": older} and listing["default_model_id"] == older
    assert {m["model_id"]: m["aliases"] for m in listing["data"]} == {older: ["production"], newest: []}
    assert client.delete(f"/models/{older}/aliases/production").status_code == 204
    assert _served(client) == newest
    assert client.get("/models").json()["default_model_id"] == newest


def test_an_alias_is_accepted_wherever_a_model_id_is(make_client, checkpoint_dir, trained_models):
    older, _ = trained_models[1]
    client = make_client(CHECKPOINT_DIR=checkpoint_dir)
    client.put(f"/models/{older}/aliases/champion").raise_for_status()
    assert client.get("/models/champion").json()["model_id"] == older
    assert client.get("/models/champion").json()["aliases"] == ["champion"]
    assert client.get("/models/champion/batchnorm").json()["model_id"] == older
    assert _served(client, model_id="champion") == older
    r = client.post("/predict/pixels", json={**PIXELS, "model_id": "champion"})
    assert r.json()["model_id"] == older
    r = client.post("/predict/batch/pixels", json={"images": [PIXELS["pixels"]] * 2}, params={"model_id": "champion"})
    assert r.json()["model_id"] == older and [a["model_id"] for a in r.json()["data"]] == [older, older]
    assert client.get("/models/champion/checkpoint").content == (checkpoint_dir / f"{older}.safetensors").read_bytes()
    r = client.put("/models/champion/aliases/staging")  # an alias of an alias names the same model
    assert r.json()["model_id"] == older


def test_the_query_model_id_is_honoured_and_must_agree_with_the_body(client, trained_models):
    older, newest = trained_models[1]
    assert _served(client, model_id=older) == older  # it used to be silently ignored
    upload = client.post("/predict", params={"model_id": older},
                         files={"file": ("x.png", png_bytes(sample_image(1)), "image/png")})
    assert upload.status_code == 200 and upload.json()["model_id"] == older
    r = client.post("/predict/pixels", json={**PIXELS, "model_id": newest}, params={"model_id": older})
    assert r.status_code == 422 and "in the query" in r.json()["detail"]
    r = client.post("/predict/pixels", json=PIXELS, params={"model_id": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = client.post("/predict/pixels", json=PIXELS, params={"model_id": "../x"})
    assert r.status_code == 422


def test_alias_mistakes_are_refused_with_a_reason(make_client, checkpoint_dir, trained_models):
    older, newest = trained_models[1]
    client = make_client(CHECKPOINT_DIR=checkpoint_dir)
    r = client.put(f"/models/{older}/aliases/{newest}")
    assert r.status_code == 409 and "shadow" in r.json()["detail"]
    r = client.put("/models/missing/aliases/production")
    assert r.status_code == 404
    assert client.put(f"/models/{older}/aliases/bad.name").status_code == 422
    assert client.delete(f"/models/{older}/aliases/production").status_code == 404
    client.put(f"/models/{older}/aliases/production").raise_for_status()
    r = client.delete(f"/models/{newest}/aliases/production")
    assert r.status_code == 409 and older in r.json()["detail"]  # it points elsewhere: nothing removed
    r = client.delete(f"/models/{older}")
    assert r.status_code == 409 and "production" in r.json()["detail"]
    assert client.get(f"/models/{older}").status_code == 200  # nothing lost
    client.delete(f"/models/{older}/aliases/production").raise_for_status()
    assert client.delete(f"/models/{older}").status_code == 204


def test_alias_writes_need_the_token(make_client, checkpoint_dir, trained_models):
    older, _ = trained_models[1]
    client = make_client(CHECKPOINT_DIR=checkpoint_dir, API_TOKEN="tok")
    assert client.put(f"/models/{older}/aliases/production").status_code == 401
    assert client.put(f"/models/{older}/aliases/production",
                      headers={"Authorization": "Bearer wrong"}).status_code == 403
    auth = {"Authorization": "Bearer tok"}
    assert client.put(f"/models/{older}/aliases/production", headers=auth).status_code == 200
    assert client.delete(f"/models/{older}/aliases/production").status_code == 401
    assert client.delete(f"/models/{older}/aliases/production", headers=auth).status_code == 204


def test_a_promotion_reaches_every_api_process_within_the_refresh(make_client, checkpoint_dir, trained_models):
    older, newest = trained_models[1]
    apis = [make_client(CHECKPOINT_DIR=checkpoint_dir) for _ in range(3)]  # each has its own store and caches
    assert {_served(api) for api in apis} == {newest}
    apis[0].put(f"/models/{older}/aliases/production").raise_for_status()
    started = time.monotonic()
    while {_served(api) for api in apis} != {older}:
        assert time.monotonic() - started < 3, "a promotion did not reach every API within the refresh"
        time.sleep(0.05)
