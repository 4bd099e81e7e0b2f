"""What the routes need, declared once as `Annotated` dependencies (the style of
fastapi/full-stack-fastapi-template). They are module-level: what differs between apps (the
engine, the settings and keys, the request limits) is read from `request.app.state`, which
create_app fills.

- EngineDep: the app's engine once it is ready; NotReady (503) before that and after a failure.
- ReadAccess / WriteAccess: the caller's role from its API key (service/auth.py): 401 without a
  valid key, 403 for a read-only key on a route that changes state.
- The request bodies (in WriteCall / ReadCall and the other *Body dependencies) are read and
  parsed here, once (not by FastAPI): 415 for a compressed body; 422 for no body, another
  media type, invalid UTF-8 or JSON, nesting too deep, an integer over Python's digit limit,
  or a key given twice; then validated against the app's request models (`app.state.models`:
  WriteRequest / ReadRequest with this app's MT_MAX_ITEMS, MT_MAX_TOP_K and the weights' d,
  see schemas.request_models), whose errors errors.py words. A read whose answer could pass
  MT_MAX_RESPONSE_BYTES is a 413. Routes document their body with
  `openapi_extra=body_doc(Model)`, a reference to the schema that create_app's OpenAPI
  document takes from the same models, so the document states this app's limits.
- ReadCall / WriteCall: access, engine and body of the hot routes (/read, /write) as one
  dependency, in the same order.
- SlotId: the path's slot id, plain decimal digits only (schemas.slot_id), else 422.

A dependency that raises ends the request, so a route declares its access first, then the engine,
then the body or slot: 401 / 403 come before 503, and 503 before 415 / 422 / 413; the body is not
read before the key is checked.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.constants import REF_TEMPLATE
from pydantic import BaseModel, ValidationError, WithJsonSchema

from model.enums import NAMESPACE_PATTERN
from model.errors import NotReady
from service.auth import Role, authenticate, authorize_write
from service.engine import Engine
from service.schemas import (
    PinRequest,
    PreviewRequest,
    ReadRequest,
    RecallRequest,
    RememberRequest,
    RequestModels,
    WriteRequest,
    clip,
    slot_id,
)
from service.settings import Settings

M = TypeVar("M", bound=BaseModel)
NOT_AN_OBJECT = "request body must be a JSON object (Content-Type: application/json)"
SLOT_SCHEMA = {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}  # as slot_id reads it


def ready_engine(request: Request) -> Engine:
    """The app's engine once it is ready; NotReady (503) before that and after a failure."""
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        state = engine.state if engine is not None else "starting"
        raise NotReady(
            "service is starting"
            if state in ("created", "starting")
            else f"service is not available ({state})"
        )
    return engine


async def _engine(request: Request) -> Engine:
    # async: FastAPI runs a plain `def` dependency on its thread pool, two thread hops for a
    # dictionary lookup, which cost /read about 10% of its throughput.
    return ready_engine(request)


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """A route's `openapi_extra`: its JSON body documented as `model`'s schema, by reference
    (the app's OpenAPI document holds the schema of its own model of that name). The body is
    read by the dependency below, not by FastAPI, so FastAPI does not document it itself."""
    schema = {"$ref": REF_TEMPLATE.format(model=model.__name__)}
    return {"requestBody": {"content": {"application/json": {"schema": schema}}, "required": True}}


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: the object, or _DuplicateKey naming a key given twice (json.loads
    alone keeps the last one, so {"items": "junk", "items": [...]} would write)."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


_HUGE = 2.0**63  # orjson reads integers past 64 bits as floats (json: ints), all of them >= this


def parse_json(raw: bytes) -> Any:
    """The body as JSON: UTF-8, keys unique; 422 naming the problem. Python's json reads NaN and
    Infinity; the request models refuse them with their own message."""
    fast = _flat_object(raw)
    if fast is not None:
        return fast
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise HTTPException(422, f"request body has a duplicate key {clip(e.args[0])!r}") from None
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 (invalid byte at position {e.start})"
    except json.JSONDecodeError as e:
        problem = f"{e.msg} at position {e.pos}"
    except RecursionError:
        problem = "nested too deeply"
    except ValueError:  # the only other one: an integer over Python's digit limit
        problem = f"an integer with more than {sys.get_int_max_str_digits()} digits"
    raise HTTPException(422, f"request body is not valid JSON: {problem}")


def _flat_object(raw: bytes) -> dict[str, Any] | None:
    """orjson's parse of a body that is one flat object (/read's and /write's), where it equals
    json.loads's (a 767-byte /read: 8 us, checks included, against 15): one "{" in the body,
    each key written once and plainly (no duplicate to miss: orjson keeps the last), no number
    of magnitude 2^63 or more. None: json.loads reads it, and words any error, as before."""
    if raw.count(b"{") != 1:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:  # invalid for json too, or NaN / Infinity, which json reads
        return None
    if not isinstance(obj, dict) or any(raw.count(b'"%s"' % k.encode()) != 1 for k in obj):
        return None
    return None if any(_huge(v) for v in obj.values()) else obj


def _huge(value: Any) -> bool:
    """Whether a parsed value holds a number of magnitude >= 2^63: max and min over a list of
    numbers run in C (a /read's 64 floats: ~1 us); lists of lists and mixed lists recurse."""
    if isinstance(value, list):
        if value and isinstance(value[0], list):  # rows: each in C
            return any(_huge(v) for v in value)
        try:
            return bool(value) and (max(value) >= _HUGE or min(value) <= -_HUGE)
        except TypeError:  # not all numbers: lists (compared as lists), strings, None
            return any(_huge(v) for v in value)
    return isinstance(value, float | int) and abs(value) >= _HUGE


def _is_json(content_type: str | None) -> bool:
    """No Content-Type, application/json or application/*+json (as FastAPI reads bodies)."""
    if content_type is None:
        return True
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


async def _json_body(request: Request) -> Any:
    """The request's JSON body, read and parsed once, here: 415 for a compressed body, 422 for
    none, another media type, or anything parse_json refuses."""
    encoding = request.headers.get("content-encoding", "identity")
    if encoding.strip().lower() != "identity":
        raise HTTPException(
            415, f"Content-Encoding {clip(encoding)!r} is not supported: send the body uncompressed"
        )
    raw = await request.body()
    if not raw:
        raise HTTPException(422, "request body is required: a JSON object")
    if not _is_json(request.headers.get("content-type")):
        raise HTTPException(422, NOT_AN_OBJECT)
    return parse_json(raw)


def _validated(model: type[M], body: Any) -> M:
    """`body` as `model`: errors.py words the errors (located in "body") as for FastAPI's."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise RequestValidationError(errors, body=body) from None


async def _write_body(request: Request) -> WriteRequest:
    models: RequestModels = request.app.state.models
    return _validated(models.write, await _json_body(request))


async def _read_body(request: Request) -> ReadRequest:
    """The read request, refused with 413 when its answer could pass MT_MAX_RESPONSE_BYTES:
    before any work, so nothing is read or counted."""
    models: RequestModels = request.app.state.models
    body = _validated(models.read, await _json_body(request))
    settings: Settings = request.app.state.settings
    hits, size = body.answer_bytes(settings.capacity)
    if size > settings.max_response_bytes:
        what = f"reconstructions of {body.d} values" if body.reconstruct else "no reconstructions"
        raise HTTPException(
            413,
            f"read answer too large: {len(body.queries)} queries x {hits} hits with {what} "
            f"could take {size} bytes, over the limit of {settings.max_response_bytes} bytes "
            "(MT_MAX_RESPONSE_BYTES); send fewer queries, a smaller top_k or reconstruct=false",
        )
    return body


async def _read_call(request: Request) -> tuple[Engine, ReadRequest]:
    """ReadAccess, EngineDep and the read body (`_read_body`) as one dependency, checked in
    that order (401, then 503, then the body's 4xx): /read is the hot path, and FastAPI's own
    work for each declared dependency cost it 12% of its event-loop time (186 -> 163 us per
    request)."""
    await authenticate(request)
    engine = ready_engine(request)
    return engine, await _read_body(request)


async def _write_call(request: Request) -> tuple[Engine, WriteRequest]:
    """WriteAccess, EngineDep and the write body as one dependency, in that order (as
    `_read_call`)."""
    await authorize_write(request)
    engine = ready_engine(request)
    return engine, await _write_body(request)


async def _remember_body(request: Request) -> RememberRequest:
    models: RequestModels = request.app.state.models
    return _validated(models.remember, await _json_body(request))


async def _recall_body(request: Request) -> RecallRequest:
    models: RequestModels = request.app.state.models
    return _validated(models.recall, await _json_body(request))


async def _preview_body(request: Request) -> PreviewRequest:
    return _validated(PreviewRequest, await _json_body(request))


async def _pin_body(request: Request) -> PinRequest:
    return _validated(PinRequest, await _json_body(request))


async def _slot(i: Annotated[str, Path(), WithJsonSchema(SLOT_SCHEMA)]) -> int:
    return slot_id(i)


async def _namespace(ns: Annotated[str, Path(pattern=f"^{NAMESPACE_PATTERN}$")]) -> str:
    return ns


EngineDep = Annotated[Engine, Depends(_engine)]
ReadAccess = Annotated[Role, Depends(authenticate)]
WriteAccess = Annotated[Role, Depends(authorize_write)]
ReadCall = Annotated[tuple[Engine, ReadRequest], Depends(_read_call)]
WriteCall = Annotated[tuple[Engine, WriteRequest], Depends(_write_call)]
RememberBody = Annotated[RememberRequest, Depends(_remember_body)]
RecallBody = Annotated[RecallRequest, Depends(_recall_body)]
PreviewBody = Annotated[PreviewRequest, Depends(_preview_body)]
PinBody = Annotated[PinRequest, Depends(_pin_body)]
SlotId = Annotated[int, Depends(_slot)]
NamespaceName = Annotated[str, Depends(_namespace)]
