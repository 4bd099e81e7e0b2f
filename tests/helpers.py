"""Shared test helpers."""

from __future__ import annotations

import torch
from torch import nn


def assert_invertible(layer: nn.Module, x: torch.Tensor, atol: float) -> None:
    """Shape, dtype, finiteness, round trip and log_det_fwd + log_det_inv == 0."""
    y, ld_fwd = layer(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all() and torch.isfinite(ld_fwd).all()
    assert ld_fwd.shape == (x.shape[0],)
    x_back, ld_inv = layer.inverse(y)
    err = (x_back - x).abs().max().item()
    assert err <= atol, f"round trip error {err:.3g} > {atol:.1g}"
    assert torch.allclose(ld_fwd + ld_inv, torch.zeros_like(ld_fwd), atol=atol * 10)
