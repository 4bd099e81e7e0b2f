"""The memory routes: write, read, and one slot's GET / DELETE."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.deps import EngineDep, ReadAccess, ReadBody, SlotId, WriteAccess, WriteBody, body_doc
from service.responses import FastJSON, error_answers
from service.schemas import (
    DeleteResponse,
    ReadRequest,
    ReadResponse,
    SlotResponse,
    WriteRequest,
    WriteResponse,
)

router = APIRouter(tags=["memory"])


@router.post(
    "/write",
    openapi_extra=body_doc(WriteRequest),
    responses=error_answers(401, 403, 413, 415, 422, 503, 507),
)
async def write(_: WriteAccess, engine: EngineDep, body: WriteBody) -> WriteResponse:
    """Encode the items and store their codes: mode "mean" -> one slot, "each" -> one per
    item. Logged to the write-ahead log before the bank changes."""
    out = await engine.write(body.items, body.mode)
    return WriteResponse(slots=out.slots, evicted=out.evicted, used=out.used)


@router.post(
    "/read",
    openapi_extra=body_doc(ReadRequest),
    response_model=ReadResponse,
    responses=error_answers(401, 413, 415, 422, 503),
)
async def read(_: ReadAccess, engine: EngineDep, body: ReadBody) -> Response:
    """For each query, the top_k stored slots by cosine similarity, best first, with the
    slot's access count after this read and (reconstruct=true) the decoded item."""
    results = await engine.read(body.queries, body.top_k, body.min_score, body.reconstruct)
    return FastJSON({"results": results})


@router.get("/slots/{i}", response_model=SlotResponse, responses=error_answers(401, 404, 422, 503))
async def get_slot(_: ReadAccess, engine: EngineDep, slot: SlotId) -> Response:
    """One occupied slot: counters, stored code and its reconstruction (not an access)."""
    return FastJSON(await engine.get_slot(slot))


@router.delete("/slots/{i}", responses=error_answers(401, 403, 404, 422, 503, 507))
async def delete_slot(_: WriteAccess, engine: EngineDep, slot: SlotId) -> DeleteResponse:
    """Free one occupied slot (logged first)."""
    return DeleteResponse(slot=slot, used=await engine.delete_slot(slot))
