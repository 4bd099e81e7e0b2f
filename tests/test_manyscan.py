"""model/manyscan.py: the scan of several queries at once against torch (chunk maxima) and
against the single-query scans (the same slots, near-ties and ties included), and a bank's
batch reads against its single reads on every path a batch can take."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import manyscan, onepass, search
from model.bank import MemoryBank

DTYPES = [torch.int8, torch.float16, torch.float32]
CHUNK = onepass.CHUNK


def _codes(n: int, m: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(n, m, generator=g)
    if dtype == torch.int8:
        return torch.round(z / 0.05).clamp_(-127, 127).to(torch.int8)
    return z.to(dtype)


def _unit(b: int, m: int, g: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(b, m, generator=g), dim=1)


def _inv(codes: torch.Tensor) -> torch.Tensor:
    return 1.0 / codes.to(torch.float32).norm(dim=1)


def test_query_groups_are_sixteen_then_eight() -> None:
    assert [manyscan.widths(b) for b in (1, 8, 9, 16, 17, 24, 25, 40)] == [
        [8],
        [8],
        [16],
        [16],
        [16, 8],
        [16, 8],
        [16, 16],
        [16, 16, 8],
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [3, 16, 40, 48])  # 40: groups of 16, 16 and 8 dimensions
def test_chunk_maxima_equal_torch_for_every_group_and_tail(dtype: torch.dtype, m: int) -> None:
    """One maximum per CHUNK slots and query, the last chunk short and holding the N % STEP
    tail (or only the tail); groups of 8 and 16 queries, padded lanes dropped; a bank smaller
    than one step."""
    g = torch.Generator().manual_seed(m)
    for n in (5 * CHUNK + 13, 3 * CHUNK + 5, 5):  # 3 CHUNK + 5: a last chunk of tail alone
        codes = _codes(n, m, dtype, g)
        inv = _inv(codes)
        for b in (2, 8, 9, 17, 40):
            qs = _unit(b, m, g)
            scores = (codes.to(torch.float32) @ qs.T) * inv.unsqueeze(1)  # (N, B)
            want = torch.stack([c.amax(dim=0) for c in scores.split(CHUNK)]).numpy()
            got = manyscan.maxima_many(codes, qs, inv)
            assert got.shape == (-(-n // CHUNK), b)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [16, 48])
def test_top_many_answers_as_single_scans(dtype: torch.dtype, m: int) -> None:
    """Each query's slots are exactly `onepass.best`'s (k = 1) and `onepass.top`'s (k > 1)."""
    g = torch.Generator().manual_seed(100 + m)
    n = 40 * CHUNK + 37
    codes = _codes(n, m, dtype, g)
    inv = _inv(codes)
    qs = _unit(19, m, g)
    for k in (1, 3, 10):
        got = manyscan.top_many(codes, qs, inv, k, 1.0)
        assert got is not None and got.shape == (19, k)
        for j, q in enumerate(qs):
            if k == 1:
                assert int(got[j, 0]) == onepass.best(codes, q, inv)[0]
            else:
                want = onepass.top(codes, q, inv, k, 1.0)
                assert want is not None and got[j].tolist() == want.tolist()


def _near_twins(n: int, m: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 unit codes at random, and 24 families of six near-twins, two in each of three
    chunks far apart (2, 13, 27): a family's code with each component moved by 0-3 ulps, so
    the exact scores differ in their last bits and the scans' sums' orders rank them
    differently; twins 0, 3 and 5 are exact copies (ties within a chunk and across chunks).
    The queries: each family's code plus a little noise."""
    codes = torch.nn.functional.normalize(torch.randn(n, m, generator=g), dim=1).numpy()
    base = codes[:24].copy()
    steps = torch.randint(0, 4, (24, 6, m), generator=g).numpy()
    steps[:, [0, 3, 5]] = 0
    for f in range(24):
        for j in range(6):
            code = base[f].copy()
            for ulp in range(3):  # component i moves up steps[f, j, i] ulps
                moved = steps[f, j] > ulp
                code[moved] = np.nextafter(code[moved], np.float32(np.inf))
            codes[(2, 13, 27)[j % 3] * CHUNK + 20 * f + j // 3] = code
    qs = torch.from_numpy(base) + 1e-3 * torch.randn(24, m, generator=g)
    return torch.from_numpy(codes), torch.nn.functional.normalize(qs, dim=1)


def test_near_twins_in_other_chunks_answer_as_single_scans() -> None:
    """Thousands of near-ties across chunks: the chunks kept within the rounding margin hold
    the single scan's answer (without the margin, the many scan's own order would pick
    another twin's chunk), and exact copies go to the lowest slot."""
    g = torch.Generator().manual_seed(3)
    n, m = 32 * CHUNK, 16
    codes, qs = _near_twins(n, m, g)
    inv = _inv(codes)
    one = manyscan.top_many(codes, qs, inv, 1, 1.0)
    three = manyscan.top_many(codes, qs, inv, 3, 1.0)
    assert one is not None and three is not None
    for j, q in enumerate(qs):
        assert int(one[j, 0]) == onepass.best(codes, q, inv)[0]
        want = onepass.top(codes, q, inv, 3, 1.0)
        assert want is not None and three[j].tolist() == want.tolist()


def test_ties_that_select_most_chunks_give_up() -> None:
    """A bank of equal codes: every chunk reaches the best maximum, so `top_many` answers None
    (the caller then scans query by query)."""
    codes = torch.ones(20 * CHUNK, 16)
    inv = _inv(codes)
    qs = _unit(4, 16, torch.Generator().manual_seed(0))
    assert manyscan.top_many(codes, qs, inv, 1, 1.0) is None
    assert manyscan.top_many(codes, qs, inv, 3, 1.0) is None
    assert manyscan.top_many(codes[: 5 * CHUNK], qs, inv[: 5 * CHUNK], 3, 1.0) is None  # k CHUNK


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_bank_batches_answer_as_single_reads_on_every_path(
    dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches below MANY_MIN (query by query) and above (one pass per 16 queries: the kernel
    runs), top 1 and top 3, near-twin codes: the same slots and scores as one read per query."""
    calls: list[int] = []
    real = manyscan.maxima_many

    def counted(codes: torch.Tensor, qs: torch.Tensor, inv: torch.Tensor) -> np.ndarray:
        calls.append(qs.shape[0])
        return real(codes, qs, inv)

    monkeypatch.setattr(manyscan, "maxima_many", counted)
    g = torch.Generator().manual_seed(9)
    n, m = 32 * CHUNK, 16
    codes, qs = _near_twins(n, m, g)
    scales = torch.full((m,), 0.004) if dtype == "int8" else None
    bank = MemoryBank(n, m, dtype=dtype, scales=scales)
    bank.assign(torch.arange(n), codes)
    queries = torch.cat([qs, _unit(50, m, g)])  # 74 queries
    for k in (1, 3):
        singles = [bank.search(q.unsqueeze(0), k) for q in queries]
        for b in (2, 3, 5, 16, 40, 64, 74):
            calls.clear()
            slots, scores = bank.search(queries[:b], k)
            assert torch.equal(slots, torch.cat([s for s, _ in singles[:b]]))
            assert torch.equal(scores, torch.cat([s for _, s in singles[:b]]))
            assert calls == ([b] if b >= manyscan.MANY_MIN[bank.codes.dtype] else [])


def test_ties_at_the_kth_place_go_to_the_lower_slots() -> None:
    """Four exact copies of the best code in four chunks, k = 2 and 3: the lowest slots,
    from the single scan and the many scan alike (the bank's own order then ranks them)."""
    g = torch.Generator().manual_seed(4)
    n, m = 32 * CHUNK, 16
    codes = _codes(n, m, torch.float32, g)
    best = torch.nn.functional.normalize(torch.randn(m, generator=g), dim=0)
    for slot in (9000, 3100, 15000, 700):
        codes[slot] = best
    inv = _inv(codes)
    qs = torch.stack([best, best])
    for k, want in ((2, [700, 3100]), (3, [700, 3100, 9000])):
        single = onepass.top(codes, best, inv, k, 1.0)
        assert single is not None and sorted(single.tolist()) == want
        many = manyscan.top_many(codes, qs, inv, k, 1.0)
        assert many is not None and [sorted(r) for r in many.tolist()] == [want, want]


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_query_keeping_many_chunks_ranks_the_batch_as_single_scans(dtype: torch.dtype) -> None:
    """One query's best code copied into 14 chunks (the last, with its N % LANES tail,
    among them), the other queries' top k in a few chunks each: the batch's queries keep
    different numbers of chunks, and each one's slots are still the single scan's, the
    copies by lower slot, and the exact top k of torch's scores."""
    g = torch.Generator().manual_seed(5)
    n, m = 90 * CHUNK + 37, 16
    codes = _codes(n, m, dtype, g)
    copies = [c * 6 * CHUNK + 11 * c for c in range(13)] + [n - 2]
    codes[copies] = codes[copies[0]].clone()
    inv = _inv(codes)
    others = _unit(6, m, g)  # the copies' query third: its slot 0 starts its scores' run
    qs = torch.cat([others[:2], codes[copies[:1]].float(), others[2:]])
    qs = torch.nn.functional.normalize(qs, dim=1)
    for k in (3, 10):
        many = manyscan.top_many(codes, qs, inv, k, 1.0)
        assert many is not None and many.shape == (7, k)
        assert many[2].tolist() == sorted(copies)[:k]
        exact = (codes.double() @ qs.double().T) * inv.double()[:, None]  # (n, 7)
        for j, q in enumerate(qs):
            single = onepass.top(codes, q, inv, k, 1.0)
            assert single is not None and many[j].tolist() == single.tolist()
            if j != 2:  # random codes: no near ties among the top k
                assert many[j].tolist() == exact[:, j].topk(k).indices.tolist()


def test_a_query_whose_copies_fill_most_chunks_is_read_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One query's best code copied into 12 of 20 chunks: `top_many` gives up on that row
    alone (-1), answers the others as single scans do, and a bank batch reads only that query
    by itself; every row of the batch equals its single read."""
    g = torch.Generator().manual_seed(6)
    n, m = 20 * CHUNK, 16
    codes = _codes(n, m, torch.float32, g)
    copies = [c * CHUNK + 7 for c in range(0, 20, 2)] + [CHUNK + 9, 3 * CHUNK + 9]
    codes[copies] = codes[copies[0]].clone()
    inv = _inv(codes)
    others = _unit(5, m, g)
    qs = torch.nn.functional.normalize(torch.cat([others[:2], codes[7:8], others[2:]]))
    for k in (1, 3):
        many = manyscan.top_many(codes, qs, inv, k, 1.0)
        assert many is not None and many[2].tolist() == [-1] * k
        for j in (0, 1, 3, 4, 5):
            want = (
                [onepass.best(codes, qs[j], inv)[0]]
                if k == 1
                else onepass.top(codes, qs[j], inv, k, 1.0)
            )
            assert want is not None and many[j].tolist() == list(want)
    alone: list[int] = []
    real = search._single

    def spy(q: torch.Tensor, *args: object) -> torch.Tensor:
        alone.append(int(torch.argmax(qs @ q)))  # which query
        return real(q, *args)  # type: ignore[arg-type]

    bank = MemoryBank(n, m)
    bank.assign(torch.arange(n), codes)
    monkeypatch.setattr(search, "_single", spy)
    for k in (1, 3):
        singles = [bank.search(q.unsqueeze(0), k) for q in qs]
        alone.clear()
        slots, scores = bank.search(qs, k)
        assert alone == [2]
        assert slots[2].tolist() == sorted(copies)[:k]
        assert torch.equal(slots, torch.cat([s for s, _ in singles]))
        assert torch.equal(scores, torch.cat([s for _, s in singles]))
