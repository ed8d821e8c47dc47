"""POST /sweeps and the sweep resource on a real Redis (no worker: trials stay queued)."""

from __future__ import annotations

import redis

from bnlenet.jobs import JobStore
from bnlenet.settings import get_settings
from bnlenet.training_queue import queue_key

GRID = {"name": "2x2", "parameters": {"lr": {"values": [0.3, 1.0]}, "seed": {"values": [0, 1]}},
        "base": {"epochs": 2, "batch_size": 64}}


def _keys(redis_url: str) -> list[bytes]:
    return sorted(redis.Redis.from_url(redis_url).keys("*"))


def test_sweep_grid_creates_one_queued_job_per_trial(client, redis_url):
    r = client.post("/sweeps", json=GRID)
    assert r.status_code == 202, r.text
    sweep = r.json()
    assert r.headers["location"] == f"/sweeps/{sweep['id']}"
    assert sweep["status"] == "queued" and sweep["name"] == "2x2"
    assert [t["params"] for t in sweep["trials"]] == [{"lr": 0.3, "seed": 0}, {"lr": 0.3, "seed": 1},
                                                       {"lr": 1.0, "seed": 0}, {"lr": 1.0, "seed": 1}]
    assert [t["setting"] for t in sweep["trials"]] == ["lr=0.3", "lr=0.3", "lr=1", "lr=1"]
    assert [s["setting"] for s in sweep["settings"]] == ["lr=0.3", "lr=1"]
    assert all(s["trials"] == 0 and s["mean"] is None for s in sweep["settings"]) and sweep["best"] is None
    jobs = client.get("/jobs", params={"sweep": sweep["id"]}).json()
    assert jobs["count"] == 4
    assert [j["job_id"] for j in jobs["data"]] == [t["job_id"] for t in sweep["trials"]]
    assert all(j["sweep_id"] == sweep["id"] and j["status"] == "queued" and j["params"]["epochs"] == 2
               and j["params"]["batch_size"] == 64 for j in jobs["data"])
    assert [j["params"]["lr"] for j in jobs["data"]] == [0.3, 0.3, 1.0, 1.0]
    assert redis.Redis.from_url(redis_url).llen(queue_key(get_settings())) == 4  # every trial published
    assert client.get(f"/sweeps/{sweep['id']}").json()["trials"] == sweep["trials"]
    assert client.get("/sweeps").json()["count"] == 1


def test_sweep_over_a_limit_is_422_and_stores_nothing(make_client, redis_url):
    client = make_client(MAX_SWEEP_TRIALS=3)
    before = _keys(redis_url)
    r = client.post("/sweeps", json=GRID)
    assert r.status_code == 422, r.text
    assert "MAX_SWEEP_TRIALS=3" in r.json()["detail"] and r.json()["problems"]
    r = client.post("/sweeps", json={"parameters": {"lr": {"values": [0.3, -1.0]}, "variant": {"values": ["x"]}}})
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert len(problems) == 2 and "lr" in problems[0] and "variant" in problems[1]
    assert client.post("/sweeps", json={**GRID, "base": {"epochs": 1000}}).status_code == 422  # MAX_EPOCHS
    assert _keys(redis_url) == before


def test_sweep_beyond_the_queue_limit_is_429_and_stores_nothing(make_client, redis_url):
    client = make_client(MAX_QUEUED_JOBS=3)
    before = _keys(redis_url)
    r = client.post("/sweeps", json=GRID)
    assert r.status_code == 429 and "MAX_QUEUED_JOBS=3" in r.json()["detail"]
    assert _keys(redis_url) == before


def test_sweep_idempotency_key_returns_the_same_sweep(client):
    first = client.post("/sweeps", json=GRID, headers={"Idempotency-Key": "k1"}).json()
    again = client.post("/sweeps", json=GRID, headers={"Idempotency-Key": "k1"}).json()
    assert again["id"] == first["id"] and client.get("/jobs").json()["count"] == 4
    other = client.post("/sweeps", json={**GRID, "name": "other"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409


def test_sweep_idempotency_key_retry_returns_its_sweep_when_the_queue_is_full(make_client):
    client = make_client(MAX_QUEUED_JOBS=4)  # GRID's four trials fill it
    first = client.post("/sweeps", json=GRID, headers={"Idempotency-Key": "full-after"})
    assert first.status_code == 202, first.text
    again = client.post("/sweeps", json=GRID, headers={"Idempotency-Key": "full-after"})
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"] and client.get("/jobs").json()["count"] == 4


def test_sweep_cancel_then_delete(client, redis_url):
    sweep = client.post("/sweeps", json=GRID).json()
    cancelled = client.post(f"/sweeps/{sweep['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and {t["status"] for t in cancelled["trials"]} == {"cancelled"}
    assert client.delete(f"/sweeps/{sweep['id']}").status_code == 204
    assert client.get(f"/sweeps/{sweep['id']}").status_code == 404
    assert client.get("/jobs").json()["count"] == 0
    assert not [k for k in _keys(redis_url) if b"sweep" in k or b"bnlenet:job:" in k]


def test_sweep_delete_is_refused_while_a_trial_runs(client, redis_url):
    sweep = client.post("/sweeps", json=GRID).json()
    store = JobStore.from_url(redis_url)
    store.claim(sweep["trials"][1]["job_id"], worker="host:1", pid=1, task_id="t", max_attempts=3, stale_after=30)
    assert client.get(f"/sweeps/{sweep['id']}").json()["status"] == "running"
    r = client.delete(f"/sweeps/{sweep['id']}")
    assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
    assert client.get("/jobs", params={"sweep": sweep["id"]}).json()["count"] == 4
    cancelled = client.post(f"/sweeps/{sweep['id']}/cancel").json()
    assert [t["status"] for t in cancelled["trials"]] == ["cancelled", "running", "cancelled", "cancelled"]
    assert cancelled["status"] == "running"  # until its running trial stops
    assert store.get(sweep["trials"][1]["job_id"])["cancel_requested"] is True


def test_sweep_unknown_is_404(client):
    assert client.get("/sweeps/sw-nothere").status_code == 404
    assert client.get("/jobs", params={"sweep": "sw-nothere"}).status_code == 404
    assert client.post("/sweeps/sw-nothere/cancel").status_code == 404
