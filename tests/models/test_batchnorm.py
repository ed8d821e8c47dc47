"""The from-scratch BN against the book's math and PyTorch's builtin BN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.batchnorm import BatchNorm, batch_norm, batchnorm_state
from tests.devices import DEVICES


def _pair(num_features: int, num_dims: int, device: str = "cpu") -> tuple[BatchNorm, nn.Module]:
    ours = BatchNorm(num_features, num_dims=num_dims).to(device)
    theirs = (nn.BatchNorm2d(num_features) if num_dims == 4 else nn.BatchNorm1d(num_features)).to(device)
    return ours, theirs


def _input(num_dims: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (8, 3, 5, 5) if num_dims == 4 else (8, 3)
    return (torch.randn(shape, generator=gen) * 3 + 1).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_dims", [2, 4])
def test_batchnorm_train_mode_matches_builtin(num_dims: int, device: str) -> None:
    ours, theirs = _pair(3, num_dims, device)
    for step in range(3):
        X = _input(num_dims, seed=step, device=device).requires_grad_()
        X2 = X.detach().clone().requires_grad_()
        Y, Y2 = ours(X), theirs(X2)
        torch.testing.assert_close(Y, Y2, rtol=1e-5, atol=1e-5)
        weights = torch.linspace(-1, 1, Y.numel(), device=device).reshape(Y.shape)
        (Y * weights).sum().backward()
        (Y2 * weights).sum().backward()
        assert X.grad is not None and X2.grad is not None
        torch.testing.assert_close(X.grad, X2.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_dims", [2, 4])
def test_batchnorm_running_statistics_match_builtin_up_to_variance_convention(num_dims: int, device: str) -> None:
    ours, theirs = _pair(3, num_dims, device)
    X = _input(num_dims, device=device)
    ours(X)
    theirs(X)
    m = X.numel() // X.shape[1]  # values per channel
    # Book momentum 0.9 on the old value == PyTorch momentum 0.1 on the new one.
    torch.testing.assert_close(ours.moving_mean.reshape(-1), theirs.running_mean)
    # One step from var=1: ours = 0.9 + 0.1 * biased, PyTorch = 0.9 + 0.1 * biased * m / (m - 1).
    biased_ours = (ours.moving_var.reshape(-1) - 0.9) / 0.1
    biased_theirs = (theirs.running_var - 0.9) / 0.1 * (m - 1) / m
    torch.testing.assert_close(biased_ours, biased_theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_dims", [2, 4])
def test_batchnorm_eval_mode_matches_builtin(num_dims: int, device: str) -> None:
    ours, theirs = _pair(3, num_dims, device)
    X = _input(num_dims, device=device)
    ours(X)
    theirs(X)
    with torch.no_grad():  # give both the same running statistics
        theirs.running_var.copy_(ours.moving_var.reshape(-1))
    ours.eval()
    theirs.eval()
    X2 = _input(num_dims, seed=5, device=device)
    torch.testing.assert_close(ours(X2), theirs(X2), rtol=1e-5, atol=1e-5)


def test_batchnorm_pure_function_is_the_book_arithmetic() -> None:
    X = _input(4)
    gamma, beta = torch.full((1, 3, 1, 1), 2.0), torch.full((1, 3, 1, 1), 0.5)
    mm, mv = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    Y, new_mean, new_var = batch_norm(X, gamma, beta, mm, mv, eps=1e-5, momentum=0.9, training=True)
    mean = X.mean(dim=(0, 2, 3), keepdim=True)
    var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    torch.testing.assert_close(Y, 2.0 * (X - mean) / torch.sqrt(var + 1e-5) + 0.5)
    torch.testing.assert_close(new_mean, 0.1 * mean)
    torch.testing.assert_close(new_var, 0.9 + 0.1 * var)


def test_batchnorm_buffers_are_in_state_dict() -> None:
    bn = BatchNorm(6, num_dims=4)
    assert set(bn.state_dict()) == {"gamma", "beta", "moving_mean", "moving_var"}
    assert {name for name, _ in bn.named_buffers()} == {"moving_mean", "moving_var"}
    assert {name for name, _ in bn.named_parameters()} == {"gamma", "beta"}


def test_batchnorm_buffers_move_with_to() -> None:
    bn = BatchNorm(6, num_dims=4).to(torch.float64)
    assert bn.moving_mean.dtype == torch.float64 and bn.moving_var.dtype == torch.float64
    meta = BatchNorm(6, num_dims=4).to("meta")
    assert meta.moving_mean.device.type == "meta" and meta.moving_var.device.type == "meta"


@pytest.mark.parametrize("grad", [True, False])
def test_batchnorm_eval_forward_leaves_buffers_unchanged(grad: bool) -> None:
    bn = BatchNorm(3, num_dims=4)
    bn(_input(4))
    bn.eval()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with torch.set_grad_enabled(grad):
        out1 = bn(_input(4, seed=1))
        bn(_input(4, seed=2) * 100)
        out2 = bn(_input(4, seed=1))
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(out1, out2)


def test_batchnorm_train_mode_under_no_grad_still_updates() -> None:
    # The book chooses the mode by torch.is_grad_enabled(); ours follows module.training.
    bn = BatchNorm(3, num_dims=2)
    with torch.no_grad():
        bn(_input(2))
    assert not torch.equal(bn.moving_mean, torch.zeros_like(bn.moving_mean))


@pytest.mark.parametrize("num_dims", [2, 4])
def test_batchnorm_eval_single_example(num_dims: int) -> None:
    bn = BatchNorm(3, num_dims=num_dims)
    bn(_input(num_dims))
    bn.eval()
    X = _input(num_dims)
    one = bn(X[:1])
    torch.testing.assert_close(one, bn(X)[:1])


def test_batchnorm_one_value_per_channel_in_training_is_an_error() -> None:
    bn = BatchNorm(3, num_dims=2)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn(torch.randn(1, 3))
    # A conv layer has H*W values per channel: a single image is enough.
    conv_bn = BatchNorm(3, num_dims=4)
    conv_bn(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="more than one value per channel"):
        conv_bn(torch.randn(1, 3, 1, 1))


def test_batchnorm_wrong_rank_is_an_error() -> None:
    with pytest.raises(ValueError, match="expects a 4-D input"):
        BatchNorm(3, num_dims=4)(torch.randn(8, 3))
    with pytest.raises(ValueError, match="expects a 2-D input"):
        BatchNorm(3, num_dims=2)(torch.randn(8, 3, 2, 2))


def test_batchnorm_wrong_channel_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="expects 3 channels, got 4"):
        BatchNorm(3, num_dims=4)(torch.randn(8, 4, 2, 2))


def test_batchnorm_bad_construction_is_an_error() -> None:
    with pytest.raises(ValueError, match="num_dims"):
        BatchNorm(3, num_dims=3)


def test_batchnorm_gradients_match_builtin() -> None:
    ours, theirs = _pair(3, 4)
    X1 = _input(4).requires_grad_()
    X2 = X1.detach().clone().requires_grad_()
    (ours(X1) ** 2).sum().backward()
    (theirs(X2) ** 2).sum().backward()
    torch.testing.assert_close(X1.grad, X2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.gamma.grad.reshape(-1), theirs.weight.grad, rtol=1e-4, atol=1e-4)


def test_batchnorm_state_gives_one_view_of_both_variants() -> None:
    ours, theirs = _pair(3, 4)
    for layer in (ours, theirs):
        state = batchnorm_state(layer)
        assert set(state) == {"gamma", "beta", "running_mean", "running_var"}
        assert all(t.shape == (3,) for t in state.values())
    with pytest.raises(TypeError):
        batchnorm_state(nn.Linear(2, 2))


def test_batchnorm_pure_function_eval_mode_is_the_book_arithmetic() -> None:
    X = _input(2)
    gamma, beta = torch.full((1, 3), 1.5), torch.full((1, 3), -0.5)
    mm, mv = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.25, 4.0, 1.0]])
    Y, new_mean, new_var = batch_norm(X, gamma, beta, mm, mv, eps=1e-5, momentum=0.9, training=False)
    torch.testing.assert_close(Y, 1.5 * (X - mm) / torch.sqrt(mv + 1e-5) - 0.5)
    assert new_mean is mm and new_var is mv


def test_batchnorm_report_lists_every_layer_as_plain_values() -> None:
    from models.batchnorm import batchnorm_report
    from models.lenet import build_lenet

    for variant in ("scratch", "builtin"):
        report = batchnorm_report(build_lenet(variant))
        assert [(r["name"], r["num_features"]) for r in report] == [("1", 6), ("5", 16), ("10", 120), ("13", 84)]
        assert report[0]["gamma"] == [1.0] * 6 and report[0]["running_var"] == [1.0] * 6
        assert report[3]["beta"] == [0.0] * 84 and report[3]["running_mean"] == [0.0] * 84
