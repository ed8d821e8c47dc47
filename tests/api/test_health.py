"""GET /healthz and GET /readyz."""

from __future__ import annotations

from bnlenet.jobs import JobStore


def test_health_healthz_is_ok(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_health_readyz_says_no_worker(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["workers"] == []
    assert "no worker" in r.json()["detail"]


def test_health_readyz_lists_live_workers(client, redis_url):
    JobStore.from_url(redis_url).worker_seen("celery@gpu0")
    r = client.get("/readyz")
    assert r.json()["workers"] == ["celery@gpu0"]


def test_health_redis_down_readyz_503_healthz_200(make_client, dead_redis_url):
    client = make_client(REDIS_URL=dead_redis_url)
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503
    assert "Redis" in r.json()["detail"]


def test_health_head_answers_like_get(client):
    for path in ("/healthz", "/readyz"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.content == b""


def test_health_head_readyz_is_503_when_redis_is_down(make_client, dead_redis_url):
    client = make_client(REDIS_URL=dead_redis_url, REDIS_TIMEOUT_S=0.2)
    assert client.head("/readyz").status_code == client.get("/readyz").status_code == 503
