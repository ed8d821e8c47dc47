"""One direction of travel: models/ imports nothing above it, and the API never imports the worker."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

UPWARD = ("app", "worker", "bnlenet", "celery", "fastapi", "redis", "kombu", "pydantic_settings")
MODELS = Path(__file__).resolve().parent.parent / "models"


def _modules_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(run.stdout.split())


def _imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, also under ``if TYPE_CHECKING:`` and inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_layers_models_import_nothing_from_the_service() -> None:
    modules = sorted(f"models.{p.stem}" for p in MODELS.glob("*.py") if p.stem != "__init__")
    assert "models.training" in modules and "models.checkpoint" in modules
    loaded = _modules_after(f"import {', '.join(modules)}")
    assert not {m for m in loaded if m.split(".")[0] in UPWARD}


def test_layers_engine_sits_on_top_of_models() -> None:
    # The checkpoint format, the stepper, the averages ... sit below the engine: none of them
    # imports models.training, not even for type hints.
    importers = sorted(p.name for p in MODELS.glob("*.py")
                       if p.stem != "training" and "models.training" in _imports_of(p))
    assert importers == []


def test_layers_api_never_imports_the_worker() -> None:
    loaded = _modules_after("import app.main; app.main.create_app()")
    assert not {m for m in loaded if m.split(".")[0] == "worker"}
    assert "bnlenet.training_queue" in loaded
