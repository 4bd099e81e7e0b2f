"""The one place where errors become HTTP answers.

Every error answer has the same shape, `{"detail": "<one sentence>"}` (answers.ErrorResponse):
request validation errors are flattened into that sentence too, rather than FastAPI's list of
error objects, so clients handle one format. Messages name the problem and the allowed values;
they never echo stack traces, file paths of the server or other internals, and what they repeat
of a request is clipped (schemas.clip); a detail is at most MAX_DETAIL characters.

    domain error (engine / bank / WAL)      HTTP
    InvalidInput, other ValueError          422  the error's message
    SlotNotFound                            404  "slot 7 is not occupied"
    NamespaceNotFound                       404  "namespace 'u1' holds no slot"
    BankFull                                409  "... are not pinned: unpin or delete slots first"
    NotATextCodec                           409  "the loaded model ... is not a text codec: ..."
    DiskFullError / PersistenceError        507  "insufficient storage: ..."
    NotReady                                503  "service is starting" (Retry-After)
    RequestValidationError                  422  flattened pydantic errors
    body over MT_MAX_BODY_BYTES             413  "request body too large: ..."
    HTTPException (auth, deps: body, size)  its status and detail
    anything else                           500  "internal server error" (logged, not echoed)
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.errors import (
    BankFull,
    DiskFullError,
    NamespaceNotFound,
    NotReady,
    PersistenceError,
    SlotNotFound,
)
from service.answers import ErrorResponse
from service.schemas import clip, validation_detail
from service.texts import NotATextCodec

log = logging.getLogger("service.errors")

MAX_DETAIL = 1024  # characters of any detail: no error answer is larger than about 1 kB

# The standard answers, for `responses=` in the routes (and so in the OpenAPI document).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {
        "model": ErrorResponse,
        "description": "Request body larger than MT_MAX_BODY_BYTES, or a read answer that "
        "would be larger than MT_MAX_RESPONSE_BYTES",
    },
    415: {"model": ErrorResponse, "description": "Compressed body (Content-Encoding)"},
    422: {"model": ErrorResponse, "description": "Invalid request (body, path or values)"},
    503: {"model": ErrorResponse, "description": "The engine is not ready (starting or stopping)"},
}
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    403: {"model": ErrorResponse, "description": "The key may not do this (read-only key)"},
}


def error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": clip(detail, MAX_DETAIL)}, status_code=status, headers=headers)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: the limit is {limit} bytes")


class BodyLimitMiddleware:
    """413 for a body over `limit` bytes, before it is parsed: at once when Content-Length
    says so (the body is never read), else as soon as the streamed bytes pass the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0  # the server refuses a malformed length before we see it
                if declared > self.limit:
                    response = error(413, BodyTooLarge(self.limit).detail, {"Connection": "close"})
                    await response(scope, receive, send)
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)  # -> the HTTPException handler: JSON 413
            return message

        await self.app(scope, limited, send)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping above on app."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, validation_detail(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(SlotNotFound)
    async def _slot(_: Request, exc: SlotNotFound) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(NamespaceNotFound)
    async def _namespace(_: Request, exc: NamespaceNotFound) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(BankFull)
    async def _full(_: Request, exc: BankFull) -> JSONResponse:
        return error(409, str(exc))

    @app.exception_handler(NotATextCodec)
    async def _not_text(_: Request, exc: NotATextCodec) -> JSONResponse:
        return error(409, str(exc))

    @app.exception_handler(PersistenceError)
    async def _storage(_: Request, exc: PersistenceError) -> JSONResponse:
        log.error("persistence failed: %s", exc)
        kind = "disk full" if isinstance(exc, DiskFullError) else "the data could not be saved"
        return error(507, f"insufficient storage: {kind}; the request was not applied")

    @app.exception_handler(NotReady)
    async def _not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return error(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(ValueError)
    async def _invalid(_: Request, exc: ValueError) -> JSONResponse:
        return error(422, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, "internal server error")
