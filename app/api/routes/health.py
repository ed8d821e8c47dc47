"""GET /healthz (the process is up) and GET /readyz (Redis reachable; workers listening?)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deps import JobStoreDep
from app.errors import RETRY_AFTER_S, error_responses
from app.schemas import HealthOut, ReadyOut
from bnlenet.jobs import StoreUnavailable

router = APIRouter(tags=["health"])

WORKER_SEEN_WITHIN_S = 20.0  # workers announce themselves every few seconds


@router.get("/healthz", response_model=HealthOut, summary="Liveness: the API process is up")
async def healthz() -> HealthOut:
    return HealthOut()


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Readiness: Redis is reachable; says whether any worker is listening",
    responses=error_responses(503),
)
def readyz(store: JobStoreDep) -> ReadyOut | JSONResponse:
    try:
        store.ping()
        workers = store.live_workers(WORKER_SEEN_WITHIN_S)
    except StoreUnavailable as exc:
        return JSONResponse({"detail": f"not ready: {exc}; training and job endpoints answer 503 until it is back"},
                            status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    detail = (f"{len(workers)} worker(s) listening" if workers
              else "no worker seen recently: training jobs will wait in the queue until one starts")
    return ReadyOut(workers=workers, detail=detail)
