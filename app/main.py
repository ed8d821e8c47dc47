"""The ASGI app: ``uvicorn app.main:app``."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.main import api_router
from app.api.routes.datasets import IngestPool
from app.errors import PayloadTooLarge, install_error_handlers
from app.events import EventHub
from app.metrics import HttpMetrics, MeteredModelStore
from app.openapi import build_openapi, operation_id
from app.predictors import Predictors
from app.web import install_pages
from bnlenet.datasets.store import DatasetStore
from bnlenet.jobs import JobStore
from bnlenet.logs import configure_handlers
from bnlenet.model_news import ModelNews
from bnlenet.model_store.exports import ExportBuilds
from bnlenet.settings import Settings, get_settings
from bnlenet.training_queue import Publisher


class BodyLimit:
    """Refuse bodies over ``max_bytes`` with 413, by Content-Length or while streaming.

    ``uploads`` maps a path to a limit of its own (``POST /datasets``): such a body is never held
    in memory here, only counted as the route streams it to disk.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, uploads: dict[str, int] | None = None) -> None:
        self.app, self.max_bytes, self.uploads = app, max_bytes, uploads or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload_limit = self.uploads.get(scope.get("path", "").rstrip("/")) if scope.get("method") == "POST" else None
        limit = self.max_bytes if upload_limit is None else upload_limit
        declared = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value
                if value.isdigit() and int(value) > limit:
                    await _send_413(send, limit)
                    return
                break
        if declared is None and upload_limit is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            # A chunked body has no length to check up front: read it here, up to the limit,
            # so an oversized one is a 413 like any other (inside the app's own body parsing
            # the overflow would surface as a 422).
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client left
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = bool(message.get("more_body"))
                if size > self.max_bytes:
                    await _send_413(send, self.max_bytes)
                    return
            whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return whole
                return await receive()

            await self.app(scope, replay, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
            return message

        await self.app(scope, limited, send)


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"the request body is larger than the limit of {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _json_logs() -> None:
    """LOG_FORMAT=json: uvicorn's handlers (set up before the app) and the root logger write JSON lines."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
        root.setLevel(logging.INFO)
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        configure_handlers(logging.getLogger(name).handlers, "json")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API wired to the stores named by ``settings`` (default: the environment's)."""
    settings = settings or get_settings()
    if settings.LOG_FORMAT == "json":
        _json_logs()  # uvicorn has set up its logging, and logs nothing more before the app is built

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One intra-op thread per API process by default: requests are tiny, processes give parallelism.
        torch.set_num_threads(settings.PREDICT_THREADS)
        app.state.event_hub.listen()  # job events and model news, from the start
        yield
        app.state.predictors.close()
        app.state.ingest_pool.close()
        app.state.export_builds.close()
        app.state.model_store.close()
        await app.state.event_hub.close()
        app.state.publisher.close()
        app.state.job_store.redis.close()
        app.state.model_news.close()

    app = FastAPI(
        title="bnlenet",
        summary="Train and serve the batch-normalized LeNet of Dive into Deep Learning",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # app.web serves /docs and /redoc from vendored files
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.openapi = lambda: build_openapi(app, settings)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.job_store = JobStore.from_url(settings.REDIS_URL, timeout=settings.REDIS_TIMEOUT_S,
                                            retention_s=settings.JOB_RETENTION_DAYS * 86400)
    app.state.model_store = MeteredModelStore.from_settings(settings, background=True)
    # Uploaded data sets, beside the models in the same storage; uploads validated in a bounded pool.
    app.state.dataset_store = DatasetStore.on(app.state.model_store.storage, settings)
    app.state.ingest_pool = IngestPool(settings.DATASET_INGEST_WORKERS)
    app.state.export_builds = ExportBuilds()  # GET /models/{id}/export: built in the background
    app.state.predictors = Predictors(settings.PREDICT_RUNTIME, threads=settings.PREDICT_THREADS,
                                      size=settings.MODEL_CACHE_SIZE)
    # One pub/sub subscription per process: the job event streams, and the model news that keep the listing current.
    app.state.model_news = ModelNews.from_url(settings.REDIS_URL, wait_s=settings.MODEL_NEWS_WAIT_S,
                                              timeout=settings.REDIS_TIMEOUT_S)
    app.state.event_hub = EventHub(settings.REDIS_URL, app.state.job_store, timeout=settings.REDIS_TIMEOUT_S,
                                   on_model_news=app.state.model_news.follower(app.state.model_store))
    app.state.publisher = Publisher(settings)  # one long-lived broker connection, opened on first use
    install_error_handlers(app)
    app.include_router(api_router(settings))
    install_pages(app)
    if settings.CORS_ORIGINS:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.CORS_ORIGINS, allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.MAX_BODY_BYTES,
                       uploads={"/datasets": settings.DATASET_MAX_UPLOAD_BYTES})
    app.add_middleware(HttpMetrics)  # outermost: counts every answer, a 413 from BodyLimit included
    return app


def __getattr__(name: str) -> FastAPI:
    """``app.main:app`` for uvicorn, built from the environment's settings on first access, not at import."""
    if name == "app":
        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
