"""The Ray Serve application: the single-process FastAPI app (service/app.create_app, every
route, error and auth rule unchanged) as the ingress deployment, over a ShardedEngine
(service/scale/engine.py) that fans out to N Shard deployments (service/scale/shard.py) and a
Codec deployment (service/scale/codec.py).

    app = build(settings, shards=2)          # a bound Serve application
    serve.run(app, name="memorytransit", route_prefix="/")

One ingress replica: it holds the write router's figures (merge.route). One replica per shard:
each owns its bank. Codec replicas are interchangeable (`codec_replicas`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from fastapi import FastAPI
from ray import serve
from ray.serve.deployment import Application, Deployment
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.engine import Engine
from service.scale.codec import Codec
from service.scale.engine import ShardedEngine, ShardOptions, collecting_missing
from service.scale.shard import Shard
from service.settings import Settings

APP_NAME = "memorytransit"
MISSING_HEADER = "x-mt-missing-shards"
CONCURRENCY = 256  # requests a replica takes at once (Serve's default, 5, would queue them)


class MissingShardsMiddleware:
    """Adds X-MT-Missing-Shards: the shards (comma-separated) a read answered without."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with collecting_missing() as missing:

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start" and missing:
                    names = ",".join(str(s) for s in sorted(missing))
                    headers = [
                        *message.get("headers", []),
                        (MISSING_HEADER.encode(), names.encode()),
                    ]
                    message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, sending)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=CONCURRENCY)
@serve.ingress()
class Ingress:
    """The HTTP app; its engine calls the codec and shard deployments through their handles."""

    def __init__(
        self,
        settings: Settings,
        options: ShardOptions,
        codec: DeploymentHandle,
        *shards: DeploymentHandle,
    ) -> None:
        self.settings, self.options = settings, options
        self.codec, self.shard_handles = codec, list(shards)

    def __serve_build_asgi_app__(self) -> FastAPI:
        app_name = serve.get_replica_context().app_name
        n = len(self.shard_handles)

        def healthy() -> dict[int, bool]:
            deployments = serve.status().applications[app_name].deployments
            return {i: deployments[f"Shard{i}"].status == "HEALTHY" for i in range(n)}

        def engine(settings: Settings) -> ShardedEngine:
            handles = self.shard_handles
            return ShardedEngine(settings, self.codec, handles, self.options, healthy)

        factory = cast(Callable[[Settings], Engine], engine)  # Engine's surface, duck-typed
        app = create_app(self.settings, engine_factory=factory)
        app.add_middleware(MissingShardsMiddleware)
        return app


def build(
    settings: Settings,
    shards: int,
    *,
    codec_replicas: int = 1,
    shard_timeout_s: float = 5.0,
    gpu: float = 0.0,
) -> Application:
    """The bound application: Ingress(settings, Codec, Shard 0..N-1). gpu: the GPU share each
    codec replica and shard asks Ray for (0: none)."""
    if shards < 1:
        raise ValueError(f"expected shards >= 1, got {shards}")
    actor: dict[str, Any] = {"num_cpus": 0, "num_gpus": gpu}
    codec = (
        cast(Deployment, Codec)
        .options(
            num_replicas=codec_replicas, max_ongoing_requests=CONCURRENCY, ray_actor_options=actor
        )
        .bind(settings)
    )
    parts = [
        cast(Deployment, Shard)
        .options(
            name=f"Shard{i}",
            num_replicas=1,
            max_ongoing_requests=CONCURRENCY,
            ray_actor_options=actor,
        )
        .bind(settings, i, shards)
        for i in range(shards)
    ]
    options = ShardOptions(shards=shards, timeout_s=shard_timeout_s)
    return cast(Deployment, Ingress).bind(settings, options, codec, *parts)
