"""A small typed client for the MemoryTransit HTTP API (httpx; sync and async).

    from service.client import MemoryTransitClient
    with MemoryTransitClient("http://127.0.0.1:8000", api_key="...") as mt:
        slot = mt.write([item]).slots[0]
        best = mt.read([item], top_k=1)[0][0]          # Hit(slot, score, count, reconstruction)
        mt.remember(["Alice drinks tea."], [{"turn": 3}], namespace="alice")   # text codecs
        mt.recall(["What does Alice drink?"], top_k=3, namespace="alice")[0]   # [Memory]

Every 4xx / 5xx answer raises `APIError` carrying the status and the server's detail. A request
the server would refuse for its form is refused here first, with the server's wording, as
`InvalidInput` (a ValueError), and nothing is sent: values are never coerced (a slot 2.9, a
string or a boolean posing as a number are refused, not rounded or float()-ed). The checks are the
server's own request models (service/schemas.py), without the limits that depend on the server's
settings and weights (item length, items per request, top_k, answer size): those come back as
`APIError`. The answers are the pydantic models of service/schemas.py (no torch needed to import
this module).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from model.enums import check_namespace
from model.errors import InvalidInput
from service.answers import (
    DeleteResponse,
    ForgetResponse,
    Hit,
    Memory,
    NamespaceInfo,
    NamespacesResponse,
    ReadResponse,
    RecallResponse,
    RememberResponse,
    SlotResponse,
    SnapshotResponse,
    StatsResponse,
    WriteResponse,
)
from service.schemas import PinRequest, Request, request_models, slot_id, validation_detail

M = TypeVar("M", bound=BaseModel)
Rows = Sequence[Sequence[float]] | Any  # lists of floats, or anything with .tolist() (numpy, torch)


class APIError(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, detail: str, method: str = "", path: str = "") -> None:
        super().__init__(f"{method} {path} -> {status}: {detail}".strip())
        self.status = status
        self.detail = detail


# The server's request models without the limits that depend on its settings and weights.
_MODELS = request_models(
    max_items=sys.maxsize,
    max_top_k=sys.maxsize,
    d=None,
    max_text_chars=sys.maxsize,
    max_payload_bytes=sys.maxsize,
)


def _rows(rows: Rows) -> Any:
    """Rows as JSON-ready lists: .tolist() of arrays and tensors, tuples as lists; the values are
    left as they are, for the request model to judge."""
    rows = rows.tolist() if hasattr(rows, "tolist") else rows
    if not isinstance(rows, list | tuple):
        return rows
    return [
        r.tolist() if hasattr(r, "tolist") else list(r) if isinstance(r, tuple) else r for r in rows
    ]


def _body(model: type[Request], **fields: Any) -> dict[str, Any]:
    """The JSON body, as the server will read it (json.dumps writes NaN, as httpx would), once
    `model` accepts it; else InvalidInput with the server's detail."""
    content = json.dumps(fields).encode()
    try:
        model.model_validate(json.loads(content))
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise InvalidInput(validation_detail(errors)) from None
    return {"content": content, "headers": {"content-type": "application/json"}}


def _write_body(items: Rows, mode: str, **extra: Any) -> dict[str, Any]:
    """extra: namespace, texts, payloads, pinned, sent only when given (not None)."""
    given = {k: v for k, v in extra.items() if v is not None}
    return _body(_MODELS.write, items=_rows(items), mode=mode, **given)


def _remember_body(
    texts: list[str],
    payloads: list[dict[str, Any]] | None,
    namespace: str,
    pinned: bool,
    dedup: float | None,
) -> dict[str, Any]:
    fields = {"texts": texts, "payloads": payloads, "namespace": namespace, "pinned": pinned}
    return _body(_MODELS.remember, **fields, dedup=dedup)


def _recall_body(
    texts: list[str], top_k: int, min_score: float | None, namespace: str | None
) -> dict[str, Any]:
    return _body(_MODELS.recall, texts=texts, top_k=top_k, min_score=min_score, namespace=namespace)


def _namespace(ns: str) -> str:
    """The path of a namespace, refused here as the server refuses its name."""
    try:
        return f"/namespaces/{check_namespace(ns)}"
    except ValueError as e:
        raise InvalidInput(str(e)) from None


def _slot(i: int) -> str:
    """The path of slot i, refused as the server refuses its text: "2.9", "True", "-1"."""
    return f"/slots/{slot_id(str(i))}"


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            detail = str(response.json().get("detail", response.text))
        except (ValueError, AttributeError):
            detail = response.text or response.reason_phrase
        raise APIError(
            response.status_code, detail, response.request.method, response.request.url.path
        )
    return response


def _read_body(
    queries: Rows, top_k: int, min_score: float | None, reconstruct: bool, **extra: Any
) -> dict[str, Any]:
    """extra: namespace, rescore, sent only when given (not None)."""
    given = {k: v for k, v in extra.items() if v is not None}
    return _body(
        _MODELS.read,
        queries=_rows(queries),
        top_k=top_k,
        min_score=min_score,
        reconstruct=reconstruct,
        **given,
    )


class MemoryTransitClient:
    """Blocking client; use as a context manager or call close()."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(_check(self._http.request(method, path, **kwargs)).json())

    def _probe(self, path: str) -> bool:
        try:
            return self._http.get(path).status_code == 200
        except httpx.TransportError:  # down, refused, timed out: not healthy
            return False

    def healthy(self) -> bool:
        return self._probe("/healthz")

    def ready(self) -> bool:
        return self._probe("/readyz")

    def write(
        self,
        items: Rows,
        mode: str = "mean",
        *,
        namespace: str | None = None,
        texts: list[str] | None = None,
        payloads: list[dict[str, Any]] | None = None,
        pinned: bool | None = None,
    ) -> WriteResponse:
        extra = {"namespace": namespace, "texts": texts, "payloads": payloads, "pinned": pinned}
        return self._call(WriteResponse, "POST", "/write", **_write_body(items, mode, **extra))

    def read(
        self,
        queries: Rows,
        top_k: int = 1,
        min_score: float | None = None,
        reconstruct: bool = True,
        *,
        namespace: str | None = None,
        rescore: int | None = None,
    ) -> list[list[Hit]]:
        body = _read_body(
            queries, top_k, min_score, reconstruct, namespace=namespace, rescore=rescore
        )
        return self._call(ReadResponse, "POST", "/read", **body).results

    def stats(self) -> StatsResponse:
        return self._call(StatsResponse, "GET", "/stats")

    def snapshot(self) -> SnapshotResponse:
        return self._call(SnapshotResponse, "POST", "/snapshot")

    def get_slot(self, i: int) -> SlotResponse:
        return self._call(SlotResponse, "GET", _slot(i))

    def delete_slot(self, i: int) -> DeleteResponse:
        return self._call(DeleteResponse, "DELETE", _slot(i))

    def metrics(self) -> str:
        return _check(self._http.get("/metrics")).text

    def remember(
        self,
        texts: list[str],
        payloads: list[dict[str, Any]] | None = None,
        namespace: str = "default",
        pinned: bool = False,
        dedup: float | None = None,
    ) -> RememberResponse:
        body = _remember_body(texts, payloads, namespace, pinned, dedup)
        return self._call(RememberResponse, "POST", "/remember", **body)

    def recall(
        self,
        texts: list[str],
        top_k: int = 1,
        min_score: float | None = None,
        namespace: str | None = None,
    ) -> list[list[Memory]]:
        body = _recall_body(texts, top_k, min_score, namespace)
        return self._call(RecallResponse, "POST", "/recall", **body).results

    def namespaces(self) -> dict[str, NamespaceInfo]:
        return self._call(NamespacesResponse, "GET", "/namespaces").namespaces

    def forget_namespace(self, namespace: str) -> ForgetResponse:
        return self._call(ForgetResponse, "DELETE", _namespace(namespace))

    def pin_slot(self, i: int, pinned: bool = True) -> SlotResponse:
        body = _body(PinRequest, pinned=pinned)
        return self._call(SlotResponse, "POST", f"{_slot(i)}/pin", **body)


class AsyncMemoryTransitClient:
    """The same calls for asyncio code: `async with AsyncMemoryTransitClient(url) as mt`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        response = await self._http.request(method, path, **kwargs)
        return model.model_validate(_check(response).json())

    async def _probe(self, path: str) -> bool:
        try:
            return (await self._http.get(path)).status_code == 200
        except httpx.TransportError:
            return False

    async def healthy(self) -> bool:
        return await self._probe("/healthz")

    async def ready(self) -> bool:
        return await self._probe("/readyz")

    async def write(
        self,
        items: Rows,
        mode: str = "mean",
        *,
        namespace: str | None = None,
        texts: list[str] | None = None,
        payloads: list[dict[str, Any]] | None = None,
        pinned: bool | None = None,
    ) -> WriteResponse:
        extra = {"namespace": namespace, "texts": texts, "payloads": payloads, "pinned": pinned}
        body = _write_body(items, mode, **extra)
        return await self._call(WriteResponse, "POST", "/write", **body)

    async def read(
        self,
        queries: Rows,
        top_k: int = 1,
        min_score: float | None = None,
        reconstruct: bool = True,
        *,
        namespace: str | None = None,
        rescore: int | None = None,
    ) -> list[list[Hit]]:
        body = _read_body(
            queries, top_k, min_score, reconstruct, namespace=namespace, rescore=rescore
        )
        return (await self._call(ReadResponse, "POST", "/read", **body)).results

    async def stats(self) -> StatsResponse:
        return await self._call(StatsResponse, "GET", "/stats")

    async def snapshot(self) -> SnapshotResponse:
        return await self._call(SnapshotResponse, "POST", "/snapshot")

    async def get_slot(self, i: int) -> SlotResponse:
        return await self._call(SlotResponse, "GET", _slot(i))

    async def delete_slot(self, i: int) -> DeleteResponse:
        return await self._call(DeleteResponse, "DELETE", _slot(i))

    async def metrics(self) -> str:
        return _check(await self._http.get("/metrics")).text

    async def remember(
        self,
        texts: list[str],
        payloads: list[dict[str, Any]] | None = None,
        namespace: str = "default",
        pinned: bool = False,
        dedup: float | None = None,
    ) -> RememberResponse:
        body = _remember_body(texts, payloads, namespace, pinned, dedup)
        return await self._call(RememberResponse, "POST", "/remember", **body)

    async def recall(
        self,
        texts: list[str],
        top_k: int = 1,
        min_score: float | None = None,
        namespace: str | None = None,
    ) -> list[list[Memory]]:
        body = _recall_body(texts, top_k, min_score, namespace)
        return (await self._call(RecallResponse, "POST", "/recall", **body)).results

    async def namespaces(self) -> dict[str, NamespaceInfo]:
        return (await self._call(NamespacesResponse, "GET", "/namespaces")).namespaces

    async def forget_namespace(self, namespace: str) -> ForgetResponse:
        return await self._call(ForgetResponse, "DELETE", _namespace(namespace))

    async def pin_slot(self, i: int, pinned: bool = True) -> SlotResponse:
        body = _body(PinRequest, pinned=pinned)
        return await self._call(SlotResponse, "POST", f"{_slot(i)}/pin", **body)
