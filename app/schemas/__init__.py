"""Request and response bodies, in families per resource, each with examples for /docs.

    train    POST /train's body (derived from ``TrainConfig``), stored parameters typed
    jobs     JobOut, JobList, BulkCancelOut
    predict  PredictRequest, PredictBatchRequest, PredictOut, PredictBatchOut
    models   ModelOut, ModelList, AliasOut, BatchNormOut
    datasets DatasetOut, DatasetList, DatasetAliasOut, DatasetRejectedOut
    health   HealthOut, ReadyOut
    sweeps   SweepRequest, SweepOut, SweepList
    errors   ErrorOut, the one shape of every error answer

Job and model shapes reuse the engine's ``Progress`` and ``EpochMetrics`` and the job store's
``JobStatus``. Every public name is importable from ``app.schemas``.
"""

from app.schemas.datasets import DatasetAliasOut, DatasetList, DatasetOut, DatasetRejectedOut
from app.schemas.errors import ErrorOut, FieldError
from app.schemas.health import HealthOut, ReadyOut
from app.schemas.jobs import BulkCancelOut, JobList, JobOut
from app.schemas.models import AliasOut, BatchNormLayerOut, BatchNormOut, ModelList, ModelOut, UnusableModelOut
from app.schemas.predict import (
    MODEL_ID_DESCRIPTION,
    TOP_K_DEFAULT,
    ClassScore,
    PredictBatchOut,
    PredictBatchRequest,
    PredictOut,
    PredictRequest,
)
from app.schemas.sweeps import SweepList, SweepOut, SweepRequest
from app.schemas.train import Hyperparameters, JobParams, job_params, train_request_model

__all__ = [
    "DatasetAliasOut",
    "DatasetList",
    "DatasetOut",
    "DatasetRejectedOut",
    "MODEL_ID_DESCRIPTION",
    "TOP_K_DEFAULT",
    "AliasOut",
    "BatchNormLayerOut",
    "BatchNormOut",
    "BulkCancelOut",
    "ClassScore",
    "ErrorOut",
    "FieldError",
    "HealthOut",
    "Hyperparameters",
    "JobList",
    "JobOut",
    "JobParams",
    "ModelList",
    "ModelOut",
    "PredictBatchOut",
    "PredictBatchRequest",
    "PredictOut",
    "PredictRequest",
    "ReadyOut",
    "SweepList",
    "SweepOut",
    "SweepRequest",
    "UnusableModelOut",
    "job_params",
    "train_request_model",
]
