"""Under CI=true a skip fails the run, except a CUDA test's (tests/ci_skips.py), over a real pytest run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TESTS = '''
import pytest

@pytest.fixture(scope="session")
def chromium():
    pytest.skip("no chromium")

def test_needs_chromium(chromium):
    pass

def test_needs_the_real_data():
    pytest.skip("the real Fashion-MNIST cannot be had here")

@pytest.mark.cuda
def test_needs_a_gpu():
    pytest.skip("needs a CUDA GPU")

@pytest.mark.xfail(reason="known")
def test_known_failure():
    assert False

def test_runs():
    pass
'''


def _pytest(directory: Path, ci: str | None, *files: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(ROOT)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.ci_skips", "-p", "no:cacheprovider", "-q",
                           "-rA", *files], cwd=directory, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    cuda: needs a CUDA GPU\n")
    (tmp_path / "test_parts.py").write_text(TESTS)
    (tmp_path / "test_whole_module.py").write_text(
        'import pytest\npytest.skip("no weed binary", allow_module_level=True)\n')
    return tmp_path


def test_ci_skips_are_skips_outside_ci(suite: Path) -> None:
    run = _pytest(suite, None, "test_parts.py", "test_whole_module.py")
    assert run.returncode == 0, run.stdout
    assert "1 passed, 4 skipped, 1 xfailed" in run.stdout, run.stdout


def test_ci_skips_fail_under_ci_except_cuda(suite: Path) -> None:
    run = _pytest(suite, "true", "test_parts.py")
    assert run.returncode == 1, run.stdout
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in run.stdout, run.stdout
    prefix = "skipped under CI=true, where only the CUDA tests may skip: "
    assert f"ERROR test_parts.py::test_needs_chromium - {prefix}no chromium" in run.stdout
    assert f"FAILED test_parts.py::test_needs_the_real_data - {prefix}the real Fashion-MNIST" in run.stdout
    assert "SKIPPED [1] test_parts.py:16: needs a CUDA GPU" in run.stdout


def test_ci_skips_a_module_skipped_whole_fails_under_ci(suite: Path) -> None:
    run = _pytest(suite, "true", "test_whole_module.py")
    assert run.returncode != 0, run.stdout
    assert "no weed binary" in run.stdout and "skipped under CI=true" in run.stdout, run.stdout
