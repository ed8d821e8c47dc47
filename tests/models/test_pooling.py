"""The elementwise 2x2 max-pooling against PyTorch's ``max_pool2d``: equal values, equal gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.pooling import MaxPool2d, max_pool_2x2


def _input_with_ties(shape: tuple[int, int, int, int], seed: int = 0) -> torch.Tensor:
    """Random values with the ties LeNet meets: flat regions, equal pairs in rows and columns."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(shape, generator=gen)
    X[:, :, :2, :] = 0.25  # a flat band: every window a four-way tie
    X[:, :, 2:4, 0::2] = X[:, :, 2:4, 1::2]  # left == right in each window
    X[:, :, 4, :] = X[:, :, 5, :]  # top == bottom
    X[:, :, -2:, :] = torch.randint(0, 3, (shape[0], shape[1], 2, shape[3]), generator=gen).float()  # mixed
    return X


def _values_and_grads(pool, X: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    X = X.clone().requires_grad_()
    Y = pool(X)
    Y.backward(g)
    assert X.grad is not None
    return Y.detach(), X.grad


@pytest.mark.parametrize("shape", [(8, 6, 24, 24), (8, 16, 8, 8), (3, 2, 10, 12), (1, 2, 6, 300)])
def test_max_pool_2x2_equals_max_pool2d_values_and_gradients(shape: tuple[int, int, int, int]) -> None:
    X = _input_with_ties(shape)
    g = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    y_ref, dx_ref = _values_and_grads(lambda t: F.max_pool2d(t, 2, 2), X, g)
    y, dx = _values_and_grads(max_pool_2x2, X, g)
    assert torch.equal(y, y_ref)
    assert torch.equal(dx, dx_ref)  # ties included: the gradient goes to the same element
    # Bit for bit, so no -0.0 where PyTorch leaves +0.0 (a negative gradient times a 0 mask)
    assert torch.equal(dx.view(torch.int32), dx_ref.view(torch.int32))


def test_max_pool_2x2_gradient_goes_to_the_first_maximum_in_row_major_order() -> None:
    X = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.0, 2.0], [2.0, 2.0]], [[0.0, 0.0], [3.0, 3.0]]]]).requires_grad_()
    max_pool_2x2(X).sum().backward()
    assert X.grad is not None
    expected = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]]])
    assert torch.equal(X.grad, expected)


def test_max_pool_2x2_accepts_non_contiguous_input() -> None:
    X = _input_with_ties((4, 6, 8, 8)).permute(0, 1, 3, 2)  # a transposed view
    g = torch.randn(4, 6, 4, 4)
    y_ref, dx_ref = _values_and_grads(lambda t: F.max_pool2d(t, 2, 2), X, g)
    y, dx = _values_and_grads(max_pool_2x2, X, g)
    assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)


def test_max_pool_2x2_odd_sizes_fall_back_to_max_pool2d() -> None:
    X = torch.randn(2, 3, 7, 9)
    assert torch.equal(max_pool_2x2(X), F.max_pool2d(X, 2, 2))


def test_max_pool_2x2_gradcheck_float64() -> None:
    X = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)  # no ties: differentiable everywhere
    assert torch.autograd.gradcheck(max_pool_2x2, (X,))


def test_maxpool_module_is_an_nn_maxpool2d_and_takes_other_settings_to_pytorch() -> None:
    pool = MaxPool2d(kernel_size=2, stride=2)
    assert isinstance(pool, nn.MaxPool2d)
    assert repr(pool) == repr(nn.MaxPool2d(kernel_size=2, stride=2))
    X = torch.randn(2, 3, 9, 9)
    other = MaxPool2d(kernel_size=3, stride=2, padding=1)
    assert torch.equal(other(X), F.max_pool2d(X, 3, 2, 1))


def test_max_pool_2x2_compiled_equals_eager() -> None:
    torch._dynamo.reset()
    X = _input_with_ties((4, 6, 12, 12))
    g = torch.randn(4, 6, 6, 6)
    y_ref, dx_ref = _values_and_grads(max_pool_2x2, X, g)
    y, dx = _values_and_grads(torch.compile(max_pool_2x2, backend="aot_eager"), X, g)
    assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)
