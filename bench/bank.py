"""MemoryBank read throughput against faiss.IndexFlatIP, and snapshot save/load against a copy.

    python -m bench.bank [--quick] [--threads T] [--out bench/results]

Both sides search the same unit-length float32 codes for the top-1 inner product (= cosine).
The bank's read also does its bookkeeping (counts, ticks, hit/miss stats), faiss only searches.
Then, per storage dtype at 1M slots, a single read against the bandwidth floor of the bytes
its scan reads, and 256-query reads against faiss; and, per shipped rate codec at 10k and 100k
slots, the single-query scan of packed codes with and without model/scan.py's kernel.
Each number is the best of a few time-bounded repeats (the machine may be shared), with the
median kept in the JSON. Writes bench/results/bank.md and bench/results/bank.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/bank.py`: import from the repository root, and
    # not from bench/, whose http.py would shadow the standard library's http package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import faiss
import numpy as np
import torch

from bench import common
from model import snapshot
from model.bank import MemoryBank
from model.checkpoint import load_idrp
from model.ratecode import shipped_rate_code
from model.search import inverse_norms, search

ROOT = Path(__file__).resolve().parents[1]
# Shipped codecs whose default storage is packed rate codes (weights/README.md)
COPIES_HEADER = (  # the exact-copies table's columns, printed and rendered
    "| N | items x copies | k | bank ms (median) | bank ms (slowest) | slowest / median "
    "| faiss ms | faiss / bank |"
)
RATE_FILES = ("minilm-text-m192-rate", "mnist-m256-rate", "mnist-m384-rate")


def timings(
    fns: list[Callable[[], object]], *, min_reps: int, budget_s: float, max_reps: int = 30
) -> list[list[float]]:
    """Seconds per call of each fn, sampled in turn (a, b, a, b, ...) so that a busy machine
    slows every side alike: at least min_reps samples each, more while under budget_s in all.

    Fast calls are looped so each sample lasts about 20 ms (timer and dispatch noise)."""
    inners = []
    for fn in fns:
        fn()  # warm-up: allocations, caches, lazy initialisation
        start = time.perf_counter()
        fn()
        inners.append(max(1, math.ceil(0.02 / max(time.perf_counter() - start, 1e-7))))
    samples: list[list[float]] = [[] for _ in fns]
    begin = time.perf_counter()
    while len(samples[0]) < min_reps or (
        time.perf_counter() - begin < budget_s and len(samples[0]) < max_reps
    ):
        for fn, inner, out in zip(fns, inners, samples, strict=True):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            out.append((time.perf_counter() - t0) / inner)
    return samples


def machine() -> dict[str, Any]:
    """bench.common's machine facts plus this bench's thread counts and versions."""
    return {
        **common.machine(),
        **common.versions(),
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss": faiss.__version__,
        "loadavg_start": list(os.getloadavg()),
    }


def _cycle(fn: Callable[[Any], object], pool: Any, b: int) -> Callable[[], object]:
    """A call of fn on the next batch of b rows of pool, cycling."""
    state = {"i": 0}
    n = len(pool) // b

    def call() -> object:
        i = state["i"] = (state["i"] + 1) % n
        return fn(pool[i * b : (i + 1) * b])

    return call


def make_bank(n: int, m: int, seed: int) -> MemoryBank:
    g = torch.Generator().manual_seed(seed)
    bank = MemoryBank(n, m)
    bank.assign(torch.arange(n), torch.randn(n, m, generator=g))
    return bank


def flat_index(bank: MemoryBank) -> Any:
    """faiss IndexFlatIP over the bank's codes, dequantised and scaled to unit length (a copy):
    what the bank's cosine search is compared with."""
    codes = bank.codes_at(torch.arange(bank.capacity))
    index = faiss.IndexFlatIP(bank.m)
    index.add(torch.nn.functional.normalize(codes, dim=1).numpy())
    return index


def bench_read(
    n: int, m: int, batches: list[int], reps: int, budget_s: float
) -> list[dict[str, Any]]:
    bank = make_bank(n, m, seed=n + m)
    index = flat_index(bank)
    g = torch.Generator().manual_seed(1)
    rows = []
    for b in batches:
        pool = 64 if b == 1 else 1  # single queries cycle through distinct ones
        queries = torch.randn(pool * b, m, generator=g)
        qn = torch.nn.functional.normalize(queries, dim=1).numpy()
        # faiss and the bank must agree on the answers before their speed means anything
        ours = bank.read(queries[:b]).scores[:, 0].numpy()
        theirs, _ = index.search(qn[:b], 1)
        assert np.allclose(ours, theirs[:, 0], atol=1e-5), "bank and faiss disagree on top-1"
        bank_call = _cycle(lambda x: bank.read(x), queries, b)
        faiss_call = _cycle(lambda x: index.search(x, 1), qn, b)

        bank_t, faiss_t = timings([bank_call, faiss_call], min_reps=reps, budget_s=budget_s)
        row: dict[str, Any] = {
            "N": n,
            "m": m,
            "batch": b,
            "bank_qps": b / min(bank_t),
            "faiss_qps": b / min(faiss_t),
            "bank_ms_median": 1e3 * statistics.median(bank_t),
            "faiss_ms_median": 1e3 * statistics.median(faiss_t),
            "samples": [len(bank_t), len(faiss_t)],
        }
        row["ratio"] = row["bank_qps"] / row["faiss_qps"]
        rows.append(row)
        print(
            f"| {n:>9,} | {m:>3} | {b:>5} | {row['bank_qps']:>12,.0f} | {row['faiss_qps']:>12,.0f} "
            f"| {row['ratio']:>6.2f} |",
            flush=True,
        )
    return rows


def bench_dtypes(n: int, m: int, reps: int, budget_s: float) -> list[dict[str, Any]]:
    """Per storage dtype, at N slots: a single read against the bandwidth floor of the bytes
    its scan reads (the stored codes and the float32 inverse norms: one `sum` over a filled
    float32 buffer of that size, timed in turn with it), and a read of 256 queries against
    faiss IndexFlatIP over the same codes, dequantised and unit-length, as float32."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(n, m, generator=g)
    pool = torch.randn(64, m, generator=g)
    q256 = torch.randn(256, m, generator=g)
    results = []
    for dtype in ("float32", "float16", "int8"):
        scales = torch.full((m,), 0.05) if dtype == "int8" else None
        bank = MemoryBank(n, m, dtype=dtype, scales=scales)
        bank.assign(torch.arange(n), z)
        scanned = bank.codes.numel() * bank.codes.element_size() + n * 4  # + inverse norms
        floor_buf = torch.randn(scanned // 4, generator=g)
        index = flat_index(bank)
        ours = bank.search(q256[:8])[0][:, 0].numpy()
        _, theirs = index.search(torch.nn.functional.normalize(q256[:8], dim=1).numpy(), 1)
        assert (ours == theirs[:, 0]).mean() >= 0.75, "bank and faiss disagree on top-1"
        one = _cycle(bank.read, pool, 1)
        floor = partial(torch.sum, floor_buf)
        one_t, floor_t = timings([one, floor], min_reps=reps, budget_s=budget_s)
        qn256 = torch.nn.functional.normalize(q256, dim=1).numpy()
        batch_t, faiss_t = timings(
            [partial(bank.read, q256), partial(index.search, qn256, 1)],
            min_reps=max(2, reps - 1),
            budget_s=budget_s,
            max_reps=5,
        )
        r = {
            "N": n,
            "m": m,
            "dtype": dtype,
            "scanned_bytes": scanned,
            "read1_ms": 1e3 * min(one_t),
            "floor_ms": 1e3 * min(floor_t),
            "read256_qps": 256 / min(batch_t),
            "faiss256_qps": 256 / min(faiss_t),
            "state_bytes": bank.stats()["bytes"],
            "cache_bytes": bank.stats()["cache_bytes"],
        }
        r["read1_over_floor"] = r["read1_ms"] / r["floor_ms"]
        r["read256_over_faiss"] = r["read256_qps"] / r["faiss256_qps"]
        results.append(r)
        print(
            f"| {dtype} | {scanned / 2**20:.1f} | {r['read1_ms']:.2f} | {r['floor_ms']:.2f} "
            f"| {r['read1_over_floor']:.2f} | {r['read256_qps']:,.0f} | "
            f"{r['faiss256_qps']:,.0f} | {r['read256_over_faiss']:.1f} |",
            flush=True,
        )
    return results


def _scan(bank: MemoryBank, q: torch.Tensor, kernel: bool) -> torch.Tensor:
    """The slots (1, 10) of bench_rate's scan: with the kernel, or decoding every block."""
    qn = q * inverse_norms(q).unsqueeze(1)
    quant = bank.quant
    found = search(
        qn,
        bank.codes,
        quant.dequantise,
        None,
        bank._inv,
        bank.occupied,
        10,
        None,
        [],
        decode=quant.dequantise,
        dot=quant.dot if kernel else None,
    )
    return found[0]


def bench_rate(sizes: list[int], reps: int, budget_s: float) -> list[dict[str, Any]]:
    """Single-query scans of packed rate codes, top 10, per shipped rate codec at N slots: the
    scan through model/scan.py's kernel against the same scan decoding every block (the
    path before the kernel, and the one batches take), both via model.search.search over the
    bank's own buffers; the whole bank.read; the same codes stored as int8; and the floor of
    the bytes the kernel reads (packed codes + inverse norms). Random codes at the codec's
    per-dimension scales."""
    rows = []
    for name in RATE_FILES:
        model = load_idrp(ROOT / "weights" / f"{name}.safetensors")
        rc, m = shipped_rate_code(model.info), model.config.m
        spread = model.code_scales.detach() * 30  # typical codes: max |z| is 127 scales
        for n in sizes:
            g = torch.Generator().manual_seed(3)
            z = torch.randn(n, m, generator=g) * spread
            rate = MemoryBank(n, m, dtype="rate", rate=rc)
            rate.assign(torch.arange(n), z)
            int8 = MemoryBank(n, m, dtype="int8", scales=model.code_scales.detach())
            int8.assign(torch.arange(n), z)
            pool = torch.randn(64, m, generator=g) * spread

            same = [
                torch.equal(_scan(rate, q[None], True), _scan(rate, q[None], False))
                for q in pool[:8]
            ]
            assert all(same), "the kernel and the decoding scan disagree"
            scanned = rate.codes.numel() + n * 4
            floor_buf = torch.randn(scanned // 4, generator=g)
            t = timings(
                [
                    _cycle(partial(_scan, rate, kernel=True), pool, 1),
                    _cycle(partial(_scan, rate, kernel=False), pool, 1),
                    _cycle(partial(rate.read, top_k=10), pool, 1),
                    _cycle(partial(int8.read, top_k=10), pool, 1),
                    partial(torch.sum, floor_buf),
                ],
                min_reps=reps,
                budget_s=budget_s,
            )
            kernel_t, decoded_t, read_t, int8_t, floor_t = (1e3 * min(x) for x in t)
            r = {
                "codec": name,
                "N": n,
                "m": m,
                "code_bytes": rc.code_bytes,
                "kernel_ms": kernel_t,
                "decoded_ms": decoded_t,
                "read_ms": read_t,
                "int8_read_ms": int8_t,
                "floor_ms": floor_t,
                "scanned_bytes": scanned,
            }
            r["speedup"] = decoded_t / kernel_t
            rows.append(r)
            print(
                f"| {name} | {rc.code_bytes} | {n:,} | {kernel_t:.2f} | {decoded_t:.2f} "
                f"| {r['speedup']:.1f} | {read_t:.2f} | {int8_t:.2f} | {floor_t:.3f} "
                f"| {kernel_t / floor_t:.0f} |",
                flush=True,
            )
    return rows


def bench_copies(n: int, m: int, reps: int) -> list[dict[str, Any]]:
    """Batches of 16 queries, top k, over a bank where 576 items have n / 5882 exact copies
    each at random slots (a memory written the same facts again: bench.http's write cells do
    this to its banks), then the same bank with one more item copied n / 1000 times (in more
    than a quarter of the chunks) and one query of every fourth batch near it; against faiss
    over the same codes: the median and the slowest of 40 batches (each the best of reps
    rounds), so a batch that falls off the fast path shows."""
    g = torch.Generator().manual_seed(7)
    bank = make_bank(n, m, seed=7)
    items, copies = torch.randn(576, m, generator=g), n // 5882
    bank.assign(torch.randperm(n, generator=g)[: 576 * copies], items.repeat(copies, 1))
    batches = [torch.randn(16, m, generator=g) for _ in range(40)]
    rows = []
    for copied in (f"576 x {copies}", f"576 x {copies} + 1 x {n // 1000}"):
        if "+" in copied:  # one item in most chunks, and a query on it in every 4th batch
            item = torch.randn(m, generator=g)
            bank.assign(torch.randperm(n, generator=g)[: n // 1000], item.repeat(n // 1000, 1))
            for q in batches[::4]:
                q[0] = item + 0.01 * torch.randn(m, generator=g)
        index = flat_index(bank)
        for k in (1, 3, 32):
            ours, theirs = [], []
            for q in batches:
                qn = torch.nn.functional.normalize(q, dim=1).numpy()
                bank_t, faiss_t = timings(
                    [partial(bank.search, q, k), partial(index.search, qn, k)],
                    min_reps=reps,
                    budget_s=0.0,
                    max_reps=reps,
                )
                ours.append(min(bank_t))
                theirs.append(min(faiss_t))
            row = {
                "N": n,
                "m": m,
                "copied": copied,
                "k": k,
                "bank_ms_median": 1e3 * statistics.median(ours),
                "bank_ms_max": 1e3 * max(ours),
                "faiss_ms_median": 1e3 * statistics.median(theirs),
                "faiss_ms_max": 1e3 * max(theirs),
            }
            row["max_over_median"] = row["bank_ms_max"] / row["bank_ms_median"]
            row["ratio_median"] = row["faiss_ms_median"] / row["bank_ms_median"]
            rows.append(row)
            print(
                f"| {n:,} | {copied} | {k} | {row['bank_ms_median']:.1f} "
                f"| {row['bank_ms_max']:.1f} | {row['max_over_median']:.1f} "
                f"| {row['faiss_ms_median']:.1f} | {row['ratio_median']:.1f} |",
                flush=True,
            )
    return rows


def bench_snapshot(n: int, m: int, reps: int) -> dict[str, Any]:
    bank = make_bank(n, m, seed=7)
    bank.read(torch.randn(256, m))
    with tempfile.TemporaryDirectory(prefix="bank-bench-") as tmp:
        path, copy = Path(tmp) / "bank.safetensors", Path(tmp) / "copy.safetensors"
        save_t, load_t, copy_t, copy_sync_t = [], [], [], []
        size = 0
        for _ in range(reps):
            t0 = time.perf_counter()
            size = snapshot.save(bank, path, fingerprint="bench").bytes
            save_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loaded, _ = snapshot.load(path, expected_fingerprint="bench")
            load_t.append(time.perf_counter() - t0)
            del loaded
            t0 = time.perf_counter()
            shutil.copyfile(path, copy)
            copy_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            shutil.copyfile(path, copy)
            with open(copy, "rb+") as f:
                os.fsync(f.fileno())
            copy_sync_t.append(time.perf_counter() - t0)
    result: dict[str, Any] = {
        "N": n,
        "m": m,
        "dtype": "float32",
        "bytes": size,
        "save_s": min(save_t),
        "load_s": min(load_t),
        "copyfile_s": min(copy_t),
        "copyfile_fsync_s": min(copy_sync_t),
    }
    result["save_over_copy"] = result["save_s"] / result["copyfile_s"]
    result["load_over_copy"] = result["load_s"] / result["copyfile_s"]
    result["save_over_copy_fsync"] = result["save_s"] / result["copyfile_fsync_s"]
    return result


def render(report: dict[str, Any]) -> str:
    mach = report["machine"]
    lines = [
        "# MemoryBank read throughput vs faiss.IndexFlatIP",
        "",
        f"`{report['command'].strip()}` on {report['date']}: {mach['cpu']}, "
        f"{mach['cpus_usable']} usable CPUs, torch {mach['torch']} "
        f"({mach['torch_threads']} threads), faiss {mach['faiss']} "
        f"({mach['faiss_threads']} threads), Python {mach['python']}. Load average "
        f"{mach['loadavg_start'][0]:.1f} at start, {mach['loadavg_end'][0]:.1f} at end "
        "(a shared machine: numbers are the best of a few repeats and move between runs).",
        "",
        "Top-1 cosine over N random float32 codes: the bank scans its stored codes with one "
        "inverse norm per slot, faiss the same codes scaled to unit length (a copy); "
        "the bank's read includes its bookkeeping (counts, ticks, stats). faiss is the pip "
        "faiss-cpu wheel with its defaults (OpenBLAS; batches of 20 or more queries go through "
        "sgemm). Single queries: the bank scans in one compiled pass (model/onepass.py) and "
        "spends ~0.1-0.3 ms on its bookkeeping (validation, the returned slot's exact score, "
        "counts, ticks: ~30 small numpy calls and 3 torch ones, which run after the scan has "
        "pushed their code and data out of cache), which faiss's bare scan does not have; at "
        "1M slots both stream the whole matrix and the memory bus decides. Batches (16: "
        "what 16 concurrent HTTP reads make; 256): model/manyscan.py reads each code once "
        "for 16 queries (m fused multiply-adds a slot for all 16), faiss below 20 queries "
        "scans per query, from 20 on one sgemm.",
        "",
        "On a shared machine, prefer `--threads 1`: with 2 OpenMP threads per side and other "
        "jobs running, barrier waits swamped both libraries.",
        "",
        "| N | m | batch | bank q/s | faiss q/s | bank/faiss |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["read"]:
        lines.append(
            f"| {r['N']:,} | {r['m']} | {r['batch']} | {r['bank_qps']:,.0f} "
            f"| {r['faiss_qps']:,.0f} | {r['ratio']:.2f} |"
        )
    c = report["copies"]
    lines += [
        "",
        f"## Exact copies: batches of 16 over {c[0]['N']:,} slots",
        "",
        "Random float32 codes (m=16), then 576 random items written again and again at random "
        "slots, as a memory told the same facts many times (bench.http's write cells leave its "
        "banks so); then one more item copied N / 1000 times (more than a quarter of the "
        "chunks hold a copy) with one query of every fourth batch near it. 40 batches of 16 "
        "random queries, each timed as the best of a few rounds; `bank.search` (stage one of a "
        "read: no counting) against faiss IndexFlatIP over the same codes. A query whose top "
        "k holds a copied item keeps every chunk holding a copy. Before 2026-12-03 such a "
        "batch padded its other queries' scores to that width with -inf, which numpy's "
        "partition ranks ~200x slower (130-270 ms a batch at 1M, k = 3 and 32, against a "
        "7-12 ms median), and a query keeping more than a quarter of the chunks sent its whole "
        "batch to 16 single reads (67-76 ms); now that query alone is read by itself.",
        "",
        COPIES_HEADER,
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in c:
        lines.append(
            f"| {r['N']:,} | {r['copied']} | {r['k']} | {r['bank_ms_median']:.1f} "
            f"| {r['bank_ms_max']:.1f} | {r['max_over_median']:.1f} | {r['faiss_ms_median']:.1f} "
            f"| {r['ratio_median']:.1f} |"
        )
    s = report["snapshot"]
    lines += [
        "",
        f"## Snapshot of {s['N']:,} slots, m={s['m']}, {s['dtype']} ({s['bytes'] / 2**20:.1f} MiB)",
        "",
        "save = serialise + sha256 + write + fsync + rename + fsync dir; load = read + parse + "
        "sha256 + checks + read cache rebuild.",
        "",
        "| operation | seconds | / copyfile | / copyfile+fsync |",
        "|---|---:|---:|---:|",
        f"| save | {s['save_s']:.3f} | {s['save_over_copy']:.1f} "
        f"| {s['save_over_copy_fsync']:.1f} |",
        f"| load | {s['load_s']:.3f} | {s['load_over_copy']:.1f} | "
        f"{s['load_s'] / s['copyfile_fsync_s']:.1f} |",
        f"| shutil.copyfile | {s['copyfile_s']:.3f} | 1.0 | |",
        f"| shutil.copyfile + fsync | {s['copyfile_fsync_s']:.3f} | | 1.0 |",
    ]
    if report.get("dtypes"):
        d = report["dtypes"][0]
        lines += [
            "",
            f"## Storage dtypes: {d['N']:,} slots, m={d['m']}",
            "",
            "The bank scans the codes it stores (no float32 copy): per slot it reads the code "
            "and one float32 inverse norm; a single top-1 read is one pass of model/onepass.py's "
            "kernel over both (int8 on an AVX2 CPU: an integer pass that picks the chunks "
            "which can hold the best slot, then the float pass over those), plus the read's "
            "bookkeeping. floor = one `torch.sum` pass over "
            "a float32 buffer of that many bytes, timed in turn with the read (where the "
            "CPU's L3 holds the whole bank, the floor is the cache's bandwidth, not DRAM's). "
            "faiss: "
            "IndexFlatIP over the same codes, dequantised to unit-length float32.",
            "",
            "| dtype | scanned MiB | read, 1 query, ms | floor ms | read / floor "
            "| 256 queries: bank q/s | faiss q/s | bank / faiss |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report["dtypes"]:
            lines.append(
                f"| {r['dtype']} | {r['scanned_bytes'] / 2**20:.1f} | {r['read1_ms']:.2f} "
                f"| {r['floor_ms']:.2f} | {r['read1_over_floor']:.2f} "
                f"| {r['read256_qps']:,.0f} | {r['faiss256_qps']:,.0f} "
                f"| {r['read256_over_faiss']:.1f} |"
            )
    if report.get("rate"):
        lines += [
            "",
            "## Packed rate codes: one query, top 10",
            "",
            "The shipped rate codecs at their default budget, random codes at each codec's "
            "scales. kernel = the single-query scan over the packed bytes "
            "(model/scan.py: per code and dimension, an index from its 16-bit window and a "
            "look-up in a per-query table), decoding = the same scan unpacking and decoding "
            "every block, then a matrix-vector product (before the kernel; batches still do "
            "this, one matrix product for all their queries); both through "
            "`model.search.search`, with the same answers. read = the whole `bank.read` "
            "(kernel, bookkeeping); int8 = the same codes stored as int8 (m bytes); floor = "
            "one `torch.sum` over the bytes the kernel reads.",
            "",
            "| codec | B/code | N | kernel ms | decoding ms | speed-up | read ms | int8 read ms "
            "| floor ms | kernel / floor |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report["rate"]:
            lines.append(
                f"| {r['codec']} | {r['code_bytes']} | {r['N']:,} | {r['kernel_ms']:.2f} "
                f"| {r['decoded_ms']:.2f} | {r['speedup']:.1f} | {r['read_ms']:.2f} "
                f"| {r['int8_read_ms']:.2f} | {r['floor_ms']:.3f} "
                f"| {r['kernel_ms'] / r['floor_ms']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="N up to 100k, fewer repeats (about a minute)"
    )
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch and faiss threads"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="folder for bank.md/json"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    reps, budget_s = (2, 0.3) if args.quick else (3, 1.0)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "command": "python -m bench.bank " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "read": [],
    }
    print("| N | m | batch | bank q/s | faiss q/s | bank/faiss |\n|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for m in (16, 64):
            report["read"] += bench_read(n, m, [1, 16, 256], reps, budget_s)

    copies_n = 100_000 if args.quick else 1_000_000
    print(f"\n{COPIES_HEADER}\n|---:|---|---:|---:|---:|---:|---:|---:|")
    report["copies"] = bench_copies(copies_n, 16, reps)

    snap_n = 100_000 if args.quick else 1_000_000
    report["snapshot"] = bench_snapshot(snap_n, 16, reps=2 if args.quick else 3)
    s = report["snapshot"]
    print(
        f"\nsnapshot N={snap_n:,} m=16 ({s['bytes'] / 2**20:.1f} MiB): save {s['save_s']:.3f}s, "
        f"load {s['load_s']:.3f}s, copyfile {s['copyfile_s']:.3f}s "
        f"(+fsync {s['copyfile_fsync_s']:.3f}s): "
        f"save/copy {s['save_over_copy']:.1f}x, load/copy {s['load_over_copy']:.1f}x"
    )
    dtype_n = 100_000 if args.quick else 1_000_000
    print(
        "\n| dtype | scanned MiB | read 1 ms | floor ms | read/floor | bank 256 q/s "
        "| faiss 256 q/s | bank/faiss |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    report["dtypes"] = bench_dtypes(dtype_n, 16, reps, budget_s)
    print(
        "\n| codec | B/code | N | kernel ms | decoding ms | speed-up | read ms | int8 read ms "
        "| floor ms | kernel/floor |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    report["rate"] = bench_rate([10_000, 100_000], reps, budget_s)
    report["machine"]["loadavg_end"] = list(os.getloadavg())

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bank.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "bank.md").write_text(render(report))
    print(f"\nwrote {args.out / 'bank.md'} and {args.out / 'bank.json'}")
    return report


if __name__ == "__main__":
    main()
