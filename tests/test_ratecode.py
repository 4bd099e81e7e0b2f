"""Rate-allocated scalar codes: budgets, allocation, Lloyd-Max levels, packing, JSON, and the
bank's "rate" storage (model/quant.py) that holds them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.bank import MemoryBank
from model.quant import Quantiser
from model.ratecode import RateCode, fit_rate_code, lloyd_max, shipped_rate_code


def gaussian_codes(n: int = 4000, m: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, m)) * np.geomspace(4.0, 0.05, m)  # falling variances


def test_lloyd_max_is_optimal_for_two_levels_of_a_gaussian() -> None:
    v = np.random.default_rng(0).standard_normal(200_000)
    lv = lloyd_max(v, 1)
    assert lv == pytest.approx([-0.798, 0.798], abs=0.01)  # +-sqrt(2/pi)
    assert np.all(np.diff(lloyd_max(v, 3)) > 0)


@pytest.mark.parametrize("budget", [4, 16, 23])
def test_budget_is_met_and_bits_follow_the_variance(budget: int) -> None:
    z = gaussian_codes()
    rc = fit_rate_code(z, budget)
    assert rc.total_bits == 8 * budget and rc.code_bytes == budget  # 24 dims x 8 bits caps it
    assert fit_rate_code(z, 32).bits == (8,) * 24
    assert all(0 <= b <= 8 for b in rc.bits)
    assert list(rc.bits) == sorted(rc.bits, reverse=True)  # more variance, more bits
    zq = rc.quantise(z)
    assert zq.shape == z.shape and zq.dtype == np.float32
    mse = ((zq - z) ** 2).mean()
    assert mse < ((fit_rate_code(z, budget // 2).quantise(z) - z) ** 2).mean()  # bits help


def test_zero_bit_dimensions_read_back_as_the_mean_and_pack_round_trips() -> None:
    z = gaussian_codes()
    rc = fit_rate_code(z, 4)
    zero = [j for j, b in enumerate(rc.bits) if b == 0]
    assert zero and np.allclose(rc.quantise(z)[:, zero], np.array(rc.means)[zero])
    idx = rc.encode(z[:50])
    packed = rc.pack(idx)
    assert packed.shape == (50, rc.code_bytes) and packed.dtype == np.uint8
    assert np.array_equal(rc.unpack(packed), idx)


def test_json_round_trip_and_checks() -> None:
    rc = fit_rate_code(gaussian_codes(), 8)
    back = RateCode.from_dict(rc.to_dict())
    z = gaussian_codes(seed=1)[:100]
    assert back.bits == rc.bits
    np.testing.assert_allclose(back.quantise(z), rc.quantise(z), atol=1e-5)
    bad = {**rc.to_dict(), "levels": [[0.0]] * rc.m}
    with pytest.raises(ValueError, match="2\\^bits levels"):
        RateCode.from_dict(bad)
    with pytest.raises(ValueError, match="codes of 24 values"):
        rc.encode(np.zeros((2, 3)))


# ---------------------------------------------------------------------- the bank's storage


@pytest.mark.parametrize("budget", [3, 4, 7, 16, 24])
def test_bank_quantiser_packs_and_reads_back_exactly_as_the_rate_code(budget: int) -> None:
    """Quantiser("rate") stores RateCode.pack(encode(z)) byte for byte (24 dims: 0-bit
    dimensions last at small budgets, all 8 bits at 24 B) and reads back decode()."""
    z = gaussian_codes()
    rc = fit_rate_code(z, budget)
    q = Quantiser("rate", rc.m, rate=rc)
    assert (q.width, q.code_bytes, q.packed) == (rc.code_bytes, rc.code_bytes, True)
    zt = torch.from_numpy(z[:700].astype(np.float32))
    stored = q.quantise(zt)
    idx = rc.encode(z[:700])
    assert stored.dtype == torch.uint8 and stored.shape == (700, rc.code_bytes)
    assert np.array_equal(stored.numpy(), rc.pack(idx))
    assert torch.equal(q.unpack(stored), torch.from_numpy(idx.astype(np.int64)))
    assert np.array_equal(q.dequantise(stored).numpy(), rc.decode(idx))
    assert torch.equal(q.quantise(q.dequantise(stored)), stored)  # levels quantise to themselves


def test_bank_quantiser_rebuilt_from_its_tables_is_the_same() -> None:
    rc = fit_rate_code(gaussian_codes(), 7)
    q = Quantiser("rate", rc.m, rate=rc)
    assert q.rate_bits is not None and q.rate_levels is not None
    again = Quantiser("rate", rc.m, rate=(q.rate_bits, q.rate_levels))
    z = torch.from_numpy(gaussian_codes(seed=3).astype(np.float32))
    assert torch.equal(again.quantise(z), q.quantise(z))


def test_bank_quantiser_refuses_bad_code_books() -> None:
    rc = fit_rate_code(gaussian_codes(), 7)
    bits, levels = (torch.from_numpy(t) for t in rc.tables())
    with pytest.raises(ValueError, match="expected a rate code"):
        Quantiser("rate", 24)
    with pytest.raises(ValueError, match=r"rate=None for dtype 'int8'"):
        Quantiser("int8", 24, scales=torch.ones(24), rate=rc)
    with pytest.raises(ValueError, match=r"rate_bits is not uint8 \(24,\)"):
        Quantiser("rate", 24, rate=(bits.to(torch.int32), levels))
    with pytest.raises(ValueError, match="rate_bits exceed 8"):
        Quantiser("rate", 24, rate=(torch.full((24,), 9, dtype=torch.uint8), levels))
    with pytest.raises(ValueError, match="rate_bits are all 0"):
        Quantiser("rate", 24, rate=(torch.zeros(24, dtype=torch.uint8), levels))
    flipped = levels.clone()
    flipped[0, :2] = flipped[0, :2].flip(0)
    with pytest.raises(ValueError, match="rate_levels are not sorted"):
        Quantiser("rate", 24, rate=(bits, flipped))
    with pytest.raises(ValueError, match=r"shape \(24, 16\), expected \(24, 256\)"):
        Quantiser("rate", 24, rate=(bits, levels[:, :16]))


def test_a_rate_bank_state_with_a_bad_code_book_is_refused() -> None:
    rc = fit_rate_code(gaussian_codes(), 7)
    bank = MemoryBank(5, rc.m, dtype="rate", rate=rc)
    bank.write(torch.from_numpy(gaussian_codes()[:2].astype(np.float32)), mode="each")
    state = bank.state_dict()
    state["rate_levels"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="rate_levels are not finite"):
        bank.load_state_dict(state)
    state = bank.state_dict()
    state["rate_bits"][-1] = 8  # 8 more bits: a wider packed code than the codes tensor
    with pytest.raises(ValueError, match=r"tensor 'codes' has shape \(5, 7\), expected \(5, 8\)"):
        bank.load_state_dict(state)
    with pytest.raises(ValueError, match=r"lacks tensor\(s\) \['rate_levels'\]"):
        bank.load_state_dict({k: v for k, v in bank.state_dict().items() if k != "rate_levels"})


def test_shipped_rate_code_picks_the_budget_or_the_default() -> None:
    z = gaussian_codes()
    codes = {f"{b}B": fit_rate_code(z, b).to_dict() for b in (4, 8)}
    assert shipped_rate_code({"rate_codes": codes}, 8).code_bytes == 8
    assert shipped_rate_code({"rate_codes": codes, "rate_default": "4B"}).code_bytes == 4
    assert shipped_rate_code({"rate_codes": {"8B": codes["8B"]}}).code_bytes == 8
    with pytest.raises(ValueError, match=r"among the file's rate codes \['4B', '8B'\], got none"):
        shipped_rate_code({"rate_codes": codes})
    with pytest.raises(ValueError, match=r"rate codes \['4B', '8B'\], got '16B'"):
        shipped_rate_code({"rate_codes": codes}, 16)
    with pytest.raises(ValueError, match=r"rate codes \[\], got '16B'"):
        shipped_rate_code({}, 16)
