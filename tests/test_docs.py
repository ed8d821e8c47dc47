"""The documentation: every setting in its table, the README's links resolve, and the strict site
build (scripts/test.sh) fails on a broken link, a broken anchor or a page left out of the nav."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnlenet.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """The anchor GitHub and MkDocs's toc give a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_docs_settings_table_lists_every_setting() -> None:
    page = (ROOT / "docs" / "operations.md").read_text()
    table = page.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| ([^|]+) \|", table, flags=re.M))
    names = {name for cell in documented for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    assert set(Settings.model_fields) - names == set()


def test_docs_readme_links_resolve() -> None:
    readme = ROOT / "README.md"
    broken = []
    for target in LINK.findall(readme.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / path) if path else readme
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert broken == []


def test_docs_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    for script in ("scripts/serve.sh", "scripts/test.sh"):
        assert re.search(rf"^{re.escape(script)} +# ", readme, flags=re.M)
        assert os.access(ROOT / script, os.X_OK)


def _site_copy(tmp_path: Path) -> Path:
    """What `mkdocs build` reads: mkdocs.yml, docs/ and the snippet it includes."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "bench").mkdir()
    shutil.copy(ROOT / "bench" / "RESULTS.md", tmp_path / "bench" / "RESULTS.md")
    return tmp_path


def _build(site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site / "out")],
                          cwd=site, env=env, capture_output=True, text=True, timeout=300)


def test_docs_strict_build_passes(tmp_path: Path) -> None:
    run = _build(_site_copy(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize(("case", "message"), [
    ("omitted page", "not included in the \"nav\""),
    ("broken link", "not found among documentation files"),
    ("broken anchor", "does not contain an anchor"),
])
def test_docs_strict_build_fails(tmp_path: Path, case: str, message: str) -> None:
    site = _site_copy(tmp_path)
    if case == "omitted page":
        (site / "docs" / "orphan.md").write_text("# Orphan\n")
    elif case == "broken link":
        with (site / "docs" / "api.md").open("a") as f:
            f.write("\nSee [nowhere](nowhere.md).\n")
    else:
        with (site / "docs" / "api.md").open("a") as f:
            f.write("\nSee [the settings](operations.md#no-such-section).\n")
    run = _build(site)
    assert run.returncode != 0
    assert message in run.stderr
