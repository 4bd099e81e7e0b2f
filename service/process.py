"""Run `python -m service` as a child process: for end-to-end tests, benchmarks and the crash
and load scripts, which all need a real server on 127.0.0.1 (never imported by the server).
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server that binds it a moment later: drawn
    below the kernel's ephemeral range, which bind(0) and every outgoing connection take
    their ports from, so that nothing started meanwhile (Ray's own servers, the clients of
    other tests) is handed it first (seen: a Ray Serve proxy's "Address already in use")."""
    low = _ephemeral_low()
    rng = random.Random()  # not the global RNG: tests seed that
    for _ in range(200):
        port = rng.randrange(PORTS_FROM, low) if low > PORTS_FROM + 100 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError(f"no free port on 127.0.0.1 in [{PORTS_FROM}, {low}) after 200 tries")


# free_port's lowest port: above fixed ones (8000, 8265) and Ray's worker ports (10002-19999)
PORTS_FROM = 20000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux: 32768 unless configured)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class ServerProcess:
    """One server child process; its stdout and stderr go to log_path (appended)."""

    def __init__(self, env: dict[str, str], log_path: Path, cmd: list[str] | None = None) -> None:
        self.cmd = cmd or [sys.executable, "-m", "service"]
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{env['MT_PORT']}"

    def start(self) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Poll /readyz until 200; return the seconds it took. Raises if the child exits."""
        t0 = time.monotonic()
        with httpx.Client(timeout=2) as client:
            while time.monotonic() - t0 < timeout:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode} while starting:\n"
                        + self.log_tail()
                    )
                try:
                    if client.get(f"{self.base}/readyz").status_code == 200:
                        return time.monotonic() - t0
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: the server snapshots), then SIGKILL after timeout."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])
