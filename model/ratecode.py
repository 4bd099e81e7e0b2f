"""Rate-allocated scalar codes: a byte budget spread over code dimensions by measured distortion.

Storing every one of m code values as int8 spends the same 8 bits on the first principal
direction as on the last. A `RateCode` gives dimension j its own bit width b_j in 0..8 with
sum(b_j) <= 8 * budget, and a 2^b_j-level scalar quantiser fitted to the training codes of that
dimension (Lloyd-Max: 1-D k-means started from quantiles); a 0-bit dimension is stored as nothing
and read back as its training mean. Bits are allocated greedily, one at a time, to the dimension
whose measured mean squared error drops most (reverse water-filling with real quantisers instead
of the Gaussian formula). Packed, a code is ceil(sum(b_j) / 8) bytes: that is the budget.

Everything a reader needs (bits, levels, means) fits in a small JSON (`to_dict` / `from_dict`),
kept in the weights file's metadata (`info["rate_codes"]`) next to the codec it was fitted for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_BITS = 8


def lloyd_max(values: np.ndarray, bits: int, iters: int = 30) -> np.ndarray:
    """Sorted 2^bits reconstruction levels minimising the MSE of values (1-D k-means)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    k = 2**bits
    levels = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        edges = (levels[1:] + levels[:-1]) / 2
        idx = np.searchsorted(edges, v)
        sums = np.bincount(idx, weights=v, minlength=k)
        counts = np.bincount(idx, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), levels)
        if np.allclose(new, levels, rtol=0, atol=1e-12):
            break
        levels = np.sort(new)
    return levels


def _quantise_1d(v: np.ndarray, levels: np.ndarray) -> np.ndarray:
    edges = (levels[1:] + levels[:-1]) / 2
    return np.searchsorted(edges, v)


@dataclass(frozen=True)
class RateCode:
    bits: tuple[int, ...]  # (m,) bits per dimension, 0..8
    levels: tuple[tuple[float, ...], ...]  # per dimension, 2^bits sorted levels (() for 0 bits)
    means: tuple[float, ...]  # per dimension: the value a 0-bit dimension reads back as

    @property
    def m(self) -> int:
        return len(self.bits)

    @property
    def total_bits(self) -> int:
        return int(sum(self.bits))

    @property
    def code_bytes(self) -> int:
        return math.ceil(self.total_bits / 8)

    def encode(self, z: np.ndarray) -> np.ndarray:
        """Codes (N, m) float -> level indices (N, m) uint8 (0 for 0-bit dimensions)."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.m:
            raise ValueError(f"expected codes of {self.m} values, got shape {z.shape}")
        out = np.zeros(z.shape, dtype=np.uint8)
        for j, (b, lv) in enumerate(zip(self.bits, self.levels, strict=True)):
            if b:
                out[:, j] = _quantise_1d(z[:, j], np.asarray(lv))
        return out

    def decode(self, idx: np.ndarray) -> np.ndarray:
        """Level indices (N, m) -> dequantised codes (N, m) float32."""
        out = np.empty(idx.shape, dtype=np.float32)
        for j, (b, lv) in enumerate(zip(self.bits, self.levels, strict=True)):
            out[:, j] = np.asarray(lv, dtype=np.float32)[idx[:, j]] if b else self.means[j]
        return out

    def quantise(self, z: np.ndarray) -> np.ndarray:
        """What a bank holding these codes reads back: decode(encode(z))."""
        return self.decode(self.encode(z))

    def pack(self, idx: np.ndarray) -> np.ndarray:
        """Level indices (N, m) -> packed bytes (N, code_bytes): b_j bits per dimension."""
        bits = np.concatenate(
            [
                ((idx[:, j : j + 1].astype(np.uint16) >> np.arange(b - 1, -1, -1)) & 1)
                for j, b in enumerate(self.bits)
                if b
            ],
            axis=1,
        ).astype(np.uint8)
        return np.packbits(bits, axis=1)

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(packed, axis=1)[:, : self.total_bits]
        out = np.zeros((packed.shape[0], self.m), dtype=np.uint8)
        pos = 0
        for j, b in enumerate(self.bits):
            if b:
                weights = (1 << np.arange(b - 1, -1, -1)).astype(np.uint16)
                out[:, j] = (bits[:, pos : pos + b] * weights).sum(axis=1)
                pos += b
        return out

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """The bank's form of this code (model/quant.py): bits (m,) uint8 and levels (m, 256)
        float32, row j holding dimension j's 2^b_j levels (its mean for 0 bits), padded with
        its last level, so that levels[j, i] is what index i of dimension j reads back as."""
        table = np.empty((self.m, 2**MAX_BITS), dtype=np.float32)
        for j, (b, lv) in enumerate(zip(self.bits, self.levels, strict=True)):
            values = np.asarray(lv if b else (self.means[j],), dtype=np.float32)
            table[j, : len(values)] = values
            table[j, len(values) :] = values[-1]
        return np.asarray(self.bits, dtype=np.uint8), table

    def to_dict(self) -> dict[str, Any]:
        return {
            "bits": list(self.bits),
            "levels": [[round(x, 7) for x in lv] for lv in self.levels],
            "means": [round(x, 7) for x in self.means],
            "code_bytes": self.code_bytes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RateCode:
        bits = tuple(int(b) for b in d["bits"])
        levels = tuple(tuple(float(x) for x in lv) for lv in d["levels"])
        if len(levels) != len(bits) or any(
            len(lv) != (2**b if b else 0) for b, lv in zip(bits, levels, strict=True)
        ):
            raise ValueError("expected 2^bits levels per dimension")
        return cls(bits, levels, tuple(float(x) for x in d["means"]))


def fit_rate_code(
    z_train: np.ndarray,
    budget_bytes: int,
    max_bits: int = MAX_BITS,
    weights: np.ndarray | None = None,
    sample: int = 50_000,
    seed: int = 0,
) -> RateCode:
    """Allocate 8 * budget_bytes bits over the m dimensions of z_train (N, m), greedily.

    weights (m,) scale each dimension's squared error (default 1: code-space MSE). The levels
    are fitted on at most `sample` training rows (seeded).
    """
    z = np.asarray(z_train, dtype=np.float64)
    if len(z) > sample:
        z = z[np.random.default_rng(seed).choice(len(z), sample, replace=False)]
    m = z.shape[1]
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    means = z.mean(axis=0)
    levels: dict[tuple[int, int], np.ndarray] = {}
    dist = np.full((m, max_bits + 1), np.nan)
    dist[:, 0] = w * ((z - means) ** 2).mean(axis=0)

    def distortion(j: int, b: int) -> float:  # fitted lazily: most (j, b) are never needed
        if np.isnan(dist[j, b]):
            lv = lloyd_max(z[:, j], b)
            levels[(j, b)] = lv
            dist[j, b] = w[j] * ((z[:, j] - lv[_quantise_1d(z[:, j], lv)]) ** 2).mean()
        return float(dist[j, b])

    bits = np.zeros(m, dtype=int)
    gain = np.array([distortion(j, 0) - distortion(j, 1) for j in range(m)])
    for _ in range(8 * budget_bytes):
        j = int(np.argmax(gain))
        if not np.isfinite(gain[j]):
            break
        bits[j] += 1
        b = int(bits[j])
        gain[j] = distortion(j, b) - distortion(j, b + 1) if b < max_bits else -np.inf
    return RateCode(
        bits=tuple(int(b) for b in bits),
        levels=tuple(
            tuple(float(x) for x in levels[(j, int(b))]) if b else () for j, b in enumerate(bits)
        ),
        means=tuple(float(x) for x in means),
    )


def shipped_budgets(info: dict[str, Any]) -> list[str]:
    """The keys ("16B", "48B", ...) of the rate codes a weights file ships, smallest first."""
    codes = info.get("rate_codes")
    return sorted(codes, key=lambda k: int(k.rstrip("B"))) if isinstance(codes, dict) else []


def shipped_rate_code(info: dict[str, Any], code_bytes: int | None = None) -> RateCode:
    """The rate code a weights file ships for a bank of `code_bytes` per item (its
    info["rate_codes"]["<n>B"]); None: the file's default (info["rate_default"], else its only
    one). ValueError naming what the file has when there is no such code."""
    codes = info.get("rate_codes")
    have = shipped_budgets(info)
    if code_bytes is not None:
        key = f"{code_bytes}B"
    elif isinstance(info.get("rate_default"), str):
        key = info["rate_default"]
    elif len(have) == 1:
        key = have[0]
    else:
        raise ValueError(f"expected a budget among the file's rate codes {have}, got none")
    if not isinstance(codes, dict) or key not in codes:
        raise ValueError(f"expected a budget among the file's rate codes {have}, got {key!r}")
    return RateCode.from_dict(codes[key])
