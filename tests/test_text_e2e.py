"""Text memory end to end (issue 11): `python -m service` (real uvicorn, the text codec the
README recommends, minilm-text-m192-rate, stored as its default 48-byte rate codes, and the
real embedder) remembers 1,000 Bible verses (KJV) in two namespaces,
recalls each by its paraphrase (the same verse in the WEB translation, never seen in
training), forgets one namespace without touching the other, and after kill -9 serves the
texts, payloads and namespaces it acknowledged."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx

from model import text_data
from service.client import MemoryTransitClient
from tests.test_e2e import free_port, server, server_env, wait_ready

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights" / "minilm-text-m192-rate.safetensors"
N, BATCH = 1000, 100


def recall(http: httpx.Client, texts: list[str], namespace: str) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    for i in range(0, len(texts), BATCH):
        r = http.post("/recall", json={"texts": texts[i : i + BATCH], "namespace": namespace})
        assert r.status_code == 200, r.text
        out += r.json()["results"]
    return out


def test_remember_recall_forget_and_survive_kill_9(tmp_path: Path) -> None:
    task = text_data.bible_task()
    verses = list(task.bank_texts[:N])  # bank[:2000] are the query verses' KJV texts
    paraphrases = list(task.query_texts[:N])  # their WEB texts, held out from training
    keys = list(task.bank_keys[:N])
    spaces = ["alpha" if i < N // 2 else "beta" for i in range(N)]
    port = free_port()
    env = server_env(port, WEIGHTS, tmp_path / "snapshots", capacity="2000", snapshot_every_s="0")
    log = tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    with (
        server(env, log) as proc,
        httpx.Client(base_url=url, timeout=120) as http,
        MemoryTransitClient(url) as mt,
    ):
        wait_ready(mt, proc, log)
        slots: list[int] = []
        for i in range(0, N, BATCH):
            body = {
                "texts": verses[i : i + BATCH],
                "payloads": [{"verse": k} for k in keys[i : i + BATCH]],
                "namespace": spaces[i],
            }
            r = http.post("/remember", json=body)
            assert r.status_code == 200, r.text
            slots += r.json()["slots"]
        assert slots == list(range(N))
        half = N // 2
        found = recall(http, paraphrases[:half], "alpha") + recall(http, paraphrases[half:], "beta")
        right = [hits[0]["slot"] == i for i, hits in enumerate(found)]
        rate = sum(right) / N
        print(f"text e2e: recall@1 by paraphrase, 500 per namespace: {rate:.3f}")
        assert rate >= 0.95, rate
        for i, hits in enumerate(found):
            if right[i]:  # its own text and payload come back with it
                assert (hits[0]["text"], hits[0]["payload"]) == (verses[i], {"verse": keys[i]})
        # the typed client speaks the same routes
        assert mt.namespaces()["alpha"].used == half
        gone = mt.forget_namespace("alpha")
        assert (gone.namespace, gone.forgotten, gone.used) == ("alpha", list(range(half)), half)
        [[memory]] = mt.recall([paraphrases[half]], namespace="beta")
        assert memory.slot == found[half][0]["slot"]
        assert mt.pin_slot(N - 1).pinned is True
        assert recall(http, paraphrases[:5], "alpha") == [[]] * 5
        beta = recall(http, paraphrases[half:], "beta")
        assert [h[0]["slot"] for h in beta] == [h[0]["slot"] for h in found[half:]]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    with (
        server(env, log) as proc,
        httpx.Client(base_url=url, timeout=120) as http,
        MemoryTransitClient(url) as mt,
    ):
        wait_ready(mt, proc, log)
        stats = http.get("/stats").json()
        assert stats["used"] == half and stats["recovery"]["replayed"] > 0
        assert (stats["bank_dtype"], stats["code_bytes"]) == ("rate", 48)
        assert http.get("/namespaces").json()["namespaces"]["beta"]["used"] == half
        assert "alpha" not in http.get("/namespaces").json()["namespaces"]
        for i in (half, half + 7, N - 1):
            slot = http.get(f"/slots/{i}").json()
            assert (slot["namespace"], slot["text"], slot["payload"], slot["pinned"]) == (
                "beta",
                verses[i],
                {"verse": keys[i]},
                i == N - 1,
            )
        again = recall(http, paraphrases[half:], "beta")
        assert [(h[0]["slot"], h[0]["text"], h[0]["payload"]) for h in again] == [
            (h[0]["slot"], h[0]["text"], h[0]["payload"]) for h in beta
        ]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
