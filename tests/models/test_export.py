"""Exports of a trained checkpoint: ONNX run with onnxruntime and pt2 run with torch.export.load answer as eager does."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import Tensor

from models.batchnorm import BatchNorm, batchnorm_layers
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.data import CLASS_NAMES, FashionMNIST
from models.export import (
    EXPORT_FORMATS,
    EXPORT_METADATA_FILE,
    INPUT_NAME,
    ONNX_OPSET,
    OUTPUT_NAME,
    check_export_format,
    export_bytes_in_subprocess,
    export_checkpoint,
    export_filename,
    export_model,
    onnx_bytes,
    pt2_bytes,
)
from models.inference import predict_probabilities
from models.lenet import build_lenet
from models.preprocess import to_model_input
from models.training import TrainConfig, train, training_metadata

VARIANTS = ["scratch", "builtin"]
ATOL = 1e-5


@dataclass(frozen=True)
class Exported:
    checkpoint: Path
    onnx: Path
    pt2: Path


@pytest.fixture(scope="module")
def images(data: FashionMNIST) -> Tensor:
    """100 test images as the network's input ``(100, 1, 28, 28)``."""
    return to_model_input(data.test_images[:100])


@pytest.fixture(scope="module", params=VARIANTS)
def exported(request: pytest.FixtureRequest, data: FashionMNIST, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A briefly trained checkpoint of one variant, exported to ONNX and pt2 once for the module."""
    config = TrainConfig(variant=request.param, epochs=1, batch_size=32, device="cpu")
    result = train(config, data)
    directory = tmp_path_factory.mktemp(f"export-{request.param}")
    checkpoint = save_checkpoint(
        directory / "m1.safetensors", result.model, training_metadata(config, result, data.classes)
    )
    return Exported(
        checkpoint=checkpoint,
        onnx=export_checkpoint(checkpoint, "onnx", directory / "m1.onnx", model_id="m1"),
        pt2=export_checkpoint(checkpoint, "pt2", directory / "m1.pt2", model_id="m1"),
    )


def eager(exported: Exported, X: Tensor) -> np.ndarray:
    """What /predict computes: the loaded checkpoint in eval mode, softmax of its output."""
    return predict_probabilities(load_checkpoint(exported.checkpoint).model, X).numpy()


def onnx_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(path: Path, X: Tensor) -> np.ndarray:
    return onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: X.numpy()})[0]


def run_pt2(path: Path, X: Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.export.load(path).module()(X).numpy()


def ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_export_onnx_matches_eager_for_100_images(exported: Exported, images: Tensor) -> None:
    np.testing.assert_allclose(run_onnx(exported.onnx, images), eager(exported, images), rtol=0, atol=ATOL)


def test_export_pt2_matches_eager_for_100_images(exported: Exported, images: Tensor) -> None:
    np.testing.assert_allclose(run_pt2(exported.pt2, images), eager(exported, images), rtol=0, atol=ATOL)


@pytest.mark.parametrize("batch", [1, 37])
def test_export_onnx_and_pt2_take_any_batch_size(exported: Exported, images: Tensor, batch: int) -> None:
    X = images[:batch]
    expected = eager(exported, X)
    for got in (run_onnx(exported.onnx, X), run_pt2(exported.pt2, X)):
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_export_onnx_states_input_output_opset_and_dynamic_batch(exported: Exported) -> None:
    model = onnx.load(str(exported.onnx))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [("", ONNX_OPSET)]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == INPUT_NAME and out.name == OUTPUT_NAME
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_export_onnx_metadata_documents_the_preprocessing(exported: Exported) -> None:
    model = onnx.load(str(exported.onnx))
    props = {p.key: p.value for p in model.metadata_props}
    variant = load_checkpoint(exported.checkpoint).metadata["variant"]
    assert props["input_name"] == INPUT_NAME and props["output_name"] == OUTPUT_NAME
    assert props["input_shape"] == "[N, 1, 28, 28]" and props["input_dtype"] == "float32"
    assert "pixel / 255" in props["input_scaling"]
    assert json.loads(props["class_names"]) == list(CLASS_NAMES)
    assert props["variant"] == variant and props["model_id"] == "m1"
    assert props["onnx_opset"] == str(ONNX_OPSET)
    assert "eval mode" in props["batchnorm"]
    assert props["checkpoint_checksum"] == load_checkpoint(exported.checkpoint).metadata["checksum"]
    assert "softmax" in props["output"] and INPUT_NAME in model.doc_string


def test_export_pt2_carries_the_same_metadata(exported: Exported) -> None:
    extra = {EXPORT_METADATA_FILE: ""}
    torch.export.load(exported.pt2, extra_files=extra)
    props = {p.key: p.value for p in onnx.load(str(exported.onnx)).metadata_props}
    assert json.loads(extra[EXPORT_METADATA_FILE]) == props


def test_export_scratch_bn_in_onnx_is_the_books_arithmetic_with_constant_statistics(
    data: FashionMNIST, tmp_path: Path
) -> None:
    # Built here with distinctive statistics, so the constants are recognisably the layer's own.
    torch.manual_seed(3)
    config = TrainConfig(variant="scratch", epochs=1, batch_size=64, device="cpu")
    model = train(config, data).model
    path = export_model(model, {"variant": "scratch"}, "onnx", tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert "BatchNormalization" not in [n.op_type for n in graph.node]
    # Each BN layer is one Mul by scale = gamma / sqrt(var + eps) and one Add of
    # beta - mean * scale, both folded to constants by the exporter.
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    muls = [n for n in graph.node if n.op_type == "Mul"]
    adds = [n for n in graph.node if n.op_type == "Add"]
    layers = [m for _, m in batchnorm_layers(model)]
    assert len(muls) == len(adds) == len(layers) == 4
    for mul, add, layer in zip(muls, adds, layers, strict=True):
        assert isinstance(layer, BatchNorm)
        scale = (layer.gamma * torch.rsqrt(layer.moving_var + layer.eps)).detach()
        shift = (layer.beta - layer.moving_mean * scale).detach()
        (mul_const,) = [constants[i] for i in mul.input if i in constants]
        (add_const,) = [constants[i] for i in add.input if i in constants]
        np.testing.assert_allclose(mul_const.reshape(-1), scale.reshape(-1).numpy(), rtol=1e-6)
        np.testing.assert_allclose(add_const.reshape(-1), shift.reshape(-1).numpy(), rtol=1e-6, atol=1e-7)


def test_export_builtin_bn_in_onnx_is_folded_into_conv_and_gemm(tmp_path: Path) -> None:
    # The exporter's optimizer (onnxscript's rewriter) folds eval-mode BatchNormalization into
    # the preceding Conv/Gemm weights: no BN op, and no Mul/Add left over either.
    torch.manual_seed(0)
    path = export_model(build_lenet("builtin"), {"variant": "builtin"}, "onnx", tmp_path / "m.onnx")
    assert (
        " ".join(ops(path))
        == "Conv Sigmoid MaxPool Conv Sigmoid MaxPool Reshape Gemm Sigmoid Gemm Sigmoid Gemm Softmax"
    )


def test_export_pt2_has_eval_mode_bn_only(exported: Exported) -> None:
    program = torch.export.load(exported.pt2)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    # No batch statistics: nothing computes a mean or variance of activations.
    assert not [t for t in targets if "mean" in t or "var" in t]
    bn_calls = [n for n in program.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target)]
    variant = load_checkpoint(exported.checkpoint).metadata["variant"]
    if variant == "scratch":
        assert not bn_calls and targets.count("aten.addcmul.default") == 4
    else:
        assert len(bn_calls) == 4
        assert all(n.args[5] is False for n in bn_calls)  # aten.batch_norm(..., training=False, ...)


def test_export_is_deterministic_per_checkpoint(exported: Exported, tmp_path: Path, images: Tensor) -> None:
    for fmt, first in (("onnx", exported.onnx), ("pt2", exported.pt2)):
        again = export_checkpoint(exported.checkpoint, fmt, tmp_path / export_filename("m1", fmt), model_id="m1")
        assert again.read_bytes() == first.read_bytes(), fmt
    np.testing.assert_array_equal(run_onnx(tmp_path / "m1.onnx", images), run_onnx(exported.onnx, images))


def test_export_safetensors_is_the_checkpoint_file(exported: Exported, tmp_path: Path) -> None:
    out = export_checkpoint(exported.checkpoint, "safetensors", tmp_path / "m1.safetensors")
    assert out.read_bytes() == exported.checkpoint.read_bytes()


def test_export_writes_atomically_and_leaves_no_temporary(exported: Exported, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "m1.pt2"
    assert export_checkpoint(exported.checkpoint, "pt2", out) == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["m1.pt2"]


def test_export_leaves_a_training_model_in_training_mode_and_exports_eval(data: FashionMNIST, tmp_path: Path) -> None:
    model = train(TrainConfig(variant="scratch", epochs=1, batch_size=64, device="cpu"), data).model
    model.train()
    path = export_model(model, {"variant": "scratch"}, "pt2", tmp_path / "m.pt2")
    assert model.training
    X = to_model_input(data.test_images[:8])
    model.eval()
    np.testing.assert_allclose(run_pt2(path, X), predict_probabilities(model, X).numpy(), rtol=0, atol=ATOL)


def test_export_bad_format_is_a_value_error_listing_the_formats(exported: Exported, tmp_path: Path) -> None:
    for call in (
        lambda: check_export_format("torchscript"),
        lambda: export_checkpoint(exported.checkpoint, "torchscript", tmp_path / "m.pt"),
        lambda: export_checkpoint(tmp_path / "absent.safetensors", "ONNX", tmp_path / "m.onnx"),
        lambda: export_filename("m1", "zip"),
    ):
        with pytest.raises(ValueError, match="choose one of onnx, pt2, safetensors"):
            call()
    assert EXPORT_FORMATS == ("onnx", "pt2", "safetensors")
    assert list(tmp_path.iterdir()) == []


def test_export_missing_or_tampered_checkpoint_is_a_checkpoint_error(exported: Exported, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        export_checkpoint(tmp_path / "absent.safetensors", "onnx", tmp_path / "m.onnx")
    tampered = tmp_path / "tampered.safetensors"
    raw = bytearray(exported.checkpoint.read_bytes())
    raw[-1] ^= 0xFF  # a bit in the last tensor
    tampered.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        export_checkpoint(tampered, "pt2", tmp_path / "m.pt2")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.pt2").exists()


def test_export_pt2_loads_from_a_file_object(exported: Exported, images: Tensor) -> None:
    program = torch.export.load(io.BytesIO(exported.pt2.read_bytes()))
    with torch.inference_mode():
        got = program.module()(images[:5]).numpy()
    np.testing.assert_allclose(got, eager(exported, images[:5]), rtol=0, atol=ATOL)


def test_export_from_several_threads_at_once_gives_the_serial_bytes() -> None:
    # torch.export is not thread-safe; the exports take turns, as an API's thread pool would need.
    torch.manual_seed(0)
    model = build_lenet("builtin").eval()
    metadata = {"variant": "builtin"}
    expected = {"onnx": onnx_bytes(model, metadata), "pt2": pt2_bytes(model, metadata)}
    got: dict[tuple[str, int], bytes] = {}
    errors: list[BaseException] = []

    def work(fmt: str, i: int) -> None:
        try:
            got[(fmt, i)] = (onnx_bytes if fmt == "onnx" else pt2_bytes)(model, metadata)
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(fmt, i)) for fmt in expected for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(got) == 4
    assert all(payload == expected[fmt] for (fmt, _), payload in got.items())


def test_export_in_a_subprocess_gives_the_same_bytes_while_this_process_runs_the_model(images: Tensor) -> None:
    # In this process torch.export would break a forward pass running meanwhile in another
    # thread (how a server is built); in a child it cannot.
    torch.manual_seed(0)
    model = build_lenet("scratch").eval()
    metadata = {"variant": "scratch", "checksum": "c0ffee"}
    expected = predict_probabilities(model, images[:16])
    stop, calls, errors = threading.Event(), [0], []

    def serve() -> None:
        while not stop.is_set():
            try:
                torch.testing.assert_close(predict_probabilities(model, images[:16]), expected, rtol=0, atol=0)
                calls[0] += 1
            except BaseException as exc:  # reported below
                errors.append(exc)

    server = threading.Thread(target=serve)
    server.start()
    try:
        payload = export_bytes_in_subprocess(model, metadata, model_id="m1")
    finally:
        stop.set()
        server.join()
    assert errors == [] and calls[0] > 0
    assert payload == onnx_bytes(model, metadata, model_id="m1")


def test_export_in_a_subprocess_that_fails_says_why() -> None:
    with pytest.raises(RuntimeError, match="unknown variant 'no-such-variant'"):
        export_bytes_in_subprocess(build_lenet("builtin"), {"variant": "no-such-variant"})
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RuntimeError, match="cancelled"):
        export_bytes_in_subprocess(build_lenet("builtin"), {"variant": "builtin"}, cancel=cancel)


def test_export_in_a_subprocess_makes_pt2_programs_too(tmp_path: Path) -> None:
    model = build_lenet("scratch").eval()
    payload = export_bytes_in_subprocess(model, {"variant": "scratch"}, "pt2", model_id="m2")
    (tmp_path / "m2.pt2").write_bytes(payload)
    extra = {EXPORT_METADATA_FILE: ""}
    program = torch.export.load(tmp_path / "m2.pt2", extra_files=extra)
    images = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(program.module()(images), predict_probabilities(model, images), rtol=0, atol=1e-6)
    assert json.loads(extra[EXPORT_METADATA_FILE])["model_id"] == "m2"
    with pytest.raises(ValueError, match="checkpoint itself"):
        export_bytes_in_subprocess(model, {"variant": "scratch"}, "safetensors")


def test_export_of_a_three_class_model_names_its_classes(tmp_path: Path) -> None:
    from models.lenet import build_lenet

    model = build_lenet("builtin", 3).eval()
    source = save_checkpoint(tmp_path / "three.safetensors", model, {"variant": "builtin", "classes": ["a", "b", "c"]})
    out = export_checkpoint(source, "onnx", tmp_path / "three.onnx", model_id="three")
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["class_names"]) == ["a", "b", "c"] and "(N, 3)" in props["output"]
    session = ort.InferenceSession(str(out))
    x = torch.rand(2, 1, 28, 28)
    (probs,) = session.run(None, {INPUT_NAME: x.numpy()})
    assert probs.shape == (2, 3)
