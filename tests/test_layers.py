"""One direction of travel: models/ imports nothing above it, and the API never imports the worker."""

from __future__ import annotations

import subprocess
import sys

UPWARD = ("app", "worker", "bnlenet", "celery", "fastapi", "redis", "kombu", "pydantic_settings")


def _modules_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(run.stdout.split())


def test_layers_models_import_nothing_from_the_service() -> None:
    loaded = _modules_after("import models.training, models.checkpoint, models.data, models.inference, models.preprocess")
    assert not {m for m in loaded if m.split(".")[0] in UPWARD}


def test_layers_api_never_imports_the_worker() -> None:
    loaded = _modules_after("import app.main; app.main.create_app()")
    assert not {m for m in loaded if m.split(".")[0] == "worker"}
    assert "bnlenet.training_queue" in loaded
