"""IDRPConfig: everything needed to rebuild an IDRP model, shipped inside each weights file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class IDRPConfig:
    """Shape and hyper-parameters of an IDRP codec (MemoryTransit, Sec. 3).

    d: flattened input size; m: kept code size (z_comp), 1 <= m < d.
    n_layers: affine coupling layers, each followed by a fixed random permutation.
    hidden / n_blocks: width and residual SwiGLU blocks of each coupling's subnetwork.
    predictor_hidden: width of g (Linear -> SwiGLU -> Linear) that predicts z_aux from z_comp.
    clamp: soft bound on the log-scale s (|s| < clamp), so exp(s) stays in (e^-clamp, e^clamp).
    seed: seeds the permutations and the initial weights (local generators only).
    pca_init: precede the flow with a fixed, data-fitted invertible linear map (centre + PCA
        rotation), ordered so the untrained model reproduces PCA exactly (beyond the paper).
    """

    d: int
    m: int
    n_layers: int = 8
    hidden: int = 256
    n_blocks: int = 2
    predictor_hidden: int = 256
    clamp: float = 2.0
    seed: int = 0
    pca_init: bool = True

    def __post_init__(self) -> None:
        if self.d < 2:
            raise ValueError(f"expected d >= 2, got d={self.d}")
        if not 1 <= self.m < self.d:
            raise ValueError(f"expected 1 <= m < d={self.d}, got m={self.m}")
        for name in ("n_layers", "hidden", "predictor_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {name}={getattr(self, name)}")
        if self.n_blocks < 0:
            raise ValueError(f"expected n_blocks >= 0, got n_blocks={self.n_blocks}")
        if not self.clamp > 0:
            raise ValueError(f"expected clamp > 0, got clamp={self.clamp}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IDRPConfig:
        raw: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"expected config keys among {sorted(known)}, got unknown {unknown}")
        return cls(**raw)
