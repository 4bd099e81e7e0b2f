"""End to end: `python -m service` (real uvicorn) on 127.0.0.1, spoken to over a socket with the
typed client; SIGTERM writes the shutdown snapshot and a restart serves the same memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from service import process
from service.client import APIError, MemoryTransitClient
from service.process import free_port

REPO = Path(__file__).resolve().parents[1]
KEY = "e2e-secret-key"


@contextmanager
def server(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def server_env(port: int, weights: Path, snapshots: Path, **settings: str) -> dict[str, str]:
    """The environment of a test server on 127.0.0.1:port; `settings` are more MT_* values."""
    return {
        **os.environ,
        "MT_HOST": "127.0.0.1",
        "MT_PORT": str(port),
        "MT_WEIGHTS": str(weights),
        "MT_SNAPSHOT_DIR": str(snapshots),
        "MT_TORCH_THREADS": "1",
        "MT_RESCORE": "0",  # code-cosine reads: the tiny test codec reconstructs nothing alike
        "PYTHONPATH": str(REPO),
        **{f"MT_{name.upper()}": value for name, value in settings.items()},
    }


def wait_ready(client: MemoryTransitClient, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not client.ready():
        assert proc.poll() is None, f"server exited {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"not ready:\n{log.read_text()}"
        time.sleep(0.05)


def test_free_ports_lie_below_the_ephemeral_range_and_bind() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(process.PORTS_FROM <= p < low for p in ports) and len(ports) > 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))  # free indeed


def test_serve_snapshot_sigterm_restart(weights_file: Path, tmp_path: Path) -> None:
    port = free_port()
    env = server_env(port, weights_file, tmp_path / "snapshots", capacity="128", api_key=KEY)
    log = tmp_path / "server.log"
    item = [(i % 8) / 8 for i in range(64)]
    url = f"http://127.0.0.1:{port}"

    with server(env, log) as proc, MemoryTransitClient(url, api_key=KEY) as mt:
        wait_ready(mt, proc, log)
        assert mt.write([item]).slots == [0]
        [[hit]] = mt.read([item])
        assert (hit.slot, hit.count) == (0, 1)
        assert hit.score == pytest.approx(1.0, abs=1e-5)
        assert hit.reconstruction == pytest.approx(mt.get_slot(0).reconstruction, abs=1e-5)
        snap = mt.snapshot()
        assert Path(snap.path).is_file() and Path(snap.path).stat().st_size == snap.bytes
        [[hit]] = mt.read([item], reconstruct=False)
        assert hit.count == 2
        with pytest.raises(APIError) as error:
            mt.get_slot(5)
        assert (error.value.status, error.value.detail) == (404, "slot 5 is not occupied")
        with pytest.raises(APIError) as error:
            MemoryTransitClient(url).stats()
        assert error.value.status == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    assert "shutdown snapshot" in log.read_text()
    assert '"POST /read HTTP/1.1"' not in log.read_text()  # no access log by default

    env["MT_ACCESS_LOG"] = "true"
    with server(env, log) as proc, MemoryTransitClient(url, api_key=KEY) as mt:
        wait_ready(mt, proc, log)
        stats = mt.stats()
        assert stats.used == 1 and stats.recovery.snapshot is not None
        assert stats.recovery.replayed == 0
        [[hit]] = mt.read([item])
        assert (hit.slot, hit.count) == (0, 3)  # counts continue across the restart
        assert hit.reconstruction == pytest.approx(mt.get_slot(0).reconstruction, abs=1e-5)
        assert "mt_bank_used 1.0" in mt.metrics().splitlines()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    assert '"POST /read HTTP/1.1" 200' in log.read_text()  # MT_ACCESS_LOG=true turns it on


def test_refuses_to_start_without_weights(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MT_PORT": str(free_port()),
        "PYTHONPATH": str(REPO),
        "MT_WEIGHTS": str(tmp_path / "missing.safetensors"),
        "MT_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 1
    assert b"the engine could not start" in done.stderr
    env["MT_CAPACITY"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.decode().startswith("invalid settings: MT_CAPACITY:")
