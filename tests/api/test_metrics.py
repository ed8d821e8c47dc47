"""GET /metrics in one process: parsed with prometheus_client's own parser."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import png_bytes, sample_image


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_http_requests_by_route_template_and_status(client):
    before = scrape(client)
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    for i in range(2):
        assert client.get(f"/jobs/nope{i}").status_code == 404
    after = scrape(client)
    ok = dict(method="GET", route="/healthz", status="200")
    missing = dict(method="GET", route="/jobs/{job_id}", status="404")
    assert value(after, "bnlenet_http_requests_total", **ok) - value(before, "bnlenet_http_requests_total", **ok) == 3
    assert (value(after, "bnlenet_http_requests_total", **missing)
            - value(before, "bnlenet_http_requests_total", **missing)) == 2
    count = "bnlenet_http_request_duration_seconds_count"
    assert value(after, count, method="GET", route="/healthz") - value(before, count, method="GET", route="/healthz") == 3
    assert not any("nope" in str(labels) for _, labels in after)  # ids never become label values


def test_metrics_predict_by_variant_outcome_and_phase(client, trained_models):
    before = scrape(client)
    image = png_bytes(sample_image(3))
    for _ in range(2):
        assert client.post("/predict", files={"file": ("x.png", image, "image/png")}).status_code == 200
    assert client.post("/predict", files={"file": ("x.png", b"not an image", "image/png")}).status_code == 415
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("bnlenet_predict_requests_total", variant="scratch", outcome="ok") == 2  # the newest is scratch
    assert delta("bnlenet_predict_requests_total", variant="unknown", outcome="client_error") == 1
    for phase in ("decode", "inference", "other"):
        assert delta("bnlenet_predict_duration_seconds_count", phase=phase) == 3
    assert delta("bnlenet_predict_duration_seconds_sum", phase="inference") > 0
    hits, misses = delta("bnlenet_model_cache_requests_total", result="hit"), delta(
        "bnlenet_model_cache_requests_total", result="miss")
    assert hits + misses == 2 and hits >= 1


def test_metrics_jobs_by_status_and_queue_length_from_redis(client):
    before = scrape(client)
    ids = [client.post("/train", json={"epochs": 1}).json()["job_id"] for _ in range(3)]
    client.post(f"/jobs/{ids[0]}/cancel")
    after = scrape(client)
    assert value(after, "bnlenet_job_store_up") == 1
    assert value(after, "bnlenet_jobs", status="queued") - value(before, "bnlenet_jobs", status="queued") == 2
    assert value(after, "bnlenet_jobs", status="cancelled") - value(before, "bnlenet_jobs", status="cancelled") == 1
    assert value(after, "bnlenet_queue_length") == 3  # the cancelled job's message is still in the list


def test_metrics_build_info(client):
    import torch

    samples = scrape(client)
    (labels,) = [dict(k) for name, k in samples if name == "bnlenet_build_info"]
    assert labels["torch_version"] == torch.__version__ and labels["device"] in ("cpu", "cuda")
    assert labels["version"]


def test_metrics_answer_while_redis_is_down(make_client, dead_redis_url):
    client = make_client(REDIS_URL=dead_redis_url, REDIS_TIMEOUT_S=0.2)
    started = time.monotonic()
    samples = scrape(client)
    assert time.monotonic() - started < 5
    assert value(samples, "bnlenet_job_store_up") == 0
