from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch

from models.batchnorm import batchnorm_layers, batchnorm_state
from models.checkpoint import CheckpointError, class_names, load_checkpoint, read_metadata, save_checkpoint
from models.data import CLASS_NAMES
from models.lenet import build_lenet


def _trained_like(variant: str) -> torch.nn.Sequential:
    """A model whose BN statistics differ from their initial values."""
    torch.manual_seed(0)
    net = build_lenet(variant)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(16, 1, 28, 28))
    return net.eval()


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_checkpoint_round_trip_gives_identical_eval_outputs(tmp_path: Path, variant: str) -> None:
    net = _trained_like(variant)
    path = save_checkpoint(tmp_path / "m.safetensors", net, {"variant": variant, "hyperparameters": {"lr": 1.0}})
    loaded = load_checkpoint(path)
    assert not loaded.model.training
    X = torch.rand(5, 1, 28, 28)
    assert torch.equal(loaded.model(X), net(X))
    for (_, a), (_, b) in zip(batchnorm_layers(net), batchnorm_layers(loaded.model), strict=True):
        for key, value in batchnorm_state(a).items():
            assert torch.equal(value, batchnorm_state(b)[key]), key
    meta = loaded.metadata
    assert meta["variant"] == variant and meta["hyperparameters"] == {"lr": 1.0}
    assert meta["checksum"].startswith("sha256:") and "torch" in meta["versions"] and meta["created_at"]
    assert read_metadata(path) == meta


def test_checkpoint_scratch_bn_statistics_are_stored(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", _trained_like("scratch"), {"variant": "scratch"})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert {"1.moving_mean", "1.moving_var", "13.moving_mean", "13.moving_var"} <= keys


def test_checkpoint_write_is_atomic_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = _trained_like("builtin")
    path = save_checkpoint(tmp_path / "m.safetensors", net, {"variant": "builtin"})
    before = path.read_bytes()

    def crash(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, build_lenet("builtin"), {"variant": "builtin"})
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_checkpoint_tampered_tensor_fails_checksum(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", _trained_like("scratch"), {"variant": "scratch"})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_checkpoint_tampered_metadata_fails_checksum(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", _trained_like("scratch"), {"variant": "scratch", "note": "aa"})
    path.write_bytes(path.read_bytes().replace(b'\\"note\\": \\"aa\\"', b'\\"note\\": \\"bb\\"'))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_checkpoint_truncated_is_an_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", _trained_like("builtin"), {"variant": "builtin"})
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


def test_checkpoint_code_executing_pickle_is_refused_without_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.safetensors"
    torch.save({"state_dict": _RunsCode()}, path)  # a torch pickle, the classic attack
    with pytest.raises(CheckpointError, match="not a bnlenet checkpoint"):
        load_checkpoint(path)
    path.write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def _rewrite_without(path: Path, drop: str) -> None:
    """Rewrite a safetensors file without one tensor, recomputing nothing (as an old or hand-made file)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    del header[drop]
    payload = b"".join(body[slice(*v["data_offsets"])] for k, v in sorted(header.items()) if k != "__metadata__")
    offset = 0
    for k, v in sorted(header.items()):
        if k == "__metadata__":
            continue
        size = v["data_offsets"][1] - v["data_offsets"][0]
        v["data_offsets"] = [offset, offset + size]
        offset += size
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + payload)


def test_checkpoint_missing_bn_statistics_is_an_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", _trained_like("scratch"), {"variant": "scratch"})
    _rewrite_without(path, "5.moving_var")
    with pytest.raises(CheckpointError, match=r"missing \['5.moving_var'\]"):
        load_checkpoint(path)


def test_checkpoint_wrong_shape_bn_statistics_is_an_error(tmp_path: Path) -> None:
    net = _trained_like("builtin")
    net[1].register_buffer("running_mean", torch.zeros(7))
    path = save_checkpoint(tmp_path / "m.safetensors", net, {"variant": "builtin"})
    with pytest.raises(CheckpointError, match=r"1\.running_mean \(7,\) \(expected \(6,\)\)"):
        load_checkpoint(path)


def test_checkpoint_variant_mismatch_is_an_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", _trained_like("scratch"), {"variant": "scratch"})
    raw = path.read_bytes().replace(b'\\"variant\\": \\"scratch\\"', b'\\"variant\\": \\"builtin\\"')
    path.write_bytes(raw)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_checkpoint_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_checkpoint_classes_name_the_outputs(tmp_path: Path) -> None:
    digits = [str(d) for d in range(10)]
    path = save_checkpoint(tmp_path / "m.safetensors", build_lenet("builtin").eval(),
                           {"variant": "builtin", "classes": digits})
    assert class_names(load_checkpoint(path).metadata) == tuple(digits)
    assert class_names({"variant": "builtin"}) == CLASS_NAMES  # written before classes were stored


@pytest.mark.parametrize("classes", [["a", "b", "c"], [1] * 10, "abcdefghij"])
def test_checkpoint_classes_that_cannot_name_the_outputs_are_an_error(tmp_path: Path, classes: object) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", build_lenet("builtin").eval(),
                           {"variant": "builtin", "classes": classes})
    with pytest.raises(CheckpointError, match="10 outputs"):
        load_checkpoint(path)


def test_checkpoint_of_a_three_class_model_loads_with_three_outputs(tmp_path: Path) -> None:
    model = build_lenet("scratch", 3).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"variant": "scratch", "classes": ["a", "b", "c"]})
    loaded = load_checkpoint(path).model
    assert loaded[-1].out_features == 3 and class_names(read_metadata(path)) == ("a", "b", "c")
    x = torch.zeros(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    # Without class names (an older writer), the last layer says how many outputs there are.
    bare = save_checkpoint(tmp_path / "bare.safetensors", model, {"variant": "scratch"})
    assert load_checkpoint(bare).model[-1].out_features == 3
