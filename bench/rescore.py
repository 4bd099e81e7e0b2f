"""Reads that find the right item (issue 12): recall of a bank read with and without rescoring,
IDRP against PCA codes with the same rescoring and FAISS PQ / OPQ+PQ at equal bytes per item.

    python -m bench.rescore [--data digits mnist] [--opq-niter 10] [--out DIR]

Protocol (the issue's): bank = a data set's TRAINING split (model/data.py), queries = its
held-out TEST split, truth = each query's exact cosine nearest neighbour among the bank items in
input space. recall@1 = the read's first hit is the truth; top-10 = the truth is among the first
ten. Rankings:
- IDRP (every shipped weights file for the data set, or the files given with --weights): stage 1
  by cosine of codes, as the bank searches (float32 codes, 4m bytes; int8 codes with the weights'
  code_scales, m bytes; each rate-allocated code the file ships, model/ratecode.py, its budget
  in bytes; storages above MAX_BYTES are left out);
  `R` > 0 rescores the top R (model/rescore.py's rule: cosine between the query item and each
  candidate's reconstruction).
- PCA-m (fitted on the training split, centred coefficients, float32, 4m bytes): the same two
  stages, reconstructions = the PCA round trip.
- FAISS `PQ{M}np` and `OPQ{M},PQ{M}np` with M = each IDRP budget in bytes up to MAX_BYTES
  (8-bit subquantizers), fitted
  on the training split: every bank item ranked by cosine between the query and its decoded
  code (asymmetric: the query stays exact; what faiss's ADC search ranks by, up to the norm).
Writes bench/results/rescore.md and .json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS, ROOT, command, md_table, weights_where, write_results
from bench.quality import pq_roundtrip, stored
from bench.retrieval import PCAMap, ranked, rescored
from model import data as datasets
from model.checkpoint import load_idrp
from model.codec_info import default_rescore
from model.idrp import encode_batched
from model.ratecode import RateCode, shipped_budgets, shipped_rate_code
from service.settings import Settings

RS = (0, 10, 32, 100)
MAX_BYTES = 256  # bytes per item: larger storages (float32 codes of m > 64) are left out


def storages(model: Any, z: torch.Tensor) -> list[tuple[str, int, np.ndarray]]:
    """(name, bytes per item, what a bank of that storage reads back) for codes z (N, m):
    float32, int8 with the weights' code_scales, and each rate code in the file."""
    m = model.config.m
    out = [
        ("float32", 4 * m, stored(z, "float32").numpy()),
        ("int8", m, stored(z, "int8", model.code_scales.detach().cpu()).numpy()),
    ]
    for key in shipped_budgets(model.info):
        rc = RateCode.from_dict(model.info["rate_codes"][key])
        out.append((f"rate {key}", rc.code_bytes, rc.quantise(z.numpy()).astype(np.float32)))
    return out


def scores(top: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {
        "r1": float((top[:, 0] == truth).mean()),
        "top10": float((top == truth[:, None]).any(axis=1).mean()),
    }


class _PCAModel:
    """PCA codes with the decode `retrieval.rescored` calls (decode_batched(model, z))."""

    def __init__(self, pca: PCAMap) -> None:
        self.pca = pca

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.pca.decode(z.numpy()))


def with_defaults(
    model: Any, bank: np.ndarray, q: np.ndarray, zq: np.ndarray, truth: np.ndarray
) -> dict[str, float]:
    """What reads with the service's defaults find: a top_k 1 read ranks the top R
    (MT_RESCORE=auto: model.codec_info.default_rescore) by reconstruction, a top_k 10 read the
    top max(R, 10); R = 0 ranks by code alone."""
    r = default_rescore(model.info)
    one = ranked(zq, bank, k=1) if r == 0 else rescored(model, q, zq, bank, r, keep=1)
    ten = ranked(zq, bank) if r == 0 else rescored(model, q, zq, bank, max(r, 10))
    return {"R": r, "r1": float((one[:, 0] == truth).mean())} | {
        "top10": float((ten == truth[:, None]).any(axis=1).mean())
    }


def two_stage(model: Any, bank_codes: np.ndarray, q: np.ndarray, zq: np.ndarray) -> dict[int, Any]:
    out = {}
    for r in RS:
        top = ranked(zq, bank_codes) if r == 0 else rescored(model, q, zq, bank_codes, r)
        out[r] = top
    return out


def bench_data(
    name: str, opq_niter: int, weights: list[Path] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows of the full table, one row per weights file read with the service's defaults)"""
    split = datasets.load(name)
    tr = split.train.reshape(len(split.train), -1).astype(np.float32)
    te = split.test.reshape(len(split.test), -1).astype(np.float32)
    truth = ranked(te, tr, k=1)[:, 0]
    rows: list[dict[str, Any]] = []
    defaults: list[dict[str, Any]] = []  # one per weights file: its default storage and R
    faiss_done: set[int] = set()  # budgets whose FAISS rows are in: one fit per budget
    paths = weights or weights_where(
        ROOT / "weights", lambda info: info.get("data") == name and "embedder" not in info
    )
    for path in paths:
        model = load_idrp(path)
        m = model.config.m
        zb, zq = (
            encode_batched(model, torch.from_numpy(tr)),
            encode_batched(model, torch.from_numpy(te)),
        )
        budgets = set()
        default = Settings().resolved_bank_dtype(model.info)  # MT_BANK_DTYPE=auto
        if default == "rate":
            default = f"rate {shipped_rate_code(model.info).code_bytes}B"
        for storage, nbytes, bank in storages(model, zb):
            if storage == default:  # the default storage is read at any size
                defaults.append(
                    {"model": path.stem, "storage": storage, "bytes": nbytes}
                    | with_defaults(model, bank, te, zq.numpy(), truth)
                )
            if nbytes > MAX_BYTES:
                continue
            budgets.add(nbytes)
            for r, top in two_stage(model, bank, te, zq.numpy()).items():
                rows.append(
                    {"method": f"IDRP {path.stem} {storage}", "bytes": nbytes, "R": r}
                    | scores(top, truth)
                )
        pca = PCAMap(tr)
        if 4 * m <= MAX_BYTES:
            cb, cq = pca.codes(tr, m), pca.codes(te, m)
            for r, top in two_stage(_PCAModel(pca), cb, te, cq).items():
                rows.append(
                    {"method": f"PCA-{m} float32", "bytes": 4 * m, "R": r} | scores(top, truth)
                )
        for budget in sorted(budgets - faiss_done):
            faiss_done.add(budget)
            for opq in (False, True):
                x_hat, info = pq_roundtrip(tr, tr, budget, opq, opq_niter)
                top = ranked(te, x_hat)
                rows.append(
                    {"method": f"FAISS {info['factory']}", "bytes": budget, "R": "ADC"}
                    | scores(top, truth)
                )
    # one row per (method, bytes, R): PCA rows repeat across models of the same m
    unique: dict[tuple[str, int, Any], dict[str, Any]] = {}
    for row in rows:
        unique.setdefault((row["method"], row["bytes"], row["R"]), row)
    return list(unique.values()), defaults


def _recalls(row: dict[str, Any]) -> list[str]:
    return [f"{row['r1']:.3f}", f"{row['top10']:.3f}"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", nargs="+", default=["digits", "mnist"])
    parser.add_argument("--opq-niter", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--weights", type=Path, nargs="+", help="IDRP files to rank (default: weights/ for --data)"
    )
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"command": command(argv, "bench.rescore"), "data": {}}
    report["defaults"] = {}
    md = ["# Reads that find the right item: rescoring, PCA and FAISS at equal bytes\n"]
    md.append(f"`{report['command']}`; protocol in bench/rescore.py's docstring.\n")
    for name in args.data:
        rows, defaults = bench_data(name, args.opq_niter, args.weights)
        report["data"][name], report["defaults"][name] = rows, defaults
        md.append(f"\n## {name}\n")
        md.append(
            "With the service's defaults (MT_BANK_DTYPE=auto, MT_RESCORE=auto): recall@1 of a "
            "top_k 1 read (R candidates rescored), truth in the top 10 of a top_k 10 read "
            "(max(R, 10) rescored).\n"
        )
        md.append(
            md_table(
                ["model", "storage", "bytes/item", "R", "recall@1", "truth in top 10"],
                [[d["model"], d["storage"], d["bytes"], d["R"], *_recalls(d)] for d in defaults],
                "llrrrr",
            )
            + "\n"
        )
        md.append(
            md_table(
                ["method", "bytes/item", "R", "recall@1", "truth in top 10"],
                [[r["method"], r["bytes"], r["R"], *_recalls(r)] for r in rows],
                "lrrrr",
            )
            + "\n"
        )
    text = "\n".join(md)
    print(text)
    write_results("rescore", text, json.loads(json.dumps(report)), args.out)
    return report


if __name__ == "__main__":
    main()
