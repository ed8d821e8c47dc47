"""The training engine on a GPU: the captured step equals the plain one, graphs compile once, real data learns.

Skipped without CUDA; ``scripts/gpu_check.sh`` runs them on a GPU (``pytest -m cuda``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bnlenet.settings import Settings
from models.data import FashionMNIST, load_fashion_mnist
from models.training import Progress, TrainConfig, TrainResult, train
from tests.devices import needs_cuda
from tests.models.test_training_speed import RUN, plain_loop

pytestmark = needs_cuda


@pytest.fixture(scope="module")
def data(synthetic_data_dir: Path) -> FashionMNIST:
    return load_fashion_mnist(synthetic_data_dir, download=False)


@pytest.fixture
def full_fp32() -> Iterator[None]:
    """TF32 off (cuDNN uses it for fp32 convolutions by default), so CUDA can be held to fp32 tolerances."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def cuda_run(data: FashionMNIST, variant: str, **options: bool) -> tuple[list[float], TrainResult]:
    reports: list[Progress] = []
    result = train(TrainConfig(variant=variant, device="cuda", **RUN, **options), data, on_progress=reports.append)
    return [r.loss for r in reports], result


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module, rtol: float, atol: float) -> None:
    """Weights and every BN running statistic (buffers included)."""
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x.cpu().to(y.dtype), y.cpu(), rtol=rtol, atol=atol, msg=f"{name} differs")


@pytest.mark.usefixtures("full_fp32")
@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_cuda_graph_step_equals_eager_step(data: FashionMNIST, variant: str) -> None:
    eager_losses, eager = cuda_run(data, variant, cuda_graph=False, tf32=False)
    graph_losses, graphed = cuda_run(data, variant, tf32=False)
    assert graphed.cuda_graph and not eager.cuda_graph
    assert len(graph_losses) == len(eager_losses) == 22  # ten full batches replayed, one short one eager
    # cuDNN may time its way to other algorithms in each run: float reordering, compounded by lr 1.0.
    torch.testing.assert_close(torch.tensor(graph_losses), torch.tensor(eager_losses), rtol=1e-3, atol=1e-4)
    # The replayed step updates the BN buffers in place: the running statistics advanced too.
    assert_same_state(graphed.model, eager.model, rtol=1e-3, atol=1e-4)


@pytest.mark.usefixtures("full_fp32")
@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_cuda_compiled_graph_engine_matches_cpu_plain_loop(data: FashionMNIST, variant: str) -> None:
    expected, plain_model = plain_loop(variant, data, **{k: RUN[k] for k in ("epochs", "batch_size", "lr", "seed")})
    got, result = cuda_run(data, variant, compile=True, tf32=False)
    assert result.cuda_graph and result.device.startswith("cuda")
    # Fused kernels and the GPU's reduction order: the compiled CPU test's tolerances.
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-3, atol=1e-4)
    assert_same_state(result.model, plain_model, rtol=1e-2, atol=1e-3)


def test_cuda_second_run_reuses_the_compiled_graphs(data: FashionMNIST) -> None:
    cuda_run(data, "scratch", compile=True)
    _, second = cuda_run(data, "scratch", compile=True)
    assert second.compiled_graphs == 0 and second.cuda_graph


def test_cuda_tf32_tracks_fp32_and_leaves_the_switch_as_it_was(data: FashionMNIST) -> None:
    before = torch.backends.cuda.matmul.allow_tf32
    fp32, _ = cuda_run(data, "builtin", compile=True, tf32=False)
    tf32, result = cuda_run(data, "builtin", compile=True)
    assert torch.backends.cuda.matmul.allow_tf32 == before
    # TF32 keeps 10 bits of mantissa: the bf16 test's tolerance, comfortably.
    assert max(abs(a - b) for a, b in zip(tf32, fp32, strict=True)) < 0.1


def test_cuda_bf16_graph_tracks_fp32(data: FashionMNIST) -> None:
    fp32, _ = cuda_run(data, "scratch", compile=True)
    bf16, result = cuda_run(data, "scratch", compile=True, bf16=True)
    assert result.cuda_graph
    # The CPU bf16 test's stated tolerance: every running mean loss within 0.1 of fp32's.
    assert max(abs(a - b) for a, b in zip(bf16, fp32, strict=True)) < 0.1


def test_cuda_cancel_stops_a_graphed_run(data: FashionMNIST) -> None:
    from models.training import TrainingCancelled

    calls = 0

    def stop_at_fourth_batch() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    with pytest.raises(TrainingCancelled, match="epoch 1, batch 3"):
        train(TrainConfig(variant="builtin", device="cuda", **RUN), data, should_stop=stop_at_fourth_batch)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_cuda_two_epochs_on_real_fashion_mnist(variant: str) -> None:
    data = load_fashion_mnist(Settings().DATA_DIR, download=False)  # the real set: where DATA_DIR points, else Debian's
    result = train(TrainConfig(variant=variant, epochs=2, device="cuda", compile=True, precise_bn=True), data)
    assert result.cuda_graph
    assert result.history[-1].train_acc > 0.8
    assert result.precise_bn_test_acc is not None and result.precise_bn_test_acc >= 0.82, result.precise_bn_test_acc
