"""A checkpoint writer killed mid-write (SIGKILL: no cleanup runs) leaves no partial checkpoint visible."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bnlenet.model_store import ModelStore, UnknownModel
from models.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from models.lenet import build_lenet

ROOT = Path(__file__).resolve().parents[2]

# The writer: saves a checkpoint with its file write stalled, after signalling where it stalled.
# "mid-write" writes half the bytes then blocks; "before-rename" writes everything and blocks in fsync.
WRITER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path

    import torch
    from models.checkpoint import save_checkpoint
    from models.lenet import build_lenet

    target, ready, stall = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def block():
        ready.write_text("stalled")
        time.sleep(600)

    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.f.__exit__(*exc)
        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            block()
        def __getattr__(self, name):
            return getattr(self.f, name)

    if stall == "mid-write":
        os.fdopen = lambda *a, **k: HalfWriter(real_fdopen(*a, **k))
    else:
        os.fsync = lambda fd: block()

    torch.manual_seed(1)
    save_checkpoint(target, build_lenet("builtin"), {"variant": "builtin", "generation": "new"})
""")


def _kill_writer_mid_save(target: Path, stall: str, tmp_path: Path) -> list[Path]:
    """Run the writer until it stalls, SIGKILL it; returns the temporary files it was writing."""
    ready = tmp_path / f"ready-{stall}"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(ready), stall], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the writer exited before stalling:\n{proc.stdout.read().decode()}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the writer never stalled"
            time.sleep(0.05)
        partial = sorted(p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))
        assert partial, "the writer should be mid-way through a temporary file"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return partial


@pytest.mark.parametrize("stall", ["mid-write", "before-rename"])
def test_checkpoint_crash_fresh_target_is_never_visible(tmp_path: Path, stall: str) -> None:
    target = tmp_path / "models" / "job-1.safetensors"
    target.parent.mkdir()
    partial = _kill_writer_mid_save(target, stall, tmp_path)

    assert not target.exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(target)
    assert all(p.exists() for p in partial)  # SIGKILL left the temporary file behind, hidden by its name
    if stall == "mid-write":  # and a half-written one, even loaded by hand, is refused cleanly
        for leftover in partial:
            with pytest.raises(CheckpointError):
                load_checkpoint(leftover)
    store = ModelStore(target.parent)
    assert store.list() == []
    with pytest.raises(UnknownModel):
        store.get("job-1")


@pytest.mark.parametrize("stall", ["mid-write", "before-rename"])
def test_checkpoint_crash_overwrite_keeps_the_old_checkpoint_whole(tmp_path: Path, stall: str) -> None:
    target = tmp_path / "models" / "job-1.safetensors"
    torch.manual_seed(0)
    old_model = build_lenet("builtin")
    save_checkpoint(target, old_model, {"variant": "builtin", "generation": "old"})
    old_bytes = target.read_bytes()

    _kill_writer_mid_save(target, stall, tmp_path)

    assert target.read_bytes() == old_bytes
    loaded = load_checkpoint(target)  # verifies the checksum too
    assert loaded.metadata["generation"] == "old"
    for name, tensor in old_model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor)
    store = ModelStore(target.parent)
    assert [model_id for model_id, _ in store.list()] == ["job-1"]
    assert store.get("job-1").metadata["generation"] == "old"
    assert read_metadata(target)["generation"] == "old"
