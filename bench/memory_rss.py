"""Resident memory of the real server with a large bank, against the bank's own bytes.

    python -m bench.memory_rss [--quick] [--slots N] [--dtypes float32,float16,int8] [--out DIR]

For each bank dtype, two `python -m service` processes (127.0.0.1, temporary snapshot folder,
MT_WAL_FSYNC=off, MT_SNAPSHOT_EVERY_S=0, MT_SNAPSHOT_ON_SHUTDOWN=false):

- baseline: a tiny bank (MT_CAPACITY=1000), given the same kind of traffic as the big one (20
  POST /write "each" of 1000 random items, then reads), so the model, torch's kernels, the
  JSON buffers of 1000-item requests and the allocator's arenas are all in its RSS too;
- big: MT_CAPACITY=N (default 1,000,000), filled over HTTP with POST /write "each" in batches
  of 1000 random [0, 1] items (no extrapolation: every slot is really written), RSS sampled as
  it fills, then 64 reads, then POST /snapshot (whose state copy shows in the peak, VmHWM).

RSS is VmRSS from /proc/<pid>/status (RssAnon beside it: without file-backed pages such as
the shared libraries). The bank's bytes are GET /stats "bank_bytes" (codes, counts, occupied,
last_write, last_access); the read cache that MemoryBank keeps on top of them (unit-length
float32 codes and a float32 mask: capacity * (m + 1) * 4 bytes, see model/memory.py) is GET
/stats "cache_bytes". Overhead = RSS delta (big - baseline) / those bytes; 1.0 would be
a server that holds nothing per slot beyond the bank. "empty" is the RSS of the big server
as soon as it is ready, before any write: the bank's tensors are allocated and zeroed (so
resident) at start, which is why filling adds little.

Writes bench/results/memory.md and memory.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, command, machine, now, versions, write_results
from bench.http import (
    FILL_BATCH,
    PACKAGES,
    Server,
    dumps,
    fill,
    get_json,
    post_json,
    read_bodies,
    rows,
    rss_bytes,
    start_service,
)

TINY = 1000
WARM_WRITES = 20
READS = 64
ITEM_BYTES = {"float32": 4, "float16": 2, "int8": 1}
MIB = 2**20


def settings(dtype: str, capacity: int, tmp: Path, name: str) -> dict[str, Any]:
    return {
        "capacity": capacity,
        "bank_dtype": dtype,
        "wal_fsync": "off",
        "snapshot_every_s": 0,
        "snapshot_on_shutdown": "false",
        "snapshot_dir": tmp / f"snap-{name}",
        "log_level": "warning",
    }


def do_reads(server: Server, d: int) -> None:
    for body in read_bodies(d, READS, seed=5):
        post_json(server.port, "/read", body)


def baseline(dtype: str, tmp: Path) -> dict[str, Any]:
    """RSS of a server with a tiny bank after the same kind of requests the big one gets."""
    s = start_service(f"tiny-{dtype}", tmp, None, **settings(dtype, TINY, tmp, f"tiny-{dtype}"))
    try:
        s.wait_ready()
        ready = rss_bytes(s.pid)
        d = get_json(s.port, "/stats")["d"]
        rng = np.random.default_rng(0)
        bodies = [dumps({"items": rows(rng, FILL_BATCH, d, 4), "mode": "each"}) for _ in range(8)]
        for i in range(WARM_WRITES):
            post_json(s.port, "/write", bodies[i % len(bodies)])
        do_reads(s, d)
        stats = get_json(s.port, "/stats")
        return {
            "ready": ready,
            "warm": rss_bytes(s.pid),
            "bank_bytes": stats["bank_bytes"],
            "d": d,
            "m": stats["m"],
        }
    finally:
        s.stop()


def big(dtype: str, slots: int, tmp: Path, d: int) -> dict[str, Any]:
    s = start_service(f"big-{dtype}", tmp, None, **settings(dtype, slots, tmp, f"big-{dtype}"))
    try:
        t0 = time.perf_counter()
        s.wait_ready()
        started_s = time.perf_counter() - t0
        ready = rss_bytes(s.pid)
        samples: list[dict[str, int]] = []
        step = max(FILL_BATCH, slots // 10)

        def sample(used: int) -> None:
            if used % step == 0:
                samples.append({"used": used, **rss_bytes(s.pid)})

        print(f"  filling {slots:,} slots ({dtype}) ...", flush=True)
        filled = fill(s, slots, d, on_batch=sample)
        after_fill = rss_bytes(s.pid)
        do_reads(s, d)
        after_reads = rss_bytes(s.pid)
        stats = get_json(s.port, "/stats")
        t0 = time.perf_counter()
        snap = post_json(s.port, "/snapshot", b"")
        snapshot_s = time.perf_counter() - t0
        after_snapshot = rss_bytes(s.pid)
        return {
            "start_s": started_s,
            "ready": ready,
            "fill": filled,
            "samples": samples,
            "after_fill": after_fill,
            "after_reads": after_reads,
            "after_snapshot": after_snapshot,
            "snapshot": {"bytes": snap["bytes"], "seconds": snapshot_s},
            "stats": {
                k: stats[k]
                for k in ("capacity", "used", "m", "bank_dtype", "bank_bytes", "cache_bytes")
            },
        }
    finally:
        s.stop()


def summarise(dtype: str, slots: int, base: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    m = b["stats"]["m"]
    bank = b["stats"]["bank_bytes"]
    cache = b["stats"]["cache_bytes"]
    rss, anon = b["after_reads"]["VmRSS"], b["after_reads"]["RssAnon"]
    delta = rss - base["warm"]["VmRSS"]
    return {
        "dtype": dtype,
        "slots": slots,
        "code_bytes": slots * m * ITEM_BYTES[dtype],
        "bank_bytes": bank,
        "cache_bytes": cache,
        "rss_baseline": base["warm"]["VmRSS"],
        "rss_empty": b["ready"]["VmRSS"],
        "rss_filled": rss,
        "rss_delta": delta,
        "anon_delta": anon - base["warm"]["RssAnon"],
        "overhead_bank": delta / bank,
        "overhead_bank_cache": delta / (bank + cache),
        "fill_growth": b["after_fill"]["VmRSS"] - b["ready"]["VmRSS"],
        "peak_before_snapshot": b["after_reads"]["VmHWM"],
        "peak_after_snapshot": b["after_snapshot"]["VmHWM"],
        "rss_after_snapshot": b["after_snapshot"]["VmRSS"],
        "snapshot_bytes": b["snapshot"]["bytes"],
        "snapshot_s": b["snapshot"]["seconds"],
        "fill_s": b["fill"]["seconds"],
        "fill_items_per_s": b["fill"]["items_per_s"],
    }


def table(rows_: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| dtype | slots | code MiB | bank MiB (/stats) | + read cache MiB (/stats) "
        "| baseline RSS MiB "
        "| empty RSS MiB | filled RSS MiB | RSS delta MiB | delta / bank "
        "| delta / (bank + cache) | delta B/slot | code B/slot | delta - code B/slot "
        "| peak before / after /snapshot MiB | RSS after /snapshot MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows_:
        lines.append(
            f"| {r['dtype']} | {r['slots']:,} | {r['code_bytes'] / MIB:.1f} "
            f"| {r['bank_bytes'] / MIB:.1f} | {r['cache_bytes'] / MIB:.1f} "
            f"| {r['rss_baseline'] / MIB:.0f} | {r['rss_empty'] / MIB:.0f} "
            f"| {r['rss_filled'] / MIB:.0f} | {r['rss_delta'] / MIB:.1f} "
            f"| {r['overhead_bank']:.2f} | {r['overhead_bank_cache']:.2f} "
            f"| {r['rss_delta'] / r['slots']:.1f} | {r['code_bytes'] / r['slots']:.0f} "
            f"| {(r['rss_delta'] - r['code_bytes']) / r['slots']:.1f} "
            f"| {r['peak_before_snapshot'] / MIB:.0f} / {r['peak_after_snapshot'] / MIB:.0f} "
            f"| {r['rss_after_snapshot'] / MIB:.0f} |"
        )
    return lines


def render(report: dict[str, Any]) -> str:
    mach = report["machine"]
    v = report["versions"]
    rows_ = report["rows"]
    lines = [
        "# Resident memory of the server against the bank's bytes",
        "",
        f"{report['date']}, {'--quick' if report['quick'] else 'full run'}: {mach['cpu']}, "
        f"{mach['cpu_count']} CPUs, {mach['mem_total_bytes'] / 2**30:.0f} GiB, Python "
        f"{v['python']}, torch {v['torch']}. Each big bank was filled over "
        f'HTTP: POST /write "each", {FILL_BATCH} random items per request, every slot really '
        "written (no extrapolation): "
        + ", ".join(
            f"{r['dtype']} {r['fill_s']:.0f} s ({r['fill_items_per_s']:,.0f} items/s)"
            for r in rows_
        )
        + ". Baseline: the same server with a 1000-slot bank after the same kind of "
        f"requests ({WARM_WRITES} writes of {FILL_BATCH} items, {READS} reads). RSS = VmRSS; "
        "MiB = 2^20 bytes.",
        "",
        *table(rows_),
        "",
        "code = slots x m x the dtype's size, the part the dtype changes; bank = what GET /stats "
        "reports as bank_bytes (codes plus 13 bytes of state per slot: count, last_write and "
        "last_access int32, occupied bool; namespace, pin and record columns are allocated "
        "only once used, and these writes use none); read cache = cache_bytes in /stats, one "
        "float32 inverse norm per slot whatever the dtype, plus the block buffer of blocked "
        "reads (the bank scans the stored codes); delta - code B/slot = what a slot costs the "
        "process beyond its code (issue 13's goal: 8; 13 + 4 are in the bank's tensors, the "
        "rest is the allocator's); empty = RSS of the big server before "
        "its first write (its tensors are zeroed, so resident, at start: filling adds only "
        + ", ".join(f"{r['fill_growth'] / MIB:.0f}" for r in rows_)
        + " MiB); peak = VmHWM before and after one POST /snapshot "
        "("
        + ", ".join(
            f"{r['snapshot_bytes'] / MIB:.0f} MiB in {r['snapshot_s']:.1f} s" for r in rows_
        )
        + "), which copies the state before writing it; RSS after /snapshot = what stays "
        "resident once it is done.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100k slots instead of 1M")
    parser.add_argument("--slots", type=int, default=None, help="slots of the big bank")
    parser.add_argument("--dtypes", default="float32,float16,int8")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for memory.md / memory.json",
    )
    args = parser.parse_args(argv)
    slots = args.slots or (100_000 if args.quick else 1_000_000)
    dtypes = [x.strip() for x in args.dtypes.split(",") if x.strip()]
    report: dict[str, Any] = {
        "date": now(),
        "command": command(argv, "bench.memory_rss"),
        "quick": args.quick,
        "machine": machine(),
        "versions": versions(PACKAGES),
        "slots": slots,
        "runs": {},
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="mt-bench-memory-") as tmp_name:
        tmp = Path(tmp_name)
        for dtype in dtypes:
            print(f"{dtype}: baseline (capacity {TINY}) ...", flush=True)
            base = baseline(dtype, tmp)
            b = big(dtype, slots, tmp, base["d"])
            report["runs"][dtype] = {"baseline": base, "big": b}
            report["rows"].append(summarise(dtype, slots, base, b))
    print("\n".join(table(report["rows"])))
    report["loadavg_end"] = list(os.getloadavg())
    md, js = write_results("memory", render(report), report, args.out)
    print(f"\nwrote {md} and {js}")
    return report


if __name__ == "__main__":
    main()
