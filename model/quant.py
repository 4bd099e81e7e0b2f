"""How a bank stores its codes: float32 codes (n, m) to the storage dtype and back.

    float32, float16   the code itself (float16 refuses codes that overflow it)
    int8               round(z / scales) clamped to [-127, 127] (round half to even), whose
                       value is codes * scales; scales (m,) float32 > 0, per dimension (the
                       codec's `code_scales`, calibrated on training codes)
    rate               a rate-allocated code (model/ratecode.py): dimension j keeps an index
                       of bits[j] in 0..8 bits into its own sorted levels, the indices packed
                       most significant bit first into ceil(sum(bits) / 8) uint8 bytes per
                       code (the budget); it reads back as levels[j, index]. bits (m,) uint8
                       and levels (m, 256) float32 (`RateCode.tables`) are the whole code
                       book; an index is the number of midpoints between consecutive levels
                       that lie below the value (float32 arithmetic, so a restarted bank
                       quantises exactly as before)

A quantiser is its own object, as faiss' ScalarQuantizer is: the bank holds one and never
looks inside the bytes it stores. `width` is the number of storage values per code (m, or the
packed bytes for "rate"), `code_bytes` the bytes per stored code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from model.intscan import scale_spread
from model.search import all_finite
from model.state import DTYPES, INT8_MAX, RATE_LEVELS, rate_problem

if TYPE_CHECKING:
    from model.ratecode import RateCode

__all__ = ["DOT_DTYPES", "Quantiser", "RateTables"]

DOT_DTYPES = ("int8", "rate")  # the dtypes model/scan.py has a single-query kernel for

RateTables = tuple[Tensor, Tensor]  # bits (m,) uint8, levels (m, 256) float32


class Quantiser:
    """float32 codes <-> the storage dtype `dtype` (a key of model.state.DTYPES)."""

    def __init__(
        self,
        dtype: str,
        m: int,
        scales: Tensor | Sequence[float] | None = None,
        device: str | torch.device = "cpu",
        rate: RateCode | RateTables | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"expected dtype in {sorted(DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        self.m = m
        self.storage = DTYPES[dtype]
        self.width = m
        self.scales: Tensor | None = None
        self.spread: float | None = None  # int8: sqrt(sum 1 / scales^2)
        self.rate_bits: Tensor | None = None
        self.rate_levels: Tensor | None = None
        dev = torch.device(device)
        if dtype == "int8":
            if scales is None:
                raise ValueError("expected scales (m,) for dtype 'int8', got None")
            self.scales = _check_scales(scales, m, dev)
            self.spread = scale_spread(self.scales)  # a single read's integer-scan bound
        elif scales is not None:
            raise ValueError(f"expected scales=None for dtype {dtype!r} (int8 only), got a value")
        if dtype == "rate":
            if rate is None:
                raise ValueError("expected a rate code (bits, levels) for dtype 'rate', got None")
            self._set_rate(rate, dev)
        elif rate is not None:
            raise ValueError(f"expected rate=None for dtype {dtype!r} (rate only), got a value")

    @property
    def packed(self) -> bool:
        """Whether a stored code is packed bytes (not one value per dimension)."""
        return self.rate_bits is not None

    @property
    def code_bytes(self) -> int:
        """Bytes per stored code."""
        return self.width * self.storage.itemsize

    def _set_rate(self, rate: RateCode | RateTables, dev: torch.device) -> None:
        if isinstance(rate, tuple):
            bits, levels = (torch.as_tensor(t).detach() for t in rate)
        else:
            b_np, lv_np = rate.tables()
            bits, levels = torch.from_numpy(b_np), torch.from_numpy(lv_np)
        problem = rate_problem(bits, levels, self.m)
        if problem is not None:
            raise ValueError(f"expected a valid rate code, got one whose {problem}")
        self.rate_bits = bits.to(dev).clone()
        self.rate_levels = levels.to(dev).clone()
        b64 = bits.to(torch.int64)
        total = int(b64.sum())
        self.width = math.ceil(total / 8)
        start = torch.cumsum(b64, 0) - b64  # (m,) first bit of each dimension
        # Each index lies within 16 bits from its first byte (offset <= 7, bits <= 8).
        # (a 0-bit dimension reads any byte, masked to index 0; the last byte pair of a code
        # holds its last byte and a zero)
        byte = torch.where(b64 > 0, start // 8, 0).clamp(max=max(self.width - 1, 0))
        self._byte = byte.to(dev)  # (m,)
        self._shift = (16 - (start - 8 * byte) - b64).to(torch.int32).to(dev)  # (m,)
        self._mask = ((1 << b64) - 1).to(torch.int32).to(dev)  # (m,)
        self._row = (torch.arange(self.m) * RATE_LEVELS).to(torch.int32).to(dev)  # (m,)
        # Midpoints between consecutive levels, +inf past a dimension's 2^b - 1 (none at 0 bits).
        lv = levels.to(torch.float32)
        mid = (lv[:, 1:] + lv[:, :-1]) / 2  # (m, 255)
        used = torch.arange(RATE_LEVELS - 1)[None, :] < ((1 << b64) - 1)[:, None]
        self._edges = torch.where(used, mid, math.inf).to(dev)
        # Packing: bit t of a packed code is bit `_bit_shift[t]` of dimension `_bit_dim[t]`.
        dims = torch.repeat_interleave(torch.arange(self.m), b64)  # (total,)
        pos_in_dim = torch.arange(total) - start[dims]
        self._bit_dim = dims.to(dev)
        self._bit_shift = (b64[dims] - 1 - pos_in_dim).to(dev)
        self._byte_weights = (1 << torch.arange(7, -1, -1)).to(dev)  # MSB first, as np.packbits

    def quantise(self, z: Tensor) -> Tensor:
        """float32 codes (n, m) -> the storage dtype; ValueError when they do not fit it."""
        if self.rate_bits is not None:
            return self._pack(self.indices(z))
        if self.scales is not None:
            return torch.round(z / self.scales).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
        stored = z.to(self.storage)
        if not all_finite(stored):
            raise ValueError(f"expected codes within {self.dtype} range, got values that overflow")
        return stored

    def dequantise(self, c: Tensor) -> Tensor:
        """storage dtype (n, width) -> float32 codes (n, m)."""
        if self.rate_levels is not None:
            flat = self._flat_indices(c)  # (n * m,) int32 into the levels table
            return torch.index_select(self.rate_levels.view(-1), 0, flat).view(c.shape[0], self.m)
        if self.scales is not None:
            return c.to(torch.float32) * self.scales
        return c.to(torch.float32)

    @property
    def has_dot(self) -> bool:
        """Whether `dot` has a compiled kernel for this dtype."""
        return self.dtype in DOT_DTYPES

    def dot(self, c: Tensor, q: Tensor, out: Tensor) -> None:
        """On the CPU, one query's inner products with stored codes c (n, width), in one
        compiled pass (model/scan.py): out (n,) = q . dequantise(c) for rate codes, q . c for
        int8 codes (the scan folds the scales into q, as for its matrix products)."""
        if not self.has_dot:
            raise ValueError(f"expected an int8 or rate quantiser, got dtype {self.dtype!r}")
        # numba loads with the first read of an int8 or rate bank, not with every import of
        # the bank (0.2-0.4 s of start-up a float32 or float16 service never needs)
        from model import scan

        if self.rate_levels is not None:
            scan.rate_dot(c, q, self.rate_levels, self._byte, self._shift, self._mask, out)
        else:
            scan.int8_dot(c, q, out)

    def warm(self) -> None:
        """Load (or compile) the single-query kernel of this dtype now, on a one-code scan, so
        that the first read does not pay for it; nothing for dtypes without one. For a CPU
        quantiser (the kernels' only device)."""
        if self.has_dot:
            out = torch.empty(1, dtype=torch.float32)
            self.dot(torch.zeros(1, self.width, dtype=self.storage), torch.zeros(self.m), out)

    # ------------------------------------------------------------------ rate codes

    def indices(self, z: Tensor) -> Tensor:
        """rate: float32 codes (n, m) -> level indices (n, m) int64 (0 for 0-bit dimensions)."""
        zt = z.to(torch.float32).T.contiguous()  # (m, n)
        return torch.searchsorted(self._edges, zt).T  # left: the midpoints < z

    def _pack(self, idx: Tensor) -> Tensor:
        n = idx.shape[0]
        bits = (idx[:, self._bit_dim] >> self._bit_shift) & 1  # (n, total)
        padded = torch.zeros(n, self.width * 8, dtype=torch.int64, device=idx.device)
        padded[:, : bits.shape[1]] = bits
        return (padded.view(n, self.width, 8) * self._byte_weights).sum(2).to(torch.uint8)

    def unpack(self, c: Tensor) -> Tensor:
        """rate: packed codes (n, width) uint8 -> level indices (n, m) int64."""
        return ((self._windows(c) >> self._shift) & self._mask).to(torch.int64)

    def _windows(self, c: Tensor) -> Tensor:
        """The 16 bits from each dimension's first byte on, (n, m) int32: each byte pair is
        formed once per row (width of them), then gathered per dimension."""
        wide = torch.zeros(c.shape[0], self.width + 1, dtype=torch.int32, device=c.device)
        wide[:, : self.width] = c
        pairs = (wide[:, :-1] << 8) | wide[:, 1:]  # (n, width)
        return pairs[:, self._byte]  # (n, m)

    def _flat_indices(self, c: Tensor) -> Tensor:
        """Packed codes (n, width) -> row-major indices (n * m,) int32 into levels.view(-1)."""
        w = self._windows(c)
        w >>= self._shift
        w &= self._mask
        w += self._row
        return w.view(-1)


def _check_scales(scales: Tensor | Sequence[float], m: int, device: torch.device) -> Tensor:
    s = torch.as_tensor(scales).detach()
    if s.shape != (m,):
        raise ValueError(f"expected scales of shape ({m},), got {tuple(s.shape)}")
    s = s.to(device=device, dtype=torch.float32)
    if not all_finite(s) or not bool((s > 0).all()):
        raise ValueError(f"expected finite scales > 0, got {s.tolist()}")
    return s.clone()
