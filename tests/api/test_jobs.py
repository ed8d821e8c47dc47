"""GET /jobs, GET /jobs/{job_id}, POST /jobs/{job_id}/cancel."""

from __future__ import annotations

import tempfile

from app.main import create_app
from bnlenet.jobs import JobStore
from bnlenet.local.redis_server import RedisServer, free_port
from bnlenet.settings import Settings


def _submit(client, n: int) -> list[str]:
    return [client.post("/train", json={"epochs": i + 1}).json()["job_id"] for i in range(n)]


def test_jobs_get_returns_the_record(client):
    (job_id,) = _submit(client, 1)
    r = client.get(f"/jobs/{job_id}")
    assert r.status_code == 200
    assert r.json()["job_id"] == job_id
    assert r.json()["status"] == "queued"


def test_jobs_get_unknown_is_404(client):
    r = client.get("/jobs/0123456789abcdef")
    assert r.status_code == 404
    assert "no job" in r.json()["detail"]


def test_jobs_get_rejects_ids_with_path_tricks(client):
    assert client.get("/jobs/..%2F..%2Fetc").status_code in (404, 422)
    assert client.get("/jobs/a.b").status_code == 422


def test_jobs_list_is_newest_first_with_total(client):
    ids = _submit(client, 5)
    r = client.get("/jobs", params={"limit": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 5
    assert [j["job_id"] for j in body["data"]] == ids[::-1][:2]
    page2 = client.get("/jobs", params={"limit": 2, "offset": 2}).json()
    assert [j["job_id"] for j in page2["data"]] == ids[::-1][2:4]


def test_jobs_list_filters_by_status(client):
    ids = _submit(client, 3)
    client.post(f"/jobs/{ids[1]}/cancel")
    cancelled = client.get("/jobs", params={"status": "cancelled"}).json()
    assert cancelled["count"] == 1 and cancelled["data"][0]["job_id"] == ids[1]
    queued = client.get("/jobs", params={"status": "queued"}).json()
    assert queued["count"] == 2
    assert {j["job_id"] for j in queued["data"]} == {ids[0], ids[2]}


def test_jobs_list_rejects_bad_parameters(client):
    assert client.get("/jobs", params={"status": "done"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/jobs", params={"offset": -1}).status_code == 422


def test_jobs_cancel_queued_job_is_cancelled_at_once(client):
    (job_id,) = _submit(client, 1)
    r = client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None


def test_jobs_cancel_finished_job_is_409(client):
    (job_id,) = _submit(client, 1)
    client.post(f"/jobs/{job_id}/cancel")
    r = client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 409
    assert "already ended" in r.json()["detail"]


def test_jobs_cancel_running_job_asks_the_worker(client, redis_url):
    (job_id,) = _submit(client, 1)
    store = JobStore.from_url(redis_url)
    assert store.claim(job_id, worker="w:1", pid=1, task_id="t", max_attempts=3, stale_after=30).run
    r = client.post(f"/jobs/{job_id}/cancel")
    assert r.json()["status"] == "running"
    assert r.json()["cancel_requested"] is True
    assert store.beat(job_id, worker="w:1") == (True, True)  # cancel asked, still owned


def test_jobs_cancel_unknown_is_404(client):
    assert client.post("/jobs/nope/cancel").status_code == 404


def test_jobs_cancel_needs_the_token_when_one_is_set(make_client):
    client = make_client(API_TOKEN="tok")
    job_id = client.post("/train", json={}, headers={"Authorization": "Bearer tok"}).json()["job_id"]
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 401
    assert client.post(f"/jobs/{job_id}/cancel", headers={"Authorization": "Bearer bad"}).status_code == 403
    assert client.post(f"/jobs/{job_id}/cancel", headers={"Authorization": "Bearer tok"}).status_code == 200
    assert client.get(f"/jobs/{job_id}").status_code == 200  # reads stay open by default


def test_jobs_reads_closed_with_protect_reads(make_client):
    client = make_client(API_TOKEN="tok", PROTECT_READS=True)
    assert client.get("/jobs").status_code == 401
    assert client.get("/jobs", headers={"Authorization": "Bearer tok"}).status_code == 200


def test_jobs_answer_503_when_redis_is_down(make_client, dead_redis_url):
    client = make_client(REDIS_URL=dead_redis_url)
    for r in (client.get("/jobs"), client.get("/jobs/abc"), client.post("/jobs/abc/cancel")):
        assert r.status_code == 503
        assert "unavailable" in r.json()["detail"]


def test_jobs_work_again_when_redis_returns(trained_models):
    from fastapi.testclient import TestClient

    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        server = RedisServer(data, port=port).start()
        try:
            app = create_app(Settings(REDIS_URL=server.url, CHECKPOINT_DIR=trained_models[0]))
            with TestClient(app, raise_server_exceptions=False) as client:
                job_id = client.post("/train", json={}).json()["job_id"]
                server.stop()
                assert client.get("/jobs").status_code == 503
                assert client.get("/readyz").status_code == 503
                assert client.get("/healthz").status_code == 200
                server.start()
                assert client.get(f"/jobs/{job_id}").status_code == 200  # persisted, and reconnected
                assert client.get("/readyz").status_code == 200
        finally:
            server.stop()


def test_jobs_malformed_record_is_409_for_itself_and_skipped_in_lists(client, redis_url):
    import redis

    ok = _submit(client, 1)[0]
    r = redis.Redis.from_url(redis_url)
    r.set("bnlenet:job:broken", b"\x00not json")
    r.zadd("bnlenet:jobs:all", {"broken": 9e9})
    r.zadd("bnlenet:jobs:status:queued", {"broken": 9e9})
    listing = client.get("/jobs")
    assert listing.status_code == 200 and [j["job_id"] for j in listing.json()["data"]] == [ok]
    assert client.get("/jobs", params={"status": "queued"}).status_code == 200
    for answer in (client.get("/jobs/broken"), client.post("/jobs/broken/cancel")):
        assert answer.status_code == 409 and "malformed" in answer.json()["detail"]


def test_jobs_record_with_invalid_params_is_409_for_itself_and_left_out_of_lists(client, redis_url, caplog):
    import json

    import redis

    from bnlenet.jobs import new_record

    ok = _submit(client, 1)[0]
    r = redis.Redis.from_url(redis_url)
    bad = {"evil": ({"variant": "evil"}, "variant"), "abc": ({"lr": "abc", "epochs": 2}, "lr")}
    for job_id, (params, _) in bad.items():
        r.set(f"bnlenet:job:{job_id}", json.dumps(new_record(job_id, params, 9e9)))
        r.zadd("bnlenet:jobs:all", {job_id: 9e9})
        r.zadd("bnlenet:jobs:status:queued", {job_id: 9e9})
    with caplog.at_level("WARNING", logger="bnlenet.jobs"):
        for query in ({}, {"status": "queued"}):
            listing = client.get("/jobs", params=query)
            assert listing.status_code == 200 and [j["job_id"] for j in listing.json()["data"]] == [ok]
    for job_id in bad:
        assert any(job_id in m and "malformed" in m for m in caplog.messages)
    for job_id, (_, field) in bad.items():
        for answer in (client.get(f"/jobs/{job_id}"), client.post(f"/jobs/{job_id}/cancel")):
            assert answer.status_code == 409
            assert "malformed" in answer.json()["detail"] and f"params.{field}" in answer.json()["detail"]


def test_jobs_get_shows_each_attempt_and_delete_removes_the_training_state(make_client, redis_url, checkpoint_dir):
    import torch

    from bnlenet.checkpoint_storage import LocalStorage
    from bnlenet.training_states import TrainingStates, state_name
    from models.train_state import TrainingState

    client = make_client(CHECKPOINT_DIR=checkpoint_dir)
    (job_id,) = _submit(client, 1)
    store = JobStore.from_url(redis_url)
    attempt = store.claim(job_id, worker="host:1", pid=1, task_id="t", max_attempts=3, stale_after=30).record
    assert attempt is not None
    store.resumed(job_id, worker="host:1", attempt=1, epoch=2, history=[])
    store.add_epoch(job_id, worker="host:1", attempt=1, metrics={"epoch": 3, "loss": 0.5, "train_acc": 0.8,
                    "test_acc": 0.8, "examples_per_sec": 1.0, "seconds": 1.0}, saved_epoch=3,
                    progress={"epoch": 3, "epochs": 4, "batch": 2, "batches": 2, "loss": 0.5, "train_acc": 0.8,
                              "fraction": 0.75})
    body = client.get(f"/jobs/{job_id}").json()
    assert [(a["attempt"], a["worker"], a["resumed_from"], a["saved_epoch"]) for a in body["attempt_log"]] == [
        (1, "host:1", 2, 3)]
    assert body["fruitless_attempts"] == 0

    states = TrainingStates(LocalStorage(checkpoint_dir))
    states.save(job_id, 1, {}, TrainingState(epoch=3, model={"w": torch.zeros(1)}, optimizer={}, rng={},
                                             average_sums=None, average_count=0))
    assert client.delete(f"/jobs/{job_id}").status_code == 409  # running: its state stays
    assert (checkpoint_dir / state_name(job_id)).exists()
    store.finish(job_id, "cancelled")
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert not (checkpoint_dir / state_name(job_id)).exists()
