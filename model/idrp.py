"""IDRP: invertible dimensionality reduction with a learnable auxiliary predictor.

Follows MemoryTransit (Sec. 3): an invertible flow f maps a flattened item x (d values) to
z = f(x); the first m values z_comp are the stored code, the other d - m (z_aux) are dropped and
predicted back by g(z_comp), so x_hat = f^-1([z_comp, g(z_comp)]). f and g train jointly on the
reconstruction error. Beyond the paper, f starts with a fixed PCA rotation (`fit_pca`), so the
untrained model reproduces PCA at the same m exactly and training can only start from there.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import IDRPConfig
from model.flow import InvertibleNet, SwiGLU, seeded_linear


class IDRP(nn.Module):
    code_scales: Tensor

    def __init__(self, config: IDRPConfig) -> None:
        super().__init__()
        self.config = config
        d, m = config.d, config.m
        # Every initial weight comes from this local generator, seeded from the config, so the
        # same config builds the same model and building one never reads or advances torch's
        # global RNG (CPU or CUDA), whichever thread builds it. The draws are in the order the
        # layers are built, as nn.Linear would draw them after torch.manual_seed(config.seed).
        generator = torch.Generator().manual_seed(config.seed)
        self.flow = InvertibleNet(
            d,
            config.n_layers,
            config.hidden,
            config.n_blocks,
            config.clamp,
            config.seed,
            generator=generator,
        )
        ph = config.predictor_hidden
        g_out = SwiGLU(ph, ph, d - m, generator=generator)  # drawn before g's first layer
        self.predictor = nn.Sequential(seeded_linear(m, ph, generator), g_out)
        # g starts at zero: the predicted z_aux is the training mean (0 after centring), as PCA.
        nn.init.zeros_(g_out.w_out.weight)
        nn.init.zeros_(g_out.w_out.bias)
        # Per-dimension scale for int8 bank storage: code / scale is rounded into [-127, 127].
        self.register_buffer("code_scales", torch.ones(m))
        self.fingerprint = ""  # set by checkpoint.load_idrp
        self.name = ""
        self.info: dict[str, object] = {}  # training facts from the weights file

    @property
    def device(self) -> torch.device:
        return self.code_scales.device

    # ----------------------------------------------------------------------------------------
    # the paper's maps

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z[:, : self.config.m], z[:, self.config.m :]

    def forward_codes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, ...) -> (z_comp (B, m), z_aux (B, d - m)), with gradients."""
        z, _ = self.flow(x.reshape(x.shape[0], -1))  # (B, d)
        return self.split(z)

    def reconstruct_from(self, z_comp: Tensor) -> Tensor:
        """z_comp (B, m) -> x_hat (B, d) = f^-1([z_comp, g(z_comp)]), with gradients."""
        z_aux = self.predictor(z_comp)  # (B, d - m)
        x_hat, _ = self.flow.inverse(torch.cat([z_comp, z_aux], dim=1))
        return x_hat

    def _check_items(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1) if x.dim() > 2 else x
        if x.dim() != 2 or x.shape[1] != self.config.d:
            raise ValueError(
                f"expected items of {self.config.d} values, got shape {tuple(x.shape)}"
            )
        return x.to(device=self.device, dtype=self.code_scales.dtype)

    @torch.no_grad()
    def encode(self, x: Tensor, refine_steps: int = 0, refine_lr: float = 0.02) -> Tensor:
        """Items (B, d) or (B, *shape) -> codes z_comp (B, m).

        refine_steps > 0 follows the one-pass code f(x)[:m] with that many Adam steps on
        ||decode(z) - x||^2 over z alone (iterative inference, beyond the paper): the decoder is
        unchanged and the code is still m numbers, but it fits the decoder better on items the
        model never saw. Each item's steps depend on that item only, so batching changes nothing.
        """
        x = self._check_items(x)
        z_comp, _ = self.forward_codes(x)
        return self.refine(x, z_comp, refine_steps, refine_lr) if refine_steps else z_comp

    def refine(self, x: Tensor, z_comp: Tensor, steps: int, lr: float = 0.02) -> Tensor:
        """Minimise ||reconstruct_from(z) - x||^2 over z from z_comp; weights get no gradient."""
        z = z_comp.detach().clone()
        m1, m2 = torch.zeros_like(z), torch.zeros_like(z)
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        with torch.enable_grad():
            for step in range(1, steps + 1):
                z.requires_grad_(True)
                loss = ((self.reconstruct_from(z) - x) ** 2).sum()
                (grad,) = torch.autograd.grad(loss, z)
                z = z.detach()
                m1.mul_(beta1).add_(grad, alpha=1 - beta1)  # Adam, written out so the weights'
                m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # .grad stay untouched
                step_size = lr * (1 - beta2**step) ** 0.5 / (1 - beta1**step)
                z.addcdiv_(m1, m2.sqrt().add_(eps), value=-step_size)
        return z

    def _check_codes(self, z_comp: Tensor) -> Tensor:
        if z_comp.dim() != 2 or z_comp.shape[1] != self.config.m:
            raise ValueError(f"expected codes of {self.config.m} values, got {tuple(z_comp.shape)}")
        return z_comp.to(device=self.device, dtype=self.code_scales.dtype)

    @torch.no_grad()
    def decode(self, z_comp: Tensor) -> Tensor:
        """Codes (B, m) -> reconstructions (B, d)."""
        return self.reconstruct_from(self._check_codes(z_comp))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def loss(
        self,
        x: Tensor,
        aux_weight: float = 0.0,
        code_noise: float = 0.0,
        sim_weight: float = 0.0,
        sim_temp: float = 0.0,
    ) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction MSE (+ aux_weight * MSE of g's z_aux prediction), for training.

        code_noise > 0 decodes z_comp + N(0, code_noise^2): the decoder learns to be smooth
        around each code, which helps held-out items and quantised (int8) codes.
        sim_weight > 0 adds a similarity-keeping term (`similarity_loss`): the cosines between
        the batch's codes should rank like the cosines between its items.
        """
        x = x.reshape(x.shape[0], -1)
        z_comp, z_aux = self.forward_codes(x)
        z_in = z_comp + code_noise * torch.randn_like(z_comp) if code_noise else z_comp
        recon = F.mse_loss(self.reconstruct_from(z_in), x)
        total = recon
        aux = torch.zeros((), device=x.device)
        if aux_weight > 0:
            aux = F.mse_loss(self.predictor(z_comp), z_aux)
            total = total + aux_weight * aux
        sim = torch.zeros((), device=x.device)
        if sim_weight > 0:
            sim = similarity_loss(x, z_comp, sim_temp)
            total = total + sim_weight * sim
        return total, {"recon": recon.item(), "aux": aux.item(), "sim": sim.item()}

    def predictor_loss(self, x: Tensor) -> Tensor:
        """MSE of g(z_comp) against z_aux with f frozen: the paper's pre-training phase for g."""
        with torch.no_grad():
            z_comp, z_aux = self.forward_codes(x.reshape(x.shape[0], -1))
        return F.mse_loss(self.predictor(z_comp), z_aux)

    # ----------------------------------------------------------------------------------------
    # data-dependent set-up

    @torch.no_grad()
    def fit_pca(self, x: Tensor) -> None:
        """Set f's linear map to the PCA rotation of x (B, d), ordered so that, while every
        coupling is the identity, z_comp holds the top-m principal components in order.

        The map is scaled by one scalar so the codes have unit mean variance per dimension.
        """
        x64 = x.reshape(x.shape[0], -1).to(torch.float64)
        mean = x64.mean(dim=0)  # (d,)
        # vh must be (d, d) even when there are fewer items than d (full_matrices); with many
        # items the full U (N, N) would not fit in memory, and the thin SVD has the same vh.
        full = x64.shape[0] < self.config.d or x64.shape[0] ** 2 * 8 <= 2**32
        _, sv, vh = torch.linalg.svd(x64 - mean, full_matrices=full)  # vh (d, d), rows = PCs
        total_var = (sv**2).sum() / max(x64.shape[0] - 1, 1)
        scale = (total_var / self.config.d).sqrt().clamp_min(1e-12)
        order = self.flow.output_order().cpu()  # z[:, j] = u[:, order[j]]
        weight = torch.empty_like(vh)
        weight[order] = vh / scale  # u[:, order[j]] = j-th principal component
        self.flow.linear.set(mean.to(self.device), weight.to(self.device))

    @torch.no_grad()
    def calibrate_code_scales(self, x: Tensor, batch_size: int = 1024) -> None:
        """Per-dimension int8 scales: max |z_comp| over the items x, divided by 127."""
        peak = torch.zeros(self.config.m, device=self.device)
        for i in range(0, x.shape[0], batch_size):
            peak = torch.maximum(peak, self.encode(x[i : i + batch_size]).abs().amax(dim=0))
        self.code_scales.copy_(peak.clamp_min(1e-8) / 127.0)


def similarity_loss(x: Tensor, z: Tensor, temp: float = 0.0) -> Tensor:
    """How far the in-batch cosines of codes z (B, m) are from those of items x (B, d).

    temp == 0: MSE between the two cosine matrices (diagonal excluded). temp > 0: listwise, the
    KL divergence from softmax(cos_x / temp) to softmax(cos_z / temp) per row (diagonal
    excluded), which weighs each item's nearest neighbours most, as a read does.
    """
    b = x.shape[0]
    cx = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T  # (B, B)
    cz = F.normalize(z, dim=1) @ F.normalize(z, dim=1).T
    off = ~torch.eye(b, dtype=torch.bool, device=x.device)
    if temp <= 0:
        return ((cz - cx)[off] ** 2).mean()
    lx = (cx / temp).masked_fill(~off, float("-inf"))
    lz = (cz / temp).masked_fill(~off, float("-inf"))
    p = F.softmax(lx, dim=1)
    kl = p * (F.log_softmax(lx, dim=1) - F.log_softmax(lz, dim=1))
    return kl.masked_fill(~off, 0.0).sum(dim=1).mean()


def encode_batched(model: IDRP, x: Tensor | np.ndarray, batch_size: int = 2048) -> Tensor:
    """Codes (N, m) of items x (N, d), in batches; on the CPU."""
    xt = torch.as_tensor(x)
    parts = [model.encode(xt[i : i + batch_size]).cpu() for i in range(0, len(xt), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, model.config.m)


def decode_batched(model: IDRP, z: Tensor | np.ndarray, batch_size: int = 2048) -> Tensor:
    """Reconstructions (N, d) of codes z (N, m), in batches; on the CPU."""
    zt = torch.as_tensor(z)
    parts = [model.decode(zt[i : i + batch_size]).cpu() for i in range(0, len(zt), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, model.config.d)


class _Encoder(nn.Module):
    """x (B, d) -> z_comp (B, m): the one-pass code, as a module torch.jit.trace can record."""

    def __init__(self, model: IDRP) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_codes(x)[0]


class _Decoder(nn.Module):
    """z_comp (B, m) -> x_hat (B, d), as a module torch.jit.trace can record."""

    def __init__(self, model: IDRP) -> None:
        super().__init__()
        self.model = model

    def forward(self, z_comp: Tensor) -> Tensor:
        return self.model.reconstruct_from(z_comp)


class CompiledCodec:
    """An IDRP's encode and decode with the one-pass maps run as frozen TorchScript graphs.

    Same signatures, input checks and results as `IDRP.encode` / `IDRP.decode`; refined codes
    (refine_steps > 0, which need autograd) run the eager model. Built by `compile_codec`.
    """

    def __init__(
        self, model: IDRP, encoder: torch.jit.ScriptModule, decoder: torch.jit.ScriptModule
    ) -> None:
        self.model = model
        self._encoder = encoder
        self._decoder = decoder

    @property
    def config(self) -> IDRPConfig:
        return self.model.config

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    @property
    def code_scales(self) -> Tensor:
        return self.model.code_scales

    @torch.no_grad()
    def encode(self, x: Tensor, refine_steps: int = 0, refine_lr: float = 0.02) -> Tensor:
        """Items (B, d) or (B, *shape) -> codes z_comp (B, m); see `IDRP.encode`."""
        if refine_steps:
            return self.model.encode(x, refine_steps, refine_lr)
        return self._encoder(self.model._check_items(x))

    @torch.no_grad()
    def decode(self, z_comp: Tensor) -> Tensor:
        """Codes (B, m) -> reconstructions (B, d); see `IDRP.decode`."""
        return self._decoder(self.model._check_codes(z_comp))


def compile_codec(model: IDRP, *, atol: float = 1e-6) -> CompiledCodec:
    """Trace the model's one-pass encode and decode on its device and freeze them, checked.

    torch.jit.trace records the ~40 small modules of the flow and the predictor as one graph
    per direction, and torch.jit.freeze folds the weights and permutation buffers into it as
    constants: the same kernels in the same order without Python dispatching each module, so the
    same numbers (bit for bit on CPU), 2-2.6x sooner for the small batches a server answers
    (digits-m16, one item, one CPU thread, measured 2026-12-02: encode 885 -> 338 us, decode
    933 -> 428 us; both still bound by op dispatch, ~137 top-level ops per encode). The
    graphs hold copies of the weights: later changes to the model do not reach them.

    Checked before it is returned: on probe batches of 1 and 7 random items (the graphs were
    traced with 4, so the batch size is not baked in), encode and decode must match the eager
    model within atol; otherwise RuntimeError says by how much. The probe runs also warm up
    TorchScript's profiling executor, whose first two calls are slow (~30 ms).
    """
    if model.training:
        raise ValueError("expected a model in eval mode, got one in training mode")
    d, m = model.config.d, model.config.m
    generator = torch.Generator().manual_seed(0)  # a local RNG: the global one is left alone
    probes = [torch.rand(b, d, generator=generator).to(model.device) for b in (4, 1, 7)]
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13 marks TorchScript deprecated in favour of torch.compile, which on CPU needs
        # a C++ toolchain at start. Should TorchScript go away, this raises and callers fall
        # back to the eager model, as the engine does.
        warnings.filterwarnings("ignore", r".*torch\.jit\.\w+` is deprecated", DeprecationWarning)
        z_trace = model.encode(probes[0])
        # check_trace=False: the tracer's own check reruns the same batch; ours below does not.
        encoder = torch.jit.trace(_Encoder(model).eval(), probes[0], check_trace=False)
        decoder = torch.jit.trace(_Decoder(model).eval(), z_trace, check_trace=False)
        encoder, decoder = torch.jit.freeze(encoder), torch.jit.freeze(decoder)
    codec = CompiledCodec(model, encoder, decoder)
    for x in probes[1:]:
        z = model.encode(x)  # (B, m)
        for name, got, want in (
            ("encode", codec.encode(x), z),
            ("decode", codec.decode(z), model.decode(z)),
        ):
            err = float((got - want).abs().max())
            if not err <= atol:  # also catches NaN
                raise RuntimeError(
                    f"traced {name} differs from the eager model by {err:.3g} on a batch of "
                    f"{x.shape[0]} (d={d}, m={m}), more than atol={atol:g}"
                )
    return codec
