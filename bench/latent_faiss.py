"""Does the flow help a vector quantiser? FAISS codecs on IDRP latents against the same codecs
on the raw embeddings, at equal bytes per item.

    python -m bench.latent_faiss [--tasks bible wordnet] [--keys RQ16x8 OPQ32,PQ32np ...]
                                 [--weights minilm-bible-m192-rate.safetensors ...] [--threads 2]

bench/text.py shows FAISS's residual quantiser (RQ16x8) ahead of every IDRP code at 16 bytes per
item, and OPQ ahead at 32 B on WordNet: there the IDRP codes are scalar-quantised (the rate
allocation of model/ratecode.py), and a vector quantiser spends its bits better. This asks
whether the flow's latent is a better space for the vector quantiser than the embedding
itself: per FAISS key (index_factory, as bench/text.py fits them), one row for the key on
the raw embeddings ("raw"), and per IDRP codec one row for the key fitted on the training
texts' codes z = f(x)[:m], the bank's codes quantised and decoded by the codec
(x_hat = f^-1([z_hat, g(z_hat)])). Rankings: `decoded` (cosine between the query embedding
and each x_hat, bench/text.py's FAISS ranking) and, for the latent rows, `code` (cosine between
the query's float code and z_hat, what the bank's one-pass search would do). Same tasks, splits,
columns and embeddings cache as bench/text.py (`python -m model.embed` first).

Writes bench/results/latent_faiss.md and latent_faiss.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from bench.common import RESULTS, ROOT, command, finish, set_threads
from bench.retrieval import faiss_roundtrip, ranked
from bench.text import Bench, render_task
from model import embed, text_data
from model.checkpoint import load_idrp
from model.idrp import decode_batched, encode_batched

KEYS = ("RQ16x8", "OPQ32,PQ32np")
WEIGHTS = ("minilm-bible-m192-rate", "minilm-text-m192-rate")
OPQ_NITER = 10  # bench/results/text.md's run


def run(b: Bench, key: str, weights: list[Path]) -> None:
    """bench/text.py's rows for `key` on the raw embeddings, then on each codec's latents."""
    t0 = time.perf_counter()
    x_hat, nbytes = faiss_roundtrip(key, b.train, b.bank, OPQ_NITER)
    b.decoded(f"FAISS {key} raw", nbytes, x_hat, fit_s=round(time.perf_counter() - t0, 1))
    for path in weights:
        model = load_idrp(path)
        z_train, z_bank, z_query = (
            encode_batched(model, x).numpy() for x in (b.train, b.bank, b.query)
        )
        t0 = time.perf_counter()
        z_hat, nbytes = faiss_roundtrip(key, z_train, z_bank, OPQ_NITER)
        x_hat = decode_batched(model, z_hat).numpy()
        label = f"IDRP {model.name} latent + FAISS {key}"
        b.decoded(label, nbytes, x_hat, fit_s=round(time.perf_counter() - t0, 1))
        b.add(label, nbytes, ranked(z_query, z_hat), x_hat, "code")


def render(report: dict[str, Any]) -> str:
    parts = [
        "# FAISS quantisers on IDRP latents against the same quantisers on the embeddings",
        "",
        "bench/latent_faiss.py: per FAISS key, the key fitted on the raw all-MiniLM-L6-v2 "
        "embeddings (`raw`) and on each IDRP codec's codes of the same training texts, the "
        "bank's codes quantised, then decoded by the codec. Bytes per bank item; columns as "
        "bench/results/text.md.",
    ]
    for name, r in report["tasks"].items():
        parts += ["", render_task(name, r)]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", nargs="+", choices=sorted(text_data.TASKS), default=None)
    p.add_argument("--keys", nargs="+", default=list(KEYS), help="faiss index_factory keys")
    p.add_argument("--weights", nargs="+", default=[f"{w}.safetensors" for w in WEIGHTS])
    p.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    p.add_argument("--cache-dir", type=Path, default=embed.CACHE_DIR)
    p.add_argument("--threads", type=int, default=2, help="torch, faiss and BLAS threads")
    p.add_argument("--out", type=Path, default=None, help=f"results folder (default {RESULTS})")
    args = p.parse_args(argv)
    weights = [args.weights_dir / w for w in args.weights]
    set_threads(args.threads)
    report: dict[str, Any] = {
        "command": command(argv, "bench.latent_faiss"),
        "settings": {"keys": args.keys, "weights": args.weights, "opq_niter": OPQ_NITER},
        "tasks": {},
    }
    t0 = time.perf_counter()
    with threadpool_limits(args.threads):
        for name in args.tasks or sorted(text_data.TASKS):
            task = text_data.load_task(name)
            b = Bench(task, embed.MINILM, (), args.cache_dir)
            b.run_exact()
            for key in args.keys:
                run(b, key, weights)
            report["tasks"][name] = {"sizes": task.sizes(), "rows": b.rows}
            print("\n" + render_task(name, report["tasks"][name]) + "\n", flush=True)
    report["seconds"] = time.perf_counter() - t0
    finish("latent_faiss", lambda: render(report), report, args.out, quick=False)
    return report


if __name__ == "__main__":
    main()
