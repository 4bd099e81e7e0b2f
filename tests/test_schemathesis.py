"""Property-based API test: schemathesis generates requests from the app's own OpenAPI document,
valid ones and invalid ones, and checks that no answer is a 5xx and every answer matches the
schema documented for its status.

schemathesis' pytest plugin (`schemathesis.pytest.from_fixture`) does not run under pytest 9
(it reads `request.node._nodeid`), so each operation is driven through its Hypothesis strategy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode, openapi
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from service.app import create_app
from service.settings import Settings

OPERATIONS = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("POST", "/write"),
    ("POST", "/read"),
    ("GET", "/stats"),
    ("POST", "/snapshot"),
    ("GET", "/slots/{i}"),
    ("DELETE", "/slots/{i}"),
    ("POST", "/slots/{i}/pin"),
    ("POST", "/remember"),
    ("POST", "/recall"),
    ("GET", "/namespaces"),
    ("DELETE", "/namespaces/{ns}"),
    ("POST", "/evictions/preview"),
    ("GET", "/metrics"),
    ("GET", "/codec"),
    ("GET", "/slots"),
    ("GET", "/evictions/next"),
]
WITH_INPUT = [
    op
    for op in OPERATIONS
    if op[1]
    in (
        "/write",
        "/read",
        "/slots/{i}",
        "/slots",
        "/evictions/next",
        "/slots/{i}/pin",
        "/remember",
        "/recall",
        "/namespaces/{ns}",
        "/evictions/preview",
    )
]
CASES = [(*op, GenerationMode.POSITIVE) for op in OPERATIONS] + [
    (*op, GenerationMode.NEGATIVE)
    for op in WITH_INPUT  # no input, nothing to make invalid
]
EXAMPLES = 20  # per operation and mode: the whole file runs in well under a minute


@pytest.fixture(scope="module")
def app(weights_file: Path, tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    return create_app(
        Settings(
            weights=weights_file,
            snapshot_dir=tmp_path_factory.mktemp("schemathesis") / "snapshots",
            capacity=16,
            max_items=4,
            max_top_k=4,
            max_body_bytes=64 * 1024,
            snapshot_every_s=0,
            wal_fsync="off",
            torch_threads=1,
            batch_wait_ms=0,
        )
    )


@pytest.fixture
def api_schema(app: FastAPI) -> Iterator[OpenApiSchema]:
    """The schema, with the app's lifespan running and the engine ready. schemathesis' plugin
    ends ASGI lifespans after every test, so each test starts (and recovers) the engine anew."""
    schema = openapi.from_asgi("/openapi.json", app)  # enters the app's lifespan
    with asgi.get_client(app) as client:  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "engine not ready"
            time.sleep(0.01)
    yield schema
    asgi.shutdown_lifespans()


def test_every_operation_is_covered(api_schema: OpenApiSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]
    found = {(op.method.upper(), op.path) for op in operations}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES]
)
def test_no_server_errors_and_answers_match_the_schema(
    api_schema: OpenApiSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case: Case) -> None:
        r = case.call()
        if r.status_code == 503:
            print(
                "DEBUG",
                operation.app.state.engine.state,
                id(operation.app.state.engine),
                operation.app.state.engine.error,
                r.text,
            )
        case.validate_response(r, checks=[not_a_server_error, response_schema_conformance])

    check()
