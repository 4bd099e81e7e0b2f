"""HTTP throughput and latency of the real server, as ratios to a hello-world FastAPI app.

    python -m bench.http [--quick] [--seconds S] [--sizes N ...] [--no-pin] [--log-level info]
                         [--out DIR]

(Run it as a module: as a script, this file would shadow the standard library's `http`.)

Starts `python -m service` (one uvicorn worker, 127.0.0.1, a free port, a temporary snapshot
folder, MT_SNAPSHOT_EVERY_S=0) with a FULL bank of N slots (MT_CAPACITY=N, filled with POST
/write mode "each" in batches of 1000 random [0, 1] items, so every write in the run evicts),
and bench/hello_app.py under the same uvicorn settings (one worker, loop and http "auto", the
same log level, the access log off as MT_ACCESS_LOG's default has it). `wrk` loads both, one
target at a time, for S seconds per cell at 1, 16 and 64 connections, in two phases: reads,
then writes. Within a phase the cells run interleaved (all its targets at 1 connection, then
all at 16, ...) with the hello-world targets, and the hello-world GET is measured twice per
connection count, so a busy neighbour skews a target and its yardstick alike and the drift
between the two shows how noisy the machine was. Reads go first so that they search the bank
as filled, N distinct items: the write cells cycle a few dozen request bodies, so they leave
thousands of exact copies of the same 576 items (most of a 10k bank), and until 2026-12-03,
when every read cell at 16 and 64 connections ran after the write cells of the level before
(and the warm-up's), the reads were measured on those copies. **read** is the plain one-stage read
(`"rescore": 0`); each bank is also read with R = 3, 10, 32 and 100 candidates rescored on
their reconstructions (`"rescore": R`, issue 12; 3 is what MT_RESCORE=auto, the default, gives
an image codec), reported against its plain read.

The machine is shared and small: absolute numbers move from run to run, the ratios to the
hello-world app measured in the same run are what to compare. By default the servers run on
CPU 0 and wrk on CPU 1 (taskset), so the client does not take the servers' CPU; --no-pin lets
the scheduler place both. "server CPU/req" is the server process's user + system CPU time per
answered request (from /proc/<pid>/stat), which a busy neighbour disturbs less than req/s.

Needs wrk (Debian: `apt-get install -y wrk`). Writes bench/results/http.md and http.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, ROOT, command, machine, now, versions, write_results
from model.codec_info import RESCORE_IMAGE
from service.process import free_port
from service.settings import Settings

RESCORES = (3, 10, 32, 100)  # candidates the rescored read targets ask for (issue 12)
FILL_BATCH = min(1000, Settings.model_fields["max_items"].default)  # items per /write request
CLK_TCK = os.sysconf("SC_CLK_TCK")
PACKAGES = (  # versions recorded with the results
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic",
    "pydantic-core",
    "orjson",
    "torch",
    "numpy",
)


# ------------------------------------------------------------------------- client


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout + out.stderr).splitlines()[0].split()
    return " ".join(first[:2])  # "wrk debian/4.1.0-3+b2"


# ------------------------------------------------------------------------- servers


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 120.0
) -> tuple[int, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        method=method,
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(port: int, path: str) -> Any:
    status, data = request(port, "GET", path)
    if status != 200:
        raise RuntimeError(f"GET {path} -> {status}: {data[:200]!r}")
    return json.loads(data)


def post_json(port: int, path: str, body: bytes) -> Any:
    status, data = request(port, "POST", path, body)
    if status != 200:
        raise RuntimeError(f"POST {path} -> {status}: {data[:300]!r}")
    return json.loads(data)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def rss_bytes(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


@dataclass
class Server:
    """A server process on 127.0.0.1:port, its log file and what it was started with."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if request(self.port, "GET", self.ready_path, timeout=2)[0] == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def clean_env() -> dict[str, str]:
    """This environment without MT_* settings, so only what the bench sets reaches a server."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("MT_")}


def start_service(name: str, tmp: Path, cpus: str | None, **settings: Any) -> Server:
    """`python -m service` with MT_<KEY>=value for each setting given (plus host and port)."""
    port = free_port()
    env = {f"MT_{k.upper()}": str(v) for k, v in settings.items()}
    env |= {"MT_HOST": "127.0.0.1", "MT_PORT": str(port)}
    log = tmp / f"{name}.log"
    proc = subprocess.Popen(
        pinned([sys.executable, "-m", "service"], cpus),
        cwd=ROOT,
        env=clean_env() | env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return Server(name, port, proc, log, "/readyz", env)


def start_hello(tmp: Path, cpus: str | None, log_level: str, access_log: bool) -> Server:
    """bench/hello_app.py under the uvicorn settings `python -m service` uses."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.hello_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "auto",
        "--http",
        "auto",
        "--log-level",
        log_level,
        *([] if access_log else ["--no-access-log"]),
    ]
    log = tmp / "hello.log"
    proc = subprocess.Popen(
        pinned(argv, cpus),
        cwd=ROOT,
        env=clean_env(),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return Server("hello", port, proc, log, "/async")


# ------------------------------------------------------------------------- bodies


def rows(rng: np.random.Generator, n: int, d: int, decimals: int) -> list[list[float]]:
    """n random [0, 1] items, rounded so their JSON is about as long as float32 text."""
    return np.round(rng.random((n, d)), decimals).tolist()  # type: ignore[no-any-return]


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def read_bodies(d: int, count: int, seed: int, rescore: int | None = None) -> list[bytes]:
    """One-query /read bodies; rescore R > 0 asks for R candidates rescored (issue 12), None
    leaves it to the server's MT_RESCORE."""
    rng = np.random.default_rng(seed)
    extra = {} if rescore is None else {"rescore": rescore}
    return [
        dumps(
            {"queries": rows(rng, 1, d, 8), "top_k": 1, "min_score": None, "reconstruct": True}
            | extra
        )
        for _ in range(count)
    ]


def write_bodies(d: int, batch: int, count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [dumps({"items": rows(rng, batch, d, 8), "mode": "each"}) for _ in range(count)]


def fill(
    server: Server, n: int, d: int, seed: int = 0, on_batch: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Fill the bank with n distinct random items via POST /write "each", FILL_BATCH items per
    request; on_batch(used) after each request. (Until 2026-12-03 the fill cycled 8 bodies, so
    a bank of N slots held N / 8000 copies of each of 8000 items: a degenerate memory whose
    exact ties across the whole bank cost the batched scan its chunk pruning.)"""
    if n % FILL_BATCH:
        raise ValueError(f"expected a multiple of {FILL_BATCH} slots, got {n}")
    rng = np.random.default_rng(seed)
    seconds, used = 0.0, 0
    for _ in range(n // FILL_BATCH):
        body = dumps({"items": rows(rng, FILL_BATCH, d, 4), "mode": "each"})
        t0 = time.perf_counter()  # the request's time, not the body's making
        used = post_json(server.port, "/write", body)["used"]
        seconds += time.perf_counter() - t0
        if on_batch is not None:
            on_batch(used)
    if used != n:
        raise RuntimeError(f"{server.name}: expected {n} used slots after the fill, got {used}")
    return {"slots": n, "batch": FILL_BATCH, "seconds": seconds, "items_per_s": n / seconds}


# ------------------------------------------------------------------------- wrk

_LUA = r"""
local bodies = {
%(bodies)s
}
local reqs = {}
local i = 0
function init(args)
  local headers = {}
  if #bodies > 0 then headers["Content-Type"] = "application/json" end
  if #bodies == 0 then
    reqs[1] = wrk.format("%(method)s", "%(path)s", headers, nil)
  else
    for k, b in ipairs(bodies) do reqs[k] = wrk.format("%(method)s", "%(path)s", headers, b) end
  end
end
function request()
  i = i %% #reqs + 1
  return reqs[i]
end
function done(s, latency, requests)
  local e = s.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,' ..
    '"max_us":%%d,"mean_us":%%.1f,"errors":{"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d}}\n',
    s.requests, s.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class Endpoint:
    """One kind of request: a label, method, path and the bodies wrk cycles through."""

    label: str
    method: str
    path: str
    bodies: tuple[bytes, ...] = ()

    def lua(self) -> str:
        for b in self.bodies:
            if b"]==]" in b:
                raise ValueError("a body contains the Lua long-string terminator ]==]")
        listed = ",\n".join(f"[==[{b.decode()}]==]" for b in self.bodies)
        return _LUA % {"bodies": listed, "method": self.method, "path": self.path}


def run_wrk(
    server: Server, ep: Endpoint, conns: int, seconds: float, cpus: str | None, tmp: Path
) -> dict[str, Any]:
    """One wrk run: req/s, latency percentiles (ms), errors and the server's CPU per request."""
    script = tmp / f"{ep.label.replace(' ', '_').replace('/', '')}.lua"
    script.write_text(ep.lua())
    argv = pinned(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(seconds, 1):.0f}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{server.port}{ep.path}",
        ],
        cpus,
    )
    cpu0 = cpu_seconds(server.pid)
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    cpu = cpu_seconds(server.pid) - cpu0
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]}{out.stderr[-500:]}")
    r = json.loads(line.removeprefix("WRKJSON "))
    n = max(r["requests"], 1)
    return {
        "requests": r["requests"],
        "seconds": r["duration_us"] / 1e6,
        "req_s": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1e3,
        "p90_ms": r["p90_us"] / 1e3,
        "p99_ms": r["p99_us"] / 1e3,
        "max_ms": r["max_us"] / 1e3,
        "mean_ms": r["mean_us"] / 1e3,
        "errors": sum(r["errors"].values()),
        "error_kinds": r["errors"],
        "server_cpu_us_per_req": 1e6 * cpu / n,
    }


# ------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Target:
    """An endpoint on a server, with the labels the table shows."""

    server: Server
    endpoint: Endpoint
    kind: str  # "hello" or "service"
    bank: int | None = None
    fsync: str | None = None
    batch: int | None = None

    @property
    def key(self) -> str:
        bank = f" N={self.bank}" if self.bank else ""
        fsync = f" fsync={self.fsync}" if self.fsync else ""
        return f"{self.endpoint.label}{bank}{fsync}"


def check_answers(t: Target, d: int) -> dict[str, int]:
    """One request by hand before wrk: it must succeed with the expected shape; body sizes."""
    ep = t.endpoint
    body = ep.bodies[0] if ep.bodies else None
    status, data = request(t.server.port, ep.method, ep.path, body)
    if status != 200:
        raise RuntimeError(f"{t.key}: {ep.method} {ep.path} -> {status}: {data[:300]!r}")
    answer = json.loads(data)
    if ep.path in ("/read", "/echo"):
        hit = answer["results"][0][0]
        if len(hit["reconstruction"]) != d:
            raise RuntimeError(f"{t.key}: expected a {d}-value reconstruction, got {hit}")
    if ep.path == "/write" and len(answer["slots"]) != t.batch:
        raise RuntimeError(f"{t.key}: expected {t.batch} slots written, got {answer}")
    return {"request_bytes": len(body or b""), "response_bytes": len(data)}


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    v = report["versions"]
    s = report["settings"]
    where = (
        f"servers on CPU {s['server_cpus']}, wrk on CPU {s['client_cpus']}"
        if s["pinned"]
        else "not pinned"
    )
    lines = [
        "# HTTP: the real server against a hello-world FastAPI app",
        "",
        f"{report['date']}, {'--quick' if report['quick'] else 'full run'}, "
        f"{s['seconds_per_cell']:g} s per cell. {m['cpu']}, {m['cpu_count']} CPUs "
        f"({where}), "
        f"load average {report['loadavg_start'][0]:.1f} at start and "
        f"{report['loadavg_end'][0]:.1f} at "
        f"the end (a shared machine: compare the ratios, not the absolute numbers). "
        f"Python {v['python']}, uvicorn {v['uvicorn']} (loop {s['uvicorn_loop']}, http "
        f"{s['uvicorn_http']}, one worker, log level {s['log_level']}, access log "
        f"{'on' if s.get('access_log', True) else 'off'}), FastAPI {v['fastapi']}, "
        f"Starlette {v['starlette']}, pydantic {v['pydantic']}, orjson {v['orjson']}, torch "
        f"{v['torch']}; client {report['client']}.",
        "",
        f"Service: `python -m service`, weights {s['weights']} (d={report['d']}), bank full "
        f"(MT_CAPACITY = N, so every write evicts), MT_SNAPSHOT_EVERY_S=0, other settings at "
        f"their defaults (MT_BATCH_WAIT_MS {s['batch_wait_ms']:g}, MT_BANK_DTYPE float32). "
        f'Filled with POST /write "each", {report["fills"][0]["batch"]} random items per '
        "request: "
        + ", ".join(
            f"{f['slots']:,} slots in {f['seconds']:.1f} s ({f['items_per_s']:,.0f} items/s)"
            for f in report["fills"]
        )
        + ".",
        "",
        "Endpoints: **read** = POST /read, one query, top_k 1, reconstruction on, rescore 0 (the "
        "plain one-stage read); **read R=r** = the same with r candidates rescored (r = "
        f"{RESCORE_IMAGE}: the default read of an image codec); **write xB** = "
        'POST /write "each" with B items; **hello GET sync / async** = a `def` / `async def` '
        'route returning {"hello": "world"}; **hello echo** = POST of the same '
        f"/read-shaped body ({report['sizes']['read']['request_bytes']} bytes), parsed into a "
        "pydantic model and answered with a /read-shaped body "
        f"({report['sizes']['echo']['response_bytes']} bytes, /read's is "
        f"{report['sizes']['read']['response_bytes']}) by FastAPI's default serialisation: the "
        "JSON cost of a /read, without the engine.",
        "",
        "Columns: req/s and latency percentiles from wrk (closed loop: each connection sends "
        "its next request when the answer arrives); req/s as a fraction of hello GET sync and "
        "of hello echo at the same connection count (the GET yardstick is the mean of its two "
        "measurements); the server process's CPU time (user + system, all threads) per "
        "request, and that as a multiple of hello GET's and echo's. On a shared machine req/s "
        "moves with whatever else runs on the servers' CPU; CPU per request moves much less, so "
        "it is the steadier measure of what a request costs.",
        "",
        "| target | conns | req/s | p50 ms | p99 ms | req/s x hello GET | req/s x echo "
        "| server CPU µs/req | CPU x hello GET | CPU x echo | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["cells"]:
        lines.append(
            f"| {c['target']} | {c['conns']} | {c['req_s']:,.0f} | {c['p50_ms']:.2f} "
            f"| {c['p99_ms']:.2f} | {c['x_hello_get']:.2f} | {c['x_echo']:.2f} "
            f"| {c['server_cpu_us_per_req']:,.0f} | {c['cpu_x_hello_get']:.1f} "
            f"| {c['cpu_x_echo']:.1f} | {c['errors'] or ''} |"
        )
    lines += [
        "",
        "Yardstick drift (second hello GET sync over the first, same phase and connections): "
        + ", ".join(f"{k} conns {v:.2f}" for k, v in report["drift"].items())
        + ".",
        "",
    ]
    if report.get("rescore"):
        lines += [
            "## Rescoring (issue 12): /read with R candidates rescored, against /read without",
            "",
            "16 connections, the same queries; issue 12 asks the default read (R = "
            f"{RESCORE_IMAGE} here, MT_RESCORE=auto on an image codec) to keep >= 0.8x the req/s "
            "of a read without rescoring at 10k slots.",
            "",
            "| N | R | req/s x read | CPU/req x read | p99 ms |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {g['bank']:,} | {g['R']} | {g['x_read']:.2f} | {g['cpu_x_read']:.2f} "
            f"| {g['p99_ms']:.2f} |"
            for g in report["rescore"]
        ]
        lines.append("")
    lines += ["## Goal: /read at 16 connections >= 0.5 x hello GET req/s, p99 <= 20 ms", ""]
    for g in report["goal"]:
        lines.append(
            f"- {g['read']}, N={g['bank']:,}: {g['x_hello_get']:.2f} x hello GET "
            f"({'met' if g['ratio_ok'] else 'NOT met'}), p99 {g['p99_ms']:.1f} ms "
            f"({'met' if g['p99_ok'] else 'NOT met'}; hello GET's own p99 here: "
            f"{g['hello_get_p99_ms']:.1f} ms)"
        )
    return "\n".join(lines) + "\n"


def run_phase(
    phase: str,
    targets: list[Target],
    conns_levels: list[int],
    seconds: float,
    client_cpus: str | None,
    tmp: Path,
    report: dict[str, Any],
    drift: dict[str, float],
) -> None:
    """One phase's cells (targets[0]: the hello GET yardstick, measured again at the end of
    each connection count), appended to report["cells"]; drift[f"{phase}, {conns}"]."""
    for conns in conns_levels:
        group: list[tuple[Target, dict[str, Any]]] = []
        for t in [*targets, targets[0]]:  # the yardstick again at the end: drift
            group.append((t, run_wrk(t.server, t.endpoint, conns, seconds, client_cpus, tmp)))
        first, again = group[0][1], group[-1][1]
        drift[f"{phase}, {conns}"] = again["req_s"] / first["req_s"]
        ref = statistics.mean([first["req_s"], again["req_s"]])
        echo = next(r for t, r in group if t.endpoint.path == "/echo")
        ref_cpu = statistics.mean([first["server_cpu_us_per_req"], again["server_cpu_us_per_req"]])
        for i, (t, r) in enumerate(group):
            cell = {
                "target": t.key + (" (again)" if i == len(group) - 1 else ""),
                "phase": phase,
                "kind": t.kind,
                "endpoint": t.endpoint.label,
                "bank": t.bank,
                "fsync": t.fsync,
                "batch": t.batch,
                "conns": conns,
                **r,
                "x_hello_get": r["req_s"] / ref,
                "x_echo": r["req_s"] / echo["req_s"],
                "cpu_x_hello_get": r["server_cpu_us_per_req"] / ref_cpu,
                "cpu_x_echo": r["server_cpu_us_per_req"] / echo["server_cpu_us_per_req"],
            }
            report["cells"].append(cell)
            print(
                f"| {cell['target']:<28} | {conns:>5} | {r['req_s']:>8,.0f} "
                f"| {r['p50_ms']:>6.2f} | {r['p99_ms']:>6.2f} "
                f"| {r['server_cpu_us_per_req']:>10,.0f} | {cell['x_hello_get']:>5.2f} "
                f"| {cell['x_echo']:>6.2f} | {r['errors'] or '':>3} |",
                flush=True,
            )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="N=10k only, 1 and 16 connections, 1 s cells, no fsync=always server (under a minute)",
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per cell (default 4, --quick 1)"
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="bank sizes, slots (default 10,000 100,000 1,000,000; --quick 10,000)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin servers to CPU 0 and wrk to CPU 1"
    )
    parser.add_argument(
        "--log-level",
        default=Settings.model_fields["log_level"].default,
        help="uvicorn log level of every server (default: the service's)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for http.md / http.json",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    sizes = args.sizes or ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    conns_levels = [1, 16] if args.quick else [1, 16, 64]
    pin = not args.no_pin and os.cpu_count() is not None and os.cpu_count() >= 2  # type: ignore[operator]
    server_cpus, client_cpus = ("0", "1") if pin else (None, None)
    where = machine()  # before pinning: the machine, not this process's share of it
    if pin:
        os.sched_setaffinity(0, {1})  # this process fills the banks: keep it off the servers' CPU
    warm_s = 1.0 if not args.quick else 0.5
    defaults = Settings.model_fields
    weights = str(defaults["weights"].default)

    report: dict[str, Any] = {
        "date": now(),
        "command": command(argv, "bench.http"),
        "quick": args.quick,
        "machine": where,
        "versions": (pkgs := versions(PACKAGES)),
        "loadavg_start": list(os.getloadavg()),
        "client": wrk_version(),
        "settings": {
            "seconds_per_cell": seconds,
            "pinned": pin,
            "server_cpus": server_cpus,
            "client_cpus": client_cpus,
            "log_level": args.log_level,
            "access_log": defaults["access_log"].default,  # MT_ACCESS_LOG, also for hello
            "weights": weights,
            "batch_wait_ms": defaults["batch_wait_ms"].default,
            "uvicorn_loop": "uvloop" if pkgs["uvloop"] else "asyncio",
            "uvicorn_http": "httptools" if pkgs["httptools"] else "h11",
            "fill_batch": FILL_BATCH,
            "wrk": "1 thread, --timeout 10s",
        },
        "fills": [],
        "cells": [],  # "phase": reads or writes
    }
    with tempfile.TemporaryDirectory(prefix="mt-bench-http-") as tmp_name:
        tmp = Path(tmp_name)
        servers: list[Server] = []
        try:
            hello = start_hello(tmp, server_cpus, args.log_level, report["settings"]["access_log"])
            servers.append(hello)
            banks: dict[tuple[int, str], Server] = {}
            common = {
                "snapshot_every_s": 0,
                "snapshot_on_shutdown": "false",
                "log_level": args.log_level,
            }
            for n in sizes:
                banks[(n, "off")] = start_service(
                    f"service-{n}",
                    tmp,
                    server_cpus,
                    capacity=n,
                    wal_fsync="off",
                    snapshot_dir=tmp / f"snap-{n}",
                    **common,
                )
            if not args.quick:
                banks[(sizes[0], "always")] = start_service(
                    f"service-{sizes[0]}-always",
                    tmp,
                    server_cpus,
                    capacity=sizes[0],
                    wal_fsync="always",
                    snapshot_dir=tmp / f"snap-{sizes[0]}-always",
                    **common,
                )
            servers += banks.values()
            for s in servers:
                s.wait_ready()
            d = get_json(banks[(sizes[0], "off")].port, "/stats")["d"]
            for (n, fsync), s in banks.items():
                print(f"filling {s.name} ({n:,} slots, fsync={fsync}) ...", flush=True)
                report["fills"].append(fill(s, n, d) | {"server": s.name})
            report["d"] = d

            reads = tuple(read_bodies(d, 64, seed=1, rescore=0))  # the plain, one-stage read
            yardsticks: list[Target] = [
                Target(hello, Endpoint("hello GET sync", "GET", "/sync"), "hello"),
                Target(hello, Endpoint("hello GET async", "GET", "/async"), "hello"),
                Target(hello, Endpoint("hello echo", "POST", "/echo", reads), "hello"),
            ]
            phases: dict[str, list[Target]] = {"reads": [*yardsticks], "writes": [*yardsticks]}
            for (n, fsync), s in banks.items():
                if fsync == "off":
                    phases["reads"].append(
                        Target(s, Endpoint("read", "POST", "/read", reads), "service", n, fsync)
                    )
                    for cands in RESCORES:  # the same queries, R candidates rescored
                        ep = Endpoint(
                            f"read R={cands}", "POST", "/read", tuple(read_bodies(d, 64, 1, cands))
                        )
                        phases["reads"].append(Target(s, ep, "service", n, fsync))
                for b in (1, 32):
                    ep = Endpoint(
                        f"write x{b}",
                        "POST",
                        "/write",
                        tuple(write_bodies(d, b, 64 if b == 1 else 16, seed=2 + b)),
                    )
                    phases["writes"].append(Target(s, ep, "service", n, fsync, b))
            report["sizes"] = {}
            for t in [*phases["reads"], *phases["writes"][len(yardsticks) :]]:
                sizes_t = check_answers(t, d)  # (a write check writes a few items: distinct)
                report["sizes"].setdefault(t.endpoint.label.removeprefix("hello "), sizes_t)

            header = (
                f"| {'target':<28} | conns | {'req/s':>8} | p50 ms | p99 ms | CPU µs/req "
                "| x GET | x echo | err |"
            )
            drift: dict[str, float] = {}
            for phase, targets in phases.items():
                print(f"{phase}: warming up {len(targets)} targets ...", flush=True)
                for t in targets:
                    run_wrk(t.server, t.endpoint, 16, warm_s, client_cpus, tmp)
                print(
                    header + "\n|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|"
                )
                run_phase(phase, targets, conns_levels, seconds, client_cpus, tmp, report, drift)
            report["drift"] = drift
            report["server_logs_errors"] = {
                s.name: [x for x in s.log_tail(200).splitlines() if "ERROR" in x][-5:]
                for s in servers
            }
        finally:
            for s in servers:
                s.stop()
    report["loadavg_end"] = list(os.getloadavg())
    report["goal"] = []
    at16 = [c for c in report["cells"] if c["conns"] == 16]
    hello_p99 = max((c["p99_ms"] for c in at16 if c["endpoint"] == "hello GET sync"), default=None)
    report["rescore"] = []
    for c in at16:
        if c["endpoint"].startswith("read R="):
            plain = next(x for x in at16 if x["endpoint"] == "read" and x["bank"] == c["bank"])
            report["rescore"].append(
                {
                    "bank": c["bank"],
                    "R": int(c["endpoint"].removeprefix("read R=")),
                    "x_read": c["req_s"] / plain["req_s"],
                    "cpu_x_read": c["server_cpu_us_per_req"] / plain["server_cpu_us_per_req"],
                    "p99_ms": c["p99_ms"],
                }
            )
    for c in at16:
        if c["endpoint"] in ("read", f"read R={RESCORE_IMAGE}"):
            report["goal"].append(
                {
                    "read": "plain read" if c["endpoint"] == "read" else "default read",
                    "bank": c["bank"],
                    "x_hello_get": c["x_hello_get"],
                    "p99_ms": c["p99_ms"],
                    "hello_get_p99_ms": hello_p99,
                    "ratio_ok": c["x_hello_get"] >= 0.5,
                    "p99_ok": c["p99_ms"] <= 20.0,
                }
            )
    text = render(report)
    md, js = write_results("http", text, report, args.out)
    print("\n## Goal" + text.split("## Goal", 1)[1], end="")
    print(f"\nwrote {md} and {js}")
    return report


if __name__ == "__main__":
    main()
