"""Where predictions run: eager PyTorch, or onnxruntime on the model's ONNX export.

Both answer the same question the same way: class probabilities ``(N, K)`` for inputs
``(N, 1, 28, 28)``, BN in eval mode (in the ONNX export the running statistics are constants).
On a CPU, onnxruntime answers one image about ten times faster than eager PyTorch and a batch
of 256 three to four times faster (``python -m bench --only export``), so it is offered as a
serving option (``PREDICT_RUNTIME``, ``app/predictors.py``). Its threads are pinned and its
spinning is off: a serving process should not burn a core waiting for work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from models.export import INPUT_NAME, OUTPUT_NAME, onnx_bytes
from models.inference import predict_probabilities

__all__ = [
    "RUNTIMES",
    "EagerModel",
    "OnnxRuntimeModel",
    "Predictor",
    "Runtime",
    "make_predictor",
    "onnx_session",
]

Runtime = Literal["eager", "onnxruntime"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)


class Predictor(Protocol):
    """Anything that answers class probabilities ``(N, K)`` for inputs ``(N, 1, 28, 28)`` float32."""

    def predict_probabilities(self, X: Tensor) -> Tensor: ...


class EagerModel:
    """The PyTorch model itself; it must be in eval mode (``load_checkpoint`` returns it so)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def predict_probabilities(self, X: Tensor) -> Tensor:
        return predict_probabilities(self.model, X)


def onnx_session(model: bytes | str | os.PathLike[str], *, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session with ``threads`` intra-op threads, one inter-op thread, spinning off."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning trades a busy core for microseconds of wake-up; off, as in a shared server.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(Path(model))
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModel:
    """An ONNX export (``models.export``) run by onnxruntime on the CPU; safe to call from several threads."""

    def __init__(self, model: bytes | str | os.PathLike[str], *, threads: int = 1) -> None:
        self.session = onnx_session(model, threads=threads)
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([INPUT_NAME], [OUTPUT_NAME]):
            raise ValueError(
                f"not a bnlenet ONNX export: inputs and outputs {names}, expected ([{INPUT_NAME!r}], [{OUTPUT_NAME!r}])"
            )

    @classmethod
    def from_model(
        cls, model: nn.Module, metadata: Mapping[str, Any], *, threads: int = 1, model_id: str | None = None
    ) -> OnnxRuntimeModel:
        """Export ``model`` to ONNX in memory (a second or two) and open a session on it.

        The export runs in this process: not while other threads run models (a server builds
        its sessions with ``models.export.export_bytes_in_subprocess`` instead, as ``app.predictors``).
        """
        return cls(onnx_bytes(model, metadata, model_id=model_id), threads=threads)

    def predict_probabilities(self, X: Tensor) -> Tensor:
        """Probabilities ``(N, K)`` for ``X`` ``(N, 1, 28, 28)`` float32 on the CPU, as ``models.inference``'s."""
        x = np.ascontiguousarray(X.detach().cpu().numpy(), dtype=np.float32)  # (N, 1, 28, 28)
        (probabilities,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return torch.from_numpy(probabilities)  # (N, K)


def make_predictor(
    model: nn.Module,
    metadata: Mapping[str, Any],
    runtime: str = "eager",
    *,
    threads: int = 1,
    model_id: str | None = None,
) -> Predictor:
    """The model served by ``runtime`` (``eager`` or ``onnxruntime``); a ValueError lists the runtimes."""
    if runtime == "eager":
        return EagerModel(model)
    if runtime == "onnxruntime":
        return OnnxRuntimeModel.from_model(model, metadata, threads=threads, model_id=model_id)
    raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
