"""The HTTP surface against malformed and hostile requests (issue 10), through the app's lifespan
(TestClient): every refusal has its documented status and exact detail, what a detail repeats of
the request is clipped, and the bank is unchanged afterwards."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.settings import MIB, Settings
from tests.conftest import D, running
from tests.test_api import bank_facts

Items = Callable[..., list[list[float]]]
ROW = [0.5] * D
ROW_JSON = json.dumps(ROW)
JSON = {"content-type": "application/json"}
NOT_JSON = "request body is not valid JSON: "
SLOT_RULE = (
    "path parameter i: expected plain decimal digits (no sign, spaces, underscores or leading "
    "zeros; at most 18), got "
)
MAX_ERROR_BYTES = 2048


@pytest.fixture
def surface(make_settings: Callable[..., Settings], items: Items) -> Iterator[TestClient]:
    """A server with three occupied slots (one read counted), capacity 16."""
    with running(make_settings(capacity=16, max_items=16, max_top_k=16)) as c:
        assert c.post("/write", json={"items": items(3), "mode": "each"}).status_code == 200
        assert c.post("/read", json={"queries": items(1)}).status_code == 200
        yield c


def state(c: TestClient) -> dict[str, Any]:
    """What a refused request must not change: the counters and every slot's count."""
    return {**bank_facts(c), "slots": [c.get(f"/slots/{i}").json() for i in range(3)]}


def refused(c: TestClient, method: str, path: str, status: int, detail: str, **kw: Any) -> None:
    before = state(c)
    r = c.request(method, path, **kw)
    assert (r.status_code, r.json()) == (status, {"detail": detail})
    assert len(r.content) < MAX_ERROR_BYTES
    assert state(c) == before


BODIES: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    # (id, path, raw body, headers, status, detail)
    ("100k nested brackets", "/write", b"[" * 100_000, JSON, 422, NOT_JSON + "nested too deeply"),
    (
        "100k nested brackets in a field",
        "/read",
        b'{"queries": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        JSON,
        422,
        NOT_JSON + "nested too deeply",
    ),
    (
        "5000-digit integer",
        "/write",
        b'{"items": [[' + b"1" * 5000 + b"]]}",
        JSON,
        422,
        NOT_JSON + "an integer with more than 4300 digits",
    ),
    (
        "5000-digit top_k",
        "/read",
        f'{{"queries": [{ROW_JSON}], "top_k": {"9" * 5000}}}'.encode(),
        JSON,
        422,
        NOT_JSON + "an integer with more than 4300 digits",
    ),
    (
        "gzip body",
        "/write",
        gzip.compress(json.dumps({"items": [ROW]}).encode()),
        {**JSON, "content-encoding": "gzip"},
        415,
        "Content-Encoding 'gzip' is not supported: send the body uncompressed",
    ),
    (
        "Content-Encoding gzip on a plain body",
        "/read",
        json.dumps({"queries": [ROW]}).encode(),
        {**JSON, "content-encoding": "gzip"},
        415,
        "Content-Encoding 'gzip' is not supported: send the body uncompressed",
    ),
    (
        "long Content-Encoding",
        "/write",
        b"{}",
        {**JSON, "content-encoding": "x" * 5000},
        415,
        f"Content-Encoding '{'x' * 64}...' is not supported: send the body uncompressed",
    ),
    (
        "invalid UTF-8",
        "/write",
        b'{"items": [' + ROW_JSON.encode() + b'], "mode": "\xff"}',
        JSON,
        422,
        NOT_JSON + f"not UTF-8 (invalid byte at position {len(ROW_JSON) + 23})",
    ),
    (
        "UTF-16",
        "/write",
        json.dumps({"items": [ROW]}).encode("utf-16"),
        JSON,
        422,
        NOT_JSON + "not UTF-8 (invalid byte at position 0)",
    ),
    (
        "UTF-8 byte order mark",
        "/write",
        b"\xef\xbb\xbf" + json.dumps({"items": [ROW]}).encode(),
        JSON,
        422,
        NOT_JSON + "Unexpected UTF-8 BOM (decode using utf-8-sig) at position 0",
    ),
    ("binary", "/read", bytes(range(1, 32)), JSON, 422, NOT_JSON + "Expecting value at position 0"),
    (
        "trailing data",
        "/write",
        json.dumps({"items": [ROW]}).encode() + b" {}",
        JSON,
        422,
        NOT_JSON + f"Extra data at position {len(json.dumps({'items': [ROW]})) + 1}",
    ),
    (
        "duplicate key",
        "/write",
        f'{{"items": "junk", "items": [{ROW_JSON}]}}'.encode(),
        JSON,
        422,
        "request body has a duplicate key 'items'",
    ),
    (
        "duplicate key, both valid",
        "/write",
        f'{{"items": [{ROW_JSON}], "mode": "each", "mode": "mean"}}'.encode(),
        JSON,
        422,
        "request body has a duplicate key 'mode'",
    ),
    (
        "duplicate key in a nested object",
        "/read",
        b'{"queries": [{"a": 1, "a": 2}]}',
        JSON,
        422,
        "request body has a duplicate key 'a'",
    ),
    (
        "200 kB duplicate key",
        "/write",
        ('{"' + "k" * 200_000 + '": 1, "' + "k" * 200_000 + '": 2}').encode(),
        JSON,
        422,
        f"request body has a duplicate key '{'k' * 64}...'",
    ),
    (
        "200 kB unknown field",
        "/write",
        json.dumps({"items": [ROW], "f" * 200_000: 1}).encode(),
        JSON,
        422,
        f"{'f' * 64}...: unknown field",
    ),
    (
        "five 50 kB unknown fields",
        "/read",
        json.dumps({"queries": [ROW], **{str(n) * 50_000: n for n in range(5)}}).encode(),
        JSON,
        422,
        "; ".join(f"{str(n) * 64}...: unknown field" for n in range(3)) + "; and 2 more",
    ),
    (
        "200 kB mode",
        "/write",
        json.dumps({"items": [ROW], "mode": "m" * 200_000}).encode(),
        JSON,
        422,
        "mode: Input should be 'mean' or 'each'",
    ),
    (
        "200 kB string for a number",
        "/write",
        json.dumps({"items": [["s" * 200_000, *ROW[1:]]]}).encode(),
        JSON,
        422,
        "items[0][0]: Input should be a valid number",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "detail"),
    [pytest.param(*case[1:], id=case[0]) for case in BODIES],
)
def test_malformed_bodies_are_refused_and_change_nothing(
    surface: TestClient, path: str, body: bytes, headers: dict[str, str], status: int, detail: str
) -> None:
    refused(surface, "POST", path, status, detail, content=body, headers=headers)


def test_identity_encoding_and_json_subtypes_are_read(surface: TestClient) -> None:
    for headers in (
        {**JSON, "content-encoding": "identity"},
        {"content-type": "application/json; charset=utf-8"},
        {"content-type": "application/merge-patch+json"},
    ):
        r = surface.post("/read", content=json.dumps({"queries": [ROW]}), headers=headers)
        assert r.status_code == 200, r.text


SLOT_IDS = ["+1", "%201", "1%20", "00001", "01", "1_0", "-1", "-0", "1.0", "1e1", "0x1", "%D9%A1"]


@pytest.mark.parametrize("text", SLOT_IDS)
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_slot_ids_are_plain_decimal_digits(surface: TestClient, method: str, text: str) -> None:
    from urllib.parse import unquote

    refused(surface, method, f"/slots/{text}", 422, SLOT_RULE + repr(unquote(text)))


def test_slot_1_0_is_not_slot_10(make_settings: Callable[..., Settings], items: Items) -> None:
    with running(make_settings(capacity=16, max_items=16)) as c:
        c.post("/write", json={"items": items(11), "mode": "each"})
        r = c.delete("/slots/1_0")
        assert (r.status_code, r.json()) == (422, {"detail": SLOT_RULE + "'1_0'"})
        assert c.get("/slots/10").status_code == 200
        assert bank_facts(c)["used"] == 11


def test_long_slot_ids(surface: TestClient) -> None:
    refused(surface, "GET", "/slots/" + "9" * 19, 422, SLOT_RULE + repr("9" * 19))
    refused(surface, "GET", "/slots/" + "7" * 5000, 422, SLOT_RULE + repr("7" * 64 + "..."))
    r = surface.get("/slots/" + "9" * 18)  # 18 digits: a slot id, out of range
    assert (r.status_code, r.json()) == (
        404,
        {"detail": f"slot {'9' * 18} is out of range [0, 16)"},
    )
    assert surface.get("/slots/0").status_code == 200  # "0" is plain digits
    assert surface.get("/slots/2").json()["slot"] == 2


def answer_limit_detail(queries: int, hits: int, what: str, size: int, limit: int) -> str:
    return (
        f"read answer too large: {queries} queries x {hits} hits with {what} could take {size} "
        f"bytes, over the limit of {limit} bytes (MT_MAX_RESPONSE_BYTES); send fewer queries, a "
        "smaller top_k or reconstruct=false"
    )


def test_read_answer_limit(make_settings: Callable[..., Settings], items: Items) -> None:
    limit = 64 * 1024
    with running(make_settings(capacity=16, max_top_k=100, max_response_bytes=limit)) as c:
        c.post("/write", json={"items": items(16), "mode": "each"})
        c.post("/read", json={"queries": items(1)})
        before = {**bank_facts(c), "counts": c.get("/stats").json()["counts"]}
        # 8 queries x min(top_k 100, capacity 16) hits x (128 + 16 * 64) bytes + brackets
        size = 16 + 8 * (4 + 16 * (128 + 16 * D))
        r = c.post("/read", json={"queries": items(8), "top_k": 100})
        assert r.status_code == 413
        assert r.json() == {
            "detail": answer_limit_detail(8, 16, f"reconstructions of {D} values", size, limit)
        }
        size = 16 + 60 * (4 + 16 * 128)
        r = c.post("/read", json={"queries": items(60), "top_k": 16, "reconstruct": False})
        assert (r.status_code, r.json()) == (
            413,
            {"detail": answer_limit_detail(60, 16, "no reconstructions", size, limit)},
        )
        assert {**bank_facts(c), "counts": c.get("/stats").json()["counts"]} == before
        # the bound is a bound: the largest answers under it are smaller than it says
        for queries, reconstruct in ((3, True), (31, False)):
            body = {"queries": items(queries), "top_k": 16, "reconstruct": reconstruct}
            r = c.post("/read", json=body)
            assert r.status_code == 200
            assert sum(len(h) for h in r.json()["results"]) == queries * 16
            bound = 16 + queries * (4 + 16 * (128 + (16 * D if reconstruct else 0)))
            assert len(r.content) <= bound <= limit


def test_the_issue_s_78_mb_read_is_refused_by_default(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    settings = make_settings(capacity=128)
    assert settings.max_response_bytes == 32 * MIB
    with running(settings) as c:
        c.post("/write", json={"items": items(1)})
        before = bank_facts(c)
        r = c.post("/read", json={"queries": items(1024), "top_k": 100})
        size = 16 + 1024 * (4 + 100 * (128 + 16 * D))
        assert r.status_code == 413
        assert r.json() == {
            "detail": answer_limit_detail(
                1024, 100, f"reconstructions of {D} values", size, 32 * MIB
            )
        }
        assert bank_facts(c) == before
        r = c.post("/read", json={"queries": items(1024), "top_k": 100, "reconstruct": False})
        assert r.status_code == 200  # 1024 x 100 hits without reconstructions: 9.8 MB bound


def test_openapi_documents_the_new_answers(surface: TestClient) -> None:
    doc = surface.get("/openapi.json").json()
    for path, method in (("/write", "post"), ("/read", "post")):
        op = doc["paths"][path][method]
        assert {"413", "415", "422"} <= set(op["responses"])
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{path[1:].title()}Request"}
        assert op["requestBody"]["required"] is True
    [param] = doc["paths"]["/slots/{i}"]["get"]["parameters"]
    assert param["schema"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 10**18 - 1,
        "title": "I",
    }
