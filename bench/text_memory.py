"""Text memory as a service: /remember and /recall throughput against the embedder alone, and
the RAM a remembered text costs.

    python -m bench.text_memory [--n 2000] [--batch 32] [--clients 2] [--out DIR]

One run, on this machine, three measurements:
- **embedder alone**: all-MiniLM-L6-v2 (model/embed.py) embedding the same texts in batches of
  `--batch`, in process, one thread: the floor of any text memory built on it;
- **/remember** and **/recall** over real uvicorn (`python -m service`, the shipped text codec
  minilm-bible-m48, MT_WAL_FSYNC=always), `--clients` concurrent HTTP clients each sending
  requests of `--batch` texts: texts per second, and that as a fraction of the embedder alone;
- **RAM per slot**, in process (no embedder, whose own allocations would swamp it): a bank of
  `--ram-slots` slots (int8, m=48, the shipped text codec's) filled with verse texts and a
  payload each, as the service stores them: code + counter bytes per slot, the metadata's
  `meta_bytes` per slot (namespace, pin, record: model/slots.py), and the process RSS growth
  per slot while filling it, against a float32 384-d embedding (1,536 B) plus the text.

Texts: the first n KJV verses of the Bible task's bank (model/text_data.py); recall queries:
their WEB paraphrases. Writes bench/results/text_memory.md and .json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import RESULTS, ROOT, command, md_table, write_results
from bench.http import rss_bytes
from model import text_data
from model.embed import Embedder
from service.process import ServerProcess, free_port

WEIGHTS = ROOT / "weights" / "minilm-bible-m48.safetensors"


def rss(pid: int) -> int:
    return rss_bytes(pid)["VmRSS"]


def embed_alone(texts: list[str], batch: int) -> float:
    embedder = Embedder(batch_size=batch)
    embedder.embed(texts[:batch])  # load and warm up
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        embedder.embed(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - t0)


def load(url: str, path: str, bodies: list[dict[str, Any]], clients: int) -> float:
    """Send the bodies from `clients` threads; texts per second over the whole run."""
    queue = list(enumerate(bodies))
    lock = threading.Lock()
    errors: list[str] = []

    def work() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    _, body = queue.pop(0)
                r = http.post(path, json=body)
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return sum(len(b["texts"]) for b in bodies) / seconds


def ram_per_slot(texts: list[str], keys: list[str], n: int) -> dict[str, float]:
    """Bytes per slot of a bank of n slots (int8, m=48) whose every slot keeps a verse and a
    payload, as /remember stores them; RSS measured around the filling."""
    import torch

    from model.bank import MemoryBank
    from service.texts import record

    before = rss(os.getpid())
    bank = MemoryBank(n, 48, dtype="int8", scales=torch.full((48,), 0.01))
    g = torch.Generator().manual_seed(0)
    step = 10_000
    json_bytes = 0
    for start in range(0, n, step):
        idx = list(range(start, min(start + step, n)))
        recs = [record(texts[i % len(texts)], {"verse": keys[i % len(keys)]}) for i in idx]
        json_bytes += sum(len(r) for r in recs if r is not None)
        bank.assign(idx, torch.randn(len(idx), 48, generator=g), namespace="bench", records=recs)
    after = rss(os.getpid())
    stats = bank.stats()
    return {
        "state": stats["bytes"] / n,
        "cache": stats["cache_bytes"] / n,
        "meta": stats["meta_bytes"] / n,
        "record_json": json_bytes / n,
        "rss": (after - before) / n,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="texts remembered and recalled")
    parser.add_argument("--batch", type=int, default=32, help="texts per request / embed call")
    parser.add_argument("--clients", type=int, default=2, help="concurrent HTTP clients")
    parser.add_argument("--ram-slots", type=int, default=100_000, help="slots of the RAM test")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    task = text_data.bible_task()
    texts, queries = list(task.bank_texts[: args.n]), list(task.query_texts[: args.n])
    keys = list(task.bank_keys[: args.n])
    alone = embed_alone(texts, args.batch)

    folder = Path(tempfile.mkdtemp(prefix="mt-bench-text-"))
    env = {
        **os.environ,
        "MT_HOST": "127.0.0.1",
        "MT_PORT": str(free_port()),
        "MT_WEIGHTS": str(WEIGHTS),
        "MT_SNAPSHOT_DIR": str(folder / "snapshots"),
        "MT_CAPACITY": str(args.n),
        "MT_SNAPSHOT_EVERY_S": "0",
        "MT_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }
    server = ServerProcess(env, folder / "server.log").start()
    url = server.base
    try:
        server.wait_ready()
        assert server.proc is not None
        with httpx.Client(base_url=url, timeout=300) as http:
            http.post("/recall", json={"texts": ["warm up"]})
            empty_rss = rss(server.proc.pid)
            b = args.batch
            remember_bodies = [
                {"texts": texts[i : i + b], "payloads": [{"verse": k} for k in keys[i : i + b]]}
                for i in range(0, args.n, b)
            ]
            remember = load(url, "/remember", remember_bodies, args.clients)
            recall_bodies = [{"texts": queries[i : i + b]} for i in range(0, args.n, b)]
            recall = load(url, "/recall", recall_bodies, args.clients)
            stats = http.get("/stats").json()
            filled_rss = rss(server.proc.pid)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    ram = ram_per_slot(list(task.bank_texts), list(task.bank_keys), args.ram_slots)
    text_bytes = sum(len(t.encode()) for t in texts) / len(texts)
    rows = [
        ["embedder alone (in process, 1 thread)", f"{alone:,.0f}", "1.00"],
        [
            f"/remember over HTTP ({args.clients} clients)",
            f"{remember:,.0f}",
            f"{remember / alone:.2f}",
        ],
        [f"/recall over HTTP ({args.clients} clients)", f"{recall:,.0f}", f"{recall / alone:.2f}"],
    ]
    ram_rows = [
        ["bank state: int8 code (48) + counters per slot", f"{ram['state']:,.0f}"],
        ["float32 read cache (unit codes + mask) per slot", f"{ram['cache']:,.0f}"],
        ["metadata (namespace, pin, record JSON) per slot", f"{ram['meta']:,.0f}"],
        ["  of which the record's JSON (text + payload)", f"{ram['record_json']:,.0f}"],
        ["process RSS growth per filled slot", f"{ram['rss']:,.0f}"],
        [
            "a float32 384-d embedding + the same JSON, for comparison",
            f"{1536 + ram['record_json']:,.0f}",
        ],
    ]
    md = (
        "# Text memory: throughput against the embedder alone, and RAM per slot\n\n"
        f"{args.n} KJV verses remembered (with a payload each), then recalled by their WEB "
        f"paraphrases; {args.batch} texts per request; weights {WEIGHTS.name}; "
        f"`{command(argv, 'bench.text_memory')}`.\n\n"
        + md_table(["path", "texts/s", "x embedder alone"], rows, "lrr")
        + "\n\n"
        + f"RAM, {args.ram_slots:,} slots filled in process:\n\n"
        + md_table(["RAM", "bytes"], ram_rows, "lr")
        + "\n"
    )
    report = {
        "command": command(argv, "bench.text_memory"),
        "n": args.n,
        "batch": args.batch,
        "clients": args.clients,
        "texts_per_s": {"embedder_alone": alone, "remember": remember, "recall": recall},
        "bytes_per_slot": {**ram, "mean_text": text_bytes},
        "server_rss_bytes": {"empty": empty_rss, "filled": filled_rss},
        "stats": stats,
    }
    print(md)
    write_results("text_memory", md, report, args.out)
    return report


if __name__ == "__main__":
    main()
