"""model/onepass.py and model/intscan.py: the compiled single-query scans against torch (first
maximum, top k) and against each other (the integer pass answers as the float scan)."""

from __future__ import annotations

import math

import llvmlite.binding as llvm
import numpy as np
import pytest
import torch

from model import intscan, kernel_ir, onepass
from model.bank import MemoryBank

DTYPES = [torch.int8, torch.float16, torch.float32]


def _codes(n: int, m: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(n, m, generator=g)
    if dtype == torch.int8:
        return torch.round(z / 0.05).clamp_(-127, 127).to(torch.int8)
    return z.to(dtype)


def _reference(codes: torch.Tensor, q: torch.Tensor, inv: torch.Tensor) -> tuple[set[int], float]:
    """The slots within float32 rounding (1e-5) of the best float64 score, and that score:
    one slot unless codes tie (few distinct int8 values at m = 1), where rounding may pick
    any of them."""
    scores = (codes.to(torch.float64) @ q.to(torch.float64)) * inv.to(torch.float64)
    best = float(scores.max())
    return set(torch.nonzero(scores >= best - 1e-5).flatten().tolist()), best


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 4, 8, 12, 16, 24, 32, 48, 64, 128, 192])
def test_best_is_the_first_maximum_for_every_width(dtype: torch.dtype, m: int) -> None:
    """Every code path of the generator: int8 read as words (m = 4, 8, 16, 32, 64, 128, 192)
    or widened per slot (m = 1, 3, 12, 24, 48), widths below, at and above the 16 lanes, and
    N with and without a tail of N % 16 slots."""
    g = torch.Generator().manual_seed(m)
    for n in (16, 37, 1000):
        codes = _codes(n, m, dtype, g)
        inv = 1.0 / codes.to(torch.float32).norm(dim=1).clamp(min=1e-20)
        for _ in range(3):
            q = torch.randn(m, generator=g)
            slot, value = onepass.best(codes, q, inv)
            near, score = _reference(codes, q, inv)
            assert slot in near
            if len(near) > 1:  # exactly equal scores still go to the first of them
                exact = (codes.to(torch.float32) @ q) * inv
                assert slot <= int(torch.nonzero(exact == exact[slot])[0])
            assert value == pytest.approx(score, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_go_to_the_lowest_slot_across_lanes_steps_and_the_tail(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(7)
    codes = _codes(100, 16, dtype, g)
    for copies in ([5, 21, 90], [40, 41, 97], [3, 99]):  # other lanes, other steps, the tail
        c = codes.clone()
        c[copies] = c[copies[0]].clone()
        inv = 1.0 / c.to(torch.float32).norm(dim=1)
        q = c[copies[0]].to(torch.float32)
        assert onepass.best(c, q, inv)[0] == copies[0]
    tail_only = codes.clone()
    tail_only[96:] = tail_only[96].clone()  # the maximum only in the 4 tail slots
    q = tail_only[96].to(torch.float32)
    inv = 1.0 / tail_only.to(torch.float32).norm(dim=1)
    assert onepass.best(tail_only, q, inv)[0] == 96


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [3, 16, 48])
def test_best_over_chunks_is_the_first_maximum_among_their_slots(
    dtype: torch.dtype, m: int
) -> None:
    """chunks: only those CHUNK-slot chunks count, the last one short (with a tail of N % 16
    slots); a copy of the winner in a later chosen chunk loses the tie, one in an unchosen
    chunk is not seen."""
    g = torch.Generator().manual_seed(23 + m)
    n = 6 * onepass.CHUNK + 37
    codes = _codes(n, m, dtype, g)
    inv = 1.0 / codes.to(torch.float32).norm(dim=1).clamp(min=1e-20)
    for chunks in ([0], [1, 4], [2, 6], [6], [0, 1, 2, 3, 4, 5, 6]):
        spans = [torch.arange(c * onepass.CHUNK, min(n, (c + 1) * onepass.CHUNK)) for c in chunks]
        keep = torch.cat(spans)
        for _ in range(3):
            q = torch.randn(m, generator=g)
            slot, value = onepass.best(codes, q, inv, chunks)
            near, score = _reference(codes[keep], q, inv[keep])
            assert slot in {int(keep[i]) for i in near}
            assert value == pytest.approx(score, rel=1e-5, abs=1e-5)
    c, q = codes.clone(), torch.ones(m)
    c[(c.to(torch.float32) @ q) * inv > 0.999] *= -1  # no random code near the copies' direction
    winner, later, unseen = onepass.CHUNK + 5, 6 * onepass.CHUNK + 33, 2  # the last in the tail
    c[[winner, later, unseen]] = 20 * torch.ones(m, dtype=dtype)
    inv = 1.0 / c.to(torch.float32).norm(dim=1).clamp(min=1e-20)
    assert onepass.best(c, q, inv, [1, 6])[0] == winner
    assert onepass.best(c, q, inv, [3, 6])[0] == later
    assert onepass.best(c, q, inv, [0, 1])[0] == unseen
    assert onepass.best(c, q, inv, [])[0] == -1


def test_zero_inverse_norms_score_zero_and_empty_inputs_find_nothing() -> None:
    codes = torch.ones(32, 16, dtype=torch.int8)
    inv = torch.zeros(32)
    assert onepass.best(codes, torch.ones(16), inv) == (0, 0.0)  # all 0: the first slot
    inv[17] = 0.25
    assert onepass.best(codes, -torch.ones(16), inv) == (0, 0.0)  # slot 17 scores -4 < 0
    assert onepass.best(codes, torch.ones(16), inv) == (17, 4.0)
    empty = torch.empty(0, 16, dtype=torch.int8)
    assert onepass.best(empty, torch.ones(16), torch.empty(0)) == (-1, -math.inf)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [3, 16, 48, 64])
def test_chunk_maxima_and_top_k_equal_torch(dtype: torch.dtype, m: int) -> None:
    """maxima: one per CHUNK slots, the last chunk short (and holding the N % 16 tail); top:
    the k best slots in order, for banks large enough that chunk maxima pay (else None)."""
    g = torch.Generator().manual_seed(11 + m)
    n = 40 * onepass.CHUNK + 37
    codes = _codes(n, m, dtype, g)
    inv = 1.0 / codes.to(torch.float32).norm(dim=1)
    for _ in range(3):
        q = torch.randn(m, generator=g)
        scores = (codes.to(torch.float32) @ q) * inv
        want = torch.stack([c.max() for c in scores.split(onepass.CHUNK)])
        got = onepass.maxima(codes, q, inv)
        assert got.shape == (41,)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for k in (2, 3, 10):
            found = onepass.top(codes, q, inv, k)
            assert found is not None
            assert found.tolist() == torch.topk(scores, k).indices.tolist()
    assert onepass.top(codes, q, inv, 11) is None  # 4 * 11 chunks > a quarter of 41: no gain


def test_top_k_gives_up_on_ties_that_select_most_chunks() -> None:
    """A bank of equal codes: every chunk reaches the k-th maximum, so `top` answers None (the
    caller's full scan then ranks them), also when only the second place ties."""
    codes = torch.ones(20 * onepass.CHUNK, 16, dtype=torch.int8)
    codes[9000, 0] = 3  # cosine 3 / sqrt(24) = 0.61 to the first axis; the others 0.25
    inv = 1.0 / codes.to(torch.float32).norm(dim=1)
    q = torch.zeros(16)
    q[0] = 1.0
    assert onepass.best(codes, q, inv)[0] == 9000
    assert onepass.top(codes, q, inv, 2) is None
    assert onepass.top(codes, torch.ones(16), inv, 2) is None


def test_kernel_ir_is_valid_llvm_for_each_dtype() -> None:
    """The generated IR parses and verifies (what `kernels` compiles), with both scans."""
    for el in ("i8", "half", "float"):
        ir = kernel_ir.kernel_ir(el, 16)
        llvm.parse_assembly(ir).verify()
        assert "define void @best(" in ir and "define void @maxima(" in ir


def test_narrow_codes_are_prefetched_two_steps_or_more_ahead_and_float32_not() -> None:
    assert kernel_ir.prefetch(16, 4) == []  # float32: the hardware's prefetcher only
    int8 = kernel_ir.prefetch(16, 1)  # a step is 16 slots x 16 bytes: 4 cache lines
    assert sum("@llvm.prefetch" in line for line in int8) == 4 + 1  # + the inverse norms
    assert int8[0] == f"%pfs = add i64 %i, {kernel_ir.PREFETCH_AHEAD // 16}"
    streaming = kernel_ir.prefetch(16, 1, True)
    assert streaming[0] == f"%pfs = add i64 %i, {kernel_ir.STREAM_AHEAD // 16}"
    wide = kernel_ir.prefetch(384, 2, True)  # 768 bytes a slot: 4096 bytes are fewer than 2 steps
    assert wide[0] == f"%pfs = add i64 %i, {2 * kernel_ir.LANES}"
    assert sum("@llvm.prefetch" in line for line in wide) == 16 * 768 // 64 + 1
    for el in ("i8", "half"):
        assert "@llvm.prefetch" in kernel_ir.kernel_ir(el, 16)
    assert "call void @llvm.prefetch" not in kernel_ir.kernel_ir("float", 16)
    assert "call void @llvm.prefetch" in intscan.int_kernel_ir(16)


def test_scans_larger_than_the_last_level_cache_stream_and_answer_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Banks larger than the last-level cache are prefetched with the non-temporal hint
    (llvm.prefetch locality 0, prefetchnta), smaller ones into L2 (locality 2); float32 never
    prefetches; both kernels find the same slots and scores."""
    calls = [line for line in kernel_ir.prefetch(16, 1) if "@llvm.prefetch" in line]
    streaming = [line for line in kernel_ir.prefetch(16, 1, True) if "@llvm.prefetch" in line]
    assert len(calls) == len(streaming) == 5
    assert all(line.endswith("i32 0, i32 2, i32 1)") for line in calls)
    assert all(line.endswith("i32 0, i32 0, i32 1)") for line in streaming)
    assert kernel_ir.prefetch(16, 4, True) == []
    assert "i32 0, i32 0, i32 1" in intscan.int_kernel_ir(16, True)
    assert onepass.last_level_cache() >= 1 << 20  # sysfs's largest cache, or DEFAULT_CACHE
    g = torch.Generator().manual_seed(5)
    banks = {dtype: _codes(8192, 16, dtype, g) for dtype in DTYPES}
    q, inv = torch.randn(16, generator=g), torch.rand(8192, generator=g) + 0.5
    assert not any(onepass.streams(codes) for codes in banks.values())  # 8192 x 16: ~160 kB
    spread = intscan.scale_spread(torch.full((16,), 0.05))

    def answers() -> list[object]:
        out: list[object] = []
        for codes in banks.values():
            out += [onepass.best(codes, q, inv), onepass.maxima(codes, q, inv).tolist()]
        if intscan.int_scan(16) is not None:
            found = intscan.certified(banks[torch.int8], q * 0.05, inv, 1, spread)
            assert found is not None
            out.append(found.tolist())
        return out

    plain = answers()
    monkeypatch.setattr(onepass, "last_level_cache", lambda: 1024)
    assert [onepass.streams(c) for c in banks.values()] == [True, True, False]
    assert answers() == plain


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_bank_single_reads_take_the_kernel_and_answer_like_a_batch(dtype: str) -> None:
    """A bank's single top-1 reads (the kernel's path) find the slots a batch read (matrix
    products) finds, with equal scores; a bank whose best match is a free slot (all cosines
    negative) falls back to the masked scan and answers the occupied slot."""
    m, n = 16, 5000
    g = torch.Generator().manual_seed(3)
    scales = torch.full((m,), 0.05) if dtype == "int8" else None
    bank = MemoryBank(n, m, dtype=dtype, scales=scales)
    bank.assign(torch.arange(n - 7), torch.randn(n - 7, m, generator=g))  # 7 free slots
    queries = torch.randn(40, m, generator=g)
    batch_slots, batch_scores = bank.search(queries)
    for i in range(40):
        slots, scores = bank.search(queries[i : i + 1])
        assert int(slots[0, 0]) == int(batch_slots[i, 0])
        assert float(scores[0, 0]) == pytest.approx(float(batch_scores[i, 0]), abs=1e-6)
    big = MemoryBank(30_000, m, dtype=dtype, scales=scales)  # top 5 via chunk maxima
    big.assign(torch.arange(29_990), torch.randn(29_990, m, generator=g))
    batch_slots, batch_scores = big.search(queries, top_k=5)
    for i in range(40):
        slots, scores = big.search(queries[i : i + 1], top_k=5)
        assert slots[0].tolist() == batch_slots[i].tolist()
        torch.testing.assert_close(scores[0], batch_scores[i], rtol=0, atol=1e-6)
    lone = MemoryBank(64, m, dtype=dtype, scales=scales)
    lone.assign(torch.tensor([50]), torch.ones(1, m))
    slots, scores = lone.search(-torch.ones(1, m))
    assert int(slots[0, 0]) == 50 and float(scores[0, 0]) == pytest.approx(-1.0)


# --------------------------------------------------------------- the integer scan of int8 codes

SCANS = [s for s in ("vnni", "avx2") if s == "avx2" or intscan.int_scan(16) == "vnni"]


def _int8_bank(
    n: int, m: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int8 codes with per-dimension scales 0.01-0.2 (as a trained codec's), the inverse
    norms of their dequantised codes, and the scales."""
    scales = torch.linspace(0.01, 0.2, m)[torch.randperm(m, generator=g)]
    z = torch.randn(n, m, generator=g) * scales * 40
    codes = torch.round(z / scales).clamp_(-127, 127).to(torch.int8)
    inv = 1.0 / (codes.float() * scales).norm(dim=1)
    return codes, inv, scales


def _query(scales: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    q = torch.randn(scales.shape[0], generator=g)
    return q / q.norm() * scales


def test_this_cpu_has_an_integer_scan() -> None:
    """x86 with AVX2 (any server CPU since 2013; CI's): int8 reads take the integer scan."""
    assert intscan.int_scan(16) in ("vnni", "avx2")
    assert intscan.int_scan(12) is None and intscan.int_scan(1024) is None


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("m", [16, 32, 64, 128])
def test_certified_top_1_is_best_and_top_k_is_top(scan: str, m: int) -> None:
    """The integer pass only picks chunks; the answer is the float scan's, slot for slot:
    `best` for k = 1, `top` (torch's scores of the chosen chunks) for k > 1, with and
    without a tail of N % 16 slots."""
    g = torch.Generator().manual_seed(m)
    for n in (8192, 10_003, 20_000):
        codes, inv, scales = _int8_bank(n, m, g)
        spread = float(torch.sqrt((1.0 / scales.double() ** 2).sum()))
        for _ in range(6):
            q = _query(scales, g)
            got = intscan.certified(codes, q, inv, 1, spread, scan)
            assert got is not None and int(got[0]) == onepass.best(codes, q, inv)[0]
            top = intscan.certified(codes, q, inv, 3, spread, scan)
            assert top is not None and torch.equal(top, onepass.top(codes, q, inv, 3))


@pytest.mark.parametrize("scan", SCANS)
def test_certified_keeps_near_ties_and_ties_exact(scan: str) -> None:
    """Slots whose float scores differ in the 6th digit, or not at all, in chunks far apart:
    the integer scores cannot tell them apart, the margin keeps every such chunk, and the
    answer is the first slot of the float maximum."""
    g = torch.Generator().manual_seed(7)
    m, n = 16, 40_000
    codes, inv, scales = _int8_bank(n, m, g)
    spread = float(torch.sqrt((1.0 / scales.double() ** 2).sum()))
    q = _query(scales, g)
    top = onepass.best(codes, q, inv)[0]
    near = codes[top].clone()
    j = int(torch.argmin(q.abs()))  # the dimension the query weighs least
    near[j] += 1 if near[j] < 127 else -1
    for slot, code in ((30_001, near), (9_000, codes[top]), (35_555, codes[top])):
        codes[slot] = code
        inv[slot] = 1.0 / (code.float() * scales).norm()
    want = onepass.best(codes, q, inv)[0]
    assert want in (min(top, 9_000), 30_001)
    got = intscan.certified(codes, q, inv, 1, spread, scan)
    assert got is not None and int(got[0]) == want
    three = intscan.certified(codes, q, inv, 3, spread, scan)
    assert three is not None and torch.equal(three, onepass.top(codes, q, inv, 3))


def test_certified_gives_up_on_a_zero_query_a_small_bank_and_mass_ties() -> None:
    g = torch.Generator().manual_seed(3)
    codes, inv, scales = _int8_bank(4096, 16, g)
    spread = float(torch.sqrt((1.0 / scales.double() ** 2).sum()))
    assert intscan.certified(codes, torch.zeros(16), inv, 1, spread) is None
    assert intscan.certified(codes[:2000], _query(scales, g), inv[:2000], 1, spread) is None
    same = codes[:1].expand(4096, 16).contiguous()  # every slot ties: all chunks qualify
    assert (
        intscan.certified(same, _query(scales, g), inv[:1].expand(4096).contiguous(), 1, spread)
        is None
    )


@pytest.mark.parametrize("m", [4, 8, 16, 32, 64, 128, 192, 272, 384, 512])
def test_the_integer_kernels_ir_verifies(m: int) -> None:
    if m <= 192:
        llvm.parse_assembly(intscan.vnni_kernel_ir(m)).verify()
    if m % 16 == 0:
        llvm.parse_assembly(intscan.int_kernel_ir(m)).verify()


def test_avx2_scan_of_wide_codes() -> None:
    """pmaddwd over m = 384 (24 groups of 16 dimensions: names past %q16 in the IR)."""
    g = torch.Generator().manual_seed(384)
    codes, inv, scales = _int8_bank(4096, 384, g)
    spread = float(torch.sqrt((1.0 / scales.double() ** 2).sum()))
    assert intscan.int_scan(384) == "avx2"
    for _ in range(3):
        q = _query(scales, g)
        got = intscan.certified(codes, q, inv, 1, spread)
        assert got is not None and int(got[0]) == onepass.best(codes, q, inv)[0]


@pytest.mark.parametrize("m", [4, 8, 192])
def test_vnni_widths_off_sixteen(m: int) -> None:
    """The word layouts of m = 4 and 8 (several slots per word vector) and 192 (a slot over
    three vectors), where this CPU has VNNI."""
    if intscan.int_scan(m) != "vnni":
        assert intscan.int_scan(m) is None or m == 192
        return
    g = torch.Generator().manual_seed(m)
    codes, inv, scales = _int8_bank(8192, m, g)
    spread = float(torch.sqrt((1.0 / scales.double() ** 2).sum()))
    for _ in range(5):
        q = _query(scales, g)
        got = intscan.certified(codes, q, inv, 1, spread)
        assert got is not None and int(got[0]) == onepass.best(codes, q, inv)[0]


@pytest.mark.parametrize("scan", SCANS)
def test_certified_follows_the_float_order_where_the_integer_order_differs(scan: str) -> None:
    """Two codes whose float scores and integer scores are in opposite orders, in chunks far
    apart: the query (1, 326.45 / 32639, 0, ...) rounds to the integers (32639, 326, 0, ...),
    and A = (38, 12, 120, 0, ...) beats B = (39, -88, 82, 0, ...) by 1.1e-5 in float32 but
    loses in the integer scan (found by a search over small codes). Only the margin keeps
    A's chunk; without it the answer would be B."""
    m, n = 16, 8192
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(-127, 128, (n, m), generator=g, dtype=torch.int8)
    codes[:, 0] = -torch.randint(1, 128, (n,), generator=g, dtype=torch.int8)  # scores < 0.01
    a, b = 5 * onepass.CHUNK + 7, 1 * onepass.CHUNK + 3
    codes[a] = torch.tensor([38, 12, 120] + [0] * 13, dtype=torch.int8)
    codes[b] = torch.tensor([39, -88, 82] + [0] * 13, dtype=torch.int8)
    inv = 1.0 / codes.float().norm(dim=1)
    w = torch.zeros(m)
    w[0], w[1] = 1.0, 326.45 / 32639
    q = w / w.norm()  # scales all 1: spread = sqrt(16)
    scores = codes.float() @ q * inv
    assert int(scores.argmax()) == a and float(scores[a] - scores[b]) > 1e-5
    scale = intscan.Q_MAX / float(q.abs().max())
    q16 = torch.round(q * scale).to(torch.int64)
    integer = (codes.to(torch.int64) @ q16).double() * inv.double()
    assert integer[b] > integer[a]  # the integer scan alone would pick B
    assert onepass.best(codes, q, inv)[0] == a
    got = intscan.certified(codes, q, inv, 1, 4.0, scan)
    assert got is not None and int(got[0]) == a


def test_scans_take_strided_inverse_norms_and_refuse_strided_codes() -> None:
    """The kernels read raw memory: an inverse-norm view (stride 0 or 2) is made contiguous
    first and answers as its copy; codes that are not contiguous are refused, not misread."""
    g = torch.Generator().manual_seed(9)
    codes, inv, scales = _int8_bank(8192, 16, g)
    spread = float(torch.sqrt((1.0 / scales.double() ** 2).sum()))
    q = _query(scales, g)
    strided = torch.stack([inv, torch.zeros_like(inv)], dim=1)[:, 0]  # stride 2
    assert not strided.is_contiguous()
    assert onepass.best(codes, q, strided) == onepass.best(codes, q, inv)
    got = intscan.certified(codes, q, strided, 1, spread)
    assert got is not None and int(got[0]) == onepass.best(codes, q, inv)[0]
    flat = inv[:1].expand(8192)  # stride 0: every slot the same inverse norm
    assert onepass.best(codes, q, flat) == onepass.best(codes, q, flat.contiguous())
    wide = torch.cat([codes, codes], dim=1)[:, :16]
    with pytest.raises(ValueError, match="contiguous codes"):
        onepass.best(wide, q, inv)
    with pytest.raises(ValueError, match="contiguous codes"):
        intscan.certified(wide, q, inv, 1, spread)


def test_bank_warm_compiles_the_integer_scan_before_the_first_read() -> None:
    """An int8 bank's warm() compiles the integer kernel too (~20 ms), so no read pays it."""
    bank = MemoryBank(4096, 16, dtype="int8", scales=torch.full((16,), 0.05))
    intscan.int_kernel.cache_clear()
    bank.warm()
    assert intscan.int_kernel.cache_info().currsize == 1
    MemoryBank(4096, 16, dtype="float16").warm()  # float banks take no integer scan
    assert intscan.int_kernel.cache_info().currsize == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [3, 16, 48])
def test_every_slots_score_is_the_one_best_compares(dtype: torch.dtype, m: int) -> None:
    """`scores_in` writes each slot's score of the chunks asked for, CHUNK apart in the order
    asked, in slot order (the lanes put back): torch's within float32 rounding, and its first
    maximum is `best`'s slot and value, bit for bit."""
    g = torch.Generator().manual_seed(50 + m)
    c = onepass.CHUNK
    n = 3 * c
    codes = _codes(n, m, dtype, g)
    inv = 1.0 / codes.to(torch.float32).norm(dim=1)
    q = torch.randn(m, generator=g)
    chunks = np.array([2, 0], dtype=np.int64)
    out = torch.full((2 * c,), -math.inf)
    onepass.kernels(dtype, m).scores_in(
        codes.data_ptr(), inv.data_ptr(), n, q.data_ptr(), out.data_ptr(), chunks.ctypes.data, 2
    )
    want = (codes.to(torch.float32) @ q) * inv
    torch.testing.assert_close(out, torch.cat([want[2 * c :], want[:c]]), rtol=1e-5, atol=1e-5)
    slot, value = onepass.best(codes, q, inv, [0, 2])
    top = int(out.argmax())
    assert (top - c if top >= c else top + 2 * c, float(out.max())) == (slot, value)


@pytest.mark.parametrize("dtype", DTYPES)
def test_best_over_chunks_is_the_first_maximum_of_their_slots(dtype: torch.dtype) -> None:
    """`best_in` in one call: the lanes' maxima carry across chunks, ties go to the lower
    slot (an exact copy of the best code in a later chunk does not win), and the last chunk
    keeps its N % 16 tail."""
    g = torch.Generator().manual_seed(21)
    n, c = 5 * onepass.CHUNK + 7, onepass.CHUNK
    codes = _codes(n, 16, dtype, g)
    q = torch.randn(16, generator=g)
    scores = (codes.to(torch.float32) @ q) / codes.to(torch.float32).norm(dim=1)
    top = codes[int(scores.argmax())].clone()
    codes[1 * c + 300] = top  # the best code, copied into chunks 1 and 4: a tie across them
    codes[4 * c + 100] = top
    inv = 1.0 / codes.to(torch.float32).norm(dim=1)
    for chunks in ([1, 3], [0, 5], [5], [2, 3, 4], [1, 4], [4, 5], []):
        slot, value = onepass.best(codes, q, inv, chunks)
        rows = [s for ch in chunks for s in range(ch * c, min(ch * c + c, n))]
        if not rows:
            assert (slot, value) == (-1, -math.inf)
            continue
        whole, _ = onepass.best(codes[rows].contiguous(), q, inv[rows].contiguous())
        assert slot == rows[whole]
