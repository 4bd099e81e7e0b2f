"""The bank's top-k over long score rows (model/search.py `_top`): by chunk maxima first, with
exactly torch.topk's answers, and through the bank on a 100k-slot read."""

from __future__ import annotations

import math

import pytest
import torch

from model import search
from model.bank import MemoryBank


def _topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    v, i = torch.topk(x, k, dim=1, largest=True, sorted=True)
    return v, i


@pytest.mark.parametrize("k", [2, 3, 10, 32])
@pytest.mark.parametrize("shape", [(1, 1 << 15), (1, 100_003), (5, 65_536), (3, 40_000)])
def test_chunked_top_k_equals_torch_topk(shape: tuple[int, int], k: int) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(k + shape[1]))
    assert shape[1] >= search.CHUNKED_TOP_MIN  # the chunked path runs
    got, want = search._top(x, k), _topk(x, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_chunked_top_k_finds_a_top_k_packed_into_one_chunk_and_the_tail() -> None:
    """Rows whose best scores sit in one chunk, in the tail past the last whole chunk, or
    spread one per chunk; the rows select different numbers of chunks."""
    n, c = 40_000, search.TOP_CHUNK  # 40,000 = 78 chunks of 512 + a tail of 64
    # background below every top score, and different per chunk, so that no row falls back
    x = -1.0 - 0.5 * torch.rand(3, n, generator=torch.Generator().manual_seed(0))
    x[0, 1024:1034] = torch.arange(10, 0, -1, dtype=torch.float32)  # one chunk
    x[1, n - 5 :] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])  # the tail
    x[1, 7] = 6.0
    x[2, torch.arange(10) * c + 3] = torch.arange(1, 11, dtype=torch.float32)  # 10 chunks
    v, i = search._top(x, 6)
    assert i[0].tolist() == list(range(1024, 1030))
    assert i[1].tolist() == [7, n - 5, n - 4, n - 3, n - 2, n - 1]
    assert i[2].tolist() == [9 * c + 3, 8 * c + 3, 7 * c + 3, 6 * c + 3, 5 * c + 3, 4 * c + 3]
    assert v[2].tolist() == [10.0, 9.0, 8.0, 7.0, 6.0, 5.0]


def test_rows_of_ties_or_masked_slots_fall_back_to_a_full_top_k() -> None:
    """A threshold every chunk reaches (all scores equal, or -inf outside a few allowed slots)
    selects the whole row: the full torch.topk answers, values as torch's."""
    n = 1 << 16
    masked = torch.full((2, n), -math.inf)
    masked[0, [5, 7_000, 60_000]] = torch.tensor([0.5, 0.9, 0.1])
    masked[1, 3] = 0.2
    v, i = search._top(masked, 3)
    want_v, _ = _topk(masked, 3)
    assert torch.equal(v, want_v)
    assert i[0].tolist() == [7_000, 5, 60_000] and i[1, 0].item() == 3
    flat = torch.zeros(1, n)
    v, i = search._top(flat, 4)
    assert v.tolist() == [[0.0] * 4] and len(set(i[0].tolist())) == 4


def test_a_100k_slot_bank_reads_its_top_10_by_the_chunked_path() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(100_000, 16, generator=g)
    bank = MemoryBank(100_000, 16)
    bank.write(codes, mode="each")
    q = torch.randn(4, 16, generator=g)
    exact = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(codes, dim=1).T
    want_v, want_i = _topk(exact, 10)
    for row in range(4):  # one by one (the single-query scan) and as a batch (blocked)
        one = bank.search(q[row : row + 1], 10)
        assert one[0][0].tolist() == want_i[row].tolist()
    slots, scores = bank.search(q, 10)
    assert slots.tolist() == want_i.tolist()
    assert torch.allclose(scores, want_v, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1023), (1, 1024), (1, 100_003), (7, 4096), (3, 40_000)])
def test_first_max_equals_torch_max_first_index(shape: tuple[int, int]) -> None:
    """Top 1 by chunk maxima: torch.max's value and first maximal index, also where the
    maximum repeats across chunks, sits in the tail, or the row is all -inf."""
    g = torch.Generator().manual_seed(shape[1])
    x = torch.randint(-50, 50, shape, generator=g).float()  # many ties at the maximum
    n = shape[1]
    if shape[0] > 2:
        x[1, n - 1] = 1000.0  # the maximum, once, at the last index (in the tail if any)
        x[2] = -math.inf
    got_v, got_i = search._top(x, 1)
    want_v, want_i = x.max(dim=1, keepdim=True)
    assert torch.equal(got_v, want_v) and torch.equal(got_i, want_i)
    if shape[0] > 2:
        assert got_i[:3, 0].tolist() == [int(want_i[0]), n - 1, 0]


def _masked_inverse_norms(x: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(x, dim=1)
    ok = (norm > 1e-15) & (norm < math.inf)
    return torch.where(ok, 1.0 / torch.where(ok, norm, 1.0), 0.0)


@pytest.mark.parametrize("rows", [1, 3, 257])
def test_norm_helpers_fast_path_equals_the_masked_formula(rows: int) -> None:
    """inverse_norms and unit_rows skip their masks when every row is plain (norm in
    (1e-15, inf)): bit for bit what the masked formula gives; rows that are not plain (zero,
    tiny, huge, NaN) take the masked and rescaled path, whatever the other rows are."""
    x = torch.randn(rows, 16, generator=torch.Generator().manual_seed(rows)) * 3.0
    assert search._all_plain(torch.linalg.vector_norm(x, dim=1))
    assert torch.equal(search.inverse_norms(x), _masked_inverse_norms(x))
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    assert torch.equal(search.unit_rows(x), x / norm)
    odd = torch.cat([x, torch.zeros(1, 16), torch.full((1, 16), 1e-30), torch.full((1, 16), 3e38)])
    inv = search.inverse_norms(odd)
    assert torch.equal(inv[:rows], _masked_inverse_norms(x))
    assert inv[rows] == 0.0 and inv[rows + 1] == pytest.approx(0.25e30, rel=1e-6)
    assert inv[rows + 2] == pytest.approx(1 / (4 * 3e38), rel=1e-6)
    unit = search.unit_rows(odd)
    assert torch.equal(unit[:rows], x / norm) and torch.equal(unit[rows], torch.zeros(16))
    torch.testing.assert_close(unit[rows + 1 :], torch.full((2, 16), 0.25))
    assert not search._all_plain(torch.tensor([1.0, math.nan]))
    assert not search._all_plain(torch.empty(0))
    plain, finite = search.finite_inverse_norms(x), search.finite_inverse_norms(odd)
    assert plain is not None and torch.equal(plain, search.inverse_norms(x))
    assert finite is not None and torch.equal(finite, inv)  # finite: the same norms
    for bad in (math.nan, math.inf, -math.inf):  # a norm of NaN or inf: not plain, not finite
        worse = odd.clone()
        worse[0, 5] = bad
        assert search.finite_inverse_norms(worse) is None


def test_unit_queries_in_numpy_equal_the_torch_path_and_refuse_non_finite_rows() -> None:
    """The CPU's unit rows (numpy, float64) agree with the torch path other devices take to
    float32 rounding, for plain, zero, tiny and huge rows; a row is the same alone or in a
    batch, bit for bit; NaN or inf anywhere: None from both."""
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(3)) * 3.0
    odd = torch.cat([x, torch.zeros(1, 16), torch.full((1, 16), 1e-30), torch.full((1, 16), 3e38)])
    cpu, other = search.unit_queries(odd), search._unit_queries_torch(odd)
    assert cpu is not None and other is not None and cpu.dtype == torch.float32
    torch.testing.assert_close(cpu, other, rtol=1e-6, atol=1e-7)  # the torch path: a few ulps
    assert torch.equal(cpu[5], torch.zeros(16))
    torch.testing.assert_close(cpu[6:], torch.full((2, 16), 0.25), rtol=0, atol=0)
    for i in range(odd.shape[0]):
        alone = search.unit_queries(odd[i : i + 1])
        assert alone is not None and torch.equal(alone[0], cpu[i])
    for bad in (math.nan, math.inf, -math.inf):
        worse = odd.clone()
        worse[2, 7] = bad
        assert search.unit_queries(worse) is None and search._unit_queries_torch(worse) is None


@pytest.mark.parametrize("k", [1, 4])
def test_the_cpu_and_torch_tails_rank_alike(k: int) -> None:
    """`_ranked_cpu` (numpy) and `_ranked_torch` (other devices) give the same slots, order
    (best first, ties by lower slot: two identical codes; not-allowed and below-min_score
    candidates last, as -1 with score 0) and scores to float32 rounding."""
    g = torch.Generator().manual_seed(k)
    codes = torch.randn(40, 8, generator=g)
    codes[7] = codes[3]  # a tie: same code, two slots
    allowed = torch.ones(40, dtype=torch.bool)
    allowed[11] = False
    q = codes[[3, 11, 20]] + 0.05 * torch.randn(3, 8, generator=g)
    qn = search.unit_queries(q)
    assert qn is not None
    cand = torch.stack([torch.randperm(40, generator=g)[:k] for _ in range(3)])
    cand[0, 0], cand[1, 0] = 7, 11
    if k > 1:
        cand[0, 1] = 3
    found = codes[cand.reshape(-1)]
    for min_score in (None, 0.1):
        a = search._ranked_cpu(qn, cand, found.numpy(), allowed, min_score)
        b = search._ranked_torch(qn, cand, found, allowed, min_score)
        assert torch.equal(a[0], b[0])
        torch.testing.assert_close(a[1], b[1], rtol=0, atol=2e-7)
        assert 11 not in a[0].tolist()[1]
        if k > 1:
            assert a[0][0, :2].tolist() == [3, 7]  # equal scores: the lower slot first
        assert ((a[0] == -1) == (a[1] == 0)).all()
        if min_score is not None:
            assert bool((a[1][a[0] >= 0] >= min_score).all())
