"""The pure helpers of bench/quality.py: storage round trips, bytes accounting, PCA at a budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import quality as q
from model import data
from model.bank import MemoryBank
from model.evaluate import metrics
from model.ratecode import fit_rate_code


def codes(n: int = 64, m: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, generator=g) * torch.logspace(-2, 1, m)  # (n, m), mixed scales


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_stored_value_is_what_the_bank_holds(dtype: str) -> None:
    z = codes()
    scales = q.int8_scales(z[:32])  # the held-out half goes past the scales: clamping is tested
    bank = MemoryBank(len(z), z.shape[1], dtype=dtype, scales=scales if dtype == "int8" else None)
    bank.assign(list(range(len(z))), z)
    held = torch.stack([bank.get(i).code for i in range(len(z))])
    assert torch.equal(q.stored(z, dtype, scales), held)


def test_int8_round_trip_is_exact_on_the_grid_and_within_half_a_step() -> None:
    z = codes()
    scales = q.int8_scales(z)
    z8 = q.stored(z, "int8", scales)
    assert torch.equal(q.stored(z8, "int8", scales), z8)  # idempotent: the grid maps to itself
    assert ((z8 - z).abs() <= scales / 2 * (1 + 1e-6)).all()  # scales from z: nothing clamps
    assert (z8 / scales).abs().max().item() == pytest.approx(127, abs=1e-4)  # the peak is +-127
    grid = torch.arange(-127, 128, dtype=torch.float32)[:, None] * scales  # (255, m)
    assert torch.equal(q.stored(grid, "int8", scales), grid)
    with pytest.raises(ValueError, match="scales"):
        q.stored(z, "int8")


def test_float16_round_trip() -> None:
    z = codes()
    z16 = q.stored(z, "float16")
    assert torch.equal(z16, z.half().float()) and torch.equal(q.stored(z16, "float16"), z16)
    assert torch.equal(q.stored(z, "float32"), z)


def test_bytes_accounting() -> None:
    assert [q.code_bytes(16, t) for t in ("float32", "float16", "int8")] == [64, 32, 16]
    assert [q.largest_m(64, t, 784) for t in ("float32", "float16", "int8")] == [16, 32, 64]
    assert q.largest_m(128, "int8", 64) == 64  # capped at d: digits at 128 B
    assert q.largest_m(17, "float32", 784) == 4  # rounds down, never over the budget
    assert [q.pixel_bits(b, 64) for b in (8, 16, 32, 64, 128)] == [None, 2, 4, 8, 8]
    assert q.pixel_bits(128, 784) is None  # MNIST fits no budget as raw pixels
    with pytest.raises(ValueError, match="dtype"):
        q.code_bytes(4, "bfloat16")
    with pytest.raises(ValueError, match="budget"):
        q.largest_m(0, "int8", 64)


def test_quantise_pixels_and_padding() -> None:
    x = np.linspace(0, 1, 11, dtype=np.float32)[None, :]
    x4 = q.quantise_pixels(x, 4)
    assert np.allclose(x4 * 15, np.round(x4 * 15)) and np.abs(x4 - x).max() <= 0.5 / 15 + 1e-7
    assert np.array_equal(q.quantise_pixels(np.array([[0.0, 1.0]]), 2), [[0.0, 1.0]])
    p = q.pad_columns(x, 16)
    assert p.shape == (1, 16) and p.flags.c_contiguous and np.array_equal(p[:, :11], x)
    assert not p[:, 11:].any()


def test_pca_int8_at_a_budget() -> None:
    split = data.digits()
    m = q.largest_m(32, "int8", split.d)
    pca = q.fit_pca(split.train, m)
    x8, scales = q.pca_roundtrip(pca, split.train, split.test, "int8")
    x32, none = q.pca_roundtrip(pca, split.train, split.test, "float32")
    assert m == 32 and q.code_bytes(m, "int8") == 32 and none is None
    assert scales is not None and scales.shape == (32,)
    train_peak = q.pca_codes(pca, split.train).abs().amax(dim=0)
    assert torch.allclose(scales * 127, train_peak)
    p8, p32 = metrics(split.test, x8)["psnr"], metrics(split.test, x32)["psnr"]
    assert p32 - 0.2 < p8 <= p32 + 1e-6  # int8 costs little at m = 32
    assert (
        p8
        > metrics(
            split.test,
            q.pca_roundtrip(q.fit_pca(split.train, 8), split.train, split.test, "float32")[0],
        )["psnr"]
    )


def test_cosine_nn_and_bank_read_agree_on_full_codes() -> None:
    z = codes(n=50, m=8, seed=1)
    queries = codes(n=20, m=8, seed=2)
    exact = q.cosine_nn(z.numpy(), queries.numpy())
    assert np.array_equal(q.bank_top1(z, queries, "float32", None).numpy(), exact)


def test_rate_stored_is_what_a_rate_bank_holds() -> None:
    z = codes(n=200)
    rc = fit_rate_code(z[:100].numpy(), 5)  # the held-out half goes past the training range
    bank = MemoryBank(len(z), z.shape[1], dtype="rate", rate=rc)
    bank.assign(list(range(len(z))), z)
    held = torch.stack([bank.get(i).code for i in range(len(z))])
    assert torch.equal(q.rate_stored(z, rc), held)
    assert bank.stats()["code_bytes"] == 5


def test_pca_rate_beats_pca_int8_at_the_same_bytes() -> None:
    """On digits at 16 B: PCA-16 int8 (8 bits on 16 coefs) vs the same bytes allocated over
    all 64 coefs; the allocation alone wins more than 1 dB here."""
    split = data.digits()
    x8, _ = q.pca_roundtrip(q.fit_pca(split.train, 16), split.train, split.test, "int8")
    xr = q.pca_rate_roundtrip(q.fit_pca(split.train, 64), split.train, split.test, 16)
    p8, pr = metrics(split.test, x8)["psnr"], metrics(split.test, xr)["psnr"]
    assert pr > p8 + 1.0
