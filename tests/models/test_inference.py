"""Eval-mode inference: a batch answers each image as if it were predicted alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.data import load_fashion_mnist
from models.inference import predict_batch, predict_probabilities
from models.lenet import build_lenet
from models.preprocess import to_model_input
from models.training import TrainConfig, train


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_inference_batch_equals_single_predicts(synthetic_data_dir: Path, variant: str) -> None:
    data = load_fashion_mnist(synthetic_data_dir, download=False)
    model = train(TrainConfig(variant=variant, epochs=1, batch_size=32, device="cpu"), data).model
    images = list(to_model_input(data.test_images[:100]).split(1))  # 100 x (1, 1, 28, 28)
    batch = predict_batch(model, images)  # (100, 10)
    singles = torch.cat([predict_probabilities(model, x) for x in images])
    assert batch.shape == (100, 10)
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-6)
    # Order and neighbours do not matter either: the same images reversed give the same rows.
    torch.testing.assert_close(predict_batch(model, images[::-1]).flip(0), singles, rtol=0, atol=1e-6)
    assert not model.training


def test_inference_batch_names_the_bad_image() -> None:
    model = build_lenet("scratch").eval()
    good = torch.rand(1, 1, 28, 28)
    with pytest.raises(ValueError, match=r"image 2 is torch.float32 of shape \(1, 1, 28, 27\)"):
        predict_batch(model, [good, good, torch.rand(1, 1, 28, 27)])
    with pytest.raises(ValueError, match="image 1 is torch.float64"):
        predict_batch(model, [good, good.double()])
    with pytest.raises(ValueError, match="no images"):
        predict_batch(model, [])


def test_inference_batch_needs_eval_mode() -> None:
    with pytest.raises(RuntimeError, match="eval mode"):
        predict_batch(build_lenet("builtin").train(), [torch.rand(1, 1, 28, 28)] * 2)
