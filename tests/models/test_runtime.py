"""Serving runtimes: onnxruntime on the ONNX export answers as eager PyTorch does, image by image."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import Tensor, nn

from models.data import FashionMNIST
from models.export import export_model
from models.inference import predict_probabilities
from models.preprocess import to_model_input
from models.runtime import RUNTIMES, EagerModel, OnnxRuntimeModel, make_predictor
from models.training import TrainConfig, train


@pytest.fixture(scope="module", params=["scratch", "builtin"])
def trained(request: pytest.FixtureRequest, data: FashionMNIST) -> tuple[nn.Module, dict[str, str]]:
    """A briefly trained model of one variant and its (minimal) checkpoint metadata."""
    model = train(TrainConfig(variant=request.param, epochs=1, batch_size=32, device="cpu"), data).model
    return model, {"variant": request.param}


@pytest.fixture(scope="module")
def images(data: FashionMNIST) -> Tensor:
    return to_model_input(data.test_images[:100])  # (100, 1, 28, 28)


def test_runtime_onnxruntime_matches_eager_for_100_images(
    trained: tuple[nn.Module, dict[str, str]], images: Tensor
) -> None:
    model, metadata = trained
    onnx_model = make_predictor(model, metadata, "onnxruntime", threads=2)
    assert isinstance(onnx_model, OnnxRuntimeModel)
    got = onnx_model.predict_probabilities(images)
    assert got.dtype == torch.float32 and got.shape == (100, 10)
    torch.testing.assert_close(got, predict_probabilities(model, images), rtol=0, atol=1e-5)
    # One image at a time gives each row of the batch.
    singles = torch.cat([onnx_model.predict_probabilities(x) for x in images.split(1)])
    torch.testing.assert_close(singles, got, rtol=0, atol=1e-6)


def test_runtime_onnxruntime_opens_an_exported_file(
    trained: tuple[nn.Module, dict[str, str]], images: Tensor, tmp_path: Path
) -> None:
    model, metadata = trained
    path = export_model(model, metadata, "onnx", tmp_path / "m.onnx")
    from_file = OnnxRuntimeModel(path).predict_probabilities(images[:7])
    torch.testing.assert_close(from_file, predict_probabilities(model, images[:7]), rtol=0, atol=1e-5)


def test_runtime_eager_is_predict_probabilities(trained: tuple[nn.Module, dict[str, str]], images: Tensor) -> None:
    model, metadata = trained
    predictor = make_predictor(model, metadata, "eager")
    assert isinstance(predictor, EagerModel)
    torch.testing.assert_close(
        predictor.predict_probabilities(images), predict_probabilities(model, images), rtol=0, atol=0
    )


def test_runtime_refuses_unknown_runtimes_threads_and_foreign_onnx() -> None:
    with pytest.raises(ValueError, match="choose one of eager, onnxruntime"):
        make_predictor(nn.Identity(), {}, "tensorrt")
    assert RUNTIMES == ("eager", "onnxruntime")
    with pytest.raises(ValueError, match="threads must be at least 1"):
        OnnxRuntimeModel(b"", threads=0)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    foreign = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    foreign.ir_version = 10
    with pytest.raises(ValueError, match="not a bnlenet ONNX export"):
        OnnxRuntimeModel(foreign.SerializeToString())
