"""The memory routes: write, read, and one slot's GET / DELETE."""

from __future__ import annotations

from fastapi import APIRouter, Response

from model.enums import stored_slots
from service import texts
from service.answers import DeleteResponse, ReadResponse, SlotResponse, WriteResponse
from service.deps import (
    EngineDep,
    PinBody,
    ReadAccess,
    ReadCall,
    SlotId,
    WriteAccess,
    WriteCall,
    body_doc,
)
from service.responses import FastJSON, error_answers
from service.schemas import PinRequest, ReadRequest, WriteRequest

router = APIRouter(tags=["memory"])


@router.post(
    "/write",
    openapi_extra=body_doc(WriteRequest),
    responses=error_answers(401, 403, 413, 415, 422, 503, 507),
)
async def write(call: WriteCall) -> WriteResponse:
    """Encode the items and store their codes: mode "mean" -> one slot, "each" -> one per
    item; in a namespace, pinned or not, with texts and payloads. Logged to the write-ahead
    log before the bank changes."""
    engine, body = call
    stored = stored_slots(len(body.items), body.mode)
    records = texts.records(stored, body.texts, body.payloads)
    out = await engine.write(body.items, body.mode, body.namespace, records, body.pinned)
    return WriteResponse(slots=out.slots, evicted=out.evicted, used=out.used)


@router.post(
    "/read",
    openapi_extra=body_doc(ReadRequest),
    response_model=ReadResponse,
    responses=error_answers(401, 413, 415, 422, 503),
)
async def read(call: ReadCall) -> Response:
    """For each query, the top_k stored slots (of one namespace, or all) by cosine
    similarity, best first, with the slot's access count after this read, (reconstruct=true)
    the decoded item, and the slot's text and payload when it keeps them."""
    engine, body = call
    results = await engine.read(
        body.queries, body.top_k, body.min_score, body.reconstruct, body.namespace, body.rescore
    )
    return FastJSON({"results": results})


@router.get("/slots/{i}", response_model=SlotResponse, responses=error_answers(401, 404, 422, 503))
async def get_slot(_: ReadAccess, engine: EngineDep, slot: SlotId) -> Response:
    """One occupied slot: counters, stored code and its reconstruction (not an access)."""
    return FastJSON(await engine.get_slot(slot))


@router.delete("/slots/{i}", responses=error_answers(401, 403, 404, 422, 503, 507))
async def delete_slot(_: WriteAccess, engine: EngineDep, slot: SlotId) -> DeleteResponse:
    """Free one occupied slot (logged first)."""
    return DeleteResponse(slot=slot, used=await engine.delete_slot(slot))


@router.post(
    "/slots/{i}/pin",
    openapi_extra=body_doc(PinRequest),
    response_model=SlotResponse,
    responses=error_answers(401, 403, 404, 422, 503, 507),
)
async def pin_slot(_: WriteAccess, engine: EngineDep, slot: SlotId, body: PinBody) -> Response:
    """Pin an occupied slot (never evicted; it can still be deleted) or unpin it."""
    return FastJSON(await engine.pin(slot, body.pinned))
