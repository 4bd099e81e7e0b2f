"""What the routes need, declared once as `Annotated` dependencies (the style of
fastapi/full-stack-fastapi-template). They are module-level: what differs between apps (the
engine, the settings and keys, the request limits) is read from `request.app.state`, which
create_app fills.

- EngineDep: the app's engine once it is ready; NotReady (503) before that and after a failure.
- ReadAccess / WriteAccess: the caller's role from its API key (service/auth.py): 401 without a
  valid key, 403 for a read-only key on a route that changes state.
- WriteBody / ReadBody: the request body, validated against the app's request models
  (`app.state.models`: WriteRequest / ReadRequest with this app's MT_MAX_ITEMS, MT_MAX_TOP_K and
  the weights' d, see schemas.request_models). FastAPI still reads the body and answers for
  malformed JSON and a missing body; the body parameter is documented as a reference to the
  WriteRequest / ReadRequest schema, which create_app's OpenAPI document takes from the same
  models, so the document states this app's limits. Validation errors are FastAPI's own (same
  error list, located in "body"), so errors.py words them as before.

A dependency that raises ends the request, so a route declares its access first, then the engine,
then the body: 401 / 403 come before 503, and 503 before 422, as when FastAPI validated the body
itself after the dependencies.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Body, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.constants import REF_TEMPLATE
from pydantic import BaseModel, ValidationError, WithJsonSchema

from model.errors import NotReady
from service.auth import Role, authenticate, authorize_write
from service.engine import Engine
from service.schemas import ReadRequest, RequestModels, WriteRequest

M = TypeVar("M", bound=BaseModel)


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


def _schema_of(model: type[BaseModel]) -> WithJsonSchema:
    """Document a body as `model`'s schema, by reference: the app's OpenAPI document holds the
    schema of its own model of that name."""
    return WithJsonSchema({"$ref": REF_TEMPLATE.format(model=model.__name__)})


# JSON bodies that FastAPI reads (malformed JSON, no body: its 422s) but does not validate.
_WriteJSON = Annotated[Any, Body(), _schema_of(WriteRequest)]
_ReadJSON = Annotated[Any, Body(), _schema_of(ReadRequest)]


def _validated(model: type[M], body: Any) -> M:
    """`body` as `model`, validated as FastAPI validates a body (the same errors, located in
    "body", raised as RequestValidationError: errors.py turns them into the 422)."""
    try:
        return model.model_validate(body, from_attributes=True)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise RequestValidationError(errors, body=body) from None


async def _write_body(request: Request, body: _WriteJSON) -> WriteRequest:
    models: RequestModels = request.app.state.models
    return _validated(models.write, body)


async def _read_body(request: Request, body: _ReadJSON) -> ReadRequest:
    models: RequestModels = request.app.state.models
    return _validated(models.read, body)


EngineDep = Annotated[Engine, Depends(_engine)]
ReadAccess = Annotated[Role, Depends(authenticate)]
WriteAccess = Annotated[Role, Depends(authorize_write)]
WriteBody = Annotated[WriteRequest, Depends(_write_body)]
ReadBody = Annotated[ReadRequest, Depends(_read_body)]
