"""Load test: many concurrent clients, mixed reads and writes, against a real server.

    .venv/bin/python scripts/load_test.py [--clients 64] [--seconds 60] [--read-fraction 0.8]

Starts `python -m service` on 127.0.0.1 (own snapshot folder, capacity large enough that
nothing is evicted), pre-fills the bank, then runs `--clients` asyncio clients for `--seconds`:
each sends POST /read (top_k=1) or POST /write (mode "each", 1-4 items) at random. Checks:
every answer is 200; the bank's sum of access counts equals the number of read hits served
(each top-1 hit counts one access and nothing else does); writes acknowledged == the bank's
write counter. Prints a summary line and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.process import ServerProcess, free_port  # noqa: E402


async def client_loop(
    client: httpx.AsyncClient, d: int, seed: int, deadline: float, read_fraction: float,
    tally: Counter[str],
) -> None:  # fmt: skip
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        if rng.random() < read_fraction:
            query = [rng.random() for _ in range(d)]
            r = await client.post("/read", json={"queries": [query], "top_k": 1})
            if r.status_code == 200:
                tally["reads"] += 1
                tally["hits"] += sum(len(hits) for hits in r.json()["results"])
        else:
            items = [[rng.random() for _ in range(d)] for _ in range(rng.randint(1, 4))]
            r = await client.post("/write", json={"items": items, "mode": "each"})
            if r.status_code == 200:
                tally["write_requests"] += 1
                tally["items_written"] += len(r.json()["slots"])
        if r.status_code != 200:
            tally[f"status {r.status_code}"] += 1


async def run(base: str, d: int, args: argparse.Namespace) -> Counter[str]:
    tally: Counter[str] = Counter()
    # keep-alive shorter than uvicorn's 5 s: the client never reuses a connection the server is
    # closing at that moment (a ReadError under heavy load, not a server fault)
    limits = httpx.Limits(max_connections=args.clients, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        deadline = time.monotonic() + args.seconds
        loops = [
            client_loop(client, d, args.seed + i, deadline, args.read_fraction, tally)
            for i in range(args.clients)
        ]
        await asyncio.gather(*loops)
    return tally


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--read-fraction", type=float, default=0.8)
    p.add_argument("--prefill", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=str(ROOT / "weights" / "digits-m16.safetensors"))
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mt-load-"))
    env = {
        **os.environ,
        "MT_HOST": "127.0.0.1",
        "MT_PORT": str(free_port()),
        "MT_WEIGHTS": args.weights,
        "MT_CAPACITY": str(1_000_000),
        "MT_SNAPSHOT_DIR": str(work / "snapshots"),
        "MT_WAL_FSYNC": "always",
        "MT_LOG_LEVEL": "warning",
    }
    server = ServerProcess(env, work / "server.log").start()
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base, timeout=60) as c:
            d = int(c.get("/stats").json()["d"])
            rng = random.Random(args.seed)
            for _ in range(0, args.prefill, 500):
                items = [[rng.random() for _ in range(d)] for _ in range(500)]
                c.post("/write", json={"items": items, "mode": "each"}).raise_for_status()
            before = c.get("/stats").json()
        t0 = time.monotonic()
        tally = asyncio.run(run(server.base, d, args))
        elapsed = time.monotonic() - t0
        with httpx.Client(base_url=server.base, timeout=60) as c:
            after = c.get("/stats").json()
    finally:
        server.stop()

    count_sum = after["counts"]["sum"]  # no evictions and no deletes: every hit is still counted
    errors = {k: v for k, v in tally.items() if k.startswith("status")}
    written = after["writes"] - before["writes"]
    checks = {
        "no errors": not errors,
        "sum of access counts == read hits served": count_sum == tally["hits"],
        "items acknowledged == items written": written == tally["items_written"],
        "no evictions": after["evictions"] == 0,
    }
    requests = tally["reads"] + tally["write_requests"]
    print(
        f"load test: {args.clients} clients, {elapsed:.1f} s, {requests} requests "
        f"({requests / elapsed:.0f} req/s): {tally['reads']} reads ({tally['hits']} hits), "
        f"{tally['write_requests']} writes ({tally['items_written']} items); "
        f"bank count sum {count_sum}, errors {errors or 'none'}"
    )
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
