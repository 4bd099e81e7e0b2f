"""Two real servers with the same settings, for the contract tests of the Ray app: a local Ray
cluster on this machine running `python -m service.ray`'s app with 2 shards (started through
service.ray.start, as the command does), and `python -m service` as a child process with the
same total capacity. Session-scoped: the cluster starts once (tens of seconds on 2 cores) and
tests/test_ray_api.py and tests/test_ray_kill.py share it. Nothing is mocked; a missing part
(ray not installed, a replica that does not start) fails the tests, it does not skip them.
"""

from __future__ import annotations

import os
import shutil
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.process import ServerProcess, free_port
from service.settings import Settings

WRITE_KEY = "write-key-0123456789"  # as tests/test_auth.py (imported by conftest: no cycle)
READ_KEY = "read-key-9876543210"

SHARDS = 2
C = 1024  # slots per shard; the single server gets SHARDS * C
LIMITS = {"max_items": 8, "max_top_k": 5, "max_body_bytes": 65536}  # test_api's `small`
STARTUP_S = 180.0


@dataclass
class Server:
    name: str
    base: str
    capacity: int  # slots per bank (per shard for the Ray app)
    snapshot_dir: Path

    def client(self, key: str | None = WRITE_KEY) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60)


def wait_ready(base: str, timeout: float = STARTUP_S) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as c:
        while time.monotonic() < deadline:
            try:
                if c.get(f"{base}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"{base} not ready after {timeout:.0f} s")


def namespace_on(shard: int, prefix: str) -> str:
    """A namespace the Ray app routes to `shard` (crc32(name) % shards: merge.route)."""
    for i in range(1000):
        name = f"{prefix}{i}"
        if zlib.crc32(name.encode()) % SHARDS == shard:
            return name
    raise AssertionError("no such namespace")


@pytest.fixture(scope="session")
def ray_server(weights_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import ray
    from ray import serve

    from service.ray import parse, start

    root = tmp_path_factory.mktemp("ray-app")
    port = free_port()
    settings = Settings(
        weights=weights_file,
        snapshot_dir=root / "snapshots",
        capacity=C,
        rescore=0,  # code-cosine reads: the tiny test codec reconstructs nothing alike
        snapshot_every_s=0,
        torch_threads=1,
        batch_wait_ms=0.5,
        host="127.0.0.1",
        port=port,
        api_key=WRITE_KEY,
        read_api_key=READ_KEY,
        **LIMITS,
    )
    temp = f"/tmp/ray-mt-{os.getpid()}"  # short: Ray's socket paths must fit 107 bytes
    args = parse(
        ["--shards", str(SHARDS), "--num-cpus", "2", "--temp-dir", temp, "--shard-timeout", "3"]
    )
    start(settings, args)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        yield Server("ray", f"http://127.0.0.1:{port}", C, root / "snapshots")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def single_server(weights_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.test_e2e import server_env

    root = tmp_path_factory.mktemp("single-app")
    port = free_port()
    env = server_env(
        port,
        weights_file,
        root / "snapshots",
        capacity=str(SHARDS * C),
        snapshot_every_s="0",
        batch_wait_ms="0.5",
        api_key=WRITE_KEY,
        read_api_key=READ_KEY,
        **{k: str(v) for k, v in LIMITS.items()},
    )
    proc = ServerProcess(env, root / "server.log").start()
    try:
        proc.wait_ready()
        yield Server("single", proc.base, SHARDS * C, root / "snapshots")
    finally:
        proc.stop()
