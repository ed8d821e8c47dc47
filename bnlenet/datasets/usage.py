"""Who uses a data set: the jobs that will train on it and the models trained on it (``DELETE /datasets/{id}``)."""

from __future__ import annotations

from typing import Any

from bnlenet.jobs import JobStore, MalformedJob
from bnlenet.model_store import ModelStore

__all__ = ["dataset_of", "jobs_using", "models_using"]


def dataset_of(metadata: dict[str, Any]) -> str | None:
    """The data set id a model's checkpoint metadata records (None: a model from before data sets were recorded,
    trained on Fashion-MNIST)."""
    value = metadata.get("dataset")
    if value is None:
        value = (metadata.get("hyperparameters") or {}).get("dataset")
    return value if isinstance(value, str) else None


def jobs_using(jobs: JobStore, ds_id: str) -> list[str]:
    """The queued and running jobs whose parameters name ``ds_id`` (the API records the id), oldest first."""
    found = []
    for status in ("queued", "running"):
        for job_id in jobs.ids(status):
            try:
                params = jobs.get(job_id)["params"]
            except LookupError:
                continue  # ended and expired since the listing
            except MalformedJob:
                continue  # a record no worker can run trains on nothing; GET /jobs/{id} names it (409)
            if params.get("dataset") == ds_id:
                found.append(job_id)
    return found


def models_using(models: ModelStore, ds_id: str) -> list[str]:
    """The models trained on ``ds_id``, newest first, from a fresh listing (a model published a moment ago counts)."""
    models.listing.refresh()
    return [model_id for model_id, meta in models.list() if dataset_of(meta) == ds_id]
