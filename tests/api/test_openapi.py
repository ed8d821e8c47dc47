"""The OpenAPI description: every endpoint, with summaries, schemas and error responses; CORS."""

from __future__ import annotations

EXPECTED = {
    ("post", "/train"): {"202", "422", "503"},
    ("get", "/jobs/{job_id}"): {"200", "404"},
    ("get", "/jobs"): {"200", "503"},
    ("post", "/jobs/{job_id}/cancel"): {"200", "404", "409"},
    ("post", "/predict"): {"200", "404", "409", "413", "415", "422"},
    ("post", "/predict/pixels"): {"200", "404", "409", "422"},
    ("post", "/predict/batch"): {"200", "404", "409", "413", "415", "422"},
    ("post", "/predict/batch/pixels"): {"200", "404", "409", "413", "422"},
    ("get", "/models/{model_id}/export"): {"200", "404", "409", "422"},
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


def test_openapi_each_predict_operation_has_one_body_type(client):
    paths = client.get("/openapi.json").json()["paths"]
    content = {path: set(paths[path]["post"]["requestBody"]["content"])
               for path in ("/predict", "/predict/pixels", "/predict/batch", "/predict/batch/pixels")}
    assert content == {"/predict": {"multipart/form-data"}, "/predict/pixels": {"application/json"},
                       "/predict/batch": {"multipart/form-data"}, "/predict/batch/pixels": {"application/json"}}


def test_openapi_pixels_state_their_shape_and_range(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]["properties"]["pixels"]
    assert (schema["minItems"], schema["maxItems"]) == (28, 28)
    row = schema["items"]
    assert (row["minItems"], row["maxItems"]) == (28, 28)
    assert (row["items"]["minimum"], row["items"]["maximum"]) == (0.0, 1.0)


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
