"""The bank's compact state (format 2): scans over the stored codes, int32 counters that
saturate, slot ticks that rebase, metadata allocated on first use, format-1 snapshots."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from model import bank as bank_module
from model import snapshot
from model.bank import MemoryBank
from model.durable import tensor_sha256
from model.search import CAST_ROWS
from model.state import COUNT_MAX
from tests.test_memory import make_bank


def exact_cosines(bank: MemoryBank, queries: torch.Tensor) -> torch.Tensor:
    """float64 cosine of each query with every occupied slot's dequantised code (B, N)."""
    codes = bank.quant.dequantise(bank.codes).double()
    q = queries.double()
    dots = q @ codes.T
    norms = q.norm(dim=1, keepdim=True) * codes.norm(dim=1)
    cos = torch.where(norms > 0, dots / norms.clamp(min=1e-300), 0.0)
    return cos.masked_fill(~bank.occupied, -math.inf)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "rate"])
@pytest.mark.parametrize("batch", [1, 300])
@pytest.mark.parametrize("top_k", [1, 5])
def test_scan_over_stored_codes_equals_the_float32_cosine(
    dtype: str, batch: int, top_k: int
) -> None:
    """Across several blocks (batch 1: CAST_ROWS rows per cast block; batch 300: the score
    block) the top k are the exact top k of the dequantised codes, scores to 1e-5."""
    g = torch.Generator().manual_seed(7)
    n = 2 * CAST_ROWS + 123
    bank = make_bank(n, 4, dtype)
    bank.write(torch.randn(n - 50, 4, generator=g), mode="each")  # 50 slots stay free
    queries = torch.randn(batch, 4, generator=g)
    r = bank.read(queries, top_k=top_k)
    exact = exact_cosines(bank, queries)
    top = torch.topk(exact, top_k, dim=1).values  # (int8 codes tie often: compare scores)
    assert torch.allclose(r.scores.double(), top, atol=1e-5, rtol=0)
    assert torch.allclose(exact.gather(1, r.slots), top, atol=1e-5, rtol=0)
    assert bank.occupied[r.slots].all()
    assert all(len(set(row)) == top_k for row in r.slots.tolist())


def test_a_free_slot_never_answers_even_when_every_score_is_negative() -> None:
    bank = MemoryBank(CAST_ROWS + 10, 2, dtype="float16")
    bank.assign([CAST_ROWS + 5], torch.tensor([[1.0, 0.0]]))  # one slot, far down the bank
    r = bank.read(torch.tensor([[-1.0, 0.0]]), top_k=2)
    assert r.slots.tolist() == [[CAST_ROWS + 5, -1]]
    assert r.scores.tolist() == [[-1.0, 0.0]]


def test_a_free_rate_slot_never_answers_though_its_zero_bytes_decode_to_levels() -> None:
    """A free rate slot's zero bytes read back as each dimension's lowest level, not zero: its
    inverse norm is 0 (also after a snapshot load), so it scores 0 and is masked out."""
    bank = make_bank(CAST_ROWS + 10, 4, "rate")
    assert bool((bank.quant.dequantise(bank.codes[:1]) != 0).all())
    bank.assign([CAST_ROWS + 5], torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    back = MemoryBank.from_state(bank.state_dict())
    for b in (bank, back):
        r = b.read(torch.tensor([[-1.0, 0.0, 0.0, 0.0]]), top_k=2)
        assert r.slots.tolist() == [[CAST_ROWS + 5, -1]]
        assert r.scores[0, 1] == 0.0 and r.scores[0, 0] < -0.9
        assert int((b._inv != 0).sum()) == 1


@pytest.mark.parametrize("few", [bank_module.TOUCH_FEW, 0])  # hits counted one by one, or not
def test_counts_saturate_instead_of_wrapping(few: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bank_module, "TOUCH_FEW", few)
    bank = MemoryBank(2, 2)
    bank.write(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), mode="each")
    state = bank.state_dict()
    state["counts"][0] = COUNT_MAX - 1
    bank.load_state_dict(state)
    q = torch.tensor([[1.0, 0.0]] * 3)
    r = bank.read(q)
    assert r.counts[:, 0].tolist() == [COUNT_MAX, COUNT_MAX, COUNT_MAX]
    assert bank.counts.tolist() == [COUNT_MAX, 0]
    assert bank.get(0).count == COUNT_MAX and bank.hits == 3


def test_ticks_rebase_without_changing_any_choice_or_reported_tick() -> None:
    """A bank whose relative ticks may not pass 40 rebases many times; with every slot read
    each round (so none is older than the window) it makes exactly the choices, and reports
    exactly the ticks, of a bank that never rebases."""
    g = torch.Generator().manual_seed(3)
    small, big = MemoryBank(6, 3), MemoryBank(6, 3)
    small.TICK_MAX = 40
    bases = set()
    for _ in range(60):
        item = torch.randn(1, 3, generator=g)
        assert small.write(item) == big.write(item)
        q = torch.randn(2, 3, generator=g)
        a, b = small.read(q, top_k=6), big.read(q, top_k=6)
        assert torch.equal(a.slots, b.slots) and torch.equal(a.counts, b.counts)
        bases.add(small.tick_base)
        for s in torch.nonzero(big.occupied).squeeze(1).tolist():
            x, y = small.get(s), big.get(s)
            assert (x.count, x.last_access) == (y.count, y.last_access)
            # a write older than the window is reported as base + 1 (model.state.rebase_ticks)
            assert x.last_write == max(y.last_write, small.tick_base + 1)
    assert big.tick_base == 0 and len(bases) > 5  # it really rebased, again and again
    assert int(torch.maximum(small.last_write, small.last_access).max()) <= 40
    assert small.tick == big.tick


def test_a_rebase_keeps_lfu_order_and_clamps_only_what_is_out_of_the_window() -> None:
    bank = MemoryBank(3, 2)
    bank.TICK_MAX = 10
    bank.write(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), mode="each")  # tick 1
    for _ in range(8):  # slot 0 is read at ticks 2..9, slots 1 and 2 never
        bank.read(torch.tensor([[1.0, -0.2]]))
    assert bank.tick_base == 0
    bank.read(torch.tensor([[1.0, -0.2]]) * torch.ones(3, 1))  # needs ticks 10..12: rebase
    assert bank.tick_base == 2  # relative tick 12 - 2 = 10 fits; slots 1, 2 (tick 1) clamp
    assert [bank.get(s).last_write for s in (1, 2)] == [3, 3]  # 1 moved up to base + 1
    assert bank.get(0).last_access == 12
    assert bank.choose_slots(2).slots == [1, 2]  # still LFU, ties by slot


def test_plain_bank_allocates_no_metadata_and_snapshots_none(tmp_path: Path) -> None:
    bank = MemoryBank(1000, 4)
    bank.write(torch.randn(10, 4), mode="each")
    assert bank.stats()["meta_bytes"] == 0
    assert bank.meta.plain and set(bank.state_tensors()) == {
        "codes",
        "counts",
        "occupied",
        "last_write",
        "last_access",
        "counters",
    }
    snapshot.save(bank, tmp_path / "s.safetensors", fingerprint="fp")
    back, _ = snapshot.load(tmp_path / "s.safetensors", expected_fingerprint="fp")
    assert back.meta.plain and back.stats() == bank.stats()
    bank.assign([20], torch.ones(1, 4), namespace="alice")  # a namespace: ids, not pins
    assert bank.stats()["meta_bytes"] == 1000 * 4
    assert bank.get(20).namespace == "alice" and not bank.get(20).pinned


def _v1_file(path: Path, bank: MemoryBank) -> None:
    """What format 1 wrote for this bank: int64 counters, absolute ticks, six counters."""
    state = bank.state_dict()
    tensors = {
        "codes": state["codes"],
        "scales": state["scales"],
        "occupied": state["occupied"],
        "counts": state["counts"].long(),
        "last_write": state["last_write"].long(),
        "last_access": state["last_access"].long(),
        "counters": state["counters"][:6].clone(),
    }
    meta = {
        "format_version": "1",
        "capacity": str(bank.capacity),
        "m": str(bank.m),
        "dtype": bank.dtype,
        "initial_count": "0",
        "fingerprint": "fp",
        "created_at": "2026-11-01T00:00:00+00:00",
        "sha256": tensor_sha256(tensors),
    }
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


def test_a_format_1_snapshot_loads_as_the_same_bank(tmp_path: Path) -> None:
    bank = make_bank(8, 2, "int8")
    bank.write(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]), mode="each")
    bank.read(torch.tensor([[1.0, 0.1], [0.0, 1.0], [1.0, 0.0]]))
    _v1_file(tmp_path / "v1.safetensors", bank)
    back, facts = snapshot.load(tmp_path / "v1.safetensors", expected_fingerprint="fp")
    assert facts.metadata["format_version"] == "1"
    assert back.stats() == bank.stats()
    for s in range(3):
        x, y = back.get(s), bank.get(s)
        assert (x.count, x.last_write, x.last_access) == (y.count, y.last_write, y.last_access)
        assert torch.equal(x.code, y.code)
    assert torch.equal(back.codes, bank.codes) and back.counts.dtype == torch.int32
    snapshot.save(back, tmp_path / "v2.safetensors", fingerprint="fp")  # saved as format 2
    with safetensors.safe_open(str(tmp_path / "v2.safetensors"), "pt") as f:
        assert f.metadata()["format_version"] == "2"
        assert f.get_tensor("counters").tolist()[6] == 0  # tick_base


def test_a_format_1_snapshot_with_the_wrong_dtype_is_refused(tmp_path: Path) -> None:
    bank = make_bank(4, 2, "int8")
    bank.write(torch.tensor([[1.0, 0.0]]))
    _v1_file(tmp_path / "v1.safetensors", bank)
    with safetensors.safe_open(str(tmp_path / "v1.safetensors"), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["counts"] = tensors["counts"].int()
    meta["sha256"] = tensor_sha256(tensors)
    safetensors.torch.save_file(tensors, str(tmp_path / "v1.safetensors"), metadata=meta)
    refusal = r"\(format 1\) tensor 'counts' is torch.int32"
    with pytest.raises(snapshot.SnapshotError, match=refusal):
        snapshot.load(tmp_path / "v1.safetensors")
