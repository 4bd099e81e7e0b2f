"""Helpers for tests and scripts: small models with non-trivial weights, no training needed.

Not used by the service or by training: nothing under model/ (other than this module) or
service/ imports it. Everything here is seeded from local generators and leaves torch's global
RNG alone.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import IDRPConfig
from model.idrp import IDRP


def perturb_(model: nn.Module, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Add seeded noise to every parameter, so couplings and g are not the identity / zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.add_(scale * noise.to(p.device))
    return model


def tiny_idrp(d: int = 64, m: int = 16, seed: int = 0, **overrides: int | float) -> IDRP:
    """A small IDRP with perturbed (non-identity) weights, in eval mode: no training needed."""
    cfg = {"n_layers": 2, "hidden": 32, "n_blocks": 1, "predictor_hidden": 32, **overrides}
    model = IDRP(IDRPConfig(d=d, m=m, seed=seed, **cfg))  # type: ignore[arg-type]
    perturb_(model, seed=seed)
    model.fingerprint = f"tiny-{d}-{m}-{seed}"
    model.name = "tiny"
    return model.eval()
