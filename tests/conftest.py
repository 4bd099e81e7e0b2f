"""Fixtures for the service tests: a tiny IDRP saved as a real weights file, settings that point
at it and at a temporary snapshot folder, and a TestClient that has entered the app's lifespan
and waited for /readyz."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from model.checkpoint import save_idrp
from model.testing import tiny_idrp
from service.app import create_app
from service.settings import Settings
from tests.ray_servers import ray_server, single_server

__all__ = ["ray_server", "single_server"]  # session fixtures of the Ray app's tests, shared

D, M = 64, 16


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny-m16.safetensors"
    save_idrp(tiny_idrp(d=D, m=M), path)
    return path


@pytest.fixture
def make_settings(weights_file: Path, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for one test; keyword arguments override (snapshot folder: tmp_path/snapshots)."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "weights": weights_file,
            "snapshot_dir": tmp_path / "snapshots",
            "capacity": 64,
            "snapshot_every_s": 0,
            "torch_threads": 1,  # 2 shared cores: one torch thread is faster and steadier
            "batch_wait_ms": 0.5,
            # The tiny untrained test codec reconstructs nothing like its input, so these
            # servers read by code cosine (stage 1) unless a test asks for rescoring; the
            # default MT_RESCORE has its own tests (test_rescore.py).
            "rescore": 0,
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {timeout} s: {client.get('/readyz').json()}")
        time.sleep(0.01)


@contextmanager
def running(settings: Settings, headers: dict[str, str] | None = None) -> Iterator[TestClient]:
    """A TestClient inside the app's lifespan, once the engine is ready."""
    with TestClient(create_app(settings), headers=headers) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with running(settings) as c:
        yield c


@pytest.fixture
def items() -> Callable[..., list[list[float]]]:
    """items(n, seed=0) -> n distinct rows of D values in [0, 1], as JSON-ready lists."""

    def make(n: int, seed: int = 0) -> list[list[float]]:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, D, generator=g).tolist()

    return make
