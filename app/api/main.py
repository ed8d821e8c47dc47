"""All routers, assembled in one place."""

from fastapi import APIRouter

from app.api.routes import checkpoints, datasets, export, health, jobs, metrics, models, predict, sweeps, train
from bnlenet.settings import Settings


def api_router(settings: Settings) -> APIRouter:
    """Every route; POST /train's body carries ``settings``' caps."""
    router = APIRouter()
    router.include_router(train.make_router(settings))
    router.include_router(jobs.router)
    router.include_router(sweeps.router)
    router.include_router(predict.router)
    router.include_router(models.router)
    router.include_router(datasets.router)
    router.include_router(checkpoints.router)
    router.include_router(export.router)
    router.include_router(health.router)
    router.include_router(metrics.router)
    return router
