"""The namespace routes: list them, forget one whole, and look ahead at what a write evicts."""

from __future__ import annotations

from fastapi import APIRouter

from service.answers import ForgetResponse, NamespacesResponse, PreviewResponse
from service.deps import EngineDep, NamespaceName, PreviewBody, ReadAccess, WriteAccess, body_doc
from service.responses import error_answers
from service.schemas import PreviewRequest

router = APIRouter(tags=["namespaces"])


@router.get("/namespaces", responses=error_answers(401, 503))
async def list_namespaces(_: ReadAccess, engine: EngineDep) -> NamespacesResponse:
    """Every namespace that holds a slot: its slots, pinned slots and total access count."""
    stats = await engine.namespaces()
    return NamespacesResponse.model_validate({"namespaces": stats})


@router.delete("/namespaces/{ns}", responses=error_answers(401, 403, 404, 422, 503, 507))
async def forget(_: WriteAccess, engine: EngineDep, ns: NamespaceName) -> ForgetResponse:
    """Forget a whole namespace: free every slot it holds (logged first, one record)."""
    slots = await engine.forget(ns)
    return ForgetResponse(namespace=ns, forgotten=slots, used=engine.used)


@router.post(
    "/evictions/preview",
    openapi_extra=body_doc(PreviewRequest),
    responses=error_answers(401, 409, 422, 503),
)
async def preview(_: ReadAccess, engine: EngineDep, body: PreviewBody) -> PreviewResponse:
    """Dry run: the slots the next write of n rows into a namespace would take, and which
    memories it would evict (LFU, pins and quota applied). Nothing changes."""
    plan = await engine.preview(body.n, body.namespace)
    return PreviewResponse(slots=plan.slots, evicted=plan.evicted)
