"""The MCP server (python -m service.mcp) over stdio, driven by the MCP Python client, in front of
a real MemoryTransit: list the tools, remember two texts, recall one by a paraphrase, forget it
(by its slot, then the namespace), and the stats and refusals an agent sees on the way."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.test_e2e import free_port
from tests.text_server import text_server

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[1]


def answer(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    return result.structured_content or json.loads(result.content[0].text)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with text_server(tmp_path_factory.mktemp("mcp"), capacity="64") as url:
        yield url


async def test_mcp_round_trip_over_stdio(url: str) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "service.mcp", "--url", url],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO)},
    )
    async with Client(params) as agent:
        tools = {tool.name: tool for tool in (await agent.list_tools()).tools}
        assert set(tools) == {"remember", "recall", "forget", "stats"}
        assert "texts" in tools["remember"].input_schema["properties"]

        texts = [
            "Alice prefers green tea to coffee.",
            "The ferry to the island leaves at noon.",
        ]
        stored = answer(
            await agent.call_tool(
                "remember",
                {"texts": texts, "namespace": "alice", "payloads": [{"turn": 1}, {"turn": 2}]},
            )
        )
        assert len(stored["slots"]) == 2 and stored["used"] == 2

        found = answer(
            await agent.call_tool(
                "recall", {"query": "What does Alice like to drink?", "namespace": "alice"}
            )
        )
        best = found["memories"][0]
        assert (best["text"], best["payload"]) == (texts[0], {"turn": 1})
        assert best["slot"] == stored["slots"][0] and best["score"] > found["memories"][1]["score"]

        gone = answer(await agent.call_tool("forget", {"slot": best["slot"]}))
        assert gone == {"forgotten": [best["slot"]], "used": 1}
        after = answer(
            await agent.call_tool("recall", {"query": "green tea", "namespace": "alice"})
        )
        assert [m["text"] for m in after["memories"]] == [texts[1]]

        stats = answer(await agent.call_tool("stats", {}))
        assert stats["used"] == 1 and stats["model"] == "minilm-bible-m48"
        assert stats["namespaces"]["alice"]["used"] == 1

        refused = await agent.call_tool("forget", {})
        assert refused.is_error and "either slot or namespace" in refused.content[0].text
        missing = await agent.call_tool("forget", {"slot": best["slot"]})
        assert missing.is_error and "404" in missing.content[0].text

        cleared = answer(await agent.call_tool("forget", {"namespace": "alice"}))
        assert cleared["used"] == 0


async def test_streamable_http(url: str, tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "service.mcp", "--transport", "streamable-http"]
    log = tmp_path / "mcp.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=REPO,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "MT_URL": url},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:  # up once its port answers
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        async with Client(f"http://127.0.0.1:{port}/mcp") as agent:
            assert {t.name for t in (await agent.list_tools()).tools} == {
                "remember",
                "recall",
                "forget",
                "stats",
            }
            stats = answer(await agent.call_tool("stats", {}))
            assert stats["model"] == "minilm-bible-m48" and stats["capacity"] == 64
    finally:
        proc.kill()
        proc.wait(10)
