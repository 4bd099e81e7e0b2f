"""The HTTP shell: `create_app(settings) -> FastAPI` assembles the app (lifespan, state,
middleware, error handlers, routers); the routes live in service/routes/ (memory.py, ops.py;
ui.py: the offline /docs and /redoc, and the bank's web page /ui),
the dependencies they declare in service/deps.py, and each route validates, calls the engine and
shapes the answer; nothing else.

What differs between apps is in `app.state`, where the module-level dependencies read it:
`settings` (API keys: service/auth.py), `models` (the request models with this app's limits and
the weights' d: service/schemas.request_models), `metrics`, and `engine` once the lifespan runs.

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
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.constants import REF_TEMPLATE
from fastapi.openapi.models import OpenAPI
from pydantic import BaseModel

from model.checkpoint import read_metadata
from model.config import IDRPConfig
from model.errors import CheckpointError
from service.auth import AUTH_DOC, key_schemes
from service.engine import Engine
from service.errors import BodyLimitMiddleware, install_error_handlers
from service.metrics import Metrics, MetricsMiddleware
from service.routes import memory, namespaces, ops, texts, ui
from service.schemas import PinRequest, PreviewRequest, request_models
from service.settings import Settings, get_settings

log = logging.getLogger("service.app")

VERSION = "1.0.0"


async def _start_engine(app: FastAPI, engine: Engine) -> None:
    try:
        await engine.start()
    except Exception as e:
        log.error("engine failed to start: %s", e)
        on_fatal: Callable[[BaseException], None] | None = getattr(app.state, "on_fatal", None)
        if on_fatal is not None:
            on_fatal(e)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = app.state.engine_factory(app.state.settings)
    app.state.engine = engine
    starting = asyncio.create_task(_start_engine(app, engine), name="mt-engine-start")
    try:
        yield
    finally:
        await asyncio.wait([starting])  # a load in progress finishes before we stop
        await engine.stop()


def _item_length(weights: Path) -> int | None:
    """d from the weights file's header (cheap: no tensors loaded), for the request schemas;
    None when the file cannot be read now (the engine then reports the problem)."""
    try:
        return IDRPConfig.from_json(read_metadata(weights)["config"]).d
    except (CheckpointError, KeyError, ValueError, TypeError):
        return None


def _openapi(app: FastAPI, models: list[type[BaseModel]]) -> Callable[[], dict[str, Any]]:
    """app.openapi, with the schemas of this app's request models, which the routes' bodies
    reference by name (service/deps.py) and which carry this app's limits."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            schemas = doc["components"]["schemas"]
            for model in models:
                schemas[model.__name__] = model.model_json_schema(ref_template=REF_TEMPLATE)
            doc["components"]["schemas"] = dict(sorted(schemas.items()))
            # as fastapi.openapi.utils.get_openapi ends: the OpenAPI model's order, no nulls
            app.openapi_schema = jsonable_encoder(OpenAPI(**doc), by_alias=True, exclude_none=True)
        return app.openapi_schema

    return openapi


def create_app(
    settings: Settings | None = None, engine_factory: Callable[[Settings], Engine] = Engine
) -> FastAPI:
    """A new app with its own engine, metrics registry and settings (default: MT_* env).
    engine_factory builds the engine the lifespan starts: the Ray app (service/scale/) passes
    one whose methods fan out to bank shards, with the same routes over it."""
    settings = settings or get_settings()
    app = FastAPI(
        title="MemoryTransit",
        version=VERSION,
        summary="Runtime memory: IDRP codes in a bank, found by cosine similarity.",
        description=AUTH_DOC,
        lifespan=_lifespan,
        docs_url=None,  # FastAPI's pages load their assets from a CDN: ui.install serves ours
        redoc_url=None,
        # The service exports its own Prometheus metrics (/metrics). FastAPI's native
        # OpenTelemetry looked its three global providers up on every request (3% of a /read's
        # event-loop time) to find them unconfigured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.engine_factory = engine_factory
    app.state.models = models = request_models(
        settings.max_items,
        settings.max_top_k,
        _item_length(settings.weights),
        settings.max_text_chars,
        settings.max_payload_bytes,
    )
    app.state.metrics = metrics = Metrics()
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: sees every answer
    install_error_handlers(app)
    keys = key_schemes(settings)  # none when no API key is configured
    # the hot routes first: the router scans its routers in order
    app.include_router(memory.router, dependencies=keys)
    app.include_router(ops.probes)  # no key needed
    app.include_router(texts.router, dependencies=keys)
    app.include_router(namespaces.router, dependencies=keys)
    app.include_router(ops.router, dependencies=keys)
    ui.install(app)  # /docs, /redoc, /ui and their files: no key needed
    bodies: list[type[BaseModel]] = [*models, PreviewRequest, PinRequest]  # bodies routes read
    app.openapi = _openapi(app, bodies)  # type: ignore[method-assign]
    return app
