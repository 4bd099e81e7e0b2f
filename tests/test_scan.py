"""The compiled single-query scans (model/scan.py): their inner products equal torch's to
float32 rounding (int8 codes; rate codes of every bit width 0-8 and a partial last byte), and
a bank read that takes them answers as the batched read that casts or decodes blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.bank import MemoryBank
from model.quant import Quantiser
from model.ratecode import RateCode, fit_rate_code


def code_with_every_width(m: int = 23, seed: int = 0) -> tuple[RateCode, np.ndarray]:
    """A rate code whose dimensions take each of 0..8 bits (81 bits: the last byte is partial)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((4000, m)) * rng.uniform(0.2, 3.0, m)
    fitted = fit_rate_code(z, 1)  # for the means; the bits are set below
    bits = tuple(j % 9 for j in range(m))
    levels = tuple(tuple(sorted(rng.uniform(-3, 3, 2**b).tolist())) if b else () for b in bits)
    return RateCode(bits, levels, fitted.means), z


def test_rate_dot_equals_the_decoded_inner_products() -> None:
    code, z = code_with_every_width()
    assert code.total_bits == sum(j % 9 for j in range(23)) and code.total_bits % 8
    quant = Quantiser("rate", code.m, rate=code)
    packed = quant.quantise(torch.from_numpy(z).float())  # (4000, width) uint8
    assert packed.shape == (4000, code.code_bytes)
    for seed in range(3):
        q = torch.randn(code.m, generator=torch.Generator().manual_seed(seed))
        out = torch.empty(len(packed), dtype=torch.float32)
        quant.dot(packed, q, out)
        want = quant.dequantise(packed).double() @ q.double()
        assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-5)
    # a 0-bit dimension reads back as its mean: a query on it alone scores mean * q_j
    zero = [j for j, b in enumerate(code.bits) if b == 0]
    q = torch.zeros(code.m)
    q[zero] = 1.0
    quant.dot(packed[:5], q, out[:5])
    assert torch.allclose(out[:5], torch.full((5,), sum(code.means[j] for j in zero)).float())


def test_int8_dot_equals_the_widened_inner_products() -> None:
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(-127, 128, (5000, 24), dtype=torch.int8, generator=g)
    quant = Quantiser("int8", 24, scales=torch.full((24,), 0.1))
    for _ in range(3):
        q = torch.randn(24, generator=g)
        out = torch.empty(5000, dtype=torch.float32)
        quant.dot(codes, q, out)
        want = codes.double() @ q.double()
        assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-4)


def test_dot_needs_an_int8_or_rate_quantiser() -> None:
    for dtype in ("float32", "float16"):
        quant = Quantiser(dtype, 4)
        assert not quant.has_dot
        message = rf"^expected an int8 or rate quantiser, got dtype '{dtype}'$"
        with pytest.raises(ValueError, match=message):
            quant.dot(torch.zeros(1, 4), torch.zeros(4), torch.zeros(1))


@pytest.mark.parametrize("dtype", ["rate", "int8"])
def test_single_reads_over_the_kernel_answer_as_the_batched_read(dtype: str) -> None:
    code, z = code_with_every_width(seed=1)
    scales = torch.from_numpy(np.abs(z).max(axis=0) / 127).float() if dtype == "int8" else None
    rate = code if dtype == "rate" else None
    bank = MemoryBank(3000, code.m, dtype=dtype, scales=scales, rate=rate)
    assert bank.quant.has_dot
    bank.write(torch.from_numpy(z[:3000]).float(), mode="each")
    queries = torch.from_numpy(z[3000:3040]).float()
    batched = bank.search(queries, top_k=5)  # B > 1: casts or decodes blocks, matrix products
    for i in range(len(queries)):
        slots, scores = bank.search(queries[i : i + 1], top_k=5)  # B = 1: the kernel
        assert slots[0].tolist() == batched[0][i].tolist()
        assert torch.equal(scores[0], batched[1][i])  # exact scores: recomputed per pair
