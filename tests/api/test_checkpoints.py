"""GET /models/{model_id}/checkpoint: the safetensors file, under the same rules as GET /models/{id}."""

from __future__ import annotations

import pytest

from models.checkpoint import load_checkpoint


def test_checkpoints_download_is_the_file(client, trained_models, tmp_path):
    directory, ids = trained_models
    model_id = ids[0]
    r = client.get(f"/models/{model_id}/checkpoint")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == f'attachment; filename="{model_id}.safetensors"'
    assert r.content == (directory / f"{model_id}.safetensors").read_bytes()
    saved = tmp_path / "downloaded.safetensors"
    saved.write_bytes(r.content)
    assert load_checkpoint(saved).metadata["model_id"] == model_id  # checksum verified on load


def test_checkpoints_unknown_model_is_404(client):
    assert client.get("/models/does-not-exist/checkpoint").status_code == 404


@pytest.mark.parametrize("path", ["/models/../checkpoint", "/models/..%2Fsecret/checkpoint", "/models/a.b/checkpoint",
                                  "/models/%2Fetc%2Fpasswd/checkpoint"])
def test_checkpoints_ids_never_name_paths(client, path):
    assert client.get(path).status_code in (404, 422)


def test_checkpoints_invalid_checkpoint_is_409_like_get_model(make_client, checkpoint_dir):
    (checkpoint_dir / "broken.safetensors").write_bytes(b"not a checkpoint")
    client = make_client(CHECKPOINT_DIR=checkpoint_dir)
    assert client.get("/models/broken").status_code == 409
    assert client.get("/models/broken/checkpoint").status_code == 409


def test_checkpoints_protected_reads_need_the_token(make_client, trained_models):
    model_id = trained_models[1][0]
    client = make_client(API_TOKEN="s3cret", PROTECT_READS=True)
    assert client.get(f"/models/{model_id}/checkpoint").status_code == 401
    assert client.get(f"/models/{model_id}/checkpoint", headers={"Authorization": "Bearer nope"}).status_code == 403
    ok = client.get(f"/models/{model_id}/checkpoint", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.content[:8]


def test_checkpoints_open_reads_need_no_token(make_client, trained_models):
    client = make_client(API_TOKEN="s3cret")
    assert client.get(f"/models/{trained_models[1][0]}/checkpoint").status_code == 200


def test_checkpoints_openapi_says_octet_stream(client):
    op = client.get("/openapi.json").json()["paths"]["/models/{model_id}/checkpoint"]["get"]
    assert set(op["responses"]["200"]["content"]) == {"application/octet-stream"}
    assert {"404", "409", "422"} <= set(op["responses"])  # 401/403 only where a token is needed
