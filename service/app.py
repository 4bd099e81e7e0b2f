"""The HTTP shell: `create_app(settings) -> FastAPI`. Routes validate, call the engine, shape
the answer; nothing else.

Run it with `python -m service`, or `uvicorn service.app:create_app --factory` (one worker: the
process owns the bank). Nothing is built at import: settings, weights and bank come with the app's
lifespan, which starts the engine in the background so /healthz answers at once and /readyz says
503 until the weights and the bank are loaded.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel

from model.checkpoint import read_metadata
from model.config import IDRPConfig
from model.errors import CheckpointError
from service.auth import AUTH_DOC, Role, access_dependencies
from service.engine import Engine, NotReady
from service.errors import (
    AUTH_RESPONSES,
    ERROR_RESPONSES,
    BodyLimitMiddleware,
    install_error_handlers,
)
from service.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from service.schemas import (
    DeleteResponse,
    ErrorResponse,
    HealthResponse,
    ReadRequest,
    ReadResponse,
    ReadyResponse,
    SlotResponse,
    SnapshotResponse,
    StatsResponse,
    WriteRequest,
    WriteResponse,
    request_models,
)
from service.settings import Settings, get_settings

log = logging.getLogger("service.app")

VERSION = "1.0.0"


class FastJSON(Response):
    """JSON bytes straight from orjson, engine dataclasses and float32 arrays included: a read
    can carry top_k * d floats per query. This skips building a pydantic model per hit, and
    float32 values are written in their shortest form (0.62987, not 0.6298710107803345), which
    makes a read with reconstructions about 45% smaller and faster to make and parse. The route
    still declares its response_model, for the OpenAPI document and the schema tests."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _ready_engine(request: Request) -> Engine:
    """The app's engine once it is ready; NotReady (503) before that and after a failure."""
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        state = engine.state if engine is not None else "starting"
        raise NotReady(
            "service is starting"
            if state in ("created", "starting")
            else f"service is not available ({state})"
        )
    return engine


async def _engine(request: Request) -> Engine:
    # async: FastAPI runs a plain `def` dependency on its thread pool, two thread hops for a
    # dictionary lookup, which cost /read about 10% of its throughput.
    return _ready_engine(request)


EngineDep = Annotated[Engine, Depends(_engine)]


def _with(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of one route."""
    table = {
        **ERROR_RESPONSES,
        **AUTH_RESPONSES,
        404: {"model": ErrorResponse, "description": "Slot free or out of range"},
        507: {"model": ErrorResponse, "description": "Insufficient storage: not applied"},
    }
    return {code: table[code] for code in codes}


async def _start_engine(app: FastAPI, engine: Engine) -> None:
    try:
        await engine.start()
    except Exception as e:
        log.error("engine failed to start: %s", e)
        on_fatal: Callable[[BaseException], None] | None = getattr(app.state, "on_fatal", None)
        if on_fatal is not None:
            on_fatal(e)


F = TypeVar("F", bound=Callable[..., Any])


def _body_is(model: type[BaseModel]) -> Callable[[F], F]:
    """Have FastAPI validate `body` with `model`: a subclass of the annotated request class that
    carries this app's limits (built at runtime, so it cannot be written in the signature)."""

    def mark(endpoint: F) -> F:
        endpoint.__annotations__["body"] = model
        return endpoint

    return mark


def _item_length(weights: Path) -> int | None:
    """d from the weights file's header (cheap: no tensors loaded), for the request schemas;
    None when the file cannot be read now (the engine then reports the problem)."""
    try:
        return IDRPConfig.from_json(read_metadata(weights)["config"]).d
    except (CheckpointError, KeyError, ValueError, TypeError):
        return None


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app with its own engine, metrics registry and settings (default: MT_* env)."""
    settings = settings or get_settings()
    models = request_models(settings.max_items, settings.max_top_k, _item_length(settings.weights))
    access = access_dependencies(settings)  # no-ops when no API key is configured
    ReadAccess = Annotated[Role, access.read]
    WriteAccess = Annotated[Role, access.write]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = Engine(settings)
        app.state.engine = engine
        starting = asyncio.create_task(_start_engine(app, engine), name="mt-engine-start")
        try:
            yield
        finally:
            await asyncio.wait([starting])  # a load in progress finishes before we stop
            await engine.stop()

    app = FastAPI(
        title="MemoryTransit",
        version=VERSION,
        summary="Runtime memory: IDRP codes in a bank, found by cosine similarity.",
        description=AUTH_DOC,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics = Metrics()
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: sees every answer
    install_error_handlers(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> HealthResponse:
        """Liveness: 200 as soon as the process answers (no key needed)."""
        return HealthResponse()

    @app.get("/readyz", tags=["ops"], responses=_with(503))
    async def readyz(request: Request) -> ReadyResponse:
        """Readiness: 503 until the weights and the bank are loaded, then 200 (no key needed)."""
        engine: Engine | None = getattr(request.app.state, "engine", None)
        if engine is not None and engine.state == "failed":
            raise NotReady("the engine failed to start; see the server log")
        _ready_engine(request)
        return ReadyResponse()

    @app.post("/write", tags=["memory"], responses=_with(401, 403, 413, 422, 503, 507))
    @_body_is(models.write)
    async def write(body: WriteRequest, _: WriteAccess, engine: EngineDep) -> WriteResponse:
        """Encode the items and store their codes: mode "mean" -> one slot, "each" -> one per
        item. Logged to the write-ahead log before the bank changes."""
        out = await engine.write(body.items, body.mode)
        return WriteResponse(slots=out.slots, evicted=out.evicted, used=out.used)

    @app.post(
        "/read", tags=["memory"], response_model=ReadResponse, responses=_with(401, 413, 422, 503)
    )
    @_body_is(models.read)
    async def read(body: ReadRequest, _: ReadAccess, engine: EngineDep) -> Response:
        """For each query, the top_k stored slots by cosine similarity, best first, with the
        slot's access count after this read and (reconstruct=true) the decoded item."""
        results = await engine.read(body.queries, body.top_k, body.min_score, body.reconstruct)
        return FastJSON({"results": results})

    @app.get("/stats", tags=["ops"], responses=_with(401, 503))
    async def stats(_: ReadAccess, engine: EngineDep) -> StatsResponse:
        """Bank, model, counters, last snapshot and what recovery found at start."""
        return StatsResponse.model_validate(await engine.stats())

    @app.post("/snapshot", tags=["ops"], responses=_with(401, 403, 503, 507))
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

    @app.get(
        "/slots/{i}",
        tags=["memory"],
        response_model=SlotResponse,
        responses=_with(401, 404, 422, 503),
    )
    async def get_slot(i: int, _: ReadAccess, engine: EngineDep) -> Response:
        """One occupied slot: counters, stored code and its reconstruction (not an access)."""
        return FastJSON(await engine.get_slot(i))

    @app.delete("/slots/{i}", tags=["memory"], responses=_with(401, 403, 404, 422, 503, 507))
    async def delete_slot(i: int, _: WriteAccess, engine: EngineDep) -> DeleteResponse:
        """Free one occupied slot (logged first)."""
        return DeleteResponse(slot=i, used=await engine.delete_slot(i))

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"},
            **_with(401),
        },
    )
    async def prometheus(request: Request, _: ReadAccess) -> Response:
        """Prometheus metrics: requests by route and status, latency, bank counters."""
        engine: Engine | None = getattr(request.app.state, "engine", None)
        ready = engine is not None and engine.ready
        stats = await engine.stats() if engine is not None and ready else None
        return Response(metrics.render(stats, ready), media_type=CONTENT_TYPE)

    return app
