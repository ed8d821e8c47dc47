"""GET /models, GET /models/{model_id}, GET /models/{model_id}/batchnorm."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from app.deps import ModelStoreDep, ReaderDep
from app.errors import error_responses
from app.schemas import BatchNormLayerOut, BatchNormOut, ModelList, ModelOut, UnusableModelOut
from bnlenet.model_store import MODEL_ID_PATTERN
from models.batchnorm import batchnorm_report
from models.checkpoint import final_test_acc

router = APIRouter(prefix="/models", tags=["models"])

ModelId = Annotated[str, Path(pattern=MODEL_ID_PATTERN, description="the model's id (its training job's id)")]


def _model_out(model_id: str, meta: dict[str, Any]) -> ModelOut:
    return ModelOut(
        model_id=model_id,
        variant=meta["variant"],
        hyperparameters=meta.get("hyperparameters") or {},
        history=meta.get("history") or [],
        final_test_acc=final_test_acc(meta),
        device=meta.get("device"),
        created_at=meta.get("created_at"),
        job_id=meta.get("job_id"),
    )


@router.get(
    "",
    response_model=ModelList,
    summary="List trained models, newest first",
    description="Read from the checkpoint directory: works while Redis is down. Every checkpoint is "
    "verified (structure and checksum) once per file version; files that fail are listed under "
    "`unusable` with the reason, and are never served or chosen as the default model.",
    dependencies=[ReaderDep],
    responses=error_responses(401, 403),
)
def list_models(store: ModelStoreDep) -> ModelList:
    models = store.list()
    return ModelList(data=[_model_out(i, m) for i, m in models], count=len(models),
                     unusable=[UnusableModelOut(model_id=i, error=e) for i, e in store.unusable()])


@router.get(
    "/{model_id}",
    response_model=ModelOut,
    summary="One model: variant, hyperparameters, history, final test accuracy, created time",
    dependencies=[ReaderDep],
    responses=error_responses(401, 403, 404, 409, 422),
)
def get_model(model_id: ModelId, store: ModelStoreDep) -> ModelOut:
    return _model_out(model_id, store.metadata(model_id))


@router.get(
    "/{model_id}/batchnorm",
    response_model=BatchNormOut,
    summary="Every BN layer's gamma, beta, running mean and running variance",
    description="The chapter's look at `net[1].gamma` and `net[1].beta`, for any trained model.",
    dependencies=[ReaderDep],
    responses=error_responses(401, 403, 404, 409, 422),
)
def get_batchnorm(model_id: ModelId, store: ModelStoreDep) -> BatchNormOut:
    loaded = store.get(model_id)
    layers = [BatchNormLayerOut.model_validate(layer) for layer in batchnorm_report(loaded.model)]
    return BatchNormOut(model_id=loaded.model_id, variant=loaded.metadata["variant"], layers=layers)
