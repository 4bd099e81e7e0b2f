"""An MCP server for agents: tools remember, recall, forget and stats over a running MemoryTransit
(`pip install .[mcp]`; the server must load a text codec for remember and recall).

    python -m service.mcp --url http://127.0.0.1:8000                  # stdio (an agent spawns it)
    python -m service.mcp --transport streamable-http --port 8765      # http://127.0.0.1:8765/mcp

The URL and key come from --url / --api-key or MT_URL / MT_API_KEY (default
http://127.0.0.1:8000, no key). Every call goes through the typed client (service/client.py):
a request the server would refuse is refused here with its wording, and a server's error comes
back as the tool's error with its status and detail.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from service.client import APIError, AsyncMemoryTransitClient

DEFAULT_URL = "http://127.0.0.1:8000"
INSTRUCTIONS = (
    "A long-term memory. remember() stores sentences (one memory each) in a namespace (a user, "
    "an agent, a session); recall() finds the memories closest in meaning to a query, best "
    "first, with a cosine score; forget() frees one memory (its slot) or a whole namespace. "
    "The least frequently recalled memories are replaced when the memory is full."
)


def build(url: str = DEFAULT_URL, api_key: str | None = None) -> MCPServer:
    """The MCP server, its tools talking to the MemoryTransit at `url`."""
    mcp: MCPServer = MCPServer("memorytransit", instructions=INSTRUCTIONS)

    @asynccontextmanager
    async def client() -> AsyncIterator[AsyncMemoryTransitClient]:
        """The client for one call; a refusal (the client's or the server's) as the tool's
        error, with its wording."""
        try:
            async with AsyncMemoryTransitClient(url, api_key) as mt:
                yield mt
        except (APIError, ValueError) as e:  # InvalidInput is a ValueError
            raise ToolError(str(e)) from None

    @mcp.tool()
    async def remember(
        texts: list[str],
        namespace: str = "default",
        payloads: list[dict[str, Any]] | None = None,
        pinned: bool = False,
    ) -> dict[str, Any]:
        """Store each text as its own memory, with an optional JSON payload per text. Returns
        the memories' slots and the slots whose old memories were replaced."""
        async with client() as mt:
            out = await mt.remember(texts, payloads, namespace, pinned)
        return {"slots": out.slots, "evicted": out.evicted, "used": out.used}

    @mcp.tool()
    async def recall(
        query: str,
        top_k: int = 3,
        namespace: str | None = None,
        min_score: float | None = None,
    ) -> dict[str, Any]:
        """The top_k memories closest in meaning to the query (in one namespace, or all),
        best first: slot, score (cosine), count (times recalled), text, payload."""
        async with client() as mt:
            [hits] = await mt.recall([query], top_k, min_score, namespace)
        return {"memories": [hit.model_dump() for hit in hits]}

    @mcp.tool()
    async def forget(slot: int | None = None, namespace: str | None = None) -> dict[str, Any]:
        """Forget one memory by its slot, or every memory of a namespace (give one of them)."""
        if (slot is None) == (namespace is None):
            raise ToolError("give either slot or namespace, not both")
        async with client() as mt:
            if slot is not None:
                return {"forgotten": [slot], "used": (await mt.delete_slot(slot)).used}
            assert namespace is not None
            out = await mt.forget_namespace(namespace)
        return {"forgotten": out.forgotten, "used": out.used}

    @mcp.tool()
    async def stats() -> dict[str, Any]:
        """The memory's capacity, slots used, model, counters, and its namespaces."""
        async with client() as mt:
            info = await mt.stats()
            spaces = await mt.namespaces()
        keep = ("capacity", "used", "model", "d", "m", "reads", "writes", "evictions")
        body = {k: v for k, v in info.model_dump().items() if k in keep}
        return {**body, "namespaces": {n: s.model_dump() for n, s in spaces.items()}}

    return mcp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service.mcp", description="MCP tools over a running MemoryTransit."
    )
    parser.add_argument("--url", default=os.environ.get("MT_URL", DEFAULT_URL))
    parser.add_argument("--api-key", default=os.environ.get("MT_API_KEY") or None)
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="streamable-http only")
    parser.add_argument("--port", type=int, default=8765, help="streamable-http only")
    args = parser.parse_args(argv)
    server = build(args.url, args.api_key)
    transport: Literal["stdio", "streamable-http"] = args.transport
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
