"""The from-scratch BN's written-out gradient against autograd's gradient of the book's formula."""

from __future__ import annotations

import pytest
import torch

from models.batchnorm import BatchNorm, batch_norm


def _book(X: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The chapter's training-mode arithmetic, left for autograd to differentiate."""
    dims = (0,) if X.dim() == 2 else (0, 2, 3)
    mean = X.mean(dim=dims, keepdim=True)
    var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)
    return gamma * (X - mean) / torch.sqrt(var + eps) + beta


def _ours(X: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    stats = torch.zeros_like(gamma), torch.ones_like(gamma)
    return batch_norm(X, gamma, beta, *stats, eps=1e-5, momentum=0.9, training=True)[0]


def _tensors(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    C = shape[1]
    param_shape = (1, C) if len(shape) == 2 else (1, C, 1, 1)
    X = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 1
    gamma = torch.linspace(0.5, 2.0, C, dtype=dtype).reshape(param_shape)
    beta = torch.linspace(-1.0, 1.0, C, dtype=dtype).reshape(param_shape)
    return tuple(t.requires_grad_() for t in (X, gamma, beta))


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (10, 4)])
def test_batchnorm_backward_gradcheck_float64(shape: tuple[int, ...]) -> None:
    assert torch.autograd.gradcheck(_ours, _tensors(shape, torch.float64))


@pytest.mark.parametrize("shape", [(256, 6, 24, 24), (256, 16, 8, 8), (256, 120), (256, 84)])
def test_batchnorm_backward_equals_autograd_of_the_book_float32(shape: tuple[int, ...]) -> None:
    # LeNet's four BN inputs at the chapter's batch size.
    weights = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (_book, _ours):
        inputs = _tensors(shape, torch.float32)
        out = fn(*inputs)
        (out * weights).sum().backward()
        grads.append((out.detach(), *(t.grad for t in inputs)))
    for name, ref, got in zip(("Y", "X", "gamma", "beta"), grads[0], grads[1], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4, msg=f"{name} differs")


def test_batchnorm_backward_only_for_inputs_that_need_it() -> None:
    X, gamma, beta = _tensors((8, 3, 4, 4), torch.float32)
    X = X.detach()  # the network's input, say: no gradient wanted
    (_ours(X, gamma, beta) ** 2).sum().backward()
    assert X.grad is None and gamma.grad is not None and beta.grad is not None
    frozen = _tensors((8, 3, 4, 4), torch.float32)
    Xf, gf, bf = frozen[0], frozen[1].detach(), frozen[2].detach()
    (_ours(Xf, gf, bf) ** 2).sum().backward()
    assert Xf.grad is not None and gf.grad is None


def test_batchnorm_module_gradients_equal_autograd_of_the_book() -> None:
    bn = BatchNorm(6, num_dims=4)
    X, gamma, beta = _tensors((16, 6, 5, 5), torch.float32, seed=3)
    with torch.no_grad():
        bn.gamma.copy_(gamma)
        bn.beta.copy_(beta)
    Xb = X.detach().clone().requires_grad_()
    (bn(X) ** 3).sum().backward()
    (_book(Xb, gamma, beta) ** 3).sum().backward()
    torch.testing.assert_close(X.grad, Xb.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.gamma.grad, gamma.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.beta.grad, beta.grad, rtol=1e-4, atol=1e-4)


def test_batchnorm_training_forward_keeps_no_graph_for_the_running_statistics() -> None:
    bn = BatchNorm(3, num_dims=2)
    bn(torch.randn(8, 3, requires_grad=True))
    assert not bn.moving_mean.requires_grad and not bn.moving_var.requires_grad
