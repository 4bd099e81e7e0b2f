"""The yardstick of bench/http.py: the least a FastAPI app can do on the same uvicorn.

    uvicorn bench.hello_app:app --workers 1

- GET /sync    a plain `def` route: FastAPI runs it on the threadpool (one thread hop).
- GET /async   an `async def` route: runs on the event loop, no hop.
- POST /echo   JSON cost included: a body shaped like POST /read's ({"queries": [[d floats]],
               "top_k", "min_score", "reconstruct"}) parsed into a pydantic model, and an answer
               shaped like /read's (one hit per query, its d floats as the "reconstruction"),
               serialised by FastAPI's default response path. Whatever /read costs beyond this
               echo is ours: the engine, the batching, the middleware and orjson vs the default.

No middleware, no dependencies, no model: the bench compares the service with these three.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel


class EchoRequest(BaseModel):
    queries: list[list[float]]
    top_k: int = 1
    min_score: float | None = None
    reconstruct: bool = True


class EchoHit(BaseModel):
    slot: int
    score: float
    count: int
    reconstruction: list[float] | None


class EchoResponse(BaseModel):
    results: list[list[EchoHit]]


app = FastAPI(title="hello")


@app.get("/sync")
def hello_sync() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/async")
async def hello_async() -> dict[str, str]:
    return {"hello": "world"}


@app.post("/echo")
async def echo(body: EchoRequest) -> EchoResponse:
    """Each query comes back as the one hit of a /read-shaped answer."""
    return EchoResponse(
        results=[
            [EchoHit(slot=i, score=1.0, count=1, reconstruction=q if body.reconstruct else None)]
            for i, q in enumerate(body.queries)
        ]
    )
