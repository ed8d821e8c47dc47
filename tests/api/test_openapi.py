"""The OpenAPI description: every endpoint, with summaries, schemas and error responses; CORS."""

from __future__ import annotations

EXPECTED = {
    ("post", "/train"): {"202", "422", "503"},
    ("get", "/jobs/{job_id}"): {"200", "404"},
    ("get", "/jobs"): {"200", "503"},
    ("post", "/jobs/{job_id}/cancel"): {"200", "404", "409"},
    ("post", "/predict"): {"200", "404", "409", "413", "415", "422"},
    ("get", "/models"): {"200"},
    ("get", "/models/{model_id}"): {"200", "404"},
    ("get", "/models/{model_id}/batchnorm"): {"200", "404"},
    ("get", "/healthz"): {"200"},
    ("get", "/readyz"): {"200", "503"},
}


def test_openapi_lists_every_endpoint_with_its_errors(client):
    spec = client.get("/openapi.json").json()
    for (method, path), codes in EXPECTED.items():
        op = spec["paths"][path][method]
        assert op.get("summary"), (method, path)
        assert codes <= set(op["responses"]), (method, path, set(op["responses"]))


def test_openapi_predict_takes_multipart_or_json(client):
    body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    assert set(body["content"]) == {"multipart/form-data", "application/json"}


def test_openapi_docs_page_is_served(client):
    assert client.get("/docs").status_code == 200


def test_openapi_cors_off_by_default(client):
    r = client.get("/healthz", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_openapi_cors_on_when_configured(make_client):
    client = make_client(CORS_ORIGINS=["http://ok.example"])
    r = client.get("/healthz", headers={"Origin": "http://ok.example"})
    assert r.headers["access-control-allow-origin"] == "http://ok.example"
    r = client.get("/healthz", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
