"""The OpenAPI document as this app enforces it: security from its settings, integer bounds as integers.

FastAPI describes what the code declares; a few things depend on the configuration the app
runs with, and are settled here, once, when the document is first asked for:

* Security: an operation carries ``security`` (and documents 401/403) only when it needs a
  token under these settings: writes (``require_writer``) when ``API_TOKEN`` is set, reads
  (``require_reader``) too with ``PROTECT_READS``. The two dependencies declare differently
  named bearer schemes (``app.deps``), so the document says which one an operation uses, and
  the document and the server cannot disagree; here both become one scheme, ``bearer``.
* The edge's answer to a long URL: an operation with path or query parameters documents 414,
  which ``app.edge`` answers (with no body) when the request line alone is over
  ``HTTP_MAX_HEADER_BYTES``; its 408 and 431 depend on how a client sends, not on the operation.
* Integer bounds stay integers: FastAPI's OpenAPI model keeps ``minimum``/``maximum`` as
  floats, so ``seed``'s maximum would read 9.2e18, a number no client can send as an integer.

Operation ids are the handlers' names (``get_job``, ``predict_pixels``) or the ``operation_id``
a route gives (``train``): ``operation_id`` is FastAPI's ``generate_unique_id_function``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from app.deps import READER_SCHEME, WRITER_SCHEME
from bnlenet.settings import Settings

SCHEME = "bearer"
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def operation_id(route: APIRoute) -> str:
    """The operation id: the handler's name (``get_job``), or the route's ``name`` when one is given."""
    return route.name


def build_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The document for ``app`` under ``settings`` (cached on the app, as FastAPI's own is)."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, summary=app.summary, description=app.description,
                       routes=app.routes)
    protected = {WRITER_SCHEME} if settings.API_TOKEN else set()
    if settings.API_TOKEN and settings.PROTECT_READS:
        protected.add(READER_SCHEME)
    secured = False
    for item in spec.get("paths", {}).values():
        for method, op in item.items():
            if method not in _METHODS:
                continue
            schemes = {name for requirement in op.pop("security", []) for name in requirement}
            if schemes & protected:
                op["security"] = [{SCHEME: []}]
                secured = True
            else:
                for code in ("401", "403"):
                    op.get("responses", {}).pop(code, None)
    components = spec.setdefault("components", {})
    schemes = components.pop("securitySchemes", {})
    for name in (WRITER_SCHEME, READER_SCHEME):
        schemes.pop(name, None)
    if secured:
        schemes[SCHEME] = {"type": "http", "scheme": "bearer",
                           "description": "API_TOKEN: send `Authorization: Bearer <token>`"}
    if schemes:
        components["securitySchemes"] = schemes
    _edge_responses(spec, settings)
    _integer_bounds(spec)
    app.openapi_schema = spec
    return spec


def _edge_responses(spec: dict[str, Any], settings: Settings) -> None:
    """414 on every operation whose URL carries values: the edge refuses a request line over the head limit."""
    description = (f"URI Too Long: the request line is over HTTP_MAX_HEADER_BYTES ({settings.HTTP_MAX_HEADER_BYTES} "
                   "bytes; a percent-encoded unicode value takes up to 12 bytes a character); no body")
    for item in spec.get("paths", {}).values():
        for method, op in item.items():
            if method in _METHODS and any(p.get("in") in ("path", "query") for p in op.get("parameters", [])):
                op.setdefault("responses", {})["414"] = {"description": description}


def _integer_bounds(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in _BOUNDS:
                value = node.get(key)
                if isinstance(value, float) and value.is_integer():
                    # The float has lost the last digits of 2**63 - 1 (seed's maximum): clamp to int64.
                    node[key] = max(-(2**63), min(int(value), 2**63 - 1))
        for value in node.values():
            _integer_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _integer_bounds(value)
