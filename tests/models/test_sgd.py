"""PlainSGD: torch.optim.SGD's CPU update bit for bit, its state_dict's shape, and no torch._dynamo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.data import FashionMNIST
from models.lenet import build_lenet
from models.sgd import PlainSGD
from models.stepper import TrainSteps, sgd
from tests.conftest import TEST_THREADS

REPO = Path(__file__).resolve().parents[2]


def _trained(variant: str, data: FashionMNIST, make_optimizer: str) -> dict[str, torch.Tensor]:
    """Two epochs of the engine's steps (batches of 48, a short last one) with one optimizer or the other."""
    torch.manual_seed(5)
    model = build_lenet(variant)
    optimizer = (torch.optim.SGD(model.parameters(), lr=1.0) if make_optimizer == "torch"
                 else sgd(model, 1.0, torch.device("cpu")))
    steps = TrainSteps(model, optimizer, data.train_images, data.train_labels, torch.device("cpu"), batch_size=48)
    shuffle = torch.Generator().manual_seed(5)
    for _ in range(2):
        order = torch.randperm(len(data.train_images), generator=shuffle)
        for start in range(0, len(order), 48):
            steps(order[start:start + 48])
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant", ["scratch", "builtin"])
def test_sgd_on_cpu_is_torch_optim_sgd_bit_for_bit(data: FashionMNIST, variant: str) -> None:
    assert torch.get_num_threads() == TEST_THREADS
    ours = _trained(variant, data, "engine")
    theirs = _trained(variant, data, "torch")
    assert isinstance(sgd(build_lenet(variant), 1.0, torch.device("cpu")), PlainSGD)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_sgd_state_dict_is_torch_optim_sgds() -> None:
    model = build_lenet("scratch")
    ours, theirs = PlainSGD(model.parameters(), 0.5), torch.optim.SGD(model.parameters(), lr=0.5)
    assert ours.state_dict() == theirs.state_dict()
    theirs.load_state_dict(PlainSGD(model.parameters(), 0.25).state_dict())
    assert theirs.param_groups[0]["lr"] == 0.25
    ours.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.125).state_dict())
    assert ours.param_groups[0]["lr"] == 0.125


@pytest.mark.parametrize("options", [{"momentum": 0.9}, {"weight_decay": 1e-4}])
def test_sgd_refuses_a_state_it_cannot_continue(options: dict[str, float]) -> None:
    model = build_lenet("scratch")
    with pytest.raises(ValueError, match="not plain SGD"):
        PlainSGD(model.parameters(), 1.0).load_state_dict(torch.optim.SGD(model.parameters(), lr=1.0, **options).state_dict())


def test_training_on_the_cpu_never_imports_the_compiler(synthetic_data_dir: Path) -> None:
    # torch._dynamo costs 1-4 s of a short `bnlenet train` process; only --compile needs it.
    script = (
        "import sys\n"
        "from models.data import load_fashion_mnist\n"
        "from models.training import TrainConfig, train\n"
        f"data = load_fashion_mnist({str(synthetic_data_dir)!r}, download=False)\n"
        "result = train(TrainConfig(epochs=2, batch_size=64, swa_epochs=2, precise_bn_images=128, device='cpu',"
        " threads=1), data)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'torch._inductor', 'sympy'))))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
