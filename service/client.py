"""A small typed client for the MemoryTransit HTTP API (httpx; sync and async).

    from service.client import MemoryTransitClient
    with MemoryTransitClient("http://127.0.0.1:8000", api_key="...") as mt:
        slot = mt.write([item]).slots[0]
        best = mt.read([item], top_k=1)[0][0]          # Hit(slot, score, count, reconstruction)

Every 4xx / 5xx answer raises `APIError` carrying the status and the server's detail. The
answers are the pydantic models of service/schemas.py (no torch needed to import this module).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel

from service.schemas import (
    DeleteResponse,
    Hit,
    ReadResponse,
    SlotResponse,
    SnapshotResponse,
    StatsResponse,
    WriteResponse,
)

M = TypeVar("M", bound=BaseModel)
Rows = Sequence[Sequence[float]] | Any  # lists of floats, or anything with .tolist() (numpy, torch)


class APIError(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, detail: str, method: str = "", path: str = "") -> None:
        super().__init__(f"{method} {path} -> {status}: {detail}".strip())
        self.status = status
        self.detail = detail


def _rows(rows: Rows) -> list[list[float]]:
    return rows.tolist() if hasattr(rows, "tolist") else [list(map(float, r)) for r in rows]


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
    queries: Rows, top_k: int, min_score: float | None, reconstruct: bool
) -> dict[str, Any]:
    return {
        "queries": _rows(queries),
        "top_k": top_k,
        "min_score": min_score,
        "reconstruct": reconstruct,
    }


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

    def healthy(self) -> bool:
        return self._http.get("/healthz").status_code == 200

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def write(self, items: Rows, mode: str = "mean") -> WriteResponse:
        return self._call(
            WriteResponse, "POST", "/write", json={"items": _rows(items), "mode": mode}
        )

    def read(
        self,
        queries: Rows,
        top_k: int = 1,
        min_score: float | None = None,
        reconstruct: bool = True,
    ) -> list[list[Hit]]:
        body = _read_body(queries, top_k, min_score, reconstruct)
        return self._call(ReadResponse, "POST", "/read", json=body).results

    def stats(self) -> StatsResponse:
        return self._call(StatsResponse, "GET", "/stats")

    def snapshot(self) -> SnapshotResponse:
        return self._call(SnapshotResponse, "POST", "/snapshot")

    def get_slot(self, i: int) -> SlotResponse:
        return self._call(SlotResponse, "GET", f"/slots/{int(i)}")

    def delete_slot(self, i: int) -> DeleteResponse:
        return self._call(DeleteResponse, "DELETE", f"/slots/{int(i)}")

    def metrics(self) -> str:
        return _check(self._http.get("/metrics")).text


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

    async def write(self, items: Rows, mode: str = "mean") -> WriteResponse:
        return await self._call(
            WriteResponse, "POST", "/write", json={"items": _rows(items), "mode": mode}
        )

    async def read(
        self,
        queries: Rows,
        top_k: int = 1,
        min_score: float | None = None,
        reconstruct: bool = True,
    ) -> list[list[Hit]]:
        body = _read_body(queries, top_k, min_score, reconstruct)
        return (await self._call(ReadResponse, "POST", "/read", json=body)).results

    async def stats(self) -> StatsResponse:
        return await self._call(StatsResponse, "GET", "/stats")

    async def snapshot(self) -> SnapshotResponse:
        return await self._call(SnapshotResponse, "POST", "/snapshot")

    async def get_slot(self, i: int) -> SlotResponse:
        return await self._call(SlotResponse, "GET", f"/slots/{int(i)}")

    async def delete_slot(self, i: int) -> DeleteResponse:
        return await self._call(DeleteResponse, "DELETE", f"/slots/{int(i)}")
