"""All routers, assembled in one place."""

from fastapi import APIRouter

from app.api.routes import checkpoints, health, jobs, models, predict, train

api_router = APIRouter()
api_router.include_router(train.router)
api_router.include_router(jobs.router)
api_router.include_router(predict.router)
api_router.include_router(models.router)
api_router.include_router(checkpoints.router)
api_router.include_router(health.router)
