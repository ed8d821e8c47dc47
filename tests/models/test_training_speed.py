"""The engine's speed options against a deliberately plain training loop.

Each option that could change the numbers (the fused loop itself, ``bf16``, ``compile``) must
give the plain loop's loss trajectory: to float tolerance in fp32, to a stated looser one in
bfloat16. The compiled from-scratch BN must equal the eager one and keep the book's
arithmetic (no swap to PyTorch's batch-norm kernel).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from functorch.compile import make_boxed_func
from torch import nn
from torch._dynamo.backends.common import aot_autograd

from models.batchnorm import BatchNorm
from models.data import FashionMNIST
from models.lenet import build_lenet
from models.training import Progress, TrainConfig, train
from tests.conftest import TEST_THREADS
from tests.devices import DEVICES

# 512 synthetic images in batches of 48: ten full batches and a short last one (32).
# precise_bn off: the plain loop keeps the moving averages, and so must the engine to compare.
RUN = dict(epochs=2, batch_size=48, lr=1.0, seed=3, progress_every=1, precise_bn=False, threads=TEST_THREADS)


def plain_loop(variant: str, data: FashionMNIST, *, epochs: int, batch_size: int, lr: float,
               seed: int) -> tuple[list[float], nn.Module]:
    """The textbook loop: the running mean loss of each epoch after every batch, and the model."""
    torch.manual_seed(seed)
    model = build_lenet(variant)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    n = len(data.train_images)
    trajectory: list[float] = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=shuffle)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            X = data.train_images[idx].unsqueeze(1).float() / 255
            loss = F.cross_entropy(model(X), data.train_labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            trajectory.append(total / seen)
    return trajectory, model


def engine_trajectory(variant: str, data: FashionMNIST, **options: bool) -> tuple[list[float], nn.Module]:
    reports: list[Progress] = []
    result = train(TrainConfig(variant=variant, device="cpu", **RUN, **options), data, on_progress=reports.append)
    return [r.loss for r in reports], result.model


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_engine_fp32_matches_plain_loop(data: FashionMNIST, variant: str) -> None:
    expected, plain_model = plain_loop(variant, data, **{k: RUN[k] for k in ("epochs", "batch_size", "lr", "seed")})
    got, model = engine_trajectory(variant, data)
    assert len(got) == len(expected) == 22
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(model.state_dict().items(), plain_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=f"{name} differs")


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_engine_bf16_tracks_plain_loop(data: FashionMNIST, variant: str) -> None:
    # bfloat16 keeps 8 bits of mantissa (about 2-3 decimal digits), and with lr 1.0 small
    # differences compound step by step; the stated tolerance: every running mean loss
    # within 0.1 of fp32's, and the run ends at most 0.05 above it.
    expected, _ = plain_loop(variant, data, **{k: RUN[k] for k in ("epochs", "batch_size", "lr", "seed")})
    got, _ = engine_trajectory(variant, data, bf16=True)
    assert len(got) == len(expected)
    diffs = [abs(g - e) for g, e in zip(got, expected, strict=True)]
    assert max(diffs) < 0.1, diffs
    assert got[-1] < expected[-1] + 0.05


def test_engine_compiled_scratch_matches_plain_loop(data: FashionMNIST) -> None:
    expected, plain_model = plain_loop("scratch", data, **{k: RUN[k] for k in ("epochs", "batch_size", "lr", "seed")})
    got, model = engine_trajectory("scratch", data, compile=True)
    # Fusion reorders float sums, so a little looser than the eager comparison.
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-3, atol=1e-4)
    for (name, a), b in zip(model.state_dict().items(), plain_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3, msg=f"{name} differs")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_dims", [2, 4])
def test_compiled_scratch_batchnorm_equals_eager_and_keeps_book_ops(num_dims: int, device: str) -> None:
    torch.manual_seed(0)
    shape = (64, 6) if num_dims == 2 else (64, 6, 8, 8)
    X = (torch.randn(shape) * 3 + 1).to(device)
    eager, compiled_bn = BatchNorm(6, num_dims).to(device), BatchNorm(6, num_dims).to(device)
    with torch.no_grad():
        for bn in (eager, compiled_bn):
            bn.gamma.copy_(torch.linspace(0.5, 2.0, 6).reshape(bn.gamma.shape))
            bn.beta.copy_(torch.linspace(-1.0, 1.0, 6).reshape(bn.beta.shape))

    graphs: list[torch.fx.GraphModule] = []

    def recording_compiler(gm: torch.fx.GraphModule, _inputs: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    recorder = aot_autograd(fw_compiler=recording_compiler, bw_compiler=recording_compiler)
    for backend in ("inductor", recorder):
        torch._dynamo.reset()
        bn = BatchNorm(6, num_dims).to(device)
        bn.load_state_dict(compiled_bn.state_dict())
        fn = torch.compile(bn, backend=backend)
        Xc, Xe = X.clone().requires_grad_(), X.clone().requires_grad_()
        Yc, Ye = fn(Xc), eager(Xe)
        weights = torch.arange(Yc.numel(), device=device).reshape(Yc.shape).sin()
        (Yc * weights).sum().backward()
        (Ye * weights).sum().backward()
        torch.testing.assert_close(Yc, Ye, rtol=1e-5, atol=1e-5)
        assert Xc.grad is not None and Xe.grad is not None
        torch.testing.assert_close(Xc.grad, Xe.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.moving_mean, eager.moving_mean)
        torch.testing.assert_close(bn.moving_var, eager.moving_var)
        eager.load_state_dict(compiled_bn.state_dict())  # reset for the next backend

    ops = {str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"}
    assert ops, "the recording backend saw no graph"
    assert not any("batch_norm" in op for op in ops), sorted(ops)
    assert any("mean" in op for op in ops) and any("sqrt" in op or "rsqrt" in op for op in ops), sorted(ops)


def test_train_config_hyperparameters_record_bf16_but_not_compile() -> None:
    hp = TrainConfig(bf16=True, compile=True).hyperparameters()
    assert hp["bf16"] is True  # it changes the numbers, so the checkpoint says so
    assert "compile" not in hp  # it only changes how fast the same function runs
