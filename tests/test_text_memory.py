"""Texts, payloads and namespaces over HTTP (issue 11): /write and /read with texts, payloads,
namespaces and pins on any codec; /remember and /recall on a real text codec (the shipped
minilm-bible-m48 with the real all-MiniLM-L6-v2 embedder); every refusal with its status and
detail, the bank unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import D, running

REPO = Path(__file__).resolve().parents[1]
TEXT_WEIGHTS = REPO / "weights" / "minilm-bible-m48.safetensors"
Items = Callable[..., list[list[float]]]


def bank_state(client: TestClient) -> dict[str, Any]:
    stats = client.get("/stats").json()
    namespaces = client.get("/namespaces").json()["namespaces"]
    return {
        **{k: stats[k] for k in ("used", "writes", "evictions", "reads", "hits")},
        "namespaces": namespaces,
    }


def test_texts_payloads_and_namespaces_ride_with_the_codes(
    client: TestClient, items: Items
) -> None:
    rows = items(3)
    r = client.post(
        "/write",
        json={
            "items": rows[:2],
            "mode": "each",
            "namespace": "user-1",
            "texts": ["first", "second"],
            "payloads": [{"k": 1}, {"nested": {"list": [1, 2]}}],
        },
    )
    assert r.status_code == 200 and r.json()["slots"] == [0, 1]
    assert client.post("/write", json={"items": rows[2:], "namespace": "user-2"}).json()[
        "slots"
    ] == [2]
    r = client.post("/read", json={"queries": rows[:1], "top_k": 3, "reconstruct": False})
    hits = r.json()["results"][0]
    assert hits[0] == {
        "slot": 0,
        "score": hits[0]["score"],
        "code_score": hits[0]["score"],  # not rescored: the same cosine
        "count": 1,
        "reconstruction": None,
        "text": "first",
        "payload": {"k": 1},
    }
    assert {"text", "payload"}.isdisjoint(next(h for h in hits if h["slot"] == 2))  # none kept
    only = client.post("/read", json={"queries": rows[:1], "top_k": 3, "namespace": "user-2"})
    assert [h["slot"] for h in only.json()["results"][0]] == [2]
    slot = client.get("/slots/1").json()
    assert (slot["namespace"], slot["text"], slot["payload"]) == (
        "user-1",
        "second",
        {"nested": {"list": [1, 2]}},
    )
    assert client.get("/namespaces").json() == {
        "namespaces": {
            "user-1": {"used": 2, "pinned": 0, "count_sum": 2},  # one hit each
            "user-2": {"used": 1, "pinned": 0, "count_sum": 2},  # hit by both reads
        }
    }


def test_forgetting_a_namespace_leaves_the_others(client: TestClient, items: Items) -> None:
    rows = items(4)
    client.post("/write", json={"items": rows[:3], "mode": "each", "namespace": "a"})
    client.post("/write", json={"items": rows[3:], "mode": "each", "namespace": "b"})
    kept = client.get("/slots/3").json()
    r = client.delete("/namespaces/a")
    assert r.status_code == 200
    assert r.json() == {"namespace": "a", "forgotten": [0, 1, 2], "used": 1}
    assert client.get("/slots/3").json() == kept
    before = bank_state(client)
    r = client.delete("/namespaces/a")
    assert (r.status_code, r.json()) == (404, {"detail": "namespace 'a' holds no slot"})
    r = client.delete("/namespaces/-bad")
    assert r.status_code == 422 and r.json()["detail"].startswith("path parameter ns: ")
    assert bank_state(client) == before


def test_pins_previews_and_a_bank_full_of_pins(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    with running(make_settings(capacity=3)) as client:
        rows = items(6)
        client.post("/write", json={"items": rows[:2], "mode": "each", "pinned": True})
        client.post("/write", json={"items": rows[2:3], "mode": "each"})
        preview = client.post("/evictions/preview", json={"n": 1}).json()
        assert preview == {"slots": [2], "evicted": [2]}  # never a pinned slot
        assert client.post("/write", json={"items": rows[3:4]}).json()["slots"] == [2]
        pinned = client.post("/slots/2/pin", json={"pinned": True})
        assert pinned.status_code == 200 and pinned.json()["pinned"] is True
        before = bank_state(client)
        r = client.post("/write", json={"items": rows[4:5]})
        assert r.status_code == 409
        assert r.json()["detail"] == (
            "a write of 1 needs 1 slot(s) to evict but only 0 are not pinned: unpin or delete "
            "slots first"
        )
        assert client.post("/evictions/preview", json={"n": 1}).status_code == 409
        assert bank_state(client) == before
        assert client.post("/slots/0/pin", json={"pinned": False}).json()["pinned"] is False
        assert client.post("/write", json={"items": rows[4:5]}).json()["evicted"] == [0]


def test_a_namespace_quota_keeps_lfu_within_it(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    with running(make_settings(capacity=8, namespace_quota=2)) as client:
        rows = items(6)
        for row in rows:
            client.post("/write", json={"items": [row], "namespace": "chatty"})
        client.post("/write", json={"items": [rows[0]], "namespace": "quiet"})
        assert client.get("/namespaces").json()["namespaces"] == {
            "chatty": {"used": 2, "pinned": 0, "count_sum": 0},
            "quiet": {"used": 1, "pinned": 0, "count_sum": 0},
        }


BAD = [
    ({"texts": ["  \n"], "mode": "each"}, "texts[0] is empty or only whitespace"),
    ({"texts": ["x" * 41], "mode": "each"}, "texts[0] has 41 characters, over the limit of 40"),
    ({"payloads": [[1, 2]], "mode": "each"}, "payloads[0]: Input should be a valid dictionary"),
    ({"payloads": ["{}"], "mode": "each"}, "payloads[0]: Input should be a valid dictionary"),
    (
        {"payloads": [{"blob": "y" * 64}], "mode": "each"},
        "payloads[0] is 75 bytes as JSON, over the limit of 64 (MT_MAX_PAYLOAD_BYTES)",
    ),
    (
        {"payloads": [{"n": 2**70}], "mode": "each"},
        "payloads[0] holds an integer beyond 64 bits, which it cannot keep",
    ),
    ({"texts": ["a", "b"], "mode": "each"}, "texts: expected one per item (1), got 2"),
    ({"texts": ["a", "b"], "mode": "mean"}, "texts: expected one per mean write (one slot) (1)"),
    ({"namespace": "has space"}, "namespace: expected a namespace of 1-64 characters"),
    ({"namespace": ""}, "namespace: expected a namespace of 1-64 characters"),
]


@pytest.mark.parametrize(("extra", "detail"), BAD, ids=[d[:30] for _, d in BAD])
def test_bad_texts_payloads_and_namespaces_are_refused(
    make_settings: Callable[..., Settings], items: Items, extra: dict[str, Any], detail: str
) -> None:
    with running(make_settings(max_text_chars=40, max_payload_bytes=64)) as client:
        before = bank_state(client)
        r = client.post("/write", json={"items": items(1), **extra})
        assert r.status_code == 422
        assert r.json()["detail"].startswith(detail), r.json()
        assert bank_state(client) == before


def test_text_endpoints_on_an_image_codec_are_refused(client: TestClient, items: Items) -> None:
    before = bank_state(client)
    for path, body in (("/remember", {"texts": ["hello"]}), ("/recall", {"texts": ["hello"]})):
        r = client.post(path, json=body)
        assert r.status_code == 409
        assert r.json()["detail"] == (
            "the loaded model 'tiny-m16' is not a text codec: /remember and /recall need weights "
            "trained on sentence embeddings (their info names an embedder); store items with "
            "/write and read them with /read"
        )
    assert bank_state(client) == before


# ------------------------------------------------------------------- a real text codec


@pytest.fixture(scope="module")
def text_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        weights=TEXT_WEIGHTS,
        snapshot_dir=tmp_path_factory.mktemp("text") / "snapshots",
        capacity=64,
        snapshot_every_s=0,
        torch_threads=1,
    )
    with running(settings) as client:
        yield client


def test_remember_then_recall_by_paraphrase(text_client: TestClient) -> None:
    facts = [
        "Alice prefers green tea to coffee in the morning.",
        "The invoice for March was paid on the 14th.",
        "Bob's daughter plays the cello in the school orchestra.",
    ]
    r = text_client.post(
        "/remember",
        json={"texts": facts, "payloads": [{"i": i} for i in range(3)], "namespace": "crm"},
    )
    assert r.status_code == 200
    assert r.json() == {"slots": [0, 1, 2], "evicted": [], "used": 3, "merged": []}
    text_client.post("/remember", json={"texts": ["Alice hates green tea."], "namespace": "x"})
    questions = ["What does Alice drink?", "When was March's bill settled?", "Who plays cello?"]
    r = text_client.post("/recall", json={"texts": questions, "top_k": 2, "namespace": "crm"})
    assert r.status_code == 200
    results = r.json()["results"]
    for i, hits in enumerate(results):
        assert (hits[0]["slot"], hits[0]["text"], hits[0]["payload"]) == (i, facts[i], {"i": i})
        assert set(hits[0]) == {"slot", "score", "code_score", "count", "text", "payload"}
        assert -1.0 <= hits[0]["score"] <= 1.0
        seen = [h["slot"] for q in results[:i] for h in q]  # counts are those of reads in order
        assert hits[0]["count"] == 1 + seen.count(hits[0]["slot"])
        assert all(h["slot"] != 3 for h in hits)  # namespace x is not searched
    # the embedding of a text, written by a caller who embeds itself, reads back the same
    stats = text_client.get("/stats").json()
    assert stats["d"] == 384 and stats["used"] == 4


def test_remember_refuses_bad_texts_and_the_other_codecs_rows(text_client: TestClient) -> None:
    before = bank_state(text_client)
    cases = [
        ("/remember", {"texts": []}, "texts: List should have at least 1 item after validation"),
        ("/remember", {"texts": [" "]}, "texts[0] is empty or only whitespace"),
        ("/remember", {"texts": ["a"], "payloads": [{}, {}]}, "payloads: expected one per text"),
        ("/recall", {"texts": ["\t"]}, "texts[0] is empty or only whitespace"),
        ("/write", {"items": [[0.5] * D]}, "item 0: expected 384 values per item, got 64"),
    ]
    for path, body, detail in cases:
        r = text_client.post(path, json=body)
        assert r.status_code == 422, (path, body)
        assert r.json()["detail"].startswith(detail), r.json()
    assert bank_state(text_client) == before


def test_dedup_merges_a_near_duplicate_into_its_memory(text_client: TestClient) -> None:
    first = text_client.post(
        "/remember", json={"texts": ["The ferry to the island leaves at noon."], "namespace": "d"}
    ).json()
    [slot] = first["slots"]
    used = text_client.get("/stats").json()["used"]
    r = text_client.post(
        "/remember",
        json={
            "texts": ["The ferry to the island leaves at noon!", "Penguins cannot fly."],
            "payloads": [{"again": True}, {"new": True}],
            "namespace": "d",
            "dedup": 0.9,
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert body["merged"] == [0] and body["slots"][0] == slot and body["slots"][1] != slot
    assert body["used"] == used + 1  # only the new text took a slot
    kept = text_client.get(f"/slots/{slot}").json()
    assert (kept["text"], kept["payload"], kept["count"]) == (
        "The ferry to the island leaves at noon.",
        None,
        1,  # the merge counted one access
    )
    r = text_client.post("/remember", json={"texts": ["x"], "dedup": 1.5})
    assert r.status_code == 422
    assert r.json()["detail"] == "dedup: Input should be less than or equal to 1"
