"""Text memory at equal bytes per item: IDRP text codecs against FAISS quantisers, PCA, binary.

    python -m bench.text [--quick] [--tasks bible wordnet] [--threads 1] [--rescore 100]
                         [--opq-niter 25] [--faiss-keys OPQ16,PQ16np RQ16x8 ...]

Data (model/text_data.py, embeddings cached by `python -m model.embed`): all-MiniLM-L6-v2 unit
embeddings. Bible: bank = 20,000 KJV verses, queries = 2,000 WEB verses whose KJV verse is in the
bank (one right answer each). WordNet: bank = 50,000 glosses, queries = 2,000 example sentences.
FAISS, PCA and binary codecs are fitted on the task's training texts only (bank and query
items never); the IDRP codecs come trained (the shipped ones on the Bible task's training texts,
so on WordNet they are out of domain). Bytes are per bank item, nothing else per item (tables
ship once per codec).

Columns (each query ranks the whole bank; "exact" = float32 cosine over the true embeddings):
- task R@1: the top hit is the query's own item (Bible: the same verse in KJV). R@10 in the JSON.
- top-10 agreement: |returned top 10 & exact top 10| / 10, averaged over queries.
- top-1 agreement: the top hit equals the exact top hit (the WordNet column).
- rec cos: mean cosine between a bank embedding and its reconstruction from the stored code.

Rankings: FAISS, PCA and binary codes rank by cosine between the query embedding and each
decoded bank item ("decoded": beats faiss's inner-product search here). IDRP codes are ranked
three ways: `code`, cosine between the query's code f(q)[:m] (float) and the stored codes, with no
decoding (what the bank's one-pass search does); `rescore R`, the code ranking's top R decoded
and re-ranked by cosine with the query embedding (issue 12's two-stage read); `decoded`, every
bank item decoded (the ceiling of rescoring). IDRP storage: int8 (m B, the model's
code_scales), float16 (2m B) and each rate-allocated code in the weights (model/ratecode.py,
`info["rate_codes"]`).
PCA with the same rate allocation ("PCA rate") separates the flow's gain from the allocation's.

Writes bench/results/text.md and text.json (`--quick`: Bible, 16 and 48 B, fewer FAISS rows,
prints only unless --out is given).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from bench.common import RESULTS, ROOT, command, finish, md_table, set_threads, weights_where
from bench.quality import int8_scales, stored
from bench.retrieval import PCAMap, faiss_roundtrip, ranked, rec_cos, rescored, scores_of
from model import embed, text_data
from model.checkpoint import load_idrp
from model.idrp import decode_batched, encode_batched
from model.ratecode import RateCode, fit_rate_code, shipped_budgets

BUDGETS = (16, 32, 48, 96)
QUICK_BUDGETS = (16, 48)
RESCORE = (32, 100)


def as_int8(z: np.ndarray, scales: torch.Tensor) -> np.ndarray:
    """What an int8 bank with these per-dimension scales holds for codes z (bench.quality)."""
    return stored(torch.from_numpy(z), "int8", scales).numpy()


def text_weights(weights_dir: Path, spec: embed.EmbedderSpec) -> list[Path]:
    """Every weights file that is a text codec for this embedder."""

    def fits(info: dict[str, Any]) -> bool:
        try:
            embed.check_embedder(info, spec)
        except embed.EmbedderError:
            return False
        return True

    return weights_where(weights_dir, fits)


# ----------------------------------------------------------------------------------- the bench


class Bench:
    def __init__(
        self,
        task: text_data.TextTask,
        spec: embed.EmbedderSpec,
        budgets: Sequence[int],
        cache_dir: Path,
        log: bool = True,
    ) -> None:
        self.task, self.budgets, self.log = task, tuple(budgets), log
        self.bank = embed.cached_embeddings(task, "bank", spec, cache_dir)
        self.query = embed.cached_embeddings(task, "query", spec, cache_dir)
        self.train = embed.cached_embeddings(task, "train", spec, cache_dir)
        self.target = task.query_target
        self.exact = ranked(self.query, self.bank)
        self.rows: list[dict[str, Any]] = []
        self._pca: PCAMap | None = None

    def say(self, msg: str) -> None:
        if self.log:
            print(f"[{self.task.name}] {msg}", flush=True)

    @property
    def pca(self) -> PCAMap:
        if self._pca is None:
            self._pca = PCAMap(self.train)
        return self._pca

    def add(
        self,
        method: str,
        nbytes: int,
        top: np.ndarray,
        x_hat: np.ndarray | None,
        ranking: str,
        **extra: Any,
    ) -> dict[str, Any]:
        row = {
            "method": method,
            "bytes": nbytes,
            "ranking": ranking,
            **scores_of(top, self.exact, self.target),
            "rec_cos": None if x_hat is None else rec_cos(self.bank, x_hat),
            **extra,
        }
        self.rows.append(row)
        r = row
        rc = "-" if r["rec_cos"] is None else f"{r['rec_cos']:.3f}"
        self.say(
            f"{method} [{ranking}] {nbytes} B: R@1 {r['r1']:.3f} agree10 {r['agree10']:.3f} "
            f"agree1 {r['agree1']:.3f} rec {rc}"
        )
        return row

    def decoded(self, method: str, nbytes: int, x_hat: np.ndarray, **extra: Any) -> None:
        self.add(method, nbytes, ranked(self.query, x_hat), x_hat, "decoded", **extra)

    # -- rows

    def run_exact(self) -> None:
        self.add("float32 exact", 4 * self.bank.shape[1], self.exact, self.bank, "exact")

    def run_faiss(self, keys: Sequence[str], opq_niter: int) -> None:
        for key in keys:
            t0 = time.perf_counter()
            try:
                x_hat, nbytes = faiss_roundtrip(key, self.train, self.bank, opq_niter)
            except (RuntimeError, ImportError) as err:  # faiss refuses: say why, go on
                self.rows.append({"method": f"FAISS {key}", "skipped": str(err)[:300]})
                continue
            self.decoded(f"FAISS {key}", nbytes, x_hat, fit_s=round(time.perf_counter() - t0, 1))

    def run_pca_binary(self) -> None:
        d = self.bank.shape[1]
        for budget in self.budgets:
            m = min(budget, d)
            c_train, c_bank = self.pca.codes(self.train, m), self.pca.codes(self.bank, m)
            x_hat = self.pca.decode(as_int8(c_bank, int8_scales(torch.from_numpy(c_train))))
            self.decoded(f"PCA-{m} int8", m, x_hat)
        if 16 in self.budgets:  # sign of the top 128 principal components, 16 B
            c_train, c_bank = self.pca.codes(self.train, 128), self.pca.codes(self.bank, 128)
            x_hat = self.pca.decode(np.sign(c_bank) * np.abs(c_train).mean(axis=0))
            self.decoded("binary sign(PCA-128)", 16, x_hat)
        if 48 in self.budgets:  # sign of each of the 384 values, 48 B
            mag = np.abs(self.train).mean(axis=0)
            self.decoded("binary sign(x), 384 bits", d // 8, np.sign(self.bank) * mag)

    def run_pca_rate(self, m: int = 192) -> None:
        """PCA codes with the same greedy rate allocation as the IDRP rate codes."""
        c_train, c_bank = self.pca.codes(self.train, m), self.pca.codes(self.bank, m)
        for budget in self.budgets:
            rc = fit_rate_code(c_train, budget)
            x_hat = self.pca.decode(rc.quantise(c_bank))
            used = int(np.count_nonzero(rc.bits))
            self.decoded(f"PCA rate (m<={m}, {used} dims used)", rc.code_bytes, x_hat)

    def run_idrp(self, weights: Sequence[Path], rescore: Sequence[int]) -> None:
        for path in weights:
            model = load_idrp(path)
            m = model.config.m
            t0 = time.perf_counter()
            z_bank = encode_batched(model, self.bank).numpy()
            zq = encode_batched(model, self.query).numpy()
            modes: list[tuple[str, int, np.ndarray]] = []
            modes.append(("int8", m, as_int8(z_bank, model.code_scales)))
            modes.append(("float16", 2 * m, z_bank.astype(np.float16).astype(np.float32)))
            for key in shipped_budgets(model.info):
                rc = RateCode.from_dict(model.info["rate_codes"][key])  # type: ignore[index]
                modes.append((f"rate {key}", rc.code_bytes, rc.quantise(z_bank)))
            for mode, nbytes, zs in modes:
                if nbytes > max(self.budgets):
                    continue
                label = f"IDRP {model.name} {mode}"
                x_hat = decode_batched(model, zs).numpy()
                extra = {"model": model.name, "m": m, "storage": mode, "file": path.name}
                self.add(label, nbytes, ranked(zq, zs), x_hat, "code", **extra)
                for r in rescore:
                    top = rescored(model, self.query, zq, zs, r)
                    self.add(label, nbytes, top, x_hat, f"rescore {r}", **extra)
                self.add(label, nbytes, ranked(self.query, x_hat), x_hat, "decoded", **extra)
            self.say(f"{model.name}: {time.perf_counter() - t0:.0f} s")


def faiss_keys(budgets: Sequence[int], quick: bool) -> list[str]:
    keys = [f"OPQ{b},PQ{b}np" for b in budgets]
    if 16 in budgets:
        keys += ["RQ16x8"] if quick else ["RQ16x8", "LSQ16x8"]
    return keys


def throughput(spec: embed.EmbedderSpec, texts: Sequence[str], weights: Sequence[Path]) -> dict:
    """Embedder texts/s (one batch call of 64-text batches) and codec items/s, this process."""
    out: dict[str, Any] = {"texts": len(texts)}
    e = embed.Embedder(spec)
    e.embed(list(texts[:64]))  # load and warm up
    t0 = time.perf_counter()
    x = e.embed(list(texts))
    out["embedder_texts_per_s"] = len(texts) / (time.perf_counter() - t0)
    out["mean_words"] = float(np.mean([len(t.split()) for t in texts]))
    codecs = {}
    for path in weights:
        model = load_idrp(path)
        xt = torch.from_numpy(x)
        model.encode(xt[:64])
        t0 = time.perf_counter()
        z = model.encode(xt)
        enc = len(x) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.decode(z)
        dec = len(x) / (time.perf_counter() - t0)
        codecs[model.name] = {"encode_items_per_s": enc, "decode_items_per_s": dec}
    out["codecs"] = codecs
    return out


# ------------------------------------------------------------------------------------- output


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def render_task(name: str, r: dict[str, Any]) -> str:
    bible = name == "bible"
    head = ["B/item", "method", "ranking"]
    head += ["task R@1", "top-10 agr.", "top-1 agr.", "rec cos"] if bible else []
    head += [] if bible else ["top-1 agr.", "top-10 agr.", "task R@1", "rec cos"]
    rows = []
    for e in sorted(
        (e for e in r["rows"] if "skipped" not in e), key=lambda e: (e["bytes"], e["method"])
    ):
        vals = (
            [e["r1"], e["agree10"], e["agree1"], e["rec_cos"]]
            if bible
            else [e["agree1"], e["agree10"], e["r1"], e["rec_cos"]]
        )
        rows.append([e["bytes"], e["method"], e["ranking"], *(_f(v) for v in vals)])
    skipped = [f"- {e['method']}: skipped ({e['skipped']})" for e in r["rows"] if "skipped" in e]
    s = r["sizes"]
    out = [
        f"## {name} (bank {s['bank']:,}, queries {s['query']:,}; FAISS / PCA / binary fitted on "
        f"{s['train']:,} training texts, IDRP codecs as trained: weights/README.md)",
        "",
        md_table(head, rows, "rll" + "r" * 4),
    ]
    return "\n".join(out + (["", *skipped] if skipped else []))


def render(report: dict[str, Any]) -> str:
    parts = [
        "# Text memory at equal bytes per item (bench/text.py)",
        "",
        "all-MiniLM-L6-v2 embeddings (384-d, unit rows); every codec fitted on training texts "
        "only (the IDRP codecs on the Bible task's); bytes per bank item. Rankings: `exact` "
        "float32 cosine; `decoded` cosine between the query embedding and each decoded bank "
        "item; `code` cosine between the query's IDRP code and the stored codes (no decoding); "
        "`rescore R` the code ranking's top R decoded and re-ranked. See the module docstring "
        "for every column.",
    ]
    for name, r in report["tasks"].items():
        parts += ["", render_task(name, r)]
    t = report.get("throughput")
    if t:
        lines = [
            f"- embedder: {t['embedder_texts_per_s']:.0f} texts/s ({t['texts']} Bible bank "
            f"verses, {t['mean_words']:.1f} words on average, batches of 64, "
            f"{report['settings']['threads']} thread(s))"
        ]
        for name, c in t["codecs"].items():
            lines.append(
                f"- {name}: encode {c['encode_items_per_s']:,.0f} items/s, decode "
                f"{c['decode_items_per_s']:,.0f} items/s (one batch of {t['texts']})"
            )
        parts += ["", "## Throughput (CPU)", "", *lines]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="Bible, 16 and 48 B, print only")
    p.add_argument("--tasks", nargs="+", choices=sorted(text_data.TASKS), default=None)
    p.add_argument("--budgets", nargs="+", type=int, default=None)
    p.add_argument("--opq-niter", type=int, default=25)
    p.add_argument("--rescore", nargs="*", type=int, default=list(RESCORE))
    p.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    p.add_argument("--weights", nargs="*", type=Path, default=None, help="only these files")
    p.add_argument("--cache-dir", type=Path, default=embed.CACHE_DIR)
    p.add_argument("--no-faiss", action="store_true")
    p.add_argument(
        "--faiss-keys", nargs="+", default=None, help="index_factory keys (default: faiss_keys)"
    )
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch, faiss and BLAS threads")
    p.add_argument("--out", type=Path, default=None, help=f"results folder (default {RESULTS})")
    args = p.parse_args(argv)
    tasks = args.tasks or (["bible"] if args.quick else sorted(text_data.TASKS))
    budgets = tuple(args.budgets or (QUICK_BUDGETS if args.quick else BUDGETS))
    spec = embed.MINILM
    weights = args.weights if args.weights is not None else text_weights(args.weights_dir, spec)
    set_threads(args.threads)
    report: dict[str, Any] = {
        "command": command(argv, "bench.text"),
        "quick": args.quick,
        "settings": {
            "budgets": list(budgets),
            "opq_niter": args.opq_niter,
            "rq_beam": 8,
            "rescore": args.rescore,
            "threads": args.threads,
            "embedder": spec.info(),
            "weights": [str(w) for w in weights],
        },
        "tasks": {},
    }
    t0 = time.perf_counter()
    with threadpool_limits(args.threads):
        for name in tasks:
            task = text_data.load_task(name)
            b = Bench(task, spec, budgets, args.cache_dir)
            b.run_exact()
            b.run_idrp(weights, args.rescore)
            b.run_pca_binary()
            b.run_pca_rate()
            if not args.no_faiss:
                b.run_faiss(args.faiss_keys or faiss_keys(budgets, args.quick), args.opq_niter)
            report["tasks"][name] = {"sizes": task.sizes(), "rows": b.rows}
            print("\n" + render_task(name, report["tasks"][name]) + "\n", flush=True)
        if not args.no_throughput:
            bank = text_data.load_task("bible").bank_texts[:1000]
            report["throughput"] = throughput(spec, bank, weights)
    report["seconds"] = time.perf_counter() - t0
    finish("text", lambda: render(report), report, args.out, args.quick)
    return report


if __name__ == "__main__":
    main()
