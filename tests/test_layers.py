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


ENGINES = {"training", "packed"}  # the training loops; everything else in models/ sits below them


def test_layers_engine_sits_on_top_of_models() -> None:
    # The checkpoint format, the stepper, the averages ... sit below the engine: none of them
    # imports models.training, not even for type hints. Only the packed engine (K trials at once)
    # sits beside it, reusing its per-trial code.
    importers = sorted(p.name for p in MODELS.glob("*.py")
                       if p.stem not in ENGINES and "models.training" in _imports_of(p))
    assert importers == []


def test_layers_api_never_imports_the_worker() -> None:
    loaded = _modules_after("import app.main; app.main.create_app()")
    assert not {m for m in loaded if m.split(".")[0] == "worker"}
    assert "bnlenet.training_queue" in loaded


def _module_graph() -> dict[str, set[str]]:
    """Each service module and the service modules it imports at module level (lazy imports inside
    functions and ``TYPE_CHECKING`` blocks are left out: they cannot make an import cycle)."""
    root = MODELS.parent
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for top in ("app", "bnlenet", "models", "worker") for p in (root / top).rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # ``from pkg import submodule`` imports the submodule, not what pkg/__init__ re-exports
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            else:
                continue
            graph[name] |= {t for t in map(owner, targets) if t is not None and t != name}
    return graph


def test_layers_import_graph_has_no_cycle() -> None:
    graph = _module_graph()
    assert "worker.job_run" in graph and "bnlenet.jobs.store" in graph
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(name):] + (name,))}")
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())
