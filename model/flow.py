"""Invertible building blocks of the IDRP flow f (MemoryTransit, Sec. 3.1).

The invertible-module contract, shared by every layer here:

    forward(x) -> (y, log_det)     inverse(y) -> (x, log_det)

x and y are (B, d); log_det is (B,) and holds log|det df/dx| for forward and log|det df^-1/dy|
for inverse, so the two are negatives of each other and `inverse(forward(x)[0])[0] == x` up to
rounding. Couplings follow RealNVP/Glow with FrEIA's soft clamp; permutations follow nflows
(fixed buffers, inverted by argsort), so everything needed to invert ships with the weights.

Every module with trained weights takes an optional `generator` and draws its initial weights
from it alone; `IDRP` passes one seeded from its config, so building a model never reads or
advances torch's global RNG. Without one they draw from the global RNG, as torch's modules do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def seeded_linear(dim_in: int, dim_out: int, generator: torch.Generator | None) -> nn.Linear:
    """nn.Linear(dim_in, dim_out) with torch's default init drawn from `generator` only.

    The layer is built uninitialised (on the meta device, then allocated), so nothing is drawn
    from the global RNG unless generator is None. Same draws as nn.Linear.reset_parameters:
    weight ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(dim_in), 1/sqrt(dim_in)), then bias ~ the
    same uniform, so a generator seeded like the global RNG gives nn.Linear's weights exactly.
    """
    layer = nn.utils.skip_init(nn.Linear, dim_in, dim_out)
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        bound = 1 / math.sqrt(dim_in) if dim_in > 0 else 0.0
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


class SwiGLU(nn.Module):
    """SwiGLU(x) = W_out(silu(W_a x) * W_b x) (Shazeer, 2020).

    W_a and W_b are the two halves of w_in's outputs: [W_a x, W_b x] = w_in(x), biases included.
    """

    def __init__(
        self,
        dim_in: int,
        dim_hidden: int,
        dim_out: int,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.w_in = seeded_linear(dim_in, 2 * dim_hidden, generator)
        self.w_out = seeded_linear(dim_hidden, dim_out, generator)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w_in(x).chunk(2, dim=-1)  # (B, h), (B, h)
        return self.w_out(F.silu(a) * b)


class ResidualBlock(nn.Module):
    """x + SwiGLU(LayerNorm(x)): the pre-norm residual block of the coupling subnetwork."""

    def __init__(self, dim: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ff = SwiGLU(dim, dim, dim, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.ff(self.norm(x))


class AffineCoupling(nn.Module):
    """y1 = x1, y2 = x2 * exp(s(x1)) + t(x1), with s soft-clamped to (-clamp, clamp).

    x is split into x1 (the first d1 = d // 2 values) and x2 (the other d2 = d - d1), so odd d
    works. x1 passes through untouched, bit for bit.
    """

    def __init__(
        self,
        d: int,
        hidden: int,
        n_blocks: int,
        clamp: float,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if d < 2:
            raise ValueError(f"expected d >= 2, got d={d}")
        self.d1 = d // 2
        self.d2 = d - self.d1
        self.clamp = clamp
        self.subnet = nn.Sequential(
            seeded_linear(self.d1, hidden, generator),
            *(ResidualBlock(hidden, generator=generator) for _ in range(n_blocks)),
            nn.LayerNorm(hidden),
            # Drawn, then zeroed below: the draw keeps every later layer's weights where they were.
            seeded_linear(hidden, 2 * self.d2, generator),
        )
        # The last layer starts at zero, so s = t = 0 and the untrained coupling is the identity:
        # the flow starts as its (PCA-initialised) linear map and training only moves away from it.
        last = self.subnet[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def _scale_shift(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.subnet(x1).chunk(2, dim=-1)  # (B, d2), (B, d2)
        s = self.clamp * torch.tanh(s / self.clamp)  # soft clamp: exp(s) in (e^-c, e^c)
        return s, t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, : self.d1], x[:, self.d1 :]
        s, t = self._scale_shift(x1)
        y2 = x2 * torch.exp(s) + t
        return torch.cat([x1, y2], dim=1), s.sum(dim=1)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        y1, y2 = y[:, : self.d1], y[:, self.d1 :]
        s, t = self._scale_shift(y1)
        x2 = (y2 - t) * torch.exp(-s)
        return torch.cat([y1, x2], dim=1), -s.sum(dim=1)


class Permutation(nn.Module):
    """A fixed random permutation of the d features, drawn from a local seeded generator."""

    perm: Tensor
    inv_perm: Tensor

    def __init__(self, d: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        perm = torch.randperm(d, generator=generator)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y[:, self.inv_perm], y.new_zeros(y.shape[0])


class FixedLinear(nn.Module):
    """y = (x - mean) @ W.T with W square and invertible, stored as buffers (not trained).

    Starts as the identity; `IDRP.fit_pca` sets it to a PCA rotation of the training data, so
    that with identity couplings z_comp are exactly the top-m principal components.
    """

    mean: Tensor
    weight: Tensor
    weight_inv: Tensor
    log_abs_det: Tensor

    def __init__(self, d: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("weight", torch.eye(d))
        self.register_buffer("weight_inv", torch.eye(d))
        self.register_buffer("log_abs_det", torch.zeros(()))

    @torch.no_grad()
    def set(self, mean: Tensor, weight: Tensor) -> None:
        w64 = weight.to(torch.float64)
        self.mean.copy_(mean)
        self.weight.copy_(w64)
        self.weight_inv.copy_(torch.linalg.inv(w64))
        self.log_abs_det.copy_(torch.linalg.slogdet(w64).logabsdet)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = (x - self.mean) @ self.weight.T
        return y, self.log_abs_det.expand(x.shape[0]).to(x.dtype)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x = y @ self.weight_inv.T + self.mean
        return x, -self.log_abs_det.expand(y.shape[0]).to(y.dtype)


class InvertibleNet(nn.Module):
    """f = [P_N . C_N] ... [P_1 . C_1] . L: a fixed linear map L, then N (coupling, permutation)."""

    def __init__(
        self,
        d: int,
        n_layers: int,
        hidden: int,
        n_blocks: int,
        clamp: float,
        seed: int,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        """seed fixes the permutations; generator (or the global RNG) the couplings' weights."""
        super().__init__()
        self.d = d
        self.linear = FixedLinear(d)
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers.append(AffineCoupling(d, hidden, n_blocks, clamp, generator=generator))
            layers.append(Permutation(d, seed=seed * 1_000_003 + i))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, log_det = self.linear(x)
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        log_det = y.new_zeros(y.shape[0])
        for layer in reversed(self.layers):
            assert isinstance(layer, AffineCoupling | Permutation)
            y, ld = layer.inverse(y)
            log_det = log_det + ld
        y, ld = self.linear.inverse(y)
        return y, log_det + ld

    def output_order(self) -> Tensor:
        """idx with z[:, j] = u[:, idx[j]] when every coupling is the identity (u = linear(x))."""
        idx = torch.arange(self.d, device=self.linear.mean.device)
        for layer in self.layers:
            if isinstance(layer, Permutation):
                idx = idx[layer.perm]
        return idx
