"""One SGD step, as fast as the device allows: plain, compiled, or replayed as a captured CUDA graph.

The engine (``models.training``) decides what is computed; this module only how fast:

* ``compile``: ``torch.compile`` of forward and loss. It fuses the from-scratch BN's
  elementwise arithmetic (the book's mean/var/normalize ops stay; inductor only fuses them,
  it never swaps in ``native_batch_norm``). It costs a compile (about 10-30 s on two CPU
  cores, cached on disk between processes), so it pays off on long runs only.
* ``bf16``: autocast to bfloat16 (CPU with AVX-512 bf16, or CUDA). Changes the arithmetic slightly.
* On CUDA only: SGD's fused kernel, and ``cuda_graph``: the whole step (gather, forward,
  backward, SGD update, metric sums) is captured once as one CUDA graph and replayed per batch,
  which removes the per-kernel launch cost that dominates a network this small. With
  ``compile`` the captured step runs inductor's fused kernels.

The compiled forward is one per process and takes the model as an argument, so a second run
(the next job on a warm worker) reuses the graphs compiled by the first.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.preprocess import to_model_input
from models.sgd import Optimizer, PlainSGD

log = logging.getLogger(__name__)

__all__ = ["ForwardLoss", "TrainSteps", "compiled_forward_loss", "compiled_graph_count", "forward_loss", "sgd"]


def sgd(model: nn.Module, lr: float, device: torch.device) -> Optimizer:
    """Plain SGD, the chapter's optimizer: on CUDA ``torch.optim``'s fused kernel, on other devices ``PlainSGD``."""
    if device.type == "cuda":
        # One fused kernel updates every parameter instead of one launch per tensor.
        return torch.optim.SGD(model.parameters(), lr=lr, fused=True)
    # torch.optim.SGD's own CPU update, bit for bit, without importing torch._dynamo (models/sgd.py).
    return PlainSGD(model.parameters(), lr)


def forward_loss(model: nn.Module, images: Tensor, labels: Tensor, bf16: bool) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy loss and logits of a uint8 batch ``(B, 28, 28)``."""
    X = to_model_input(images)  # (B, 1, 28, 28)
    # No cast cache: the region is one step, and a cache is unsafe across CUDA graph capture.
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        logits = model(X)  # (B, 10)
        loss = F.cross_entropy(logits, labels)
    return loss, logits


ForwardLoss = Callable[[nn.Module, Tensor, Tensor, bool], tuple[Tensor, Tensor]]
_compiled_forward: dict[str | None, ForwardLoss] = {}


def compiled_forward_loss(mode: str | None = None) -> ForwardLoss:
    """``forward_loss`` under ``torch.compile``, one per mode and process.

    The model is an argument, not a captured constant, so its parameters are graph inputs:
    a new model of the same variant (the next job) reuses the compiled graph.
    ``dynamic=False``: one graph per batch shape; the engine compiles the full batch only.
    """
    if mode not in _compiled_forward:
        _compiled_forward[mode] = torch.compile(forward_loss, mode=mode, dynamic=False)
    return _compiled_forward[mode]


def compiled_graph_count() -> int:
    """Graphs ``torch.compile`` has compiled in this process so far."""
    if "torch._dynamo" not in sys.modules:
        return 0  # nothing compiled yet, and importing the compiler to count would cost 1-4 s
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class TrainSteps:
    """SGD steps on batches given as indices into the device-resident training set.

    Each step adds the batch's loss sum and correct count to ``loss_sum`` and ``correct`` in
    place; nothing reads a value back to the host, so on CUDA the steps queue up unhindered.
    On CUDA with ``cuda_graph``, full batches replay one captured graph; the short last batch
    of an epoch, and any run where capture fails, take the ordinary path.
    """

    def __init__(self, model: nn.Module, optimizer: Optimizer, images: Tensor, labels: Tensor,
                 device: torch.device, *, batch_size: int, bf16: bool = False, compile: bool = False,
                 cuda_graph: bool = True) -> None:
        self.model, self.optimizer, self.device = model, optimizer, device
        self.images, self.labels = images, labels  # (N, 28, 28) uint8 and (N,), on ``device``
        self.batch_size, self.bf16 = batch_size, bf16
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.forward_full: ForwardLoss = forward_loss
        use_graph = device.type == "cuda" and cuda_graph and len(images) >= batch_size
        if compile:
            # Inside our own CUDA graph the compiled kernels are captured with the rest of the
            # step; without it, "reduce-overhead" lets inductor graph the forward and backward.
            mode = "reduce-overhead" if device.type == "cuda" and not use_graph else None
            self.forward_full = compiled_forward_loss(mode)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_idx: Tensor | None = None
        if use_graph:
            try:
                self._capture(device)
            except Exception as exc:  # only speed is at stake: run the same step without the graph
                log.warning("CUDA graph capture failed, training without it: %s: %s", type(exc).__name__, exc)
                self.graph = None
                self.optimizer.zero_grad(set_to_none=True)

    def zero_sums(self) -> None:
        """Start the loss sum and correct count over (a new epoch)."""
        self.loss_sum.zero_()
        self.correct.zero_()

    def step(self, idx: Tensor) -> None:
        """One SGD step on ``images[idx]``, without the graph."""
        images, labels = self.images[idx], self.labels[idx]
        fn = self.forward_full if len(idx) == self.batch_size else forward_loss
        loss, logits = fn(self.model, images, labels, self.bf16)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.loss_sum.add_(loss.detach().float(), alpha=len(idx))
            self.correct.add_((logits.argmax(dim=1) == labels).sum())

    def __call__(self, idx: Tensor) -> None:
        """One SGD step on ``images[idx]``: the graph's replay for a full batch, when captured."""
        if self.graph is not None and self.static_idx is not None and len(idx) == len(self.static_idx):
            self.static_idx.copy_(idx)
            self.graph.replay()
        else:
            self.step(idx)

    def _capture(self, device: torch.device) -> None:
        """Record one full step as a CUDA graph, leaving the model, optimizer and sums as they were.

        A few warm-up steps on a side stream come first (PyTorch's recipe for whole-network
        capture): they run the compile, let cuDNN choose its algorithms and allocate the
        gradients; the weights and BN statistics they changed are then put back.
        """
        self.static_idx = torch.zeros(self.batch_size, dtype=torch.int64, device=device)
        saved = {k: v.clone() for k, v in self.model.state_dict().items()}
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.step(self.static_idx)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients
            with torch.cuda.graph(graph):
                self.step(self.static_idx)
            self.graph = graph
        finally:
            with torch.no_grad():  # capture runs nothing, but the warm-up steps did
                self.model.load_state_dict(saved)
                self.zero_sums()
