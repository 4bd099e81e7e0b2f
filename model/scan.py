"""One query's inner products with the stored codes, in one compiled pass (numba kernels).

A single-query read scores every slot. torch does that in several passes over N x m values
when the stored codes are not float32; these kernels make one pass over the stored bytes and
write the N inner products, which the bank's scan (model/search.py) then scales by the inverse
norms and ranks. Both release the GIL while they run.

- int8 (`int8_dot`): out[i] = q . codes[i] with the int8 values widened to float32 (the caller
  folds the per-dimension scales into q). Compiled with fastmath, so that LLVM vectorises the
  sum: 2.6 ms at 1M x 16 on one thread here; the whole read with torch's cast-then-product
  blocks took 5.7 ms, with the kernel 5.0. Single reads over the whole bank take
  model/onepass.py's fused kernels instead (top 1: 0.8 ms); this one serves reads of one
  namespace, and of a top k too large for the bank to gain from chunk maxima.
- rate (`rate_dot`): a rate code (model/quant.py) keeps, per dimension j, an index of bits[j]
  bits into its own levels, packed most significant bit first. Decoding N of them costs about
  seven torch passes over N x m values (byte pairs, a gather per dimension, shift, mask,
  offset, the level look-up, then the matrix-vector product): 86-92 ms at 100,000 codes of
  m = 192 (48 B). The kernel looks each index up in a per-query table T[j, i] = q_j *
  levels[j, i] (m x 256 float32, in cache). Read from its dimension's 16-bit window, one
  index at a time, that took 22-26 ms (some 14 instructions per dimension). Rate codes give
  most dimensions 1-3 bits, so the kernel first adds the terms of the dimensions inside each
  code byte into one table per byte (width x 256 entries, built per query, ~50k adds): a
  code costs one look-up per byte, plus one per dimension that straddles two bytes, added into
  four sums (one chain of adds waited on itself): 4-8 ms for the text codec's 100,000 codes.

The values equal torch's up to float32 rounding (the sum order differs); they only rank
candidates, whose returned scores model/search.py recomputes exactly. numba compiles a kernel
on first use (about a second) and caches the machine code beside this file, or in
NUMBA_CACHE_DIR (the Dockerfile sets one: the image's code is read-only to the service); with no
writable cache folder it compiles once per process. CPU tensors only; on other devices the bank
scans with torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor

__all__ = ["int8_dot", "rate_dot"]


def _int8_dot_py(codes: np.ndarray, q: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    n, m = codes.shape
    for i in range(n):
        s = np.float32(0.0)
        for j in range(m):
            s += q[j] * np.float32(codes[i, j])
        out[i] = s


def _rate_dot_py(
    codes: np.ndarray,
    byte: np.ndarray,
    shift: np.ndarray,
    mask: np.ndarray,
    table: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    n, width = codes.shape
    m = byte.shape[0]
    # One table per code byte: bytes[k, v] = the terms of every dimension lying inside byte k
    # when that byte is v (0-bit dimensions, level 0 whatever the code, in byte 0's). The
    # dimensions that straddle two bytes keep their own look-up through the 16-bit window.
    wide = np.zeros((width, 256), dtype=np.float64)
    split = np.empty(m, dtype=np.int64)
    n_split = 0
    for j in range(m):
        if mask[j] == 0:
            for v in range(256):
                wide[0, v] += table[j, 0]
        elif shift[j] >= 8:  # its bits end within its first byte
            b, sh = byte[j], shift[j] - 8
            for v in range(256):
                wide[b, v] += table[j, (v >> sh) & mask[j]]
        else:
            split[n_split] = j
            n_split += 1
    bytes_ = wide.astype(np.float32)
    w4 = width - width % 4
    for i in range(n):  # four sums, so that no add waits for the one before it
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for k in range(0, w4, 4):
            s0 += bytes_[k, codes[i, k]]
            s1 += bytes_[k + 1, codes[i, k + 1]]
            s2 += bytes_[k + 2, codes[i, k + 2]]
            s3 += bytes_[k + 3, codes[i, k + 3]]
        for k in range(w4, width):
            s0 += bytes_[k, codes[i, k]]
        for t in range(n_split):
            j = split[t]
            b = byte[j]
            window = (np.int32(codes[i, b]) << 8) | np.int32(codes[i, b + 1])
            s1 += table[j, (window >> shift[j]) & mask[j]]
        out[i] = (s0 + s1) + (s2 + s3)


def _compiled(fn: Callable[..., None], fastmath: bool) -> Any:
    def jit(cache: bool) -> Any:
        options = {"nogil": True, "boundscheck": False, "error_model": "numpy"}
        return numba.njit(cache=cache, fastmath=fastmath, **options)(fn)  # type: ignore[call-overload]

    try:
        return jit(cache=True)
    except RuntimeError:  # no writable cache folder (read-only install, no NUMBA_CACHE_DIR)
        return jit(cache=False)


_int8_dot = _compiled(_int8_dot_py, fastmath=True)
_rate_dot = _compiled(_rate_dot_py, fastmath=False)  # a gather per term: nothing to vectorise


def int8_dot(codes: Tensor, q: Tensor, out: Tensor) -> None:
    """out[i] = q . codes[i] for int8 codes (N, m) and one query q (m,) float32 (scales folded
    in by the caller); out (N,) float32. All on the CPU."""
    _int8_dot(codes.contiguous().numpy(), q.to(torch.float32).contiguous().numpy(), out.numpy())


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
    _rate_dot(
        codes.contiguous().numpy(),
        byte.numpy(),
        shift.numpy(),
        mask.numpy(),
        table.numpy(),
        out.numpy(),
    )
