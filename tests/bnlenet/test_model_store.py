"""The model store over both storages, a directory and a real S3 server: publishing, listing, aliases, tampering."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bnlenet.checkpoint_storage import LocalStorage, ObjectStoreUnavailable, S3Storage, open_storage
from bnlenet.local.redis_server import free_port
from bnlenet.model_store import AliasConflict, ModelStore, ModelUnusable, NoModelYet, UnknownModel
from models.lenet import build_lenet
from tests.conftest import own_s3_server

ROOT = Path(__file__).resolve().parents[2]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_lenet("builtin")
    for layer in model.modules():  # running statistics unlike the defaults, so a mix-up would show
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
    return model.eval()


def _publish(store: ModelStore, model_id: str, seed: int = 0) -> None:
    store.publish(model_id, _model(seed), {"variant": "builtin", "job_id": model_id})
    time.sleep(0.002)  # created_at orders the models


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's checkpoints live: a directory, or a prefix of its own in a real S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "checkpoints")
    return str(request.getfixturevalue("s3_url"))


def _store(location: str, cache: Path, **kwargs: object) -> ModelStore:
    return ModelStore(open_storage(location, cache_dir=cache), **kwargs)  # type: ignore[arg-type]


def test_published_models_are_listed_newest_first_and_load_with_their_statistics(location, tmp_path):
    store = _store(location, tmp_path / "cache")
    with pytest.raises(NoModelYet):
        store.get()
    _publish(store, "first", seed=1)
    _publish(store, "second", seed=2)
    assert [i for i, _ in store.list()] == ["second", "first"]
    assert store.newest() == "second"
    loaded = store.get("first")
    expected = _model(1).state_dict()
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert store.metadata("first")["model_id"] == "first"


def test_another_process_sees_publishes_deletes_and_alias_moves_within_the_refresh(location, tmp_path):
    writer = _store(location, tmp_path / "cache-a")
    reader = _store(location, tmp_path / "cache-b", refresh_s=0.2)
    _publish(writer, "a")
    assert reader.get().model_id == "a"
    _publish(writer, "b")
    time.sleep(0.25)
    assert reader.get().model_id == "b"
    writer.set_alias("production", "a")
    reader.default_alias = "production"
    time.sleep(0.25)
    assert reader.get().model_id == "a"
    writer.delete_alias("production")
    writer.delete("a")
    time.sleep(0.25)
    assert reader.get().model_id == "b"
    with pytest.raises(UnknownModel):
        reader.get("a")


def test_aliases_resolve_wherever_an_id_does_and_guard_their_models(location, tmp_path):
    store = _store(location, tmp_path / "cache", default_alias="production")
    _publish(store, "old")
    _publish(store, "new")
    assert store.get().model_id == "new"  # no alias yet: the newest
    assert store.set_alias("production", "old") == "old"
    assert store.get().model_id == "old"
    assert store.get("production").model_id == "old"
    assert store.metadata("production")["model_id"] == "old"
    assert store.set_alias("champion", "production") == "old"  # an alias names a model too
    assert store.aliases() == {"production": "old", "champion": "old"}
    assert store.aliases_of("old") == ["champion", "production"]
    with pytest.raises(AliasConflict, match="champion, production"):
        store.delete("old")
    with pytest.raises(AliasConflict, match="shadow"):
        store.set_alias("new", "old")
    with pytest.raises(UnknownModel):
        store.set_alias("staging", "missing")
    with pytest.raises(UnknownModel):
        store.set_alias("bad/alias", "old")
    store.delete_alias("production")
    store.delete_alias("champion")
    with pytest.raises(UnknownModel, match="no alias"):
        store.delete_alias("champion")
    assert store.get().model_id == "new"
    store.delete("old")
    assert [i for i, _ in store.list()] == ["new"]


def test_a_refused_commit_publishes_nothing(location, tmp_path):
    store = _store(location, tmp_path / "cache")

    def refuse() -> None:
        raise PermissionError("lease lost")

    with pytest.raises(PermissionError):
        store.publish("m", _model(0), {"variant": "builtin"}, before_commit=refuse)
    assert store.list() == []
    assert store.storage.versions() == {}


def _overwrite(store: ModelStore, model_id: str, payload: bytes) -> None:
    storage = store.storage
    if isinstance(storage, LocalStorage):
        storage.path(model_id).parent.mkdir(parents=True, exist_ok=True)
        storage.path(model_id).write_bytes(payload)
    else:
        assert isinstance(storage, S3Storage)
        storage.client.put_object(Bucket=storage.bucket, Key=storage._key(model_id + ".safetensors"), Body=payload)


def test_a_tampered_checkpoint_is_refused_everywhere_and_never_the_default(location, tmp_path):
    store = _store(location, tmp_path / "cache", refresh_s=0.1)
    _publish(store, "good")
    _publish(store, "tampered")
    assert store.get().model_id == "tampered"
    raw = bytearray(store.local_checkpoint("tampered").read_bytes())
    raw[-5] ^= 0xFF  # a weight's last byte
    _overwrite(store, "tampered", bytes(raw))
    time.sleep(0.15)
    assert store.get().model_id == "good"  # the loaded copy is dropped, the tampered one never served
    with pytest.raises(ModelUnusable, match="checksum"):
        store.get("tampered")
    assert [i for i, _ in store.unusable()] == ["tampered"]


def test_a_planted_pickle_is_refused_without_running(location, tmp_path):
    store = _store(location, tmp_path / "cache")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    _overwrite(store, "planted", pickle.dumps(Payload()))
    with pytest.raises(ModelUnusable):
        store.get("planted")
    assert not marker.exists()


@pytest.mark.s3
def test_s3_cache_is_bounded_and_keeps_the_latest_version(s3_url, tmp_path):
    storage = S3Storage(s3_url, tmp_path / "cache", max_cache_bytes=1, recently_used_s=0)
    for name in ("a", "b", "c"):
        storage.publish(name, name.encode() * 1000)
    for name in ("a", "b", "c"):
        storage.fetch(name)
    assert [p.name.split(".")[0] for p in (tmp_path / "cache").glob("*.safetensors")] == ["c"]
    storage.publish("c", b"new bytes")
    path, version = storage.fetch("c")
    assert path.read_bytes() == b"new bytes"
    assert len(list((tmp_path / "cache").glob("c.*.safetensors"))) == 1  # the replaced version is gone


@pytest.mark.s3
def test_s3_store_down_serves_loaded_models_then_recovers(tmp_path, monkeypatch):
    with own_s3_server(tmp_path / "s3") as server:  # its own: the test stops and restarts it
        for key, value in server.client_env().items():
            monkeypatch.setenv(key, value)
        url = f"s3://{server.bucket}/models"
        writer = _store(url, tmp_path / "cache-w")
        _publish(writer, "loaded")
        _publish(writer, "cold")
        store = _store(url, tmp_path / "cache-api", refresh_s=0.1)
        assert store.get("loaded").model_id == "loaded"
        server.stop()
        time.sleep(0.15)
        started = time.monotonic()
        for _ in range(20):  # served from memory, never waiting on the dead store
            assert store.get("loaded").model_id == "loaded"
        assert time.monotonic() - started < 5
        with pytest.raises(ObjectStoreUnavailable, match="download a checkpoint"):
            store.get("cold")
        assert {i for i, _ in store.list()} == {"loaded"}  # the last listing, with what can be read
        server.start()

        def recovered() -> bool:
            try:
                return store.get("cold").model_id == "cold"
            except ObjectStoreUnavailable:
                time.sleep(0.1)
                return False

        deadline = time.monotonic() + 15
        while not recovered():
            assert time.monotonic() < deadline, "the store did not recover after the object store came back"


@pytest.mark.s3
def test_s3_upload_retries_then_fails_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    storage = S3Storage("s3://bucket/models", tmp_path, upload_retry_s=1.5)
    tries = []
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailable, match=r"upload a checkpoint.*still failing after 2 s"):
        storage.publish("m", b"payload", before_commit=lambda: tries.append(1))
    assert len(tries) >= 2  # retried, checking the right to publish before each try
    assert 1.0 <= time.monotonic() - started < 10


_UPLOADER = """
import os, sys
from bnlenet.checkpoint_storage import S3Storage
storage = S3Storage(sys.argv[1], sys.argv[2])
payload = os.urandom(1 << 20) * 256  # 256 MiB: long enough to be killed mid-upload
storage.client  # connect first
print("uploading", flush=True)
storage.publish("half", payload)
print("done", flush=True)
"""


@pytest.mark.s3
def test_s3_a_writer_killed_mid_upload_leaves_nothing_listed(s3_url, tmp_path):
    child = subprocess.Popen([sys.executable, "-c", _UPLOADER, s3_url, str(tmp_path)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "uploading"
    time.sleep(0.3)
    child.kill()
    rest = child.stdout.read()
    child.wait()
    assert "done" not in rest, "the upload finished before the kill: the test proves nothing"
    storage = S3Storage(s3_url, tmp_path / "cache")
    assert storage.versions() == {}
    store = ModelStore(storage)
    assert store.list() == []
    with pytest.raises(UnknownModel):
        store.get("half")


def test_a_serving_store_never_touches_the_storage_on_the_request_path(tmp_path):
    class Watched(LocalStorage):
        """A directory that notes which threads list it."""

        def __init__(self, directory: Path) -> None:
            super().__init__(directory)
            self.callers: list[str] = []

        def versions(self) -> dict[str, str]:
            import threading

            self.callers.append(threading.current_thread().name)
            return super().versions()

    storage = Watched(tmp_path / "checkpoints")
    store = ModelStore(storage, refresh_s=0.05, background=True, default_alias="production")
    _publish(store, "a")
    try:
        assert store.get().model_id == "a"  # the first look lists on the request path, once
        storage.callers.clear()
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # ten refresh periods of requests
            assert store.get().model_id == "a" and store.get("a").model_id == "a"
        assert storage.callers and set(storage.callers) == {"model-store-listing"}
        writer = ModelStore(tmp_path / "checkpoints")
        _publish(writer, "b")
        writer.set_alias("production", "b")
        time.sleep(0.2)
        assert store.get().model_id == "b"  # followed in the background
    finally:
        store.close()
