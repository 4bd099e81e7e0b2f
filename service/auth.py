"""API keys as dependencies: `access_dependencies(settings)` gives the read check and the write
check that create_app puts in its routes' `Annotated` parameters.

With MT_API_KEY set, every route but /healthz and /readyz needs a key, sent as
`X-API-Key: <key>` or `Authorization: Bearer <key>`:
- no key or a wrong one -> 401 with `WWW-Authenticate: Bearer`;
- MT_API_KEY may do everything;
- MT_READ_API_KEY may read (/read, /stats, GET /slots/{i}, /metrics) and gets 403 on the routes
  that change state (/write, DELETE /slots/{i}, /snapshot).
Keys are compared in constant time (hmac.compare_digest) and never logged.

Without MT_API_KEY both checks are one async no-op that reads no header: FastAPI resolves every
sub-dependency on every request, so the two header parsers would cost each /read time for
nothing. The OpenAPI document then lists no security scheme, as no key is needed.
"""

from __future__ import annotations

import hmac
from enum import StrEnum
from typing import Annotated, NamedTuple

from fastapi import Depends, HTTPException, Request, Security, params
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.settings import Settings

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")


AUTH_DOC = (
    "When the server has MT_API_KEY set, every route but /healthz and /readyz needs a key: "
    "`X-API-Key: <key>` or `Authorization: Bearer <key>`. A read-only key (MT_READ_API_KEY) "
    'may use /read, /stats, GET /slots/{i} and /metrics. Errors are `{"detail": "..."}`.'
)


class Role(StrEnum):
    write = "write"  # full access (MT_API_KEY, or any caller when auth is off)
    read = "read"  # MT_READ_API_KEY


def _matches(presented: bytes, key: SecretStr | None) -> bool:
    secret = key.get_secret_value().encode() if key is not None else b""
    return bool(secret) and hmac.compare_digest(presented, secret)


def role_of(settings: Settings, presented: str | None) -> Role | None:
    """The role a presented key grants (None: no access). Both keys are always compared."""
    if settings.api_key is None:
        return Role.write
    if not presented:
        return None
    raw = presented.encode()
    is_write = _matches(raw, settings.api_key)
    is_read = _matches(raw, settings.read_api_key)
    return Role.write if is_write else Role.read if is_read else None


async def _role(
    request: Request,
    api_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Role:
    # async, as every dependency here: FastAPI runs a plain `def` one on its thread pool.
    settings: Settings = request.app.state.settings
    presented = api_key if api_key is not None else (bearer.credentials if bearer else None)
    role = role_of(settings, presented)
    if role is None:
        detail = "missing API key" if not presented else "invalid API key"
        raise HTTPException(
            401, detail, headers={"WWW-Authenticate": 'Bearer realm="memorytransit"'}
        )
    return role


async def _require_write(role: Annotated[Role, Depends(_role)]) -> Role:
    if role is not Role.write:
        raise HTTPException(403, "this API key is read-only")
    return role


async def _open() -> Role:
    """No key configured: every caller has full access, and no header is read."""
    return Role.write


class Access(NamedTuple):
    """The dependencies of the read routes and of the routes that change state."""

    read: params.Depends
    write: params.Depends


def access_dependencies(settings: Settings) -> Access:
    """The key checks for an app with these settings: `_open` for both when MT_API_KEY is
    unset, else the checks of the module docstring (documented as security schemes)."""
    if not settings.auth_enabled:
        return Access(read=Depends(_open), write=Depends(_open))
    return Access(read=Depends(_role), write=Depends(_require_write))
