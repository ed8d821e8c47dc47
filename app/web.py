"""The browser side: the dashboard at ``/``, and ``/docs`` and ``/redoc`` from vendored files.

Everything a page loads is under ``app/static`` (served at ``/static``): the dashboard's own
ES modules and CSS, and Swagger UI, ReDoc and uPlot vendored at pinned versions by
``scripts/vendor_assets.sh``. No page loads anything from another origin, so all of them work
offline. The pages are clients of the public API; they add no data endpoints.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "install_pages"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDOR = "/static/vendor"
FAVICON = "/static/favicon.svg"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=FileResponse)
def dashboard() -> FileResponse:
    # no-cache: a new release's page is picked up at once (it revalidates by ETag, cheaply).
    return FileResponse(STATIC_DIR / "dashboard" / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=OAUTH2_REDIRECT,
        swagger_js_url=f"{VENDOR}/swagger-ui-dist/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR}/swagger-ui-dist/swagger-ui.css",
        swagger_favicon_url=FAVICON,
        swagger_ui_parameters={"validatorUrl": None},  # never send the spec to an online validator
    )


@router.get(OAUTH2_REDIRECT, response_class=HTMLResponse)
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", response_class=HTMLResponse)
def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,
    )


def install_pages(app: FastAPI) -> None:
    """Serve ``app/static`` at ``/static`` and the pages above (create the app with ``docs_url=None, redoc_url=None``)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)
