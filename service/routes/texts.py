"""The text memory routes (text codecs only): remember texts, recall them by another text."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.answers import RecallResponse, RememberResponse
from service.deps import EngineDep, ReadAccess, RecallBody, RememberBody, WriteAccess, body_doc
from service.responses import FastJSON, error_answers, memory
from service.schemas import RecallRequest, RememberRequest

router = APIRouter(tags=["text memory"])


@router.post(
    "/remember",
    openapi_extra=body_doc(RememberRequest),
    responses=error_answers(401, 403, 409, 413, 415, 422, 503, 507),
)
async def remember(_: WriteAccess, engine: EngineDep, body: RememberBody) -> RememberResponse:
    """Embed each text and store it in its own slot, with its payload, in a namespace; with
    `dedup`, a text as close as that to a memory of the namespace is merged into it."""
    out, merged = await engine.remember(
        body.texts, body.payloads, body.namespace, body.pinned, body.dedup
    )
    return RememberResponse(slots=out.slots, evicted=out.evicted, used=out.used, merged=merged)


@router.post(
    "/recall",
    openapi_extra=body_doc(RecallRequest),
    response_model=RecallResponse,
    responses=error_answers(401, 409, 413, 415, 422, 503),
)
async def recall(_: ReadAccess, engine: EngineDep, body: RecallBody) -> Response:
    """For each text, the top_k remembered texts closest to it (of one namespace, or all),
    best first, with their payloads and access counts after this recall."""
    results = await engine.recall(
        body.texts, body.top_k, body.min_score, body.namespace, body.rescore
    )
    return FastJSON({"results": [[memory(h) for h in hits] for hits in results]})
