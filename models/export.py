"""Export a trained model to take elsewhere: ONNX, a ``torch.export`` program (pt2), or the safetensors checkpoint.

Every export is of the model in eval mode, so BN normalizes with its running statistics and
an image's answer depends on that image alone. The ONNX and pt2 exports take the network's
input ``image`` ``(N, 1, 28, 28)`` float32 (pixel / 255, as the training data) with any batch
size ``N`` and answer ``probabilities`` ``(N, K)`` (K: the model's classes): the softmax that ``/predict`` answers,
so the two compare directly (logits are not exported; ``log`` of the probabilities gives
them up to a constant per image).

How BN ends up in the exports:

* ``scratch``: its eval branch is the book's arithmetic ``X * scale + (beta - mean * scale)``
  with ``scale = gamma / sqrt(var + eps)`` from the running statistics. In ONNX the exporter's
  optimizer folds ``scale`` and the shift into constants, so each BN layer is one ``Mul`` and
  one ``Add`` (no ``BatchNormalization`` op, no training-mode code). In the pt2 program the
  statistics stay buffers and the arithmetic is in the graph.
* ``builtin``: ``nn.BatchNorm*d`` in eval mode. The ONNX exporter's optimizer folds each BN
  layer into the preceding ``Conv``/``Gemm`` weights, so no ``BatchNormalization`` op is left
  either; the pt2 program keeps ``aten.batch_norm`` with ``training=False``.

Exports are deterministic: the same checkpoint gives the same bytes (no timestamps), so they
can be cached per (model id, format). Files are written atomically, as checkpoints are, so two
writers of one export leave one whole file. Exports in one process take turns (a lock):
``torch.export`` is not thread-safe.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast, get_args

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from models.checkpoint import class_names, load_checkpoint, save_checkpoint
from models.files import write_atomically
from models.lenet import IMAGE_SIZE, build_lenet
from models.preprocess import PREPROCESSING

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_METADATA_FILE",
    "EXPORT_SUFFIXES",
    "INPUT_NAME",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "ExportFormat",
    "ProbabilitiesModel",
    "check_export_format",
    "export_checkpoint",
    "export_filename",
    "export_metadata",
    "export_model",
    "export_bytes_in_subprocess",
    "onnx_bytes",
    "pt2_bytes",
]

ExportFormat = Literal["onnx", "pt2", "safetensors"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
EXPORT_SUFFIXES: dict[str, str] = {"onnx": ".onnx", "pt2": ".pt2", "safetensors": ".safetensors"}
EXPORT_METADATA_FILE = "bnlenet.json"  # the pt2 archive's extra file with export_metadata()
EXPORT_FORMAT_TAG = "bnlenet-export/1"
# The ai.onnx opset the exporter writes natively in torch 2.14 (its torchlib's opset, so no
# version conversion); onnxruntime has run it since 1.14.
ONNX_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
_EXAMPLE_BATCH = 4  # the trace's example; not 0 or 1, which export would specialize on
# torch.export keeps tracing state per process: two exports at once in threads fail
# ("Trying to pop empty mode stack"), so exports in one process take turns. The same state
# can break a forward pass run by another thread during an export: a process that serves while
# it exports uses export_bytes_in_subprocess.
_EXPORT_LOCK = threading.Lock()


def _batch_dim() -> Any:
    """The exports' dynamic batch dimension: any batch size (BN in eval mode does not care).

    Made when an export runs, not at import: ``torch.export.Dim`` loads sympy (0.3 s), which
    a process that only lists the formats (the CLI's parser, the API) never needs.
    """
    return torch.export.Dim("batch", min=1)


class ProbabilitiesModel(nn.Module):
    """The network followed by softmax: what the exports compute, ``image`` to ``probabilities``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> Tensor:
        return torch.softmax(self.net(image), dim=1)  # (N, K classes)


def check_export_format(fmt: str) -> ExportFormat:
    """``fmt`` if it is an export format, else a ValueError that lists them."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    return cast(ExportFormat, fmt)


def export_filename(model_id: str, fmt: str) -> str:
    """The file name an export of ``model_id`` in ``fmt`` goes by: ``<model_id>.onnx`` and so on."""
    return model_id + EXPORT_SUFFIXES[check_export_format(fmt)]


def export_metadata(metadata: Mapping[str, Any], *, model_id: str | None = None) -> dict[str, str]:
    """What a consumer needs to feed the model and read its answer, as string pairs.

    The ONNX model's ``metadata_props`` and the pt2 archive's ``bnlenet.json``. Nothing time
    dependent, so exports of one checkpoint are byte for byte the same.
    """
    classes = list(class_names(metadata))  # one per output: the checkpoint's reader checked that
    variant = metadata.get("variant")
    props: dict[str, Any] = {
        "format": EXPORT_FORMAT_TAG,
        "model_id": model_id,
        "variant": variant,
        "input_name": INPUT_NAME,
        "input_shape": f"[N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}]",
        "input_dtype": "float32",
        "input_scaling": "pixel / 255: values in [0, 1], 0 is black (the background), as the training data",
        "preprocessing": PREPROCESSING,
        "output_name": OUTPUT_NAME,
        "output": f"softmax probabilities (N, {len(classes)}); column k is class_names[k]",
        "class_names": classes,
        "batchnorm": "eval mode: running statistics (constants); batching never changes an image's answer",
        "onnx_opset": ONNX_OPSET,
        "checkpoint_format": metadata.get("format"),
        "checkpoint_checksum": metadata.get("checksum"),
        "checkpoint_created_at": metadata.get("created_at"),
        "hyperparameters": metadata.get("hyperparameters"),
        "test_acc": (metadata.get("metrics") or {}).get("test_acc"),
        "torch": torch.__version__,
    }
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in props.items() if v is not None}


def _example_input(model: nn.Module) -> Tensor:
    device = next(model.parameters()).device
    return torch.zeros(_EXAMPLE_BATCH, 1, IMAGE_SIZE, IMAGE_SIZE, device=device)  # (N, 1, 28, 28); values unused


def _exported_program(model: nn.Module) -> torch.export.ExportedProgram:
    # Called in eval mode, which is what gets traced: BN's branch on self.training is
    # resolved at export time, so no training-mode code is in the program.
    return torch.export.export(
        ProbabilitiesModel(model).eval(), (_example_input(model),), dynamic_shapes={INPUT_NAME: {0: _batch_dim()}}
    )


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block, the model's previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def onnx_bytes(model: nn.Module, metadata: Mapping[str, Any], *, model_id: str | None = None) -> bytes:
    """The model in eval mode as an ONNX file (opset ``ONNX_OPSET``, dynamic batch), metadata in ``metadata_props``."""
    with _EXPORT_LOCK, _eval_mode(model):
        program = torch.onnx.export(
            ProbabilitiesModel(model).eval(),
            (_example_input(model),),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={INPUT_NAME: {0: _batch_dim()}},
            opset_version=ONNX_OPSET,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    if program is None:  # only the legacy TorchScript exporter returns None
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNX program")
    proto = program.model_proto
    proto.doc_string = (
        f"bnlenet: the batch-normalized LeNet of Dive into Deep Learning, eval mode. Input {INPUT_NAME!r} "
        f"(N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}) float32, pixel / 255; output {OUTPUT_NAME!r} (N, {len(class_names(metadata))}) "
        "softmax probabilities; class names and preprocessing in metadata_props."
    )
    del proto.metadata_props[:]
    for key, value in export_metadata(metadata, model_id=model_id).items():
        proto.metadata_props.add(key=key, value=value)
    return bytes(proto.SerializeToString())


def pt2_bytes(model: nn.Module, metadata: Mapping[str, Any], *, model_id: str | None = None) -> bytes:
    """The model in eval mode as a ``torch.export`` program (dynamic batch) for ``torch.export.load``.

    ``export_metadata()`` travels in the archive as ``bnlenet.json``: read it with
    ``torch.export.load(f, extra_files={"bnlenet.json": ""})``.
    """
    buffer = io.BytesIO()
    meta = json.dumps(export_metadata(metadata, model_id=model_id), sort_keys=True)
    with _EXPORT_LOCK, _eval_mode(model):
        program = _exported_program(model)
    torch.export.save(program, buffer, extra_files={EXPORT_METADATA_FILE: meta})
    return buffer.getvalue()


def export_model(
    model: nn.Module,
    metadata: Mapping[str, Any],
    fmt: str,
    path: str | os.PathLike[str],
    *,
    model_id: str | None = None,
) -> Path:
    """Write ``model`` (with its checkpoint ``metadata``) in ``fmt`` to ``path`` atomically; returns the path.

    ``safetensors`` writes the checkpoint again: from a loaded checkpoint's model and metadata
    that is the original file, byte for byte. The model's train/eval mode is left as it was.
    """
    fmt = check_export_format(fmt)
    if fmt == "safetensors":
        return save_checkpoint(path, model, dict(metadata))
    payload = (
        onnx_bytes(model, metadata, model_id=model_id)
        if fmt == "onnx"
        else pt2_bytes(model, metadata, model_id=model_id)
    )
    return write_atomically(path, payload)


def export_checkpoint(
    checkpoint_path: str | os.PathLike[str], fmt: str, path: str | os.PathLike[str], *, model_id: str | None = None
) -> Path:
    """Load and verify the checkpoint at ``checkpoint_path`` and export it in ``fmt`` to ``path``; returns the path.

    Raises ``ValueError`` for an unknown format (before touching the checkpoint) and
    ``CheckpointError`` for a missing, tampered or foreign checkpoint.
    """
    fmt = check_export_format(fmt)
    checkpoint = load_checkpoint(checkpoint_path)
    return export_model(checkpoint.model, checkpoint.metadata, fmt, path, model_id=model_id)


def export_bytes_in_subprocess(
    model: nn.Module,
    metadata: Mapping[str, Any],
    fmt: str = "onnx",
    *,
    model_id: str | None = None,
    timeout_s: float = 300.0,
    cancel: threading.Event | None = None,
) -> bytes:
    """``onnx_bytes`` (or ``pt2_bytes``) computed by a fresh Python process: the same bytes, for a process that
    serves meanwhile.

    ``torch.export`` traces by patching process-wide state (module calls, dispatch modes), so
    a model run by another thread during an export can fail or be traced into it (seen here in
    a tight loop, 3 of 351 forward passes during 3 exports: ``GuardOnDataDependentSymNode`` in
    the thread running the model, "Unexpected key" in the exporter), and a first export leaves ~240 MiB of exporter imports behind. In a child
    neither reaches the caller. The model travels as its state_dict (safetensors, no pickle)
    on the child's stdin and the exported file comes back on its stdout: nothing touches the disk.
    The child is killed after ``timeout_s`` or when ``cancel`` is set; either, or a failed
    export, raises RuntimeError with the child's last words.
    """
    fmt = check_export_format(fmt)
    if fmt not in _PROGRAM_FORMATS:
        raise ValueError(f"{fmt} is the checkpoint itself: nothing to export in a child process")
    variant = metadata.get("variant")
    header = json.dumps({"metadata": dict(metadata), "model_id": model_id, "variant": variant, "format": fmt},
                        default=str)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    payload = header.encode() + b"\n" + safetensors_save(tensors)
    root = str(Path(__file__).resolve().parent.parent)  # the directory that holds the models package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    # Imported by its own name (not run as __main__), so the export is byte for byte onnx_bytes'.
    child = subprocess.Popen([sys.executable, "-c", "import models.export; models.export._export_child()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=root)
    # Fed from a thread of its own, so that a child still importing torch never blocks this
    # one (communicate() with a timeout cannot resume a partial write), which reads the answer.
    stdin, child.stdin = child.stdin, None
    threading.Thread(target=_feed, args=(stdin, payload), daemon=True, name="onnx-export-feed").start()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            out, err = child.communicate(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if (cancel is not None and cancel.is_set()) or time.monotonic() > deadline:
                child.kill()
                child.communicate()
                why = "was cancelled" if cancel is not None and cancel.is_set() else f"took over {timeout_s:g} s"
                raise RuntimeError(f"the {fmt} export process {why}") from None
    if child.returncode != 0 or not out:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"the {fmt} export process failed (exit {child.returncode}): {' / '.join(tail)}")
    return out


_PROGRAM_FORMATS: dict[str, Callable[..., bytes]] = {"onnx": onnx_bytes, "pt2": pt2_bytes}


def _feed(pipe: Any, payload: bytes) -> None:
    try:
        with pipe:
            pipe.write(payload)
    except (BrokenPipeError, ValueError):  # the child is gone; its exit status tells why
        pass


def _export_child() -> None:
    """The export process: a JSON line and a state_dict (safetensors) on stdin, the exported file on stdout."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the exporter prints goes to stderr, never into the ONNX bytes
    sys.stdout = sys.stderr
    torch.set_num_threads(1)
    request = json.loads(sys.stdin.buffer.readline())
    model = build_lenet(request["variant"], len(class_names(request["metadata"])))
    model.load_state_dict(safetensors_load(sys.stdin.buffer.read()), strict=True)
    export = _PROGRAM_FORMATS[request.get("format", "onnx")]
    out.write(export(model.eval(), request["metadata"], model_id=request["model_id"]))
    out.close()
