"""The runtime that answers /predict for each loaded model: eager PyTorch, or onnxruntime on its ONNX export.

``PREDICT_RUNTIME`` picks it. A predictor is built once per model and process from the model
already in memory (``LoadedModel.model`` and ``.metadata``), never from a file, so once a
model is loaded /predict touches neither the disk nor the network. Predictors are keyed by
model id and checkpoint checksum (a replaced checkpoint gets a new one) and kept in an LRU as
large as the model cache; a model evicted before its build's turn is not built.

The ONNX session is built in the background: the export takes a few seconds and runs in a
child process (``models.export.export_bytes_in_subprocess``: ``torch.export`` in this process
can break the forward passes other threads run meanwhile), one build at a time per process.
Until its session is ready, a model is served by eager PyTorch, so no request waits for a
build and the event loop never blocks on one. A session whose answers on a probe batch differ
from eager's by more than ``TOLERANCE``, or a failed export, is logged and the model stays on
eager: a build problem is never a 500. Every answer says which runtime gave it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bnlenet.model_store import LoadedModel
from models.export import export_bytes_in_subprocess
from models.inference import stack_images
from models.lenet import IMAGE_SIZE
from models.runtime import EagerModel, OnnxRuntimeModel, Predictor, Runtime

__all__ = ["TOLERANCE", "Predictors"]

log = logging.getLogger(__name__)

TOLERANCE = 1e-5  # largest probability difference from eager a session may show on the probe batch
_PROBE_BATCH = 16


@dataclass
class _Entry:
    eager: EagerModel
    # (runtime, predictor) as one value, so a reader never sees one without the other.
    serving: tuple[Runtime, Predictor]
    settled: threading.Event = field(default_factory=threading.Event)  # the build ended, either way


class Predictors:
    """One predictor per loaded model under ``runtime``, ``threads`` intra-op threads each, the newest ``size`` kept."""

    def __init__(self, runtime: Runtime, *, threads: int = 1, size: int = 8, build_timeout_s: float = 300.0) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.runtime = runtime
        self.threads = threads
        self.size = size
        self.build_timeout_s = build_timeout_s
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._closed = threading.Event()  # also cancels a running export
        self._builder: ThreadPoolExecutor | None = None  # one build at a time, started on first need

    def __len__(self) -> int:
        return len(self._entries)

    def predict(self, loaded: LoadedModel, images: Sequence[Tensor]) -> tuple[Runtime, Tensor]:
        """The runtime that answered and the probabilities ``(N, K)`` of ``images`` (N of ``(1, 1, 28, 28)``)."""
        runtime, predictor = self._entry(loaded).serving
        return runtime, predictor.predict_probabilities(stack_images(images))

    def wait(self, loaded: LoadedModel, timeout: float | None = None) -> Runtime:
        """Wait until ``loaded``'s predictor is settled (its session built, or given up); the runtime it serves with."""
        entry = self._entry(loaded)
        if not entry.settled.wait(timeout):
            raise TimeoutError(f"the {self.runtime} predictor for model {loaded.model_id!r} is still being built")
        return entry.serving[0]

    def close(self) -> None:
        """Stop building: a running export is killed, queued ones are dropped; answers go on with eager."""
        with self._lock:  # so no request schedules a build on a builder that is shut down
            self._closed.set()
            if self._builder is not None:
                self._builder.shutdown(wait=False, cancel_futures=True)
            for entry in self._entries.values():
                entry.settled.set()  # a dropped build never settles its entry itself

    def _entry(self, loaded: LoadedModel) -> _Entry:
        key = (loaded.model_id, str(loaded.metadata.get("checksum", "")))
        entry = self._entries.get(key)
        if entry is not None:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
            return entry
        with self._lock:  # one entry, and one build, per key however many requests arrive at once
            entry = self._entries.get(key)
            if entry is not None:
                return entry
            eager = EagerModel(loaded.model)
            entry = _Entry(eager, ("eager", eager))
            self._entries[key] = entry
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            if self.runtime == "eager" or self._closed.is_set():
                entry.settled.set()
            else:
                if self._builder is None:
                    self._builder = ThreadPoolExecutor(1, thread_name_prefix="predictor-build")
                self._builder.submit(self._build, loaded, entry)
        return entry

    def _build(self, loaded: LoadedModel, entry: _Entry) -> None:
        started = time.perf_counter()
        with self._lock:
            evicted = not any(e is entry for e in self._entries.values())
        if evicted:  # while it waited its turn: nobody would use the session
            entry.settled.set()
            return
        try:
            onnx = export_bytes_in_subprocess(loaded.model, loaded.metadata, model_id=loaded.model_id,
                                            timeout_s=self.build_timeout_s, cancel=self._closed)
            session = OnnxRuntimeModel(onnx, threads=self.threads)
            gap = _largest_difference(entry.eager, session)
            if not gap <= TOLERANCE:
                raise RuntimeError(f"its answers differ from eager PyTorch's by {gap:.1e} (more than {TOLERANCE:g})")
        except Exception as exc:
            if not self._closed.is_set():
                log.warning("onnxruntime cannot serve model %s, eager PyTorch serves it: %s", loaded.model_id, exc)
        else:
            entry.serving = ("onnxruntime", session)
            log.info("model %s is served by onnxruntime (built in %.1f s)", loaded.model_id,
                     time.perf_counter() - started)
        finally:
            entry.settled.set()


def _largest_difference(eager: Predictor, candidate: Predictor) -> float:
    """The largest probability difference between two predictors on a fixed probe batch."""
    probe = torch.rand(_PROBE_BATCH, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    return float((eager.predict_probabilities(probe) - candidate.predict_probabilities(probe)).abs().max())
