"""``bnlenet datasets upload|list|show|delete`` and ``bnlenet train --dataset``, run as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from bnlenet.datasets.builtin import BUILTIN_ID
from models.checkpoint import load_checkpoint
from tests.cli.test_cli import _bnlenet
from tests.dataset_uploads import fashion_mnist_subset, folder_zip


def test_cli_datasets_upload_list_train_and_delete(tmp_path: Path, redis_server) -> None:
    arrays, names = fashion_mnist_subset((0, 1, 7), train=90, test=30)
    upload = tmp_path / "three.zip"
    upload.write_bytes(folder_zip(arrays, names))
    env = {"CHECKPOINT_DIR": str(tmp_path / "store"), "REDIS_URL": redis_server.database_url(9),
           "TRAINING_THREADS": "1"}

    proc = _bnlenet("datasets", "upload", str(upload), "--name", "three", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["created"] is True and info["aliases"] == ["three"] and info["num_classes"] == 3
    again = json.loads(_bnlenet("datasets", "upload", str(upload), "--json", env=env).stdout)
    assert again["id"] == info["id"] and again["created"] is False

    listed = json.loads(_bnlenet("datasets", "list", "--json", env=env).stdout)
    assert [d["id"] for d in listed["data"]] == [BUILTIN_ID, info["id"]]
    shown = _bnlenet("datasets", "show", "three", env=env)
    assert shown.returncode == 0 and info["id"] in shown.stdout and "Sneaker" in shown.stdout

    trained = _bnlenet("train", "--dataset", "three", "--epochs", "1", "--batch-size", "32", "--json", env=env)
    assert trained.returncode == 0, trained.stderr
    checkpoint = load_checkpoint(json.loads(trained.stdout.splitlines()[-1])["checkpoint"])
    assert checkpoint.metadata["dataset"] == info["id"] and checkpoint.metadata["classes"] == info["classes"]
    assert checkpoint.model[-1].out_features == 3

    refused = _bnlenet("datasets", "delete", info["id"], env=env)
    assert refused.returncode == 2 and "model(s) cli-" in refused.stderr
    unknown = _bnlenet("train", "--dataset", "nope", "--epochs", "1", env=env)
    assert unknown.returncode == 2 and "nope" in unknown.stderr
