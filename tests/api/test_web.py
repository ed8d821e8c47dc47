"""The dashboard at /, and /docs and /redoc from vendored files: served, complete, and offline."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest

from app.web import STATIC_DIR

PAGES = ["/", "/docs", "/redoc"]
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".svg": ("image/svg+xml",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}
# import ... from "x" / import "x" / import("x") in an ES module
# A module specifier: `from "x"` (a space before the quote, as every module here writes it, so a
# string ending in "from" followed by another string, `"Started from"), el("`, is not one) or `import "x"`.
IMPORT = re.compile(r"""(?:\bfrom\s+|\bimport\s*\(?\s*)["']([^"']+)["']""")


class _Refs(HTMLParser):
    """Every src and href an HTML page loads or links to."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.refs.append(value)


def _refs(html: str) -> list[str]:
    parser = _Refs()
    parser.feed(html)
    return parser.refs


def _loaded_files(client) -> set[str]:
    """Every /static file the three pages load, following the dashboard's ES module imports."""
    todo = [ref for page in PAGES for ref in _refs(client.get(page).text) if ref.startswith("/static/")]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.endswith(".js") and path.startswith("/static/dashboard/"):
            source = client.get(path).text
            todo += [urljoin(path, spec) for spec in IMPORT.findall(source)]
    return seen


@pytest.mark.parametrize("page", PAGES)
def test_web_pages_are_html_without_external_urls(client, page):
    r = client.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert not re.findall(r"https?://|//cdn|fonts\.googleapis", r.text), f"{page} names another origin"
    assert all(ref.startswith(("/", "#")) for ref in _refs(r.text)), _refs(r.text)


def test_web_dashboard_links_to_the_docs(client):
    refs = _refs(client.get("/").text)
    assert "/docs" in refs and "/static/dashboard/app.js" in refs


def test_web_every_file_the_pages_load_is_served_with_its_type(client):
    files = _loaded_files(client)
    assert {"/static/vendor/swagger-ui-dist/swagger-ui-bundle.js", "/static/vendor/swagger-ui-dist/swagger-ui.css",
            "/static/vendor/redoc/redoc.standalone.js", "/static/vendor/uplot/uPlot.esm.js",
            "/static/vendor/uplot/uPlot.min.css", "/static/dashboard/views/predict.js"} <= files
    for path in sorted(files):
        r = client.get(path)
        assert r.status_code == 200, path
        suffix = "." + path.rsplit(".", 1)[-1]
        assert r.headers["content-type"].split(";")[0] in CONTENT_TYPES[suffix], (path, r.headers["content-type"])
        assert r.content == (STATIC_DIR / path.removeprefix("/static/")).read_bytes()


def test_web_dashboard_modules_import_nothing_from_another_origin(client):
    for path in _loaded_files(client):
        if path.startswith("/static/dashboard/") and path.endswith(".js"):
            specs = IMPORT.findall(client.get(path).text)
            assert all(spec.startswith(("/", "./", "../")) for spec in specs), (path, specs)
            assert not re.search(r"https?://", client.get(path).text), path


def test_web_bundled_samples_are_served(client):
    meta = client.get("/static/samples/fashion-mnist-test.json").json()
    assert len(meta["classes"]) == 10 and all(len(row) == meta["per_class"] for row in meta["test_indices"])
    assert client.get("/static/samples/fashion-mnist-test.png").headers["content-type"] == "image/png"


def test_web_vendored_files_match_versions_md(client):
    versions = (STATIC_DIR / "vendor" / "VERSIONS.md").read_text()
    listed = dict(re.findall(r"^\| `([^`]+)` \| \d+ \| `([0-9a-f]{64})` \|$", versions, re.M))
    on_disk = {p.relative_to(STATIC_DIR / "vendor").as_posix(): p for p in (STATIC_DIR / "vendor").rglob("*")
               if p.is_file() and p.name != "VERSIONS.md"}
    assert set(listed) == set(on_disk)
    for name, path in on_disk.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == listed[name], name
    for package in ("swagger-ui-dist", "redoc", "uplot"):
        assert f"{package}/LICENSE" in listed


def test_web_pages_stay_out_of_openapi_json(client):
    spec = client.get("/openapi.json").json()
    assert not {"/", "/docs", "/redoc", "/docs/oauth2-redirect"} & set(spec["paths"])
    assert client.get("/docs/oauth2-redirect").headers["content-type"].startswith("text/html")


def test_web_static_files_cannot_escape_the_directory(client):
    for path in ("/static/../web.py", "/static/%2e%2e/web.py", "/static/..%2fweb.py"):
        assert client.get(path).status_code == 404, path
