"""MemoryBank and IDRPMemory: the paper's read/write on small banks with hand-computed answers,
the departures from it (occupied flag, LFU tie-breaks, top-k, min_score, dtypes), snapshots."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from torch import Tensor

from model import search, snapshot
from model.bank import MemoryBank
from model.errors import DiskFullError, SlotNotFound, SnapshotError
from model.memory import IDRPMemory, IDRPReadResult, Read, Write
from model.ratecode import RateCode, fit_rate_code
from model.testing import tiny_idrp

DTYPES = ("float32", "float16", "int8", "rate")


def rate_code(m: int, bits: int = 6) -> RateCode:
    """A rate code for standard normal codes: bits per dimension on average (Lloyd-Max)."""
    z = torch.randn(4000, m, generator=torch.Generator().manual_seed(11)).numpy()
    return fit_rate_code(z, math.ceil(bits * m / 8))


def make_bank(capacity: int, m: int, dtype: str = "float32", **kw: object) -> MemoryBank:
    scales = torch.full((m,), 0.05) if dtype == "int8" else None
    rate = rate_code(m) if dtype == "rate" else None
    return MemoryBank(capacity, m, dtype=dtype, scales=scales, rate=rate, **kw)  # type: ignore[arg-type]


def cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


class LinearCodec:
    """A real (if linear) codec: encode = x @ Q[:, :m], decode = z @ Q[:, :m].T, Q orthogonal."""

    def __init__(self, d: int = 8, m: int = 3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        self.basis = q[:, :m].to(torch.float32)  # (d, m)
        self.config = SimpleNamespace(d=d, m=m)
        self.fingerprint = f"linear-d{d}-m{m}-seed{seed}"

    def encode(self, x: Tensor) -> Tensor:
        return x @ self.basis

    def decode(self, z: Tensor) -> Tensor:
        return z @ self.basis.T


# ---------------------------------------------------------------------- the paper's read/write


def test_paper_write_stores_batch_mean_in_first_free_slot() -> None:
    bank = MemoryBank(3, 2)
    r = bank.write(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))  # mean (2, 1)
    assert (r.slots, r.evicted) == ([0], [])
    assert bank.get(0).code.tolist() == [2.0, 1.0]
    assert bank.write(torch.tensor([[0.0, 1.0]])).slots == [1]
    assert bank.write(torch.tensor([[-1.0, 0.0]])).slots == [2]
    view = bank.get(1)
    assert (view.count, view.last_write, view.last_access) == (0, 2, 0)


def test_paper_read_is_top1_cosine_and_counts_the_access() -> None:
    bank = MemoryBank(3, 2)
    codes = [[2.0, 1.0], [0.0, 1.0], [-1.0, 0.0]]
    bank.write(torch.tensor(codes), mode="each")
    r = bank.read(torch.tensor([[1.0, 0.1]]))
    assert r.slots.tolist() == [[0]]
    assert r.scores.item() == pytest.approx(cos([1.0, 0.1], codes[0]), abs=1e-6)
    assert r.counts.tolist() == [[1]]
    r = bank.read(torch.tensor([[0.0, 2.0], [4.0, 2.0]]))
    assert r.slots.tolist() == [[1], [0]]
    assert r.scores[:, 0].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert r.counts.tolist() == [[1], [2]]
    assert bank.counts.tolist() == [2, 1, 0]
    assert bank.last_access.tolist() == [4, 3, 0]  # ticks: write 1, then one per query


def test_paper_write_replaces_least_frequently_used_and_resets_count() -> None:
    bank = MemoryBank(3, 2)
    bank.write(torch.tensor([[2.0, 1.0], [0.0, 1.0], [-1.0, 0.0]]), mode="each")
    bank.read(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]))  # counts [2, 1, 0]
    r = bank.write(torch.tensor([[5.0, 5.0], [3.0, 3.0]]))
    assert (r.slots, r.evicted) == ([2], [2])
    assert bank.get(2).code.tolist() == [4.0, 4.0]
    assert bank.counts.tolist() == [2, 1, 0]
    # No decay: the fresh slot has the lowest count again, so the next write replaces it.
    assert bank.write(torch.tensor([[1.0, -1.0]])).evicted == [2]
    s = bank.stats()
    assert (s["writes"], s["evictions"], s["used"], s["free"]) == (5, 2, 3, 0)


def test_slot_with_reset_count_is_not_free() -> None:
    bank = MemoryBank(2, 2)
    assert bank.write(torch.tensor([[1.0, 0.0]])).slots == [0]
    assert bank.counts[0].item() == 0
    assert bank.write(torch.tensor([[0.0, 1.0]])).slots == [1]  # the paper would reuse slot 0
    bank.delete(0)
    assert bank.write(torch.tensor([[1.0, 1.0]])).slots == [0]


def test_lfu_ties_break_by_least_recently_touched_then_slot() -> None:
    bank = MemoryBank(4, 2)
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    bank.assign([0, 1, 2, 3], codes)  # one tick: all counts 0, all touched at 1
    assert bank.choose_slots(4) == ([0, 1, 2, 3], [0, 1, 2, 3])  # by slot
    bank.read(torch.tensor([[0.0, 1.0]]))  # slot 1: count 1, touched 2
    bank.read(torch.tensor([[1.0, 0.0]]))  # slot 0: count 1, touched 3
    bank.assign([3], codes[3:])  # slot 3: count 0, touched 4
    assert bank.choose_slots(4) == ([2, 3, 1, 0], [2, 3, 1, 0])
    bank.delete(3)
    assert bank.choose_slots(2) == ([3, 2], [2])  # free first
    with pytest.raises(ValueError, match="expected n <= capacity=4, got n=5"):
        bank.choose_slots(5)
    before = bank.state_dict()
    bank.choose_slots(4)
    assert all(torch.equal(before[k], v) for k, v in bank.state_dict().items())  # pure


def test_initial_count_starts_counts_and_keeps_the_eviction_order() -> None:
    orders = []
    for initial in (0, 5):
        bank = MemoryBank(3, 2, initial_count=initial)
        bank.write(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), mode="each")
        r = bank.read(torch.tensor([[1.0, 0.0]]))
        assert r.counts.item() == initial + 1
        assert bank.get(1).count == initial
        orders.append(bank.choose_slots(3)[0])
        assert bank.stats()["initial_count"] == initial
    assert orders[0] == orders[1] == [1, 2, 0]


def test_min_score_miss_counts_nothing() -> None:
    bank = MemoryBank(3, 2)
    bank.write(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), mode="each")
    q = torch.tensor([[1.0, 1.0], [1.0, 0.1]])  # best cosines 0.7071, 0.9950
    r = bank.read(q, top_k=2, min_score=0.9)
    assert r.slots.tolist() == [[-1, -1], [0, -1]]  # slot 1 scores 0.0995 < 0.9: not a hit
    assert r.scores[0].tolist() == [0.0, 0.0]
    assert r.counts.tolist() == [[0, 0], [1, 0]]
    assert bank.counts.tolist() == [1, 0, 0]
    s = bank.stats()
    assert (s["reads"], s["hits"], s["misses"]) == (2, 1, 1)
    assert bank.last_access.tolist() == [3, 0, 0]  # the miss still took tick 2


def test_top_k_is_best_first_and_pads_with_minus_one() -> None:
    bank = MemoryBank(4, 2)
    angles = [0.0, 0.5, 1.0, 2.5]
    bank.write(torch.tensor([[math.cos(a), math.sin(a)] for a in angles]), mode="each")
    bank.delete(3)
    q = [math.cos(0.7), math.sin(0.7)]
    r = bank.read(torch.tensor([q]), top_k=6)
    assert r.slots.tolist() == [[1, 2, 0, -1, -1, -1]]
    expected = [math.cos(0.2), math.cos(0.3), math.cos(0.7), 0.0, 0.0, 0.0]
    assert r.scores[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert r.counts.tolist() == [[1, 1, 1, 0, 0, 0]]
    assert r.slots.dtype == r.counts.dtype == torch.int64
    assert r.scores.dtype == torch.float32


def test_batch_counts_are_sequential_and_equal_single_reads() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = MemoryBank(32, 6), MemoryBank(32, 6)
    codes = torch.randn(30, 6, generator=g)
    a.write(codes, mode="each")
    b.write(codes, mode="each")
    queries = codes[torch.randint(0, 30, (40,), generator=g)] + 0.3 * torch.randn(
        40, 6, generator=g
    )
    batch = a.read(queries, top_k=3)
    singles = [b.read(queries[i : i + 1], top_k=3) for i in range(40)]
    assert torch.equal(batch.slots, torch.cat([s.slots for s in singles]))
    assert torch.equal(batch.counts, torch.cat([s.counts for s in singles]))
    assert torch.equal(batch.scores, torch.cat([s.scores for s in singles]))
    assert batch.counts.max().item() > 1  # the batch really hit some slot more than once
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert a.stats() == b.stats()


@pytest.mark.parametrize("top_k", [1, 3, 70])
def test_blocked_search_matches_brute_force(top_k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "BLOCK_ELEMENTS", 1 << 10)  # 16 queries -> blocks of 64 slots
    monkeypatch.setattr(search, "_fused", lambda codes: False)  # torch's blocks, not the scans
    g = torch.Generator().manual_seed(5)
    bank = MemoryBank(500, 8)
    bank.assign(torch.randperm(500, generator=g)[:450], torch.randn(450, 8, generator=g))
    queries = torch.randn(16, 8, generator=g)
    r = bank.read(queries, top_k=top_k)
    unit = torch.nn.functional.normalize(bank.codes.double(), dim=1)
    exact = torch.nn.functional.normalize(queries.double(), dim=1) @ unit.T  # (16, 500)
    exact[:, ~bank.occupied] = -math.inf
    scores, slots = exact.topk(top_k, dim=1)
    assert torch.equal(r.slots, slots)
    assert torch.allclose(r.scores.double(), scores, atol=1e-6)
    assert bank._block is not None and bank._block.numel() == 16 * max(top_k, 64)


def test_blocked_top1_ties_go_to_the_lower_slot_across_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(search, "BLOCK_ELEMENTS", 1 << 10)  # 16 queries -> blocks of 64 slots
    monkeypatch.setattr(search, "_fused", lambda codes: False)  # torch's blocks, not the scans
    g = torch.Generator().manual_seed(6)
    bank = MemoryBank(300, 4)
    bank.assign(torch.arange(300), torch.randn(300, 4, generator=g) * 0.01)
    twin = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    for slot in (250, 70, 190):  # the same code in three blocks, written last-block first
        bank.assign([slot], twin)
    bank.delete(5)  # a free slot in the first block
    queries = torch.cat([twin, torch.randn(15, 4, generator=g)])
    r = bank.read(queries, top_k=1)
    assert r.slots[0, 0].item() == 70
    singles = torch.cat([bank.search(q.unsqueeze(0), 1)[0] for q in queries])
    assert torch.equal(r.slots, singles)


@pytest.mark.parametrize("n_queries", [1, 3])  # the single-query scan and the batch path
def test_top_k_ties_are_ordered_by_slot(n_queries: int) -> None:
    # Three slots hold the same code, written out of slot order: a read of that code returns
    # all three best first with equal scores, the lower slot first, then the next best.
    g = torch.Generator().manual_seed(8)
    bank = MemoryBank(50, 4)
    bank.assign(torch.arange(50), torch.randn(50, 4, generator=g))
    twin = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    for slot in (41, 7, 23):
        bank.assign([slot], twin)
    queries = torch.cat([twin, torch.randn(n_queries - 1, 4, generator=g)])
    slots, scores = bank.search(queries, 4)
    assert slots[0, :3].tolist() == [7, 23, 41]
    assert scores[0, 0] == scores[0, 1] == scores[0, 2] > scores[0, 3]


def test_zero_vectors_score_zero_never_nan() -> None:
    bank = MemoryBank(3, 2)
    bank.write(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), mode="each")
    r = bank.read(torch.tensor([[0.0, 0.0], [1.0, 0.0], [1e-30, 0.0], [3e38, 3e38]]), top_k=2)
    assert not torch.isnan(r.scores).any()
    assert r.scores[0].tolist() == [0.0, 0.0]
    assert r.slots[1].tolist() == [1, 0] and r.scores[1].tolist() == pytest.approx([0.6, 0.0])
    assert r.scores[2, 0].item() == pytest.approx(0.6)  # tiny and huge vectors normalise fine
    assert r.scores[3, 0].item() == pytest.approx(7 / (5 * math.sqrt(2)))


def test_empty_bank_reads_are_misses() -> None:
    bank = MemoryBank(2, 3)
    r = bank.read(torch.ones(2, 3), top_k=2)
    assert r.slots.tolist() == [[-1, -1], [-1, -1]]
    s = bank.stats()
    assert (s["reads"], s["hits"], s["misses"], s["used"], s["count_max"]) == (2, 0, 2, 0, 0)
    assert s["count_mean"] == 0.0


def test_int8_codes_are_rounded_multiples_of_scales() -> None:
    bank = MemoryBank(2, 2, dtype="int8", scales=torch.tensor([0.5, 0.25]))
    bank.write(torch.tensor([[1.3, -0.3], [100.0, 0.125]]), mode="each")
    assert bank.codes.tolist() == [[3, -1], [127, 0]]  # round half to even: 0.5 -> 0
    assert bank.get(0).code.tolist() == [1.5, -0.25]
    assert bank.get(1).code.tolist() == [63.5, 0.0]
    assert bank.codes_at([1, 0]).tolist() == [[63.5, 0.0], [1.5, -0.25]]


def test_float16_overflow_is_refused() -> None:
    bank = MemoryBank(2, 2, dtype="float16")
    with pytest.raises(ValueError, match="within float16 range"):
        bank.write(torch.tensor([[1e6, 0.0]]))
    assert bank.stats()["used"] == 0 and bank.tick == 0


def test_get_delete_clear_and_slot_errors() -> None:
    bank = MemoryBank(16, 2)
    bank.write(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(SlotNotFound, match=r"^slot 7 is not occupied$"):
        bank.get(7)
    with pytest.raises(SlotNotFound, match=r"^slot 99 is out of range \[0, 16\)$"):
        bank.get(99)
    with pytest.raises(SlotNotFound, match=r"slot -1 is out of range"):
        bank.delete(-1)
    with pytest.raises(SlotNotFound, match="slot 3 is not occupied"):
        bank.codes_at([0, 3])
    assert bank.get(torch.tensor(0)).code.tolist() == [1.0, 2.0]
    bank.delete(0)
    with pytest.raises(SlotNotFound, match="slot 0 is not occupied"):
        bank.delete(0)
    bank.write(torch.ones(3, 2), mode="each")
    tick = bank.tick
    bank.clear()
    s = bank.stats()
    assert (s["used"], s["writes"], bank.tick) == (0, 4, tick + 1)
    assert not bank.codes.any() and not bank.counts.any()


def test_assign_checks_everything_before_mutating() -> None:
    bank = MemoryBank(4, 2)
    with pytest.raises(ValueError, match=r"expected distinct slots, got \[1, 1\]"):
        bank.assign([1, 1], torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"expected slots in \[0, 4\), got \[4\]"):
        bank.assign([0, 4], torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"expected one code per slot \(1\), got 2 codes"):
        bank.assign([0], torch.ones(2, 2))
    with pytest.raises(ValueError, match="expected finite codes"):
        bank.assign([0], torch.tensor([[math.nan, 0.0]]))
    assert bank.tick == 0 and bank.stats()["writes"] == 0
    bank.assign([2, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    bank.assign([2], torch.tensor([[3.0, 3.0]]))
    assert bank.last_write.tolist() == [1, 0, 2, 0]
    assert (bank.stats()["writes"], bank.stats()["evictions"]) == (3, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 0, "m": 2}, "expected capacity >= 1, got capacity=0"),
        ({"capacity": 2.0, "m": 2}, "expected capacity to be an int >= 1, got 2.0"),
        ({"capacity": 2, "m": 0}, "expected m >= 1, got m=0"),
        ({"capacity": 2, "m": 2, "dtype": "bf16"}, "expected dtype in"),
        ({"capacity": 2, "m": 2, "dtype": "int8"}, "expected scales"),
        ({"capacity": 2, "m": 2, "dtype": "int8", "scales": [1.0, 0.0]}, "finite scales > 0"),
        ({"capacity": 2, "m": 2, "dtype": "int8", "scales": [1.0]}, r"scales of shape \(2,\)"),
        ({"capacity": 2, "m": 2, "scales": [1.0, 1.0]}, "expected scales=None"),
        ({"capacity": 2, "m": 2, "initial_count": -1}, "expected initial_count >= 0"),
    ],
)
def test_constructor_validates(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MemoryBank(**kwargs)  # type: ignore[arg-type]


def test_read_and_write_validate() -> None:
    bank = MemoryBank(4, 3)
    with pytest.raises(ValueError, match=r"expected queries of shape \(B >= 1, 3\), got \(2, 2\)"):
        bank.read(torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"got \(0, 3\)"):
        bank.read(torch.ones(0, 3))
    with pytest.raises(ValueError, match="expected top_k >= 1, got top_k=0"):
        bank.read(torch.ones(1, 3), top_k=0)
    with pytest.raises(ValueError, match="expected a finite min_score"):
        bank.read(torch.ones(1, 3), min_score=math.nan)
    with pytest.raises(ValueError, match="expected finite queries"):
        bank.read(torch.tensor([[math.inf, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"expected mode in \['mean', 'each'\], got 'all'"):
        bank.write(torch.ones(1, 3), mode="all")
    with pytest.raises(ValueError, match="expected n <= capacity=4, got n=5"):
        bank.write(torch.ones(5, 3), mode="each")
    assert bank.stats()["reads"] == 0 and bank.tick == 0


def test_stats_after_a_sequence() -> None:
    bank = MemoryBank(4, 2)
    bank.write(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), mode="each")
    bank.read(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    bank.read(torch.tensor([[-1.0, -1.0]]), min_score=0.0)
    s = bank.stats()
    expected = {
        "capacity": 4,
        "used": 3,
        "free": 1,
        "reads": 4,
        "hits": 3,
        "misses": 1,
        "writes": 3,
        "evictions": 0,
        "count_min": 0,
        "count_mean": 1.0,
        "count_max": 2,
        "count_sum": 3,
        "dtype": "float32",
        "code_bytes": 2 * 4,  # one stored code: m float32 values
        # codes + counts, last_write, last_access (int32) + occupied + 7 int64 counters
        "bytes": 4 * 2 * 4 + 4 * 4 * 3 + 4 + 7 * 8,
        "cache_bytes": 4 * 4,  # one float32 inverse norm per slot
        "meta_bytes": 0,  # a plain bank allocates no namespace, pin or record
        "namespaces": {"default": {"used": 3, "pinned": 0, "count_sum": 3}},
        "initial_count": 0,
        "tick": 5,
    }
    assert s == expected


# ---------------------------------------------------------------------- dtypes and snapshots


def assert_same_bank(a: MemoryBank, b: MemoryBank) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    assert a.stats() == b.stats()


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_round_trip_through_write_read_get_and_snapshot(dtype: str, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    bank = make_bank(10, 4, dtype, initial_count=2)
    codes = torch.randn(8, 4, generator=g)
    bank.write(codes[:6], mode="each")
    bank.write(codes[6:])  # mean
    stored = torch.cat([bank.get(s).code[None] for s in range(7)])
    tol = {"float32": 0.0, "float16": 1e-3, "int8": 0.03, "rate": 0.15}[dtype]
    assert torch.allclose(stored[:6], codes[:6], atol=tol, rtol=tol)
    r = bank.read(codes[:6] + 0.01, top_k=2)
    assert r.slots[:, 0].tolist() == list(range(6))
    bank.delete(4)
    assert (
        bank.codes.dtype
        == {
            "float32": torch.float32,
            "float16": torch.float16,
            "int8": torch.int8,
            "rate": torch.uint8,
        }[dtype]
    )
    assert bank.codes.shape[1] == (3 if dtype == "rate" else 4)  # 4 x 6 bits: 3 bytes
    assert bank.stats()["code_bytes"] == {"float32": 16, "float16": 8, "int8": 4, "rate": 3}[dtype]

    path = tmp_path / "bank.safetensors"
    size = snapshot.save(bank, path, fingerprint="abc123", extra={"lsn": "42"}).bytes
    assert size == path.stat().st_size
    loaded, file = snapshot.load(path, expected_fingerprint="abc123", capacity=10, m=4)
    meta = file.metadata
    assert_same_bank(bank, loaded)
    assert torch.equal(loaded.get(5).code, bank.get(5).code)
    assert (meta["dtype"], meta["lsn"], meta["format_version"]) == (dtype, "42", "2")
    assert (meta["capacity"], meta["m"], meta["initial_count"]) == ("10", "4", "2")
    assert meta["created_at"].endswith("+00:00")
    q = torch.randn(5, 4, generator=g)
    ra, rb = bank.read(q, top_k=3), loaded.read(q, top_k=3)
    assert torch.equal(ra.slots, rb.slots) and torch.equal(ra.scores, rb.scores)
    assert torch.equal(ra.counts, rb.counts)
    assert bank.write(q).slots == loaded.write(q).slots
    assert_same_bank(bank, loaded)


def test_state_dict_round_trip_and_refusal() -> None:
    bank = make_bank(4, 2, "int8")
    bank.write(torch.tensor([[1.0, 0.5]]))
    other = make_bank(4, 2, "int8")
    other.load_state_dict(bank.state_dict())
    assert_same_bank(bank, other)
    state = bank.state_dict()
    state["counts"][3] = 1
    with pytest.raises(ValueError, match="counts nonzero on a free slot"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match=r"lacks tensor\(s\) \['scales'\]"):
        other.load_state_dict({k: v for k, v in bank.state_dict().items() if k != "scales"})


def test_save_is_atomic_and_leaves_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bank = MemoryBank(4, 2)
    bank.write(torch.tensor([[1.0, 0.0]]))
    path = tmp_path / "bank.safetensors"
    snapshot.save(bank, path, fingerprint="f")
    snapshot.save(bank, path, fingerprint="f")  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["bank.safetensors"]
    old = path.read_bytes()

    def fail(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", fail)
    bank.write(torch.tensor([[0.0, 1.0]]))
    with pytest.raises(OSError, match="disk on fire"):
        snapshot.save(bank, path, fingerprint="f")
    assert sorted(os.listdir(tmp_path)) == ["bank.safetensors"]
    assert path.read_bytes() == old


def test_save_reports_a_full_disk_as_oserror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise safetensors.SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        snapshot.save(MemoryBank(2, 2), tmp_path / "bank.safetensors", fingerprint="f")
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_save_validates_metadata(tmp_path: Path) -> None:
    bank = MemoryBank(2, 2)
    with pytest.raises(ValueError, match="non-empty fingerprint"):
        snapshot.save(bank, tmp_path / "b", fingerprint="")
    with pytest.raises(ValueError, match=r"got \['sha256'\]"):
        snapshot.save(bank, tmp_path / "b", fingerprint="f", extra={"sha256": "x"})
    with pytest.raises(ValueError, match=r"dict\[str, str\]"):
        snapshot.save(bank, tmp_path / "b", fingerprint="f", extra={"lsn": 3})  # type: ignore[dict-item]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_state_of_a_copy_matches_bank_save(dtype: str, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(4)
    bank = make_bank(6, 3, dtype, initial_count=2, decay_ticks=3)
    bank.write(torch.randn(6, 3, generator=g), mode="each")  # full: the next write evicts
    bank.read(torch.randn(4, 3, generator=g), top_k=2)
    snapshot.save(bank, tmp_path / "bank", fingerprint="f", extra={"lsn": "9"})
    size = snapshot.save(
        bank.state_dict(), tmp_path / "copy", fingerprint="f", initial_count=2, extra={"lsn": "9"}
    ).bytes
    assert size == (tmp_path / "copy").stat().st_size == (tmp_path / "bank").stat().st_size
    (a, file_a), (b, file_b) = (snapshot.load(tmp_path / n) for n in ("bank", "copy"))
    meta_a, meta_b = file_a.metadata, file_b.metadata
    assert_same_bank(a, b)
    assert_same_bank(a, bank)
    assert {k: v for k, v in meta_a.items() if k != "created_at"} == {
        k: v for k, v in meta_b.items() if k != "created_at"
    }
    # decay_ticks is a policy, not state: a loaded bank starts with it off and can evict.
    assert a.decay_ticks == 0
    z = torch.randn(1, 3, generator=g)
    assert a.write(z).evicted == b.write(z).evicted != []


def test_save_state_refuses_a_wrong_layout(tmp_path: Path) -> None:
    state = make_bank(4, 2, "int8").state_dict()
    with pytest.raises(ValueError, match=r"state dict lacks tensor\(s\) \['scales'\]"):
        snapshot.save(
            {k: v for k, v in state.items() if k != "scales"}, tmp_path / "a", fingerprint="f"
        )
    state["counts"] = state["counts"][:3]
    with pytest.raises(ValueError, match=r"tensor 'counts' has shape \(3,\), expected \(4,\)"):
        snapshot.save(state, tmp_path / "b", fingerprint="f")
    state["codes"] = state["codes"].double()
    with pytest.raises(
        ValueError, match=r"expected codes \(capacity, m\) in .*, got torch\.float64"
    ):
        snapshot.save(state, tmp_path / "c", fingerprint="f")
    assert os.listdir(tmp_path) == []


def _snapshot(tmp_path: Path) -> tuple[Path, dict[str, Tensor], dict[str, str]]:
    bank = make_bank(4, 2, "int8")
    bank.write(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), mode="each")
    path = tmp_path / "snap.safetensors"
    snapshot.save(bank, path, fingerprint="model-a")
    with safetensors.safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return path, tensors, meta


def _rewrite(path: Path, tensors: dict[str, Tensor], meta: dict[str, str]) -> None:
    """Write a snapshot with these tensors and metadata, with a correct checksum."""
    meta = {**meta, "sha256": snapshot.content_sha256(tensors, meta)}
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


def _refusal_cases() -> list[tuple[str, str]]:
    return [
        ("missing", r"snap\.safetensors does not exist"),
        ("truncated", "is truncated or not a safetensors file"),
        ("garbage", "is truncated or not a safetensors file"),
        ("empty", "is truncated or not a safetensors file"),
        ("bitflip", "content checksum mismatch"),
        ("format", "has format_version '3', expected '1' or '2'"),
        ("no_sha", "metadata lacks 'sha256'"),
        ("fingerprint", "was made by model model-a, expected model-b"),
        ("m", "has m=2, expected m=3"),
        ("capacity", "has capacity=4, expected capacity=8"),
        ("meta_int", "metadata capacity='four' is not an int"),
        ("meta_dtype", "has dtype 'bf16', expected one of"),
        ("tensor_dtype", "tensor 'counts' has dtype torch.int64, expected torch.int32"),
        ("tensor_shape", r"tensor 'codes' has shape \(3, 2\), expected \(4, 2\)"),
        ("missing_key", r"lacks tensor\(s\) \['last_access'\]"),
        ("extra_key", r"has unexpected tensor\(s\) \['zzz'\]"),
        ("count_on_free", "counts nonzero on a free slot"),
        ("code_on_free", "code stored in a free slot"),
        ("counters", r"hits 2 \+ misses 0 != reads 1"),
        ("future_tick", "slot tick beyond the bank's tick"),
    ]


@pytest.mark.parametrize(("case", "message"), _refusal_cases())
def test_snapshot_refusals_say_which_check_failed(tmp_path: Path, case: str, message: str) -> None:
    path, tensors, meta = _snapshot(tmp_path)
    kwargs: dict[str, object] = {"expected_fingerprint": "model-a"}
    data = path.read_bytes()
    if case == "missing":
        path.unlink()
    elif case == "truncated":
        path.write_bytes(data[:-10])
    elif case == "garbage":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + bytes(64))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "bitflip":
        path.write_bytes(data[:-20] + bytes([data[-20] ^ 1]) + data[-19:])
    elif case == "format":
        _rewrite(path, tensors, {**meta, "format_version": "3"})
    elif case == "no_sha":
        safetensors.torch.save_file(
            tensors, str(path), metadata={k: v for k, v in meta.items() if k != "sha256"}
        )
    elif case == "fingerprint":
        kwargs["expected_fingerprint"] = "model-b"
    elif case == "m":
        kwargs["m"] = 3
    elif case == "capacity":
        kwargs["capacity"] = 8
    elif case == "meta_int":
        _rewrite(path, tensors, {**meta, "capacity": "four"})
    elif case == "meta_dtype":
        _rewrite(path, tensors, {**meta, "dtype": "bf16"})
    elif case == "tensor_dtype":
        _rewrite(path, {**tensors, "counts": tensors["counts"].long()}, meta)
    elif case == "tensor_shape":
        _rewrite(path, {**tensors, "codes": tensors["codes"][:3].clone()}, meta)
    elif case == "missing_key":
        _rewrite(path, {k: v for k, v in tensors.items() if k != "last_access"}, meta)
    elif case == "extra_key":
        _rewrite(path, {**tensors, "zzz": torch.zeros(1)}, meta)
    elif case == "count_on_free":
        counts = tensors["counts"].clone()
        counts[3] = 2
        _rewrite(path, {**tensors, "counts": counts}, meta)
    elif case == "code_on_free":
        codes = tensors["codes"].clone()
        codes[3, 0] = 1
        _rewrite(path, {**tensors, "codes": codes}, meta)
    elif case == "counters":
        _rewrite(path, {**tensors, "counters": torch.tensor([2, 1, 2, 0, 2, 0, 0])}, meta)
    elif case == "future_tick":
        last_write = tensors["last_write"].clone()
        last_write[0] = 99
        _rewrite(path, {**tensors, "last_write": last_write}, meta)
    with pytest.raises(SnapshotError, match=message):
        snapshot.load(path, **kwargs)  # type: ignore[arg-type]


def test_each_refusal_has_its_own_message() -> None:
    messages = [m for _, m in _refusal_cases()]
    assert len(set(messages)) == len(messages) - 2  # truncated/garbage/empty share one


# ---------------------------------------------------------------------- IDRPMemory


def test_idrp_memory_with_a_linear_codec() -> None:
    codec = LinearCodec(d=8, m=3)
    mem = IDRPMemory(codec, MemoryBank(4, 3))
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 8, generator=g)
    x = torch.cat([x0, 3 * x0])
    w = mem.write(x)  # mean of the two codes, parallel to x0's
    assert w.slots == [0]
    mem.write(torch.randn(3, 8, generator=g), mode="each")
    r = mem.read(x[:1], top_k=2)
    assert r.slots[0, 0].item() == 0 and r.counts[0, 0].item() == 1
    assert r.reconstructions is not None and r.reconstructions.shape == (1, 2, 8)
    expected = codec.decode(codec.encode(x).mean(dim=0, keepdim=True))[0]
    assert torch.allclose(r.reconstructions[0, 0], expected, atol=1e-6)
    miss = mem.read(x[:1], top_k=6, min_score=0.5)
    assert miss.reconstructions is not None
    assert (miss.slots[0, 4:] == -1).all() and not miss.reconstructions[0, 4:].any()
    assert mem.read(x, reconstruct=False).reconstructions is None
    with pytest.raises(ValueError, match=r"expected x of shape \(B >= 1, 8\), got \(1, 7\)"):
        mem.read(torch.ones(1, 7))
    with pytest.raises(ValueError, match="expected a bank with m=3, got m=4"):
        IDRPMemory(codec, MemoryBank(4, 4))


def test_idrp_memory_with_tiny_idrp() -> None:
    model = tiny_idrp(d=64, m=16, seed=0)
    mem = IDRPMemory(model, MemoryBank(8, model.config.m))
    x = torch.rand(5, 64, generator=torch.Generator().manual_seed(4))
    assert mem.write(x, mode="each").slots == [0, 1, 2, 3, 4]
    r = mem.read(x)
    assert r.slots[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert r.scores[:, 0].tolist() == pytest.approx([1.0] * 5, abs=1e-5)
    assert r.reconstructions is not None
    expected = model.decode(model.encode(x))
    assert torch.allclose(r.reconstructions[:, 0], expected, atol=1e-5)


def test_lfu_decay_lets_initial_count_protect_fresh_slots() -> None:
    def fill(decay_ticks: int) -> MemoryBank:
        bank = MemoryBank(2, 2, initial_count=5, decay_ticks=decay_ticks)
        bank.write(torch.tensor([[1.0, 0.0]]), mode="each")  # slot 0: old, read a lot long ago
        for _ in range(8):
            bank.read(torch.tensor([[1.0, 0.0]]))  # count 5 + 8 = 13, last touched at tick 9
        misses = bank.read(torch.full((40, 2), -1.0), min_score=1.0)  # 40 ticks, nothing touched
        assert (misses.slots == -1).all()
        bank.write(torch.tensor([[0.0, 1.0]]), mode="each")  # slot 1: fresh, count 5, tick 50
        return bank

    # without decay the fresh slot (5 < 13) is evicted; with it slot 0 has sat idle for
    # 41 ticks, 13 >> 4 = 0 < 5 (slot 1 was just written: 5 >> 0 = 5)
    assert fill(0).choose_slots(1) == ([1], [1])
    assert fill(10).choose_slots(1) == ([0], [0])
    assert fill(10).counts.tolist() == fill(0).counts.tolist()  # decay never changes counts


# ---------------------------------------------------------------------- the loop's protocol


def _bank_state(bank: MemoryBank) -> dict[str, list[object]]:
    return {k: v.tolist() for k, v in bank.state_dict().items()}


def test_a_failing_log_leaves_the_bank_unchanged() -> None:
    """plan -> log -> apply: the durability callback sees the planned operations before the
    bank changes, and when it raises nothing is applied, for writes and for deletes."""
    codec = LinearCodec(d=8, m=3)
    seen: list[list[object]] = []

    def failing(ops: object) -> int:
        seen.append(list(ops))  # type: ignore[call-overload]
        raise DiskFullError("disk full")

    good = IDRPMemory(codec, MemoryBank(4, 3))
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 8, generator=g)
    good.write(x, mode="each")
    mem = IDRPMemory(codec, MemoryBank(4, 3), log=failing, position=5)
    mem.bank.load_state_dict(good.bank.state_dict())
    before = _bank_state(mem.bank)
    answers = mem.write_group([Write(x[:1]), Write(torch.ones(1, 7)), Write(x[1:], "each")])
    assert isinstance(answers[0], DiskFullError) and isinstance(answers[2], DiskFullError)
    assert str(answers[1]) == "expected item of shape (B >= 1, 8), got (1, 7)"  # refused alone
    assert [[type(op).__name__ for op in ops] for ops in seen] == [["Assign", "Assign"]]
    first, second = seen[0]
    assert (first.slots, second.slots) == ([3], [0, 1])  # type: ignore[attr-defined]
    with pytest.raises(DiskFullError, match="disk full"):
        mem.delete(2)
    with pytest.raises(DiskFullError):
        mem.clear()
    assert _bank_state(mem.bank) == before and mem.position == 5
    assert mem.read(x[:1]).slots.tolist() == [[0]]  # reads are not logged


def test_a_write_group_answers_as_its_requests_would_one_by_one() -> None:
    codec = LinearCodec(d=8, m=3)
    logged: list[list[object]] = []

    def log(ops: object) -> int:
        logged.append(list(ops))  # type: ignore[call-overload]
        return 10 * len(logged)

    g = torch.Generator().manual_seed(8)
    requests = [Write(torch.randn(n, 8, generator=g), mode) for n, mode in
                [(2, "mean"), (3, "each"), (1, "each"), (2, "each"), (1, "mean")]]  # fmt: skip
    grouped = IDRPMemory(codec, MemoryBank(5, 3, initial_count=1), log=log)
    alone = IDRPMemory(codec, MemoryBank(5, 3, initial_count=1))
    got = grouped.write_group(requests)
    want = [alone.write(w.items, w.mode) for w in requests]
    assert got == want
    assert [a.used for a in want] == [1, 4, 5, 5, 5]  # type: ignore[union-attr]
    assert len(logged) == 1 and len(logged[0]) == 5 and grouped.position == 10
    torch.testing.assert_close(grouped.bank.codes, alone.bank.codes)
    assert _bank_state(grouped.bank)["counts"] == _bank_state(alone.bank)["counts"]


def test_a_read_batch_counts_in_queue_order_across_parameters() -> None:
    codec = LinearCodec(d=8, m=3)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 8, generator=g)
    batched, alone = (IDRPMemory(codec, MemoryBank(4, 3)) for _ in range(2))
    for mem in (batched, alone):
        mem.write(x, mode="each")
    reads = [Read(x[:1]), Read(x[:1], top_k=2), Read(x[:1]), Read(x[:1], min_score=2.0)]
    got = batched.read_batch(reads)
    want = [alone.read(r.queries, r.top_k, r.min_score) for r in reads]
    for a, b in zip(got, want, strict=True):
        assert isinstance(a, IDRPReadResult)
        assert a.slots.tolist() == b.slots.tolist() and a.counts.tolist() == b.counts.tolist()
    assert [r.counts[0, 0].item() for r in got] == [1, 2, 3, 0]  # type: ignore[union-attr]
    hits = got[1].hits()  # type: ignore[union-attr]
    assert [(h.slot, h.count) for h in hits[0]] == [(0, 2), (hits[0][1].slot, 1)]
    assert hits[0][0].reconstruction is not None and hits[0][0].reconstruction.shape == (8,)
