"""The ops routes: the probes (/healthz, /readyz: no key needed), and /stats, /snapshot and
/metrics (`router`: create_app includes it with the key schemes, as the memory routes); and the
read-only views the web page (GET /ui) draws: /codec (the item shape), /slots (a page of the
occupied slots' counters) and /evictions/next (what the next write would take), which change
nothing and count no access."""

from __future__ import annotations

import json
from typing import Annotated

import torch
from fastapi import APIRouter, Query, Request, Response

from model.bank import MemoryBank
from model.checkpoint import item_shape, read_metadata
from model.errors import CheckpointError, NotReady
from service.answers import (
    CodecKind,
    CodecResponse,
    EvictionResponse,
    HealthResponse,
    ReadyResponse,
    SlotListResponse,
    SlotOrder,
    SlotSummary,
    SnapshotResponse,
    StatsResponse,
)
from service.deps import EngineDep, ReadAccess, WriteAccess, ready_engine
from service.engine import Engine
from service.metrics import CONTENT_TYPE, Metrics
from service.responses import error_answers

MAX_PAGE = 1000  # slots per GET /slots page

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
        shards=getattr(info, "shards", None),  # the Ray app's engine: each shard's snapshot
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


@router.get("/codec", responses=error_answers(401, 503))
async def codec(_: ReadAccess, engine: EngineDep) -> CodecResponse:
    """The served model: d, m and one item's shape (from the weights file's metadata "shape";
    for files without it, (s, s) when d = s * s, else (d,)), and how the page shows an item."""
    model = engine.model
    assert model is not None  # the engine is ready
    d = model.config.d
    try:
        meta = read_metadata(engine.settings.weights)
    except CheckpointError:  # the file went away after start: what the loaded model knows
        meta = {"info": json.dumps(model.info)}
    shape = item_shape(meta, d)
    kind: CodecKind = (
        "text" if "embedder" in model.info else "image" if len(shape) == 2 else "vector"
    )
    return CodecResponse(
        model=model.name,
        fingerprint=model.fingerprint,
        d=d,
        m=model.config.m,
        shape=list(shape),
        kind=kind,
    )


def _summaries(bank: MemoryBank, slots: torch.Tensor) -> list[SlotSummary]:
    columns = (bank.counts[slots], *bank.ticks(slots))
    return [
        SlotSummary(slot=s, count=c, last_write=w, last_access=a)
        for s, c, w, a in zip(slots.tolist(), *(t.tolist() for t in columns), strict=True)
    ]


def _slot_page(bank: MemoryBank, offset: int, limit: int, order: SlotOrder) -> SlotListResponse:
    occupied = bank.occupied.nonzero().squeeze(1)  # ascending slots
    if order != "slot" and occupied.numel():
        touched = torch.maximum(bank.last_write, bank.last_access)
        key = (bank.counts if order == "count" else touched)[occupied]
        occupied = occupied[torch.sort(key, descending=True, stable=True).indices]
    total = int(occupied.numel())
    start = min(offset, total)
    page = occupied[start : start + limit]
    return SlotListResponse(
        total=total,
        offset=offset,
        limit=limit,
        order=order,
        tick=bank.tick,
        slots=_summaries(bank, page),
    )


@router.get("/slots", responses=error_answers(401, 422, 503))
async def list_slots(
    _: ReadAccess,
    engine: EngineDep,
    offset: Annotated[int, Query(ge=0, le=10**12)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    order: SlotOrder = "slot",
) -> SlotListResponse:
    """One page of the occupied slots' counters, by slot, by count or by recency (no codes,
    no reconstructions: GET /slots/{i} has those; not an access)."""
    return await engine.inspect(lambda bank: _slot_page(bank, offset, limit, order))


def _next_eviction(bank: MemoryBank, n: int) -> EvictionResponse:
    plan = bank.choose_slots(n)  # pure: the bank's own write policy, nothing changes
    victims = torch.tensor(plan.evicted[:1], dtype=torch.int64, device=bank.counts.device)
    first = next(iter(_summaries(bank, victims)), None)
    return EvictionResponse(n=n, slots=plan.slots, evicted=plan.evicted, next=first)


@router.get("/evictions/next", responses=error_answers(401, 422, 503))
async def next_eviction(
    _: ReadAccess, engine: EngineDep, n: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1
) -> EvictionResponse:
    """The slots a write of n rows would take now (the LFU policy: free slots first, then the
    lowest (count, last touched, slot)) and which of them it would evict; changes nothing."""
    return await engine.inspect(lambda bank: _next_eviction(bank, n))
