"""The ops routes: the probes (/healthz, /readyz: no key needed), and /stats, /snapshot and
/metrics (`router`: create_app includes it with the key schemes, as the memory routes)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from model.errors import NotReady
from service.deps import EngineDep, ReadAccess, WriteAccess, ready_engine
from service.engine import Engine
from service.metrics import CONTENT_TYPE, Metrics
from service.responses import error_answers
from service.schemas import HealthResponse, ReadyResponse, SnapshotResponse, StatsResponse

probes = APIRouter(tags=["ops"])
router = APIRouter(tags=["ops"])


@probes.get("/healthz")
async def healthz() -> HealthResponse:
    """Liveness: 200 as soon as the process answers (no key needed)."""
    return HealthResponse()


@probes.get("/readyz", responses=error_answers(503))
async def readyz(request: Request) -> ReadyResponse:
    """Readiness: 503 until the weights and the bank are loaded, then 200 (no key needed)."""
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is not None and engine.state == "failed":
        raise NotReady("the engine failed to start; see the server log")
    ready_engine(request)
    return ReadyResponse()


@router.get("/stats", responses=error_answers(401, 503))
async def stats(_: ReadAccess, engine: EngineDep) -> StatsResponse:
    """Bank, model, counters, last snapshot and what recovery found at start."""
    return StatsResponse.model_validate(await engine.stats())


@router.post("/snapshot", responses=error_answers(401, 403, 503, 507))
async def snapshot(_: WriteAccess, engine: EngineDep) -> SnapshotResponse:
    """Save a snapshot of the bank now."""
    info = await engine.snapshot()
    return SnapshotResponse(
        path=str(info.path),
        bytes=info.bytes,
        seconds=info.seconds,
        lsn=info.lsn,
        sha256=info.sha256,
        created_at=info.created_at,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"},
        **error_answers(401),
    },
)
async def prometheus(request: Request, _: ReadAccess) -> Response:
    """Prometheus metrics: requests by route and status, latency, bank counters."""
    engine: Engine | None = getattr(request.app.state, "engine", None)
    ready = engine is not None and engine.ready
    bank = await engine.stats() if engine is not None and ready else None
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(bank, ready), media_type=CONTENT_TYPE)
