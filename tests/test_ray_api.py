"""The HTTP contract of the Ray app (python -m service.ray, 2 shards on a local Ray cluster)
against `python -m service`, both real servers on 127.0.0.1 (tests/ray_servers.py): the same
OpenAPI document, the same answers to the same reads and writes (up to slot ids, which are
global on the Ray app), the same errors (test_api's BAD_REQUESTS, auth, slots, namespaces,
limits), plus what only the Ray app has: per-shard /stats and /snapshot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.conftest import D, M
from tests.ray_servers import SHARDS, C, Server, namespace_on
from tests.test_api import BAD_REQUESTS, ROW
from tests.test_auth import READ_KEY, UNAUTHORIZED
from tests.test_e2e import REPO

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(params=["single", "ray"])
def server(request: pytest.FixtureRequest) -> Server:
    """Each contract test runs against both servers."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def rows(n: int, seed: int) -> list[list[float]]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, D, generator=g).tolist()


def writes(c: httpx.Client) -> int:
    return int(c.get("/stats").json()["writes"])


# --------------------------------------------------------------------------- same answers


def test_reads_answer_as_one_process(ray_server: Server, single_server: Server) -> None:
    """Ten one-item writes (the Ray app spreads them over both shards), then reads of several
    queries, top_k up to 5, twice: the same hits in the same order, scores, counts (sequential
    within a request, across shards), reconstructions and payloads, slot ids mapped."""
    x = rows(10, seed=1)
    slot_of: dict[int, int] = {}  # ray slot -> single slot
    with ray_server.client() as ray, single_server.client() as one:
        for i, item in enumerate(x):
            body: dict[str, Any] = {"items": [item]}
            if i % 3 == 0:
                body["payloads"] = [{"i": i}]
            a, b = ray.post("/write", json=body), one.post("/write", json=body)
            assert a.status_code == b.status_code == 200
            assert a.json()["used"] == b.json()["used"]
            slot_of[a.json()["slots"][0]] = b.json()["slots"][0]
        assert {s // C for s in slot_of} == set(range(SHARDS))  # both shards hold some
        queries = [x[2], x[7], x[2], rows(1, seed=99)[0], x[0]]
        for body in (
            {"queries": queries, "top_k": 5},
            {"queries": queries, "top_k": 3, "reconstruct": False},
            {"queries": queries[:2], "top_k": 5, "min_score": 0.9},
            {"queries": queries[:2], "top_k": 2, "namespace": "default", "rescore": 4},
        ):
            a, b = ray.post("/read", json=body), one.post("/read", json=body)
            assert a.status_code == b.status_code == 200
            assert "x-mt-missing-shards" not in a.headers
            for hits_a, hits_b in zip(a.json()["results"], b.json()["results"], strict=True):
                assert [slot_of[h["slot"]] for h in hits_a] == [h["slot"] for h in hits_b]
                for ha, hb in zip(hits_a, hits_b, strict=True):
                    assert ha["count"] == hb["count"]
                    assert ha["score"] == pytest.approx(hb["score"], abs=1e-5)
                    assert ha["code_score"] == pytest.approx(hb["code_score"], abs=1e-5)
                    assert ha.get("payload") == hb.get("payload")
                    if hb["reconstruction"] is None:
                        assert ha["reconstruction"] is None
                    else:
                        assert ha["reconstruction"] == pytest.approx(hb["reconstruction"], abs=1e-5)
        sa, sb = ray.get("/stats").json(), one.get("/stats").json()
        for key in ("capacity", "used", "reads", "hits", "misses", "writes", "evictions"):
            assert sa[key] == sb[key], key
        assert sa["counts"]["sum"] == sb["counts"]["sum"]


def test_same_openapi_document(ray_server: Server, single_server: Server) -> None:
    with ray_server.client() as ray, single_server.client() as one:
        assert ray.get("/openapi.json").json() == one.get("/openapi.json").json()


# --------------------------------------------------------------------------- same errors


def test_probes_and_keys(server: Server) -> None:
    with server.client(key=None) as anon, server.client(key=READ_KEY) as reader:
        assert anon.get("/healthz").json() == {"status": "ok"}
        assert anon.get("/readyz").json() == {"status": "ready"}
        r = anon.get("/stats")
        assert r.status_code == 401
        assert r.json() == {"detail": "missing API key"}
        assert r.headers["www-authenticate"] == UNAUTHORIZED
        assert reader.get("/stats").status_code == 200
        r = reader.post("/write", json={"items": [ROW]})
        assert r.status_code == 403
        assert r.json() == {"detail": "this API key is read-only"}


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS if "capacity" not in case[-1]],
)
def test_bad_requests(http: httpx.Client, path: str, body: Any, status: int, detail: str) -> None:
    before = writes(http)
    if body is None:
        r = http.post(path)
    elif isinstance(body, str):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert r.status_code == status
    assert r.json() == {"detail": detail}
    assert writes(http) == before


def test_other_refusals(http: httpx.Client) -> None:
    total = SHARDS * C
    cases: list[tuple[str, str, Any, int, str]] = [
        ("GET", f"/slots/{total}", None, 404, f"slot {total} is out of range [0, {total})"),
        ("GET", f"/slots/{total - 1}", None, 404, f"slot {total - 1} is not occupied"),
        ("DELETE", f"/slots/{total - 1}", None, 404, f"slot {total - 1} is not occupied"),
        ("DELETE", "/namespaces/nope", None, 404, "namespace 'nope' holds no slot"),
        ("GET", "/nope", None, 404, "Not Found"),
        ("PUT", "/write", None, 405, "Method Not Allowed"),
    ]
    for method, path, body, status, detail in cases:
        r = http.request(method, path, json=body)
        assert (r.status_code, r.json()) == (status, {"detail": detail}), path
    r = http.get("/slots/abc")
    assert r.status_code == 422 and r.json()["detail"].startswith("path parameter i: expected")
    r = http.post("/remember", json={"texts": ["hello"]})
    assert r.status_code == 409
    assert "is not a text codec" in r.json()["detail"]
    r = http.post(
        "/write", content=json.dumps({"items": [ROW]}), headers={"content-type": "text/plain"}
    )
    assert r.status_code == 422
    big = json.dumps({"items": [[0.123456789] * D] * 8, "pad": "x" * 70_000})
    r = http.post("/write", content=big, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()) == (
        413,
        {"detail": "request body too large: the limit is 65536 bytes"},
    )


# --------------------------------------------------------------------------- slots, namespaces


def test_slot_and_namespace_routes(server: Server, http: httpx.Client) -> None:
    ns = namespace_on(1, "slots-")  # the Ray app keeps it on shard 1
    x = rows(3, seed=3)
    r = http.post(
        "/write", json={"items": x, "mode": "each", "namespace": ns, "texts": ["a", "b", "c"]}
    )
    assert r.status_code == 200
    slots = r.json()["slots"]
    if server.name == "ray":
        assert all(s // C == 1 for s in slots)  # namespace hash: one shard
    r = http.get(f"/slots/{slots[1]}")
    assert r.status_code == 200
    body = r.json()
    assert (body["slot"], body["namespace"], body["text"], body["pinned"]) == (
        slots[1],
        ns,
        "b",
        False,
    )
    assert len(body["code"]) == M and len(body["reconstruction"]) == D
    r = http.post(f"/slots/{slots[1]}/pin", json={"pinned": True})
    assert r.status_code == 200 and r.json()["pinned"] is True and r.json()["slot"] == slots[1]
    r = http.get("/namespaces")
    assert r.json()["namespaces"][ns] == {"used": 3, "pinned": 1, "count_sum": 0}
    r = http.post("/read", json={"queries": [x[0]], "namespace": ns, "reconstruct": False})
    [[hit]] = r.json()["results"]
    assert (hit["slot"], hit["count"], hit["text"]) == (slots[0], 1, "a")
    r = http.post("/evictions/preview", json={"n": 1, "namespace": ns})
    assert r.status_code == 200 and r.json()["evicted"] == []
    used = http.get("/stats").json()["used"]
    r = http.delete(f"/slots/{slots[2]}")
    assert r.json() == {"slot": slots[2], "used": used - 1}
    r = http.get(f"/slots/{slots[2]}")
    assert (r.status_code, r.json()) == (404, {"detail": f"slot {slots[2]} is not occupied"})
    r = http.delete(f"/namespaces/{ns}")
    assert r.status_code == 200
    assert r.json() == {"namespace": ns, "forgotten": slots[:2], "used": used - 3}
    assert ns not in http.get("/namespaces").json()["namespaces"]


def test_read_only_views(http: httpx.Client) -> None:
    used = http.get("/stats").json()["used"]
    r = http.get("/slots", params={"order": "count", "limit": 5})
    assert r.status_code == 200
    page = r.json()
    assert page["total"] == used and len(page["slots"]) == min(5, used)
    counts = [s["count"] for s in page["slots"]]
    assert counts == sorted(counts, reverse=True)
    r = http.get("/evictions/next")
    assert r.status_code == 200 and r.json()["evicted"] == [] and len(r.json()["slots"]) == 1
    assert http.get("/codec").json()["d"] == D
    r = http.get("/metrics")
    assert r.status_code == 200 and "mt_bank_capacity" in r.text


# --------------------------------------------------------------------------- the Ray app's own


def test_stats_and_snapshot_per_shard(ray_server: Server, single_server: Server) -> None:
    with ray_server.client() as ray, single_server.client() as one:
        sa, sb = ray.get("/stats").json(), one.get("/stats").json()
        assert set(sa) == set(sb) | {"shards"}
        assert [s["shard"] for s in sa["shards"]] == list(range(SHARDS))
        assert all(s["ready"] and s["capacity"] == C for s in sa["shards"])
        assert [s["first_slot"] for s in sa["shards"]] == [i * C for i in range(SHARDS)]
        assert sum(s["used"] for s in sa["shards"]) == sa["used"]
        assert sum(s["reads"] for s in sa["shards"]) == sa["reads"]
        r = ray.post("/snapshot")
        assert r.status_code == 200
        snap = r.json()
        assert Path(snap["path"]) == ray_server.snapshot_dir
        assert [s["shard"] for s in snap["shards"]] == list(range(SHARDS))
        for s in snap["shards"]:
            path = Path(s["path"])
            assert path.parent == ray_server.snapshot_dir / f"shard-{s['shard']}"
            assert path.is_file() and path.stat().st_size == s["bytes"]
        assert snap["bytes"] == sum(s["bytes"] for s in snap["shards"])
        assert "shards" not in one.post("/snapshot").json()
        stats = ray.get("/stats").json()
        assert all(s["last_snapshot"] is not None for s in stats["shards"])


def test_the_single_server_does_not_import_ray() -> None:
    code = (
        "import sys, service.__main__, service.app, service.engine; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    out = subprocess.run(
        [sys.executable, "-m", "service.ray", "--help"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "--shards" in out.stdout
