"""API keys: who may call what, the 401 / 403 answers, and that keys never reach the log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from service.app import create_app
from service.auth import Role, role_of
from service.settings import Settings
from tests.conftest import running
from tests.test_e2e import REPO

WRITE_KEY = "write-key-0123456789"
READ_KEY = "read-key-9876543210"
ROW = [0.5] * 64
UNAUTHORIZED = 'Bearer realm="memorytransit"'


@pytest.fixture
def secured(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with running(make_settings(api_key=WRITE_KEY, read_api_key=READ_KEY)) as c:
        yield c


def x_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


CALLS = {
    "write": ("POST", "/write", {"items": [ROW]}),
    "read": ("POST", "/read", {"queries": [ROW]}),
    "stats": ("GET", "/stats", None),
    "get slot": ("GET", "/slots/0", None),
    "delete slot": ("DELETE", "/slots/0", None),
    "snapshot": ("POST", "/snapshot", None),
    "metrics": ("GET", "/metrics", None),
}
READ_ONLY_OK = ("read", "stats", "get slot", "metrics")
WRITE_ONLY = ("write", "delete slot", "snapshot")


def call(c: TestClient, name: str, headers: dict[str, str]) -> int:
    method, path, body = CALLS[name]
    return c.request(method, path, json=body, headers=headers).status_code


def test_health_and_readiness_need_no_key(secured: TestClient) -> None:
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200


@pytest.mark.parametrize("name", list(CALLS))
def test_no_key_is_401_with_challenge(secured: TestClient, name: str) -> None:
    method, path, body = CALLS[name]
    r = secured.request(method, path, json=body)
    assert r.status_code == 401
    assert r.json() == {"detail": "missing API key"}
    assert r.headers["www-authenticate"] == UNAUTHORIZED


@pytest.mark.parametrize(
    "headers",
    [
        x_key("wrong"),
        bearer("wrong"),
        x_key(WRITE_KEY + "x"),
        {"Authorization": f"Basic {WRITE_KEY}"},
    ],
    ids=["x-api-key", "bearer", "prefix", "basic scheme"],
)
def test_wrong_key_is_401(secured: TestClient, headers: dict[str, str]) -> None:
    r = secured.post("/read", json={"queries": [ROW]}, headers=headers)
    assert r.status_code == 401
    detail = (
        "missing API key"
        if headers.get("Authorization", "").startswith("Basic")
        else ("invalid API key")
    )
    assert r.json() == {"detail": detail}
    assert r.headers["www-authenticate"] == UNAUTHORIZED


@pytest.mark.parametrize("style", [x_key, bearer], ids=["x-api-key", "bearer"])
def test_write_key_may_do_everything(
    secured: TestClient, style: Callable[..., dict[str, str]]
) -> None:
    headers = style(WRITE_KEY)
    assert [call(secured, name, headers) for name in CALLS] == [200] * len(CALLS)


@pytest.mark.parametrize("style", [x_key, bearer], ids=["x-api-key", "bearer"])
def test_read_key_reads_but_may_not_change(
    secured: TestClient, style: Callable[..., dict[str, str]]
) -> None:
    secured.post("/write", json={"items": [ROW]}, headers=x_key(WRITE_KEY))
    headers = style(READ_KEY)
    assert {name: call(secured, name, headers) for name in READ_ONLY_OK} == dict.fromkeys(
        READ_ONLY_OK, 200
    )
    for name in WRITE_ONLY:
        method, path, body = CALLS[name]
        r = secured.request(method, path, json=body, headers=headers)
        assert r.status_code == 403
        assert r.json() == {"detail": "this API key is read-only"}
    stats = secured.get("/stats", headers=headers).json()
    assert (stats["used"], stats["writes"]) == (1, 1)  # the refused calls changed nothing


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"items": []}', {}),
        (b"not json", {}),
        (b"[" * 100_000, {}),
        (b'{"items": 1, "items": 2}', {}),
        (b"\x1f\x8b\x08", {"content-encoding": "gzip"}),
    ],
    ids=["invalid", "not JSON", "nested", "duplicate key", "gzip"],
)
def test_the_key_is_checked_before_the_body_is_read(
    secured: TestClient, body: bytes, headers: dict[str, str]
) -> None:
    headers = {"content-type": "application/json", **headers}
    r = secured.post("/write", content=body, headers=headers)
    assert (r.status_code, r.json()) == (401, {"detail": "missing API key"})
    r = secured.post("/write", content=body, headers={**headers, **x_key(READ_KEY)})
    assert (r.status_code, r.json()) == (403, {"detail": "this API key is read-only"})
    r = secured.delete("/slots/1_0", headers=x_key(READ_KEY))
    assert (r.status_code, r.json()) == (403, {"detail": "this API key is read-only"})


def test_keys_never_reach_the_log(secured: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        secured.post("/read", json={"queries": [ROW]}, headers=x_key("not-" + WRITE_KEY))
        secured.post("/write", json={"items": [ROW]}, headers=bearer(READ_KEY))
        secured.post("/write", json={"items": [ROW]}, headers=bearer(WRITE_KEY))
    assert caplog.records  # something was logged, and none of it holds a key
    assert all(
        WRITE_KEY not in r.getMessage() and READ_KEY not in r.getMessage() for r in caplog.records
    )


def test_settings_show_keys_masked(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(api_key=WRITE_KEY, read_api_key=READ_KEY)
    assert WRITE_KEY not in repr(s) and READ_KEY not in str(s)


def test_no_keys_means_open(client: TestClient) -> None:
    assert client.post("/write", json={"items": [ROW]}).status_code == 200
    assert client.post("/snapshot").status_code == 200
    wrong = {**x_key("anything"), **bearer("anything")}
    assert client.post("/read", json={"queries": [ROW]}, headers=wrong).status_code == 200


def test_openapi_documents_the_keys_only_when_they_are_needed(
    make_settings: Callable[..., Settings],
) -> None:
    open_doc = create_app(make_settings()).openapi()
    secured_doc = create_app(make_settings(api_key=WRITE_KEY)).openapi()
    assert "securitySchemes" not in open_doc.get("components", {})
    assert "security" not in open_doc["paths"]["/read"]["post"]
    schemes = secured_doc["components"]["securitySchemes"]
    assert schemes["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "API key",
    }
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert secured_doc["paths"]["/read"]["post"]["security"] == [
        {"APIKeyHeader": []},
        {"HTTPBearer": []},
    ]


def test_role_of() -> None:
    s = Settings(api_key=SecretStr(WRITE_KEY), read_api_key=SecretStr(READ_KEY))
    assert role_of(s, WRITE_KEY) is Role.write
    assert role_of(s, READ_KEY) is Role.read
    assert role_of(s, "") is None and role_of(s, None) is None and role_of(s, "x") is None
    assert role_of(Settings(), None) is Role.write
    assert role_of(Settings(api_key=SecretStr(WRITE_KEY)), READ_KEY) is None


def test_key_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="MT_READ_API_KEY is set but MT_API_KEY is not"):
        Settings(read_api_key=SecretStr(READ_KEY))
    with pytest.raises(ValidationError, match="MT_READ_API_KEY must differ from MT_API_KEY"):
        Settings(api_key=SecretStr(WRITE_KEY), read_api_key=SecretStr(WRITE_KEY))
    monkeypatch.setenv("MT_API_KEY", "")  # compose passes unset keys through as empty
    assert Settings().api_key is None
    monkeypatch.setenv("MT_API_KEY", WRITE_KEY)
    key = Settings().api_key
    assert key is not None and key.get_secret_value() == WRITE_KEY


BAD_KEYS = [
    ("   ", "the key is empty or only whitespace"),
    ("\t", "the key is empty or only whitespace"),
    (" " + WRITE_KEY, "the key starts or ends with whitespace"),
    (WRITE_KEY + "\n", "the key starts or ends with whitespace"),
    ("tab\there", "the key must be printable ASCII (no control or non-ASCII characters)"),
    ("del\x7fkey", "the key must be printable ASCII (no control or non-ASCII characters)"),
    (
        "cl\u00e9-secr\u00e8te",
        "the key must be printable ASCII (no control or non-ASCII characters)",
    ),
]


@pytest.mark.parametrize("variable", ["MT_API_KEY", "MT_READ_API_KEY"])
@pytest.mark.parametrize(("key", "problem"), BAD_KEYS, ids=[p for _, p in BAD_KEYS])
def test_keys_that_cannot_be_presented_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, key: str, problem: str
) -> None:
    monkeypatch.setenv("MT_API_KEY", WRITE_KEY)
    monkeypatch.setenv(variable, key)
    with pytest.raises(ValidationError) as error:
        Settings()
    [err] = error.value.errors()
    assert err["loc"] == (variable[3:].lower(),)
    assert err["msg"] == f"Value error, {problem}"
    assert "input_value" not in str(error.value)  # nor in a traceback (hide_input_in_errors)


def test_a_key_with_an_inner_space_can_be_presented(
    make_settings: Callable[..., Settings],
) -> None:
    key = "two words"
    with running(make_settings(api_key=key)) as c:
        assert c.get("/stats", headers=x_key(key)).status_code == 200
        assert c.get("/stats", headers=bearer(key)).status_code == 200


def test_the_server_refuses_to_start_with_a_padded_key(tmp_path: Path) -> None:
    """`python -m service` (a real process): exit 2, one line naming the setting, not the key."""
    key = "padded-" + WRITE_KEY + " "
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MT_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
        "MT_API_KEY": WRITE_KEY,
        "MT_READ_API_KEY": key,
    }
    done = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stdout == b""
    assert done.stderr.decode() == (
        "invalid settings: MT_READ_API_KEY: the key starts or ends with whitespace\n"
    )
    assert not (tmp_path / "snapshots").exists()  # refused before anything was touched
