"""Dependencies as ``Annotated`` aliases: settings, the stores, and access control."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Forbidden, Unauthorized
from app.events import EventHub
from app.predictors import Predictors
from bnlenet.datasets.store import DatasetStore
from bnlenet.jobs import JobStore
from bnlenet.model_news import ModelNews
from bnlenet.model_store import ModelStore
from bnlenet.model_store.exports import ExportBuilds
from bnlenet.settings import Settings
from bnlenet.sweeps.store import SweepStore
from bnlenet.training_queue import Publisher

T = TypeVar("T")


def _from_state(name: str, kind: type[T]) -> Callable[[Request], T]:
    """A dependency that hands a route what ``create_app`` put on ``app.state`` under ``name``."""

    def dependency(request: Request) -> T:
        value = getattr(request.app.state, name)
        assert isinstance(value, kind)
        return value

    dependency.__name__ = f"get_{name}"
    return dependency


SettingsDep = Annotated[Settings, Depends(_from_state("settings", Settings))]
JobStoreDep = Annotated[JobStore, Depends(_from_state("job_store", JobStore))]


def _sweep_store(store: JobStoreDep) -> SweepStore:
    return SweepStore(store)


SweepStoreDep = Annotated[SweepStore, Depends(_sweep_store)]
ModelStoreDep = Annotated[ModelStore, Depends(_from_state("model_store", ModelStore))]
DatasetStoreDep = Annotated[DatasetStore, Depends(_from_state("dataset_store", DatasetStore))]
ModelNewsDep = Annotated[ModelNews, Depends(_from_state("model_news", ModelNews))]
ExportBuildsDep = Annotated[ExportBuilds, Depends(_from_state("export_builds", ExportBuilds))]
PublisherDep = Annotated[Publisher, Depends(_from_state("publisher", Publisher))]
EventHubDep = Annotated[EventHub, Depends(_from_state("event_hub", EventHub))]
PredictorsDep = Annotated[Predictors, Depends(_from_state("predictors", Predictors))]


# Two names for one scheme, so the OpenAPI document can tell writes from reads: app.openapi
# keeps ``security`` on the operations that need a token under the app's settings and calls
# the scheme ``bearer`` there.
WRITER_SCHEME, READER_SCHEME = "bearer_writer", "bearer_reader"
_writer_bearer = HTTPBearer(auto_error=False, scheme_name=WRITER_SCHEME, description="API_TOKEN")
_reader_bearer = HTTPBearer(auto_error=False, scheme_name=READER_SCHEME, description="API_TOKEN")
WriterBearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_writer_bearer)]
ReaderBearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_reader_bearer)]


def check_token(settings: Settings, authorization: str | None) -> None:
    """Raise unless ``authorization`` carries the configured bearer token (constant-time compare)."""
    token = settings.API_TOKEN
    if not token:
        return
    if not authorization:
        raise Unauthorized("this endpoint needs a bearer token: send 'Authorization: Bearer <API_TOKEN>'")
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <API_TOKEN>'")
    if not secrets.compare_digest(given.strip().encode(), token.encode()):
        raise Forbidden("the bearer token is not valid")


def require_writer(request: Request, _credentials: WriterBearerDep) -> None:
    """Training, cancelling, anything that changes state: needs the token when one is set."""
    check_token(request.app.state.settings, request.headers.get("authorization"))


def require_reader(request: Request, _credentials: ReaderBearerDep) -> None:
    """Reads: need the token only when PROTECT_READS is on."""
    settings: Settings = request.app.state.settings
    if settings.PROTECT_READS:
        check_token(settings, request.headers.get("authorization"))


def require_stream_reader(
    request: Request,
    _credentials: ReaderBearerDep,
    access_token: Annotated[str | None, Query(
        description="API_TOKEN, for a browser's EventSource, which cannot send a header; "
        "it can end up in access logs, so other clients should send `Authorization: Bearer` instead",
    )] = None,
) -> None:
    """Reads that a browser's EventSource makes: as ``require_reader``, or the token as ``?access_token=``."""
    settings: Settings = request.app.state.settings
    if settings.PROTECT_READS:
        authorization = request.headers.get("authorization")
        if authorization is None and access_token is not None:
            authorization = f"Bearer {access_token}"
        check_token(settings, authorization)


WriterDep = Depends(require_writer)
ReaderDep = Depends(require_reader)
StreamReaderDep = Depends(require_stream_reader)
