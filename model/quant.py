"""How a bank stores its codes: float32 codes (n, m) to the storage dtype and back.

    float32, float16   the code itself (float16 refuses codes that overflow it)
    int8               round(z / scales) clamped to [-127, 127] (round half to even), whose
                       value is codes * scales; scales (m,) float32 > 0, per dimension (the
                       codec's `code_scales`, calibrated on training codes)

A quantiser is its own object, as faiss' ScalarQuantizer is: the bank holds one and never
looks inside the bytes it stores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from model.search import all_finite
from model.state import DTYPES, INT8_MAX

__all__ = ["Quantiser"]


class Quantiser:
    """float32 codes <-> the storage dtype `dtype` (a key of model.state.DTYPES)."""

    def __init__(
        self,
        dtype: str,
        m: int,
        scales: Tensor | Sequence[float] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"expected dtype in {sorted(DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        self.storage = DTYPES[dtype]
        self.scales: Tensor | None = None
        if dtype == "int8":
            if scales is None:
                raise ValueError("expected scales (m,) for dtype 'int8', got None")
            self.scales = _check_scales(scales, m, torch.device(device))
        elif scales is not None:
            raise ValueError(f"expected scales=None for dtype {dtype!r} (int8 only), got a value")

    def quantise(self, z: Tensor) -> Tensor:
        """float32 codes (n, m) -> the storage dtype; ValueError when they do not fit it."""
        if self.scales is not None:
            return torch.round(z / self.scales).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
        stored = z.to(self.storage)
        if not all_finite(stored):
            raise ValueError(f"expected codes within {self.dtype} range, got values that overflow")
        return stored

    def dequantise(self, c: Tensor) -> Tensor:
        """storage dtype (n, m) -> float32 codes."""
        if self.scales is not None:
            return c.to(torch.float32) * self.scales
        return c.to(torch.float32)


def _check_scales(scales: Tensor | Sequence[float], m: int, device: torch.device) -> Tensor:
    s = torch.as_tensor(scales).detach()
    if s.shape != (m,):
        raise ValueError(f"expected scales of shape ({m},), got {tuple(s.shape)}")
    s = s.to(device=device, dtype=torch.float32)
    if not all_finite(s) or not bool((s > 0).all()):
        raise ValueError(f"expected finite scales > 0, got {s.tolist()}")
    return s.clone()
