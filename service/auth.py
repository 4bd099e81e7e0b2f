"""API keys: the role a request's key grants, checked by the ReadAccess / WriteAccess
dependencies (service/deps.py).

With MT_API_KEY set, every route but /healthz and /readyz needs a key, sent as
`X-API-Key: <key>` or `Authorization: Bearer <key>`:
- no key or a wrong one -> 401 with `WWW-Authenticate: Bearer`;
- MT_API_KEY may do everything;
- MT_READ_API_KEY may read (/read, /stats, GET /slots/{i}, /metrics) and gets 403 on the routes
  that change state (/write, DELETE /slots/{i}, /snapshot).
Keys are compared in constant time (hmac.compare_digest) and never logged.

`authenticate` and `authorize_write` are module-level dependencies that read the app's settings
from `request.app.state.settings`. Without MT_API_KEY they return at once and read no header:
FastAPI resolves every sub-dependency on every request, so header parsers declared as such would
cost each /read time for nothing; with a key they call the header schemes themselves.

The OpenAPI document lists the schemes only when a key is needed: `key_schemes(settings)` gives
them as dependencies of the routers that need a key (create_app includes those routers with
them), which is how FastAPI documents security; without MT_API_KEY it gives none.
"""

from __future__ import annotations

import hmac
from enum import StrEnum

from fastapi import HTTPException, Request, Security, params
from fastapi.security import APIKeyHeader, HTTPBearer
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


async def authenticate(request: Request) -> Role:
    """The caller's role; 401 without a valid key. Every caller may write when MT_API_KEY is
    unset, and then no header is read."""
    # async, as every dependency here: FastAPI runs a plain `def` one on its thread pool.
    settings: Settings = request.app.state.settings
    if not settings.auth_enabled:
        return Role.write
    api_key = await _api_key_header(request)
    bearer = await _bearer(request)
    presented = api_key if api_key is not None else (bearer.credentials if bearer else None)
    role = role_of(settings, presented)
    if role is None:
        detail = "missing API key" if not presented else "invalid API key"
        raise HTTPException(
            401, detail, headers={"WWW-Authenticate": 'Bearer realm="memorytransit"'}
        )
    return role


async def authorize_write(request: Request) -> Role:
    """The caller's role, which must be write: 401 as `authenticate`, 403 for a read-only key."""
    role = await authenticate(request)
    if role is not Role.write:
        raise HTTPException(403, "this API key is read-only")
    return role


def key_schemes(settings: Settings) -> list[params.Depends]:
    """The key schemes as router dependencies, so that the OpenAPI document lists them on the
    routes that need a key; none when MT_API_KEY is unset. They only read their header: the
    checks are `authenticate` / `authorize_write`."""
    if not settings.auth_enabled:
        return []
    return [Security(_api_key_header), Security(_bearer)]
