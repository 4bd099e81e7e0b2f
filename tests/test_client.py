"""The Python client against a real `python -m service` on 127.0.0.1: it refuses what the server
refuses, with the server's own detail, sends nothing then and coerces nothing; its probes say
False when no server answers."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from model.errors import InvalidInput
from service.client import APIError, AsyncMemoryTransitClient, MemoryTransitClient
from tests.conftest import D
from tests.test_e2e import free_port, server, server_env, wait_ready

ROW = [(i % 8) / 8 for i in range(D)]
SLOT_RULE = (
    "path parameter i: expected plain decimal digits (no sign, spaces, underscores or leading "
    "zeros; at most 18), got "
)


@pytest.fixture(scope="module")
def url(weights_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server (capacity 16) with three occupied slots: 0, 1 and 2."""
    tmp = tmp_path_factory.mktemp("client")
    port = free_port()
    env = server_env(port, weights_file, tmp / "snapshots", capacity="16", wal_fsync="off")
    log = tmp / "server.log"
    address = f"http://127.0.0.1:{port}"
    with server(env, log) as proc, MemoryTransitClient(address) as mt:
        wait_ready(mt, proc, log)
        assert mt.write([ROW, ROW[::-1], [0.25] * D], mode="each").slots == [0, 1, 2]
        yield address
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()


@pytest.fixture
def mt(url: str) -> Iterator[MemoryTransitClient]:
    with MemoryTransitClient(url) as c:
        yield c


def bank(mt: MemoryTransitClient) -> dict[str, Any]:
    s = mt.stats()
    return {
        "counters": (s.used, s.reads, s.hits, s.misses, s.writes, s.evictions),
        "counts": [mt.get_slot(i).count for i in range(3)],
    }


def server_detail(url: str, method: str, path: str, body: str | None = None) -> tuple[int, str]:
    """What the server answers to the request the client would have sent."""
    headers = {"content-type": "application/json"}
    r = httpx.request(method, url + path, content=body, headers=headers)
    return r.status_code, r.json()["detail"]


SLOTS: list[tuple[str, Any]] = [
    ("2.9", 2.9),
    ("1.7", 1.7),
    ("True", True),
    ("False", False),
    ("-1", -1),
    ("1_0 as text", "1_0"),
    ("+1 as text", "+1"),
    ("numpy float", np.float64(2.0)),
]


@pytest.mark.parametrize("call", ["get_slot", "delete_slot"])
@pytest.mark.parametrize("slot", [s for _, s in SLOTS], ids=[name for name, _ in SLOTS])
def test_slots_are_not_coerced(url: str, mt: MemoryTransitClient, call: str, slot: Any) -> None:
    before = bank(mt)
    with pytest.raises(InvalidInput) as error:
        getattr(mt, call)(slot)
    assert str(error.value) == SLOT_RULE + repr(str(slot))
    method = "GET" if call == "get_slot" else "DELETE"
    assert server_detail(url, method, f"/slots/{slot}") == (422, str(error.value))
    assert bank(mt) == before


# What the client sends besides the arguments (its defaults).
DEFAULTS: dict[str, dict[str, Any]] = {
    "write": {"mode": "mean"},
    "read": {"top_k": 1, "min_score": None, "reconstruct": True},
}
# (id, call, arguments; the same request as a raw JSON body when the arguments are not JSON)
BODIES: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("string numbers", "write", {"items": [["0.5"] * D]}, None),
    ("a boolean", "write", {"items": [[True, *ROW[1:]]]}, None),
    (
        "boolean array",
        "write",
        {"items": np.ones((1, D), dtype=bool)},
        json.dumps({"items": [[True] * D], "mode": "mean"}),
    ),
    ("items a string", "write", {"items": "abc"}, None),
    ("rows of strings", "write", {"items": ["0.5" * D]}, None),
    ("NaN", "write", {"items": [[float("nan"), *ROW[1:]]]}, None),
    ("beyond float32", "write", {"items": [ROW, [1e39] * D]}, None),
    ("no items", "write", {"items": []}, None),
    ("bad mode", "write", {"items": [ROW], "mode": "sum"}, None),
    ("top_k 2.0", "read", {"queries": [ROW], "top_k": 2.0}, None),
    ("top_k True", "read", {"queries": [ROW], "top_k": True}, None),
    ("top_k 0", "read", {"queries": [ROW], "top_k": 0}, None),
    ("min_score 2", "read", {"queries": [ROW], "min_score": 2}, None),
    ("min_score a string", "read", {"queries": [ROW], "min_score": "0.5"}, None),
    ("reconstruct 1", "read", {"queries": [ROW], "reconstruct": 1}, None),
    ("query strings", "read", {"queries": [[str(v) for v in ROW]]}, None),
]


@pytest.mark.parametrize(
    ("call", "arguments", "raw"), [pytest.param(*b[1:], id=b[0]) for b in BODIES]
)
def test_bodies_are_refused_with_the_server_s_detail(
    url: str, mt: MemoryTransitClient, call: str, arguments: dict[str, Any], raw: str | None
) -> None:
    before = bank(mt)
    with pytest.raises(InvalidInput) as error:
        getattr(mt, call)(**arguments)
    raw = raw or json.dumps({**DEFAULTS[call], **arguments})
    assert server_detail(url, "POST", f"/{call}", raw) == (422, str(error.value))
    assert bank(mt) == before


def test_refusals_are_value_errors_and_nothing_is_sent(mt: MemoryTransitClient) -> None:
    before = mt.metrics()
    with pytest.raises(ValueError, match=r"^items\[0\]\[0\]: Input should be a valid number"):
        mt.write([["1"] * D])
    with pytest.raises(ValueError, match=r"^path parameter i: "):
        mt.delete_slot(1.0)  # type: ignore[arg-type]
    after = mt.metrics()
    for route in ('route="/write"', 'route="/slots/{i}"'):
        assert [line for line in before.splitlines() if route in line] == [
            line for line in after.splitlines() if route in line
        ]


def test_accepted_forms_still_work(mt: MemoryTransitClient) -> None:
    """Lists of ints and floats, tuples, numpy arrays and torch tensors are sent as they are."""
    used = mt.stats().used
    assert mt.write([tuple(ROW)], mode="each").used == used + 1
    assert mt.write(np.array([ROW], dtype=np.float32), mode="each").used == used + 2
    assert mt.write(torch.tensor([ROW]), mode="each").used == used + 3
    assert mt.write([np.array(ROW)], mode="each").used == used + 4
    assert mt.write([[1] * D], mode="each").used == used + 5  # ints are numbers
    [[hit]] = mt.read((tuple(ROW),), top_k=1, reconstruct=False)
    assert hit.slot == 0 and hit.score == pytest.approx(1.0, abs=1e-5)
    assert mt.get_slot(np.int64(1)).slot == 1  # type: ignore[arg-type]
    for slot in range(3, used + 5):
        mt.delete_slot(slot)
    assert mt.stats().used == used
    with pytest.raises(APIError) as error:  # what depends on the server's settings: its answer
        mt.write([ROW[:-1]])
    assert (error.value.status, error.value.detail) == (
        422,
        f"item 0: expected {D} values per item, got {D - 1}",
    )


def test_probes_say_false_when_no_server_answers(url: str) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    with MemoryTransitClient(nowhere, timeout=2) as down, MemoryTransitClient(url) as up:
        assert (down.healthy(), down.ready()) == (False, False)
        assert (up.healthy(), up.ready()) == (True, True)

    async def probes() -> tuple[bool, ...]:
        async with (
            AsyncMemoryTransitClient(nowhere, timeout=2) as down,
            AsyncMemoryTransitClient(url) as up,
        ):
            return (await down.healthy(), await down.ready(), await up.healthy(), await up.ready())

    assert asyncio.run(probes()) == (False, False, True, True)


def test_async_client_refuses_alike(url: str) -> None:
    async def run() -> tuple[str, str, list[str]]:
        async with AsyncMemoryTransitClient(url) as mt:
            with pytest.raises(InvalidInput) as slot:
                await mt.get_slot(2.9)  # type: ignore[arg-type]
            with pytest.raises(InvalidInput) as body:
                await mt.write([["0.5"] * D])
            return str(slot.value), str(body.value), (await mt.metrics()).splitlines()

    slot, body, metrics = asyncio.run(run())
    assert slot == SLOT_RULE + "'2.9'"
    assert body.startswith("items[0][0]: Input should be a valid number; ")
    assert "mt_ready 1.0" in metrics


def test_namespaced_writes_and_reads_with_texts_payloads_and_rescoring(
    mt: MemoryTransitClient,
) -> None:
    out = mt.write(
        [ROW, [1.0 - v for v in ROW]],
        mode="each",
        namespace="client-ns",
        texts=["first", "second"],
        payloads=[{"n": 1}, {"n": 2}],
        pinned=True,
    )
    [[hit]] = mt.read([ROW], namespace="client-ns", reconstruct=False)
    assert (hit.slot, hit.text, hit.payload) == (out.slots[0], "first", {"n": 1})
    [[plain, _]] = mt.read([ROW], top_k=2, namespace="client-ns", rescore=0)
    assert plain.score == plain.code_score
    [[rescored, _]] = mt.read([ROW], top_k=2, namespace="client-ns", rescore=2)
    assert rescored.score != rescored.code_score  # the input-space cosine, not the code one
    view = mt.get_slot(out.slots[1])
    assert (view.namespace, view.pinned, view.text, view.payload) == (
        "client-ns",
        True,
        "second",
        {"n": 2},
    )
    assert mt.namespaces()["client-ns"].pinned == 2
    gone = mt.forget_namespace("client-ns")
    assert sorted(gone.forgotten) == sorted(out.slots)
    with pytest.raises(InvalidInput, match="expected a namespace of 1-64 characters"):
        mt.read([ROW], namespace="not ok")


def test_the_client_imports_without_torch() -> None:
    """As its docstring says: a process that only talks to a server needs no torch."""
    code = "import sys, service.client; print(sorted(m for m in sys.modules if m == 'torch'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
