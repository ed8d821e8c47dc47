"""The one settings object: read from the environment when made, never at import."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

import pytest

from bnlenet.settings import Settings


@pytest.mark.parametrize("value", ["http://a.example,http://b.example", " http://a.example , http://b.example ",
                                   '["http://a.example", "http://b.example"]'])
def test_settings_cors_origins_take_a_comma_separated_or_json_list(monkeypatch: pytest.MonkeyPatch,
                                                                   value: str) -> None:
    monkeypatch.setenv("CORS_ORIGINS", value)
    assert Settings().CORS_ORIGINS == ["http://a.example", "http://b.example"]


def test_settings_one_cors_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "http://localhost:3000")
    assert Settings().CORS_ORIGINS == ["http://localhost:3000"]


def test_settings_are_not_read_at_import() -> None:
    """Importing the app, the worker's Celery app and the schemas with a broken setting is fine."""
    code = "import app.main, app.schemas, worker.celery_app, worker.tasks"
    env = {"MAX_LR": "not a number", "PATH": ""}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_settings_predict_runtime_choices_are_the_runtimes(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from models.runtime import RUNTIMES

    assert get_args(Settings.model_fields["PREDICT_RUNTIME"].annotation) == RUNTIMES
    assert Settings().PREDICT_RUNTIME == "onnxruntime"
    monkeypatch.setenv("PREDICT_RUNTIME", "eager")
    assert Settings().PREDICT_RUNTIME == "eager"
    monkeypatch.setenv("PREDICT_RUNTIME", "tensorrt")
    with pytest.raises(ValidationError, match="PREDICT_RUNTIME"):
        Settings()
