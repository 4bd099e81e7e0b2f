"""Rate-allocated scalar codes: budgets, allocation, Lloyd-Max levels, packing, JSON."""

from __future__ import annotations

import numpy as np
import pytest

from model.ratecode import RateCode, fit_rate_code, lloyd_max


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
