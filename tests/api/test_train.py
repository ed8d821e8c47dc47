"""POST /train."""

from __future__ import annotations

import json

import pytest
import redis

from bnlenet.datasets.builtin import BUILTIN_ID
from bnlenet.settings import get_settings
from bnlenet.training_queue import queue_key


def test_train_accepts_the_defaults(client, redis_url):
    r = client.post("/train", json={})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued"
    assert r.headers["location"] == f"/jobs/{job['job_id']}"
    # The chapter's hyperparameters, with precise BN on and the last epochs' weights averaged:
    # the better stored model by default.
    assert job["params"] == {"variant": "scratch", "epochs": 10, "lr": 1.0, "batch_size": 256, "seed": 0,
                             "precise_bn": True, "swa_epochs": 5, "init_model": None, "device": None,
                             "checkpoint_every": 1, "dataset": BUILTIN_ID}  # the built-in Fashion-MNIST, by id
    assert job["final_test_acc"] is None and job["history"] == []
    assert job["attempts"] == 0
    assert redis.Redis.from_url(redis_url).llen(queue_key(get_settings())) == 1  # a task was published


def test_train_job_is_readable_at_its_location(client):
    r = client.post("/train", json={"variant": "builtin", "epochs": 2, "lr": 0.5, "batch_size": 32})
    job = client.get(r.headers["location"]).json()
    assert job["params"]["variant"] == "builtin"
    assert job["params"]["batch_size"] == 32
    assert job["task_id"] if "task_id" in job else True


@pytest.mark.parametrize("body, field", [
    ({"unknown": 1}, "unknown"),
    ({"variant": "resnet"}, "variant"),
    ({"epochs": 0}, "epochs"),
    ({"epochs": get_settings().MAX_EPOCHS + 1}, "epochs"),
    ({"lr": 0}, "lr"),
    ({"lr": -1}, "lr"),
    ({"lr": get_settings().MAX_LR * 10}, "lr"),
    ({"batch_size": 1}, "batch_size"),
    ({"batch_size": get_settings().MAX_BATCH_SIZE + 1}, "batch_size"),
    ({"epochs": 1.5}, "epochs"),
    ({"seed": -1}, "seed"),
    ({"device": "tpu"}, "device"),
    ({"precise_bn": "maybe"}, "precise_bn"),
])
def test_train_rejects_invalid_fields(client, body, field):
    r = client.post("/train", json=body)
    assert r.status_code == 422, r.text
    assert any(field in err["loc"] for err in r.json()["errors"])


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_train_rejects_non_finite_lr(client, literal):
    r = client.post("/train", content=f'{{"lr": {literal}}}', headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "finite" in json.dumps(r.json()["detail"])


def test_train_accepts_limits_exactly(client):
    s = get_settings()
    r = client.post("/train", json={"epochs": s.MAX_EPOCHS, "lr": s.MAX_LR, "batch_size": 2})
    assert r.status_code == 202, r.text


def test_train_rejects_non_json(client):
    r = client.post("/train", content=b"epochs=3", headers={"content-type": "text/plain"})
    assert r.status_code == 422


def test_train_answers_503_when_redis_is_down(make_client, dead_redis_url):
    client = make_client(REDIS_URL=dead_redis_url)
    r = client.post("/train", json={"epochs": 1})
    assert r.status_code == 503
    assert "Redis" in r.json()["detail"]


def test_train_needs_the_token_when_one_is_set(make_client):
    client = make_client(API_TOKEN="s3cret")
    assert client.post("/train", json={}).status_code == 401
    assert client.post("/train", json={}, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.post("/train", json={}, headers={"Authorization": "Basic s3cret"}).status_code == 401
    r = client.post("/train", json={}, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 202


def test_train_body_over_the_limit_is_413(make_client):
    client = make_client(MAX_BODY_BYTES=1000)
    r = client.post("/train", content=b'{"epochs": 1' + b" " * 2000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_train_undecodable_body_is_422(client):
    r = client.post("/train", content=b"\xff\xfe\x00", headers={"content-type": "application/json"})
    assert r.status_code == 422


@pytest.mark.parametrize("body, field", [
    ({"epochs": "3"}, "epochs"),
    ({"precise_bn": 0}, "precise_bn"),
    ({"precise_bn": "true"}, "precise_bn"),
    ({"batch_size": 64.0}, "batch_size"),
    ({"lr": "0.5"}, "lr"),
])
def test_train_types_are_strict(client, body, field):
    r = client.post("/train", json=body)
    assert r.status_code == 422, r.text
    assert any(field in err["loc"] for err in r.json()["errors"])


def test_train_limits_follow_the_apps_settings(make_client):
    client = make_client(MAX_LR=2.0, MAX_EPOCHS=3)
    assert client.post("/train", json={"lr": 2.5}).status_code == 422
    assert client.post("/train", json={"epochs": 4}).status_code == 422
    assert client.post("/train", json={"lr": 2.0, "epochs": 3}).status_code == 202
    schema = client.get("/openapi.json").json()["components"]["schemas"]["TrainRequest"]["properties"]
    assert schema["lr"]["maximum"] == 2.0 and schema["epochs"]["maximum"] == 3
    assert "precise" in client.get("/openapi.json").json()["paths"]["/train"]["post"]["description"].lower()


def test_train_lr_accepts_an_integer(client):
    assert client.post("/train", json={"lr": 1}).status_code == 202


def test_train_idempotency_key_makes_a_retry_return_the_same_job(client, redis_url):
    body = {"epochs": 2, "batch_size": 64}
    first = client.post("/train", json=body, headers={"Idempotency-Key": "retry-me-1"})
    again = client.post("/train", json=body, headers={"Idempotency-Key": "retry-me-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["location"] == first.headers["location"]
    assert client.get("/jobs").json()["count"] == 1
    assert redis.Redis.from_url(redis_url).llen(queue_key(get_settings())) == 1  # one task, not two
    other = client.post("/train", json=body, headers={"Idempotency-Key": "retry-me-2"})
    assert other.json()["job_id"] != first.json()["job_id"]


def test_train_idempotency_key_reused_with_other_parameters_is_409(client):
    assert client.post("/train", json={"epochs": 2}, headers={"Idempotency-Key": "k"}).status_code == 202
    r = client.post("/train", json={"epochs": 3}, headers={"Idempotency-Key": "k"})
    assert r.status_code == 409 and "Idempotency-Key" in r.json()["detail"]


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\there"])
def test_train_idempotency_key_must_be_a_short_printable_token(client, key):
    assert client.post("/train", json={}, headers={"Idempotency-Key": key}).status_code == 422


def test_train_stored_job_is_202_even_when_the_publish_fails(make_client, redis_url, dead_redis_url):
    # The broker refuses the publish after the record is stored: the job is kept (in the
    # outbox, for the workers to publish), so the answer is 202, never a 503 for a stored job.
    from bnlenet.jobs import JobStore
    from bnlenet.settings import Settings
    from bnlenet.training_queue import Publisher

    client = make_client()
    client.app.state.publisher.close()
    client.app.state.publisher = Publisher(Settings(REDIS_URL=dead_redis_url))  # a broker that is down
    r = client.post("/train", json={})
    assert r.status_code == 202
    assert JobStore.from_url(redis_url).pending_publish(0) == [r.json()["job_id"]]


def test_train_503_stores_nothing_when_redis_refuses_writes(client, redis_url):
    r = redis.Redis.from_url(redis_url)
    before = client.get("/jobs").json()["count"]
    r.config_set("maxmemory", "1")  # Redis answers reads and refuses writes (OOM), as with a full disk
    r.config_set("maxmemory-policy", "noeviction")
    try:
        answer = client.post("/train", json={})
    finally:
        r.config_set("maxmemory", "0")
    assert answer.status_code == 503
    assert client.get("/jobs").json()["count"] == before
    assert r.zcard("bnlenet:outbox") == 0


def test_train_chunked_body_over_the_limit_is_413(make_client):
    client = make_client(MAX_BODY_BYTES=4096)

    def chunks():
        yield b'{"epochs": 1, "pad": "'
        for _ in range(10):
            yield b"x" * 1024
        yield b'"}'

    r = client.post("/train", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "4096" in r.json()["detail"]
    small = client.post("/train", content=iter([b'{"epochs": ', b"1}"]), headers={"Content-Type": "application/json"})
    assert small.status_code == 202, small.text


# init_model: a job that starts from a model --------------------------------------------------

def test_train_init_model_is_stored_as_the_model_id_an_alias_means(make_client, checkpoint_dir):
    client = make_client(CHECKPOINT_DIR=checkpoint_dir)  # a private store: the alias stays in this test
    assert client.put("/models/model-scratch/aliases/best").status_code == 200
    r = client.post("/train", json={"epochs": 1, "init_model": "best"})
    assert r.status_code == 202, r.text
    assert r.json()["params"]["init_model"] == "model-scratch"  # the model validated now is the one it starts from
    assert client.get(r.headers["location"]).json()["params"]["init_model"] == "model-scratch"


def test_train_init_model_unknown_is_422_and_stores_nothing(client):
    r = client.post("/train", json={"init_model": "no-such-model"})
    assert r.status_code == 422, r.text
    assert "init_model" in r.json()["detail"] and "no-such-model" in r.json()["detail"]
    assert client.get("/jobs").json()["count"] == 0


def test_train_init_model_of_another_variant_is_422_saying_which(client):
    r = client.post("/train", json={"variant": "scratch", "init_model": "model-builtin"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "model-builtin" in detail and "builtin" in detail and "variant" in detail
    assert client.post("/train", json={"variant": "builtin", "init_model": "model-builtin"}).status_code == 202


def test_train_init_model_that_does_not_verify_is_409(make_client, checkpoint_dir):
    (checkpoint_dir / "broken.safetensors").write_bytes(b"not a checkpoint")
    client = make_client(CHECKPOINT_DIR=checkpoint_dir)
    r = client.post("/train", json={"init_model": "broken"})
    assert r.status_code == 409, r.text
    assert "broken" in r.json()["detail"] and "init_model" in r.json()["detail"]
    assert client.get("/jobs").json()["count"] == 0


@pytest.mark.parametrize("name", ["../x", "a.b", ""])
def test_train_init_model_that_cannot_be_a_name_is_422(client, name):
    r = client.post("/train", json={"init_model": name})
    assert r.status_code == 422 and any("init_model" in err["loc"] for err in r.json()["errors"])


def test_train_idempotency_key_retry_returns_its_job_after_the_alias_moved_or_the_queue_filled(make_client,
                                                                                                 trained_models):
    # The retry is the request the client sent: it gets the job the first one made, whatever changed since.
    client = make_client(MAX_QUEUED_JOBS=1)
    builtin_id = trained_models[1][0]
    assert client.put(f"/models/{builtin_id}/aliases/champion").status_code == 200
    try:
        body = {"epochs": 2, "variant": "builtin", "init_model": "champion"}
        first = client.post("/train", json=body, headers={"Idempotency-Key": "retry-after-moves"})
        assert first.status_code == 202 and first.json()["params"]["init_model"] == builtin_id
        assert client.post("/train", json={"epochs": 2}).status_code == 429  # the queue is full now
        assert client.put("/models/model-scratch/aliases/champion").status_code == 200  # another variant's model
        again = client.post("/train", json=body, headers={"Idempotency-Key": "retry-after-moves"})
        assert again.status_code == 202, again.text
        assert again.json()["job_id"] == first.json()["job_id"] and again.json()["params"]["init_model"] == builtin_id
        assert client.get("/jobs").json()["count"] == 1
    finally:  # the models are the session's
        client.delete("/models/model-scratch/aliases/champion")
        client.delete(f"/models/{builtin_id}/aliases/champion")
