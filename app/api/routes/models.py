"""GET /models, GET /models/{model_id}, GET /models/{model_id}/batchnorm, DELETE /models/{model_id},
PUT and DELETE /models/{model_id}/aliases/{alias}."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from app.deps import ModelNewsDep, ModelStoreDep, ReaderDep, WriterDep
from app.errors import error_responses
from app.schemas import AliasOut, BatchNormLayerOut, BatchNormOut, ModelList, ModelOut, UnusableModelOut
from bnlenet.datasets.usage import dataset_of
from bnlenet.jobs import StoreUnavailable
from bnlenet.model_news import ModelNews
from bnlenet.model_store import MODEL_ID_PATTERN, AliasConflict, ModelStore, NoModelYet
from models.batchnorm import batchnorm_report
from models.checkpoint import class_names, final_test_acc

router = APIRouter(prefix="/models", tags=["models"])
log = logging.getLogger(__name__)

ModelId = Annotated[str, Path(pattern=MODEL_ID_PATTERN,
                               description="the model's id (its training job's id), or an alias that points at it")]
AliasName = Annotated[str, Path(pattern=MODEL_ID_PATTERN, description="the alias, e.g. `production`")]


def _model_out(model_id: str, meta: dict[str, Any], aliases: list[str], children: list[str]) -> ModelOut:
    return ModelOut(
        model_id=model_id,
        variant=meta["variant"],
        hyperparameters=meta.get("hyperparameters") or {},
        history=meta.get("history") or [],
        final_test_acc=final_test_acc(meta),
        device=meta.get("device"),
        created_at=meta.get("created_at"),
        job_id=meta.get("job_id"),
        aliases=aliases,
        parent=meta.get("parent"),
        children=children,
        dataset=dataset_of(meta),
        classes=list(class_names(meta)),
    )


@router.get(
    "",
    response_model=ModelList,
    summary="List trained models, newest first",
    description="Read from the model store (a directory or a bucket, listed at most once a second): works "
    "while Redis is down. Every checkpoint is verified (structure and checksum) once per version; files that "
    "fail are listed under `unusable` with the reason, and are never served or chosen as the default model.",
    dependencies=[ReaderDep],
    responses=error_responses(401, 403, 503),
)
def list_models(store: ModelStoreDep) -> ModelList:
    models, children = store.list(), store.children()
    return ModelList(data=[_model_out(i, m, store.aliases_of(i), children.get(i, [])) for i, m in models],
                     count=len(models),
                     unusable=[UnusableModelOut(model_id=i, error=e) for i, e in store.unusable()],
                     aliases=store.aliases(), default_model_id=_default(store))


def _tell_every_api(news: ModelNews, what: str) -> None:
    """Return once every API process serves the change (``bnlenet.model_news``); without Redis, they follow
    within ``NEWEST_MODEL_REFRESH_S``."""
    try:
        news.announce(what)
    except StoreUnavailable as exc:
        log.warning("%s; the other API processes follow within NEWEST_MODEL_REFRESH_S", exc)


def _default(store: ModelStore) -> str | None:
    try:
        return store.default()
    except NoModelYet:
        return None


@router.get(
    "/{model_id}",
    response_model=ModelOut,
    summary="One model: variant, hyperparameters, history, final test accuracy, created time, aliases, lineage",
    description="`parent` is the model it started from (`init_model`), `children` the models started from it, "
    "as of the store's last listing.",
    dependencies=[ReaderDep],
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def get_model(model_id: ModelId, store: ModelStoreDep) -> ModelOut:
    resolved = store.resolve(model_id)
    return _model_out(resolved, store.metadata(resolved), store.aliases_of(resolved),
                      store.children().get(resolved, []))


@router.get(
    "/{model_id}/batchnorm",
    response_model=BatchNormOut,
    summary="Every BN layer's gamma, beta, running mean and running variance",
    description="The chapter's look at `net[1].gamma` and `net[1].beta`, for any trained model.",
    dependencies=[ReaderDep],
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def get_batchnorm(model_id: ModelId, store: ModelStoreDep) -> BatchNormOut:
    loaded = store.get(model_id)
    layers = [BatchNormLayerOut.model_validate(layer) for layer in batchnorm_report(loaded.model)]
    return BatchNormOut(model_id=loaded.model_id, variant=loaded.metadata["variant"], layers=layers)


@router.delete(
    "/{model_id}",
    status_code=204,
    summary="Delete a model",
    description="Removes the checkpoint. Every API process has stopped serving it when this answers (without "
    "Redis: within `NEWEST_MODEL_REFRESH_S`); the job that trained it stays. A model an alias points at is not deleted "
    "(409 naming the aliases): move or delete the alias first, so nothing served by name disappears. A model "
    "other models started from may be deleted: they keep its id as their `parent`.",
    dependencies=[WriterDep],
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def delete_model(model_id: ModelId, store: ModelStoreDep, news: ModelNewsDep) -> Response:
    deleted = store.delete(model_id)
    _tell_every_api(news, f"model {deleted} deleted")
    return Response(status_code=204)


@router.put(
    "/{model_id}/aliases/{alias}",
    response_model=AliasOut,
    summary="Point an alias at a model",
    description="Creates the alias or moves it here. `POST /predict` without a model serves the model "
    "`DEFAULT_MODEL_ALIAS` (default `production`) points at; every API process serves the move when this "
    "answers (without Redis: within `NEWEST_MODEL_REFRESH_S`). "
    "An alias may be given wherever a model id is accepted; it may not be the id of an existing model (409), "
    "and the model must verify (409 otherwise).",
    dependencies=[WriterDep],
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def set_alias(model_id: ModelId, alias: AliasName, store: ModelStoreDep, news: ModelNewsDep) -> AliasOut:
    target = store.set_alias(alias, model_id)
    _tell_every_api(news, f"alias {alias} -> {target}")
    return AliasOut(alias=alias, model_id=target)


@router.delete(
    "/{model_id}/aliases/{alias}",
    status_code=204,
    summary="Remove an alias",
    description="The model stays. Without its default alias, `POST /predict` serves the newest model again.",
    dependencies=[WriterDep],
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def delete_alias(model_id: ModelId, alias: AliasName, store: ModelStoreDep, news: ModelNewsDep) -> Response:
    target = store.aliases().get(alias)
    if target is not None and target != store.resolve(model_id):
        raise AliasConflict(f"alias {alias!r} points at model {target!r}, not {model_id!r}: nothing removed")
    store.delete_alias(alias)
    _tell_every_api(news, f"alias {alias} deleted")
    return Response(status_code=204)
