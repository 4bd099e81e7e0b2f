"""The HTTP API through the app's lifespan (TestClient): status, fields, exact error details."""

from __future__ import annotations

import json
import math
import resource
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from model.checkpoint import load_idrp
from service.app import create_app
from service.settings import Settings
from tests.conftest import D, M, running

Items = Callable[..., list[list[float]]]


def bank_facts(client: TestClient) -> dict[str, Any]:
    s = client.get("/stats").json()
    return {k: s[k] for k in ("used", "reads", "hits", "misses", "writes", "evictions")}


# ------------------------------------------------------------------------------- ops routes


def test_healthz_and_readyz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready"}


def test_not_ready_when_the_engine_cannot_start(
    make_settings: Callable[..., Settings], tmp_path: Path, items: Items
) -> None:
    settings = make_settings(weights=tmp_path / "missing.safetensors")
    with TestClient(create_app(settings)) as c:
        failed = {"detail": "the engine failed to start; see the server log"}
        deadline = time.monotonic() + 30
        while (r := c.get("/readyz")).json() != failed:  # 503 "service is starting" first
            assert r.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.01)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert c.get("/healthz").status_code == 200
        r = c.post("/write", json={"items": items(1)})
        assert r.status_code == 503
        assert r.json() == {"detail": "service is not available (failed)"}


def test_stats_fields(client: TestClient, weights_file: Path) -> None:
    model = load_idrp(weights_file)
    r = client.get("/stats")
    assert r.status_code == 200
    s = r.json()
    assert s["capacity"] == 64 and s["used"] == 0
    assert (s["d"], s["m"]) == (D, M)
    assert s["compression_ratio"] == D / M
    assert s["bytes_ratio"] == D * 4 / (M * 4)
    assert s["code_bytes"] == M * 4
    assert s["device"] == "cpu"
    assert s["model"] == "tiny-m16"
    assert s["fingerprint"] == model.fingerprint
    assert s["bank_dtype"] == "float32"
    # codes (64 x 16 float32) + counts, last_write, last_access (int32) + occupied + counters
    assert s["bank_bytes"] == 64 * M * 4 + 64 * (3 * 4 + 1) + 7 * 8
    assert s["cache_bytes"] == 64 * 4  # one float32 inverse norm per slot
    assert s["meta_bytes"] == 0  # no namespace, pin or record used yet: none allocated
    assert {k: s[k] for k in ("reads", "hits", "misses", "writes", "evictions")} == dict.fromkeys(
        ("reads", "hits", "misses", "writes", "evictions"), 0
    )
    assert s["counts"] == {"min": 0, "mean": 0.0, "max": 0, "sum": 0}
    assert s["last_snapshot"] is None
    assert s["recovery"] == {"snapshot": None, "replayed": 0, "warnings": []}


def test_int8_bank_reports_its_bytes_ratio(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    with running(make_settings(bank_dtype="int8")) as c:
        assert c.post("/write", json={"items": items(1)}).status_code == 200
        s = c.get("/stats").json()
        assert s["bank_dtype"] == "int8"
        assert s["bytes_ratio"] == D * 4 / M
        assert s["code_bytes"] == M
        assert c.post("/read", json={"queries": items(1)}).json()["results"][0][0]["slot"] == 0


# ------------------------------------------------------------------------------- write / read


def test_write_then_read_counts_up(client: TestClient, items: Items) -> None:
    x = items(1)
    r = client.post("/write", json={"items": x})
    assert r.status_code == 200
    assert r.json() == {"slots": [0], "evicted": [], "used": 1}
    for expected_count in (1, 2):
        r = client.post("/read", json={"queries": x})
        assert r.status_code == 200
        [[hit]] = r.json()["results"]
        assert hit["slot"] == 0
        assert hit["score"] == pytest.approx(1.0, abs=1e-5)
        assert hit["count"] == expected_count
        assert len(hit["reconstruction"]) == D
    slot = client.get("/slots/0").json()
    assert hit["reconstruction"] == pytest.approx(slot["reconstruction"], abs=1e-5)
    assert bank_facts(client) == {
        "used": 1,
        "reads": 2,
        "hits": 2,
        "misses": 0,
        "writes": 1,
        "evictions": 0,
    }


def test_mean_and_each(client: TestClient, items: Items) -> None:
    x = items(3)
    r = client.post("/write", json={"items": x, "mode": "each"})
    assert r.json() == {"slots": [0, 1, 2], "evicted": [], "used": 3}
    r = client.post("/write", json={"items": x})  # mode defaults to "mean": one slot
    assert r.json() == {"slots": [3], "evicted": [], "used": 4}
    mean_code = client.get("/slots/3").json()["code"]
    codes = [client.get(f"/slots/{i}").json()["code"] for i in range(3)]
    expected = [sum(c[j] for c in codes) / 3 for j in range(M)]
    assert mean_code == pytest.approx(expected, abs=1e-5)
    assert client.get("/stats").json()["writes"] == 4


def test_top_k_best_first_without_reconstruction(client: TestClient, items: Items) -> None:
    x = items(5)
    client.post("/write", json={"items": x, "mode": "each"})
    r = client.post("/read", json={"queries": [x[2]], "top_k": 3, "reconstruct": False})
    assert r.status_code == 200
    [hits] = r.json()["results"]
    assert len(hits) == 3
    assert hits[0]["slot"] == 2 and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h["count"] == 1 and h["reconstruction"] is None for h in hits)
    r = client.post("/read", json={"queries": [x[2]], "top_k": 10})  # more than stored
    assert [h["slot"] for h in r.json()["results"][0]][:1] == [2]
    assert len(r.json()["results"][0]) == 5


def test_min_score_miss_counts_nothing(client: TestClient, items: Items) -> None:
    x = items(2)
    client.post("/write", json={"items": x[:1]})
    before = client.get("/slots/0").json()["count"]
    r = client.post("/read", json={"queries": x[1:], "min_score": 1.0})
    assert r.status_code == 200
    assert r.json() == {"results": [[]]}
    assert client.get("/slots/0").json()["count"] == before
    facts = bank_facts(client)
    assert (facts["reads"], facts["hits"], facts["misses"]) == (1, 0, 1)


def test_read_of_an_empty_bank_is_a_miss(client: TestClient, items: Items) -> None:
    r = client.post("/read", json={"queries": items(2)})
    assert r.status_code == 200
    assert r.json() == {"results": [[], []]}


def test_several_queries_one_list_each(client: TestClient, items: Items) -> None:
    x = items(3)
    client.post("/write", json={"items": x, "mode": "each"})
    r = client.post("/read", json={"queries": [x[2], x[0], x[2]], "reconstruct": False})
    results = r.json()["results"]
    assert [[h["slot"] for h in hits] for hits in results] == [[2], [0], [2]]
    assert [hits[0]["count"] for hits in results] == [1, 1, 2]  # sequential within the request


# ------------------------------------------------------------------------------- slots / snapshot


def test_get_and_delete_slot(client: TestClient, items: Items) -> None:
    client.post("/write", json={"items": items(2), "mode": "each"})
    r = client.get("/slots/1")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {
        "slot",
        "count",
        "last_write",
        "last_access",
        "code",
        "reconstruction",
        "namespace",
        "pinned",
        "text",
        "payload",
    }
    assert body["slot"] == 1 and body["count"] == 0 and body["last_access"] == 0
    assert (body["namespace"], body["pinned"], body["text"], body["payload"]) == (
        "default",
        False,
        None,
        None,
    )
    assert len(body["code"]) == M and len(body["reconstruction"]) == D
    r = client.delete("/slots/1")
    assert r.status_code == 200
    assert r.json() == {"slot": 1, "used": 1}
    r = client.get("/slots/1")
    assert r.status_code == 404
    assert r.json() == {"detail": "slot 1 is not occupied"}
    r = client.delete("/slots/1")
    assert r.status_code == 404
    assert r.json() == {"detail": "slot 1 is not occupied"}
    r = client.get("/slots/64")
    assert r.status_code == 404
    assert r.json() == {"detail": "slot 64 is out of range [0, 64)"}
    r = client.delete("/slots/abc")
    assert r.status_code == 422
    assert r.json() == {
        "detail": "path parameter i: expected plain decimal digits (no sign, spaces, underscores "
        "or leading zeros; at most 18), got 'abc'"
    }
    assert bank_facts(client)["used"] == 1


def test_snapshot_writes_a_file(client: TestClient, items: Items, settings: Settings) -> None:
    client.post("/write", json={"items": items(2), "mode": "each"})
    r = client.post("/snapshot")
    assert r.status_code == 200
    snap = r.json()
    assert set(snap) == {"path", "bytes", "seconds", "lsn", "sha256", "created_at"}
    path = Path(snap["path"])
    assert path.parent == settings.snapshot_dir
    assert path.is_file() and path.stat().st_size == snap["bytes"]
    assert snap["lsn"] == 1 and snap["seconds"] >= 0
    last = client.get("/stats").json()["last_snapshot"]
    assert last == {
        "time": snap["created_at"],
        "path": snap["path"],
        "bytes": snap["bytes"],
        "lsn": 1,
    }


def test_metrics(client: TestClient, items: Items) -> None:
    client.post("/write", json={"items": items(1)})
    client.post("/read", json={"queries": items(1)})
    client.get("/slots/9")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'mt_http_requests_total{method="POST",route="/write",status="200"} 1.0' in text
    assert 'mt_http_requests_total{method="GET",route="/slots/{i}",status="404"} 1.0' in text
    assert 'mt_http_request_duration_seconds_count{method="POST",route="/read"} 1.0' in text
    for line in (
        "mt_ready 1.0",
        "mt_bank_used 1.0",
        "mt_bank_capacity 64.0",
        f"mt_bank_cache_bytes {64 * 4:.1f}",
        "mt_bank_writes_total 1.0",
        "mt_bank_hits_total 1.0",
        "mt_bank_misses_total 0.0",
        "mt_bank_evictions_total 0.0",
        "mt_bank_reads_total 1.0",
    ):
        assert line in text.splitlines()


def test_openapi_carries_limits_and_examples(make_settings: Callable[..., Settings]) -> None:
    with running(make_settings(max_items=8, max_top_k=5)) as c:
        doc = c.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert schemas["WriteRequest"]["properties"]["items"]["maxItems"] == 8
    assert schemas["ReadRequest"]["properties"]["top_k"]["maximum"] == 5
    assert schemas["WriteRequest"]["examples"] and schemas["ReadRequest"]["examples"]
    assert doc["paths"]["/write"]["post"]["responses"]["422"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/ErrorResponse"}


# ------------------------------------------------------------------------------- bad input

ROW = [0.5] * D


def _nan_row(value: str) -> str:
    return "[" + ", ".join(["0.5"] * (D - 1) + [value]) + "]"


BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    # (id, path, body (str = raw text), status, detail)
    (
        "short item",
        "/write",
        {"items": [ROW, ROW[:-1]]},
        422,
        "item 1: expected 64 values per item, got 63",
    ),
    (
        "long query",
        "/read",
        {"queries": [[*ROW, 0.5]]},
        422,
        "query 0: expected 64 values per query, got 65",
    ),
    (
        "NaN",
        "/write",
        '{"items": [' + _nan_row("NaN") + "]}",
        422,
        "item 0 contains NaN or infinity",
    ),
    (
        "Infinity",
        "/write",
        '{"items": [' + _nan_row("0.5") + ", " + _nan_row("Infinity") + "]}",
        422,
        "item 1 contains NaN or infinity",
    ),
    (
        "-Infinity query",
        "/read",
        '{"queries": [' + _nan_row("-Infinity") + "]}",
        422,
        "query 0 contains NaN or infinity",
    ),
    (
        "beyond float32",
        "/write",
        {"items": [[1e39] * D]},
        422,
        "item 0 contains a value outside the float32 range (|x| > 3.4e38)",
    ),
    (
        "code not finite",
        "/write",
        {"items": [[1e30] * D]},
        422,
        "item 0 cannot be stored: its code is not finite (values far outside the range the codec "
        "was trained on)",
    ),
    (
        "empty items",
        "/write",
        {"items": []},
        422,
        "items: List should have at least 1 item after validation, not 0",
    ),
    (
        "empty item",
        "/write",
        {"items": [[]]},
        422,
        "items[0]: List should have at least 1 item after validation, not 0",
    ),
    (
        "too many items",
        "/write",
        {"items": [ROW] * 9},
        422,
        "items: List should have at most 8 items after validation, not 9",
    ),
    (
        "too many for each",
        "/write",
        {"items": [ROW] * 8, "mode": "each"},
        422,
        "mode 'each' needs 8 slots, more than the capacity 4",
    ),
    ("items not a list", "/write", {"items": "abc"}, 422, "items: Input should be a valid list"),
    (
        "string number",
        "/write",
        {"items": [["0.5"] * D]},
        422,
        "items[0][0]: Input should be a valid number; items[0][1]: Input should be a valid number; "
        "items[0][2]: Input should be a valid number; and 61 more",
    ),
    (
        "boolean number",
        "/write",
        {"items": [[True, *ROW[1:]]]},
        422,
        "items[0][0]: Input should be a valid number",
    ),
    ("missing items", "/write", {"mode": "each"}, 422, "items: field required"),
    ("unknown field", "/read", {"queries": [ROW], "top-k": 3}, 422, "top-k: unknown field"),
    (
        "bad mode",
        "/write",
        {"items": [ROW], "mode": "sum"},
        422,
        "mode: Input should be 'mean' or 'each'",
    ),
    (
        "top_k 0",
        "/read",
        {"queries": [ROW], "top_k": 0},
        422,
        "top_k: Input should be greater than or equal to 1",
    ),
    (
        "top_k too big",
        "/read",
        {"queries": [ROW], "top_k": 6},
        422,
        "top_k: Input should be less than or equal to 5",
    ),
    (
        "top_k float",
        "/read",
        {"queries": [ROW], "top_k": 2.0},
        422,
        "top_k: Input should be a valid integer",
    ),
    (
        "min_score 2",
        "/read",
        {"queries": [ROW], "min_score": 2},
        422,
        "min_score: Input should be less than or equal to 1",
    ),
    (
        "min_score NaN",
        "/read",
        '{"queries": [' + _nan_row("0.5") + '], "min_score": NaN}',
        422,
        "min_score: Input should be a finite number",
    ),
    (
        "reconstruct string",
        "/read",
        {"queries": [ROW], "reconstruct": "yes"},
        422,
        "reconstruct: Input should be a valid boolean",
    ),
    (
        "JSON array body",
        "/write",
        [ROW],
        422,
        "request body must be a JSON object (Content-Type: application/json)",
    ),
    (
        "not JSON",
        "/write",
        "items=1",
        422,
        "request body is not valid JSON: Expecting value at position 0",
    ),
    (
        "truncated JSON",
        "/read",
        '{"queries": [[0.5, ',
        422,
        "request body is not valid JSON: Expecting value at position 19",
    ),
    ("no body", "/write", None, 422, "request body is required: a JSON object"),
]


@pytest.fixture
def small(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with running(make_settings(capacity=4, max_items=8, max_top_k=5, max_body_bytes=65536)) as c:
        yield c


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_bad_input_is_refused_and_changes_nothing(
    small: TestClient, items: Items, path: str, body: Any, status: int, detail: str
) -> None:
    small.post("/write", json={"items": items(1)})
    small.post("/read", json={"queries": items(1)})
    before = bank_facts(small)
    if body is None:
        r = small.post(path)
    elif isinstance(body, str):
        r = small.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = small.post(path, json=body)
    assert r.status_code == status
    assert r.json() == {"detail": detail}
    assert bank_facts(small) == before


def test_non_json_content_type(small: TestClient) -> None:
    r = small.post(
        "/write", content=json.dumps({"items": [ROW]}), headers={"content-type": "text/plain"}
    )
    assert r.status_code == 422
    assert r.json() == {
        "detail": "request body must be a JSON object (Content-Type: application/json)"
    }
    assert bank_facts(small)["writes"] == 0


def test_body_too_large(small: TestClient) -> None:
    big = json.dumps({"items": [[0.123456789] * D] * 8, "pad": "x" * 70_000})
    r = small.post("/write", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {"detail": "request body too large: the limit is 65536 bytes"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"items": ['
        for _ in range(400):
            yield (json.dumps(ROW) + ",").encode()
        yield b"[0.5]]}"

    r = small.post("/write", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {"detail": "request body too large: the limit is 65536 bytes"}
    assert bank_facts(small)["writes"] == 0


def test_unknown_route_and_method(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404
    assert r.json() == {"detail": "Not Found"}
    r = client.put("/write")
    assert r.status_code == 405
    assert r.json() == {"detail": "Method Not Allowed"}


def test_disk_full_is_507_and_the_bank_is_unchanged(
    client: TestClient, items: Items, settings: Settings
) -> None:
    """A real failed WAL append: RLIMIT_FSIZE caps file growth (EFBIG), no mocks."""
    client.post("/write", json={"items": items(1)})
    before = bank_facts(client)
    wal = settings.snapshot_dir / "wal.log"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (wal.stat().st_size + 16, hard))
        r = client.post("/write", json={"items": items(2, seed=1), "mode": "each"})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert r.status_code == 507
    assert r.json() == {"detail": "insufficient storage: disk full; the request was not applied"}
    assert bank_facts(client) == before
    r = client.post("/write", json={"items": items(1, seed=2)})  # room again: works
    assert r.status_code == 200
    assert r.json()["slots"] == [1]
    assert math.isfinite(
        client.post("/read", json={"queries": items(1)}).json()["results"][0][0]["score"]
    )
