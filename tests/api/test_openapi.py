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
    ("get", "/models/{model_id}/export"): {"200", "202", "404", "409", "422"},
    ("get", "/models"): {"200"},
    ("get", "/models/{model_id}"): {"200", "404"},
    ("get", "/models/{model_id}/batchnorm"): {"200", "404"},
    ("get", "/healthz"): {"200"},
    ("get", "/readyz"): {"200", "503"},
    ("post", "/datasets"): {"200", "201", "413", "415", "422"},
    ("get", "/datasets"): {"200"},
    ("get", "/datasets/{name}"): {"200", "404"},
    ("delete", "/datasets/{name}"): {"204", "404", "409"},
    ("get", "/datasets/{name}/samples.png"): {"200", "404"},
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
    # The Swagger UI page for this API's description, its script and style served here (vendored), no CDN.
    import re

    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "SwaggerUIBundle(" in page and "'/openapi.json'" in page.replace('"', "'"), page
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), f"{asset} is not served by the API"
        got = client.get(asset)
        assert got.status_code == 200 and len(got.content) > 100, asset
    assert "cdn" not in page.lower() and "https://" not in page, page


def test_openapi_cors_off_by_default(client):
    r = client.get("/healthz", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_openapi_cors_on_when_configured(make_client):
    client = make_client(CORS_ORIGINS=["http://ok.example"])
    r = client.get("/healthz", headers={"Origin": "http://ok.example"})
    assert r.headers["access-control-allow-origin"] == "http://ok.example"
    r = client.get("/healthz", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


OPERATION_IDS = {
    ("post", "/train"): "train", ("get", "/jobs"): "list_jobs", ("get", "/jobs/{job_id}"): "get_job",
    ("post", "/jobs/{job_id}/cancel"): "cancel_job", ("post", "/predict"): "predict",
    ("post", "/predict/pixels"): "predict_pixels", ("post", "/predict/batch"): "predict_batch",
    ("post", "/predict/batch/pixels"): "predict_batch_pixels", ("get", "/models"): "list_models",
    ("get", "/models/{model_id}"): "get_model", ("get", "/models/{model_id}/batchnorm"): "get_batchnorm",
    ("get", "/models/{model_id}/export"): "export_model",
    ("get", "/models/{model_id}/checkpoint"): "download_checkpoint",
    ("put", "/models/{model_id}/aliases/{alias}"): "set_alias",
    ("delete", "/models/{model_id}/aliases/{alias}"): "delete_alias",
    ("get", "/healthz"): "healthz", ("get", "/readyz"): "readyz",
    ("post", "/sweeps"): "create_sweep", ("get", "/sweeps"): "list_sweeps", ("get", "/sweeps/{sweep_id}"): "get_sweep",
    ("post", "/sweeps/{sweep_id}/cancel"): "cancel_sweep", ("delete", "/sweeps/{sweep_id}"): "delete_sweep",
    ("get", "/sweeps/{sweep_id}/events"): "sweep_events",
    ("post", "/datasets"): "upload_dataset", ("get", "/datasets"): "list_datasets",
    ("get", "/datasets/{name}"): "get_dataset", ("delete", "/datasets/{name}"): "delete_dataset",
}
WRITES = {"train", "cancel_job", "cancel_jobs", "delete_job", "delete_model", "set_alias", "delete_alias",
          "create_sweep", "cancel_sweep", "delete_sweep",
          "upload_dataset", "delete_dataset", "set_dataset_alias", "delete_dataset_alias"}


def _operations(spec):
    return {op["operationId"]: op for item in spec["paths"].values() for op in item.values()}


def test_openapi_operation_ids_are_readable(client):
    paths = client.get("/openapi.json").json()["paths"]
    for (method, path), op_id in OPERATION_IDS.items():
        assert paths[path][method]["operationId"] == op_id


def test_openapi_no_security_without_a_token(client):
    spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in spec.get("components", {})
    for op_id, op in _operations(spec).items():
        assert "security" not in op and "401" not in op["responses"], op_id


def test_openapi_security_on_writes_with_a_token(make_client):
    spec = make_client(API_TOKEN="tok").get("/openapi.json").json()
    assert spec["components"]["securitySchemes"] == {"bearer": {
        "type": "http", "scheme": "bearer", "description": "API_TOKEN: send `Authorization: Bearer <token>`"}}
    for op_id, op in _operations(spec).items():
        secured = op_id in WRITES
        assert ("security" in op) == secured and ("401" in op["responses"]) == secured, op_id


def test_openapi_security_on_reads_too_with_protect_reads(make_client):
    spec = make_client(API_TOKEN="tok", PROTECT_READS=True).get("/openapi.json").json()
    for op_id, op in _operations(spec).items():
        secured = op_id not in {"healthz", "readyz"}
        assert (op.get("security") == [{"bearer": []}]) == secured, op_id


def test_openapi_security_matches_what_the_server_enforces(make_client):
    """Every operation the document secures answers 401 without a token; every other one does not."""
    client = make_client(API_TOKEN="tok")
    spec = client.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            url = path.replace("{job_id}", "nojob").replace("{model_id}", "model-scratch")
            status = client.request(method, url).status_code
            assert (status == 401) == ("security" in op), (method, path, status)


def test_openapi_integer_bounds_are_integers(client):
    props = client.get("/openapi.json").json()["components"]["schemas"]["TrainRequest"]["properties"]
    assert props["seed"]["maximum"] == 2**63 - 1 and isinstance(props["seed"]["minimum"], int)
    assert props["epochs"]["maximum"] == 100 and isinstance(props["epochs"]["maximum"], int)


def test_openapi_documents_response_headers(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "Location" in paths["/train"]["post"]["responses"]["202"]["headers"]
    assert "Retry-After" in paths["/train"]["post"]["responses"]["503"]["headers"]
    assert "Retry-After" in paths["/readyz"]["get"]["responses"]["503"]["headers"]


def test_openapi_stored_parameters_are_typed(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["JobOut"]["properties"]["params"]["$ref"].endswith("/JobParams")
    assert schemas["ModelOut"]["properties"]["hyperparameters"]["$ref"].endswith("/Hyperparameters")
    assert {"variant", "epochs", "lr", "batch_size", "seed", "precise_bn"} <= set(schemas["JobParams"]["properties"])
    for name, schema in schemas.items():
        for prop, value in schema.get("properties", {}).items():
            assert value.get("type") != "object" or "properties" in value or "additionalProperties" in value, (name, prop)


def test_openapi_error_shape_is_one(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["ErrorOut"]["properties"]["detail"]["type"] == "string"
    r = client.post("/train", json={"epochs": "3"})
    body = r.json()
    assert r.status_code == 422 and isinstance(body["detail"], str) and "epochs" in body["detail"]
    assert body["errors"][0]["loc"] == ["body", "epochs"] and body["errors"][0]["type"]


def test_openapi_pixels_example_is_small(client):
    spec = client.get("/openapi.json").json()
    import json as _json
    assert len(_json.dumps(spec["components"]["schemas"]["PredictRequest"])) < 4000


def test_openapi_long_urls_are_documented_as_414(client):
    """app.edge answers 414 to a request line over the head limit: every operation with URL values says so."""
    paths = client.get("/openapi.json").json()["paths"]
    assert "414" in paths["/models/{model_id}"]["get"]["responses"]
    assert "414" in paths["/jobs"]["get"]["responses"]
    assert "414" not in paths["/healthz"]["get"]["responses"]  # nothing in its URL grows
