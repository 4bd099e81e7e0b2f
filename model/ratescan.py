"""One query's inner products with packed rate codes, without decoding them: a numba kernel.

A rate code (model/quant.py) keeps, per dimension j, an index of bits[j] bits into its own
levels, packed most significant bit first. Scoring a single query against N such codes by
decoding them costs about seven torch passes over N x m values (byte pairs, a gather per
dimension, shift, mask, offset, the level look-up, then the matrix-vector product): 86-92 ms
at 100,000 codes of m = 192 (48 B) on one thread here. This kernel makes one pass over the
packed bytes: per code and dimension it reads the index from the dimension's 16-bit window,
looks it up in a per-query table T[j, i] = q_j * levels[j, i] (m x 256 float32, in cache) and
sums, in dimension order: 22 ms, the same value as q . dequantise(code) up to float32 rounding
(the sum order differs from torch's product). It releases the GIL while it runs.

numba compiles it on first use (about a second) and caches the machine code beside this file,
or in NUMBA_CACHE_DIR (the Dockerfile sets one: the image's code is read-only to the service);
with no writable cache folder it compiles once per process. CPU tensors only; the bank decodes
blocks on other devices.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor

__all__ = ["rate_dot"]


def _dot_py(
    codes: np.ndarray,
    byte: np.ndarray,
    shift: np.ndarray,
    mask: np.ndarray,
    table: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    n, width = codes.shape
    m = byte.shape[0]
    for i in range(n):
        s = np.float32(0.0)
        for j in range(m):
            b = byte[j]
            hi = np.int32(codes[i, b])
            lo = np.int32(codes[i, b + 1]) if b + 1 < width else np.int32(0)
            s += table[j, (((hi << 8) | lo) >> shift[j]) & mask[j]]
        out[i] = s


def _compiled(cache: bool) -> Any:
    return numba.njit(cache=cache, nogil=True, boundscheck=False, error_model="numpy")(_dot_py)


try:
    _dot = _compiled(cache=True)
except RuntimeError:  # no writable cache folder (read-only install, no NUMBA_CACHE_DIR)
    _dot = _compiled(cache=False)


def rate_dot(
    codes: Tensor,
    q: Tensor,
    levels: Tensor,
    byte: Tensor,
    shift: Tensor,
    mask: Tensor,
    out: Tensor,
) -> None:
    """out[i] = q . (code i dequantised), for packed codes (N, width) uint8 and one query q (m,)
    float32; levels (m, 256), byte (m,) int64, shift and mask (m,) int32 are the quantiser's
    code book and unpacking plan (model/quant.py). All on the CPU; out (N,) float32."""
    table = (q.to(torch.float32)[:, None] * levels).contiguous()  # (m, 256)
    _dot(
        codes.contiguous().numpy(),
        byte.numpy(),
        shift.numpy(),
        mask.numpy(),
        table.numpy(),
        out.numpy(),
    )
