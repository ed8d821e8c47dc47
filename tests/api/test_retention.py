"""Deleting jobs and models, cancelling in bulk, and the queue quota (429)."""

from __future__ import annotations

import time

import redis

from bnlenet.jobs import JobStore
from bnlenet.sweeps.store import SweepStore
from tests.api.conftest import png_bytes, sample_image


def test_delete_job_removes_record_and_index_entries(client, redis_url):
    job_id = client.post("/train", json={"epochs": 1}).json()["job_id"]
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    r = client.delete(f"/jobs/{job_id}")
    assert r.status_code == 204, r.text
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get("/jobs").json()["count"] == 0
    keys = {k.decode() for k in redis.Redis.from_url(redis_url).keys("bnlenet:*")}
    assert not any(job_id in k for k in keys)
    assert all(redis.Redis.from_url(redis_url).zscore(k, job_id) is None for k in keys if "jobs" in k)
    assert client.delete(f"/jobs/{job_id}").status_code == 404


def test_delete_running_job_is_409_saying_cancel_first(client, redis_url):
    job_id = client.post("/train", json={"epochs": 1}).json()["job_id"]
    store = JobStore.from_url(redis_url)
    assert store.claim(job_id, worker="w:1", pid=1, task_id="t", max_attempts=3, stale_after=30).run
    r = client.delete(f"/jobs/{job_id}")
    assert r.status_code == 409
    assert "cancel it first" in r.json()["detail"]
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"


def test_delete_job_and_bulk_cancel_need_the_token(make_client):
    client = make_client(API_TOKEN="s3cret")
    job_id = client.post("/train", json={}, headers={"Authorization": "Bearer s3cret"}).json()["job_id"]
    assert client.delete(f"/jobs/{job_id}").status_code == 401
    assert client.post("/jobs/cancel?status=queued").status_code == 401
    assert client.delete(f"/jobs/{job_id}", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.delete(f"/jobs/{job_id}", headers={"Authorization": "Bearer s3cret"}).status_code == 204


def test_bulk_cancel_queued_reports_how_many(client):
    ids = [client.post("/train", json={"epochs": 1}).json()["job_id"] for _ in range(5)]
    client.post(f"/jobs/{ids[0]}/cancel")
    r = client.post("/jobs/cancel", params={"status": "queued"})
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 4 and r.json()["status"] == "queued"
    assert client.get("/jobs", params={"status": "cancelled"}).json()["count"] == 5
    assert client.post("/jobs/cancel", params={"status": "queued"}).json()["count"] == 0


def test_bulk_cancel_running_asks_each_to_stop(client, redis_url):
    ids = [client.post("/train", json={"epochs": 1}).json()["job_id"] for _ in range(3)]
    store = JobStore.from_url(redis_url)
    for i, job_id in enumerate(ids[:2]):
        store.claim(job_id, worker=f"w:{i}", pid=i, task_id="t", max_attempts=3, stale_after=30)
    r = client.post("/jobs/cancel", params={"status": "running"})
    assert r.json()["count"] == 2
    assert all(client.get(f"/jobs/{i}").json()["cancel_requested"] for i in ids[:2])
    assert client.get(f"/jobs/{ids[2]}").json()["status"] == "queued"


def test_bulk_cancel_refuses_other_statuses(client):
    assert client.post("/jobs/cancel", params={"status": "succeeded"}).status_code == 422
    assert client.post("/jobs/cancel").status_code == 422


def test_train_beyond_max_queued_jobs_is_429_with_retry_after(make_client):
    client = make_client(MAX_QUEUED_JOBS=3)
    ids = [client.post("/train", json={"epochs": 1}).json()["job_id"] for _ in range(3)]
    r = client.post("/train", json={"epochs": 1})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    assert "3 jobs are queued" in r.json()["detail"] and "MAX_QUEUED_JOBS" in r.json()["detail"]
    assert client.get("/jobs").json()["count"] == 3  # nothing stored
    client.post(f"/jobs/{ids[0]}/cancel")
    assert client.post("/train", json={"epochs": 1}).status_code == 202


def test_delete_model_removes_checkpoint_and_cached_copies(make_client, checkpoint_dir):
    client = make_client(CHECKPOINT_DIR=checkpoint_dir, API_TOKEN="s3cret")
    other = make_client(CHECKPOINT_DIR=checkpoint_dir, NEWEST_MODEL_REFRESH_S=0.2)  # another API process
    image = {"file": ("x.png", png_bytes(sample_image(1)), "image/png")}
    for c in (client, other):
        assert c.post("/predict", files=image, data={"model_id": "model-scratch"}).status_code == 200
    assert client.delete("/models/model-scratch").status_code == 401
    assert client.delete("/models/model-scratch", headers={"Authorization": "Bearer s3cret"}).status_code == 204
    assert not (checkpoint_dir / "model-scratch.safetensors").exists()
    assert client.post("/predict", files=image, data={"model_id": "model-scratch"}).status_code == 404
    import time

    time.sleep(0.25)
    assert other.post("/predict", files=image, data={"model_id": "model-scratch"}).status_code == 404
    assert other.post("/predict", files=image).json()["model_id"] == "model-builtin"  # the newest left
    assert client.get("/models").json()["count"] == 1
    assert client.delete("/models/model-scratch", headers={"Authorization": "Bearer s3cret"}).status_code == 404


def test_a_sweeps_trials_are_kept_while_it_is_and_expire_with_it(client, redis_url):
    sweep = client.post("/sweeps", json={"parameters": {"seed": {"values": [0, 1]}}, "base": {"epochs": 1}}).json()
    store = JobStore.from_url(redis_url, retention_s=30 * 86400)
    for trial in sweep["trials"]:
        assert store.claim(trial["job_id"], worker="w:1", pid=1, task_id="t", max_attempts=3, stale_after=30).run
        store.finish(trial["job_id"], "succeeded", worker="w:1", attempt=1, final_test_acc=0.8)
    later = time.time() + 31 * 86400
    store.expire(now=later)  # finished jobs past their retention: a sweep's trials are not among them
    assert SweepStore(store).expire(now=time.time() + 29 * 86400) == 0
    kept = client.get(f"/sweeps/{sweep['id']}").json()
    assert kept["status"] == "succeeded" and kept["best"]["final_test_acc"] == 0.8, kept
    assert [t["status"] for t in kept["trials"]] == ["succeeded", "succeeded"]
    # The retention after its last trial ended: the sweep goes, and its trials' jobs with it.
    assert SweepStore(store).expire(now=later) == 1
    assert client.get(f"/sweeps/{sweep['id']}").status_code == 404
    assert all(client.get(f"/jobs/{t['job_id']}").status_code == 404 for t in sweep["trials"])
    keys = {k.decode() for k in redis.Redis.from_url(redis_url).keys("bnlenet:*")}
    assert not any(sweep["id"] in k or any(t["job_id"] in k for t in sweep["trials"]) for k in keys)
