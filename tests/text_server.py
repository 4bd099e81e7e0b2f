"""A real MemoryTransit for the integration tests (LangChain, MCP): `python -m service` on
127.0.0.1 with the shipped text codec minilm-bible-m48 and its embedder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.client import MemoryTransitClient
from tests.test_e2e import free_port, server, server_env, wait_ready

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "minilm-bible-m48.safetensors"


@contextmanager
def text_server(tmp: Path, **settings: str) -> Iterator[str]:
    """Start one, wait until it is ready, yield its URL; killed on exit."""
    port = free_port()
    env = server_env(port, WEIGHTS, tmp / "snapshots", snapshot_every_s="0", **settings)
    log = tmp / "server.log"
    url = f"http://127.0.0.1:{port}"
    with server(env, log) as proc, MemoryTransitClient(url) as mt:
        wait_ready(mt, proc, log)
        yield url
