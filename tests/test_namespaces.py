"""Namespaces, pinned slots, records and per-namespace quotas in the bank and the memory loop
(issue 11): what each read, write, forget and pin does, exactly; snapshots and the WAL keep
all of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import lfu, snapshot
from model.bank import MemoryBank
from model.errors import BankFull, InvalidInput, NamespaceNotFound
from model.memory import IDRPMemory, Read, Write
from model.ops import Assign
from model.slots import SlotMeta
from model.state import state_problem
from service.persistence import Persistence
from tests.test_persistence import CAP, FP, IdentityCodec, M


def memory(capacity: int = 8, quota: int = 0) -> IDRPMemory:
    return IDRPMemory(IdentityCodec(M), MemoryBank(capacity, M, namespace_quota=quota))


def rows(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, M, generator=torch.Generator().manual_seed(seed))


def test_reads_search_one_namespace_or_all() -> None:
    mem = memory()
    a, b = rows(3, 1), rows(3, 2)
    assert mem.write_group([Write(a, "each", "a"), Write(b, "each", "b")])[1].slots == [3, 4, 5]
    [res] = mem.read_batch([Read(b[:1], top_k=8, namespace="a")])
    assert not isinstance(res, Exception)
    assert set(res.slots[0, :3].tolist()) == {0, 1, 2} and res.slots[0, 3:].eq(-1).all()
    everywhere = mem.read(b[:1], top_k=1)
    assert everywhere.slots.tolist() == [[3]]  # the item itself, in namespace b
    [missing] = mem.read_batch([Read(b[:1], namespace="nobody")])
    assert not isinstance(missing, Exception) and missing.slots.tolist() == [[-1]]
    assert mem.bank.misses == 1  # an unknown namespace is a miss, counted


def test_records_come_back_with_hits_and_slots() -> None:
    mem = memory()
    x = rows(2)
    out = mem.write_group([Write(x, "each", "u1", (b'{"text":"one"}', None), pinned=True)])[0]
    assert not isinstance(out, Exception) and out.slots == [0, 1]
    [hits] = mem.read(x[:1], top_k=2).hits()
    assert [(h.slot, h.record) for h in hits] == [(0, b'{"text":"one"}'), (1, None)]
    view = mem.get(0)
    assert (view.namespace, view.pinned, view.record) == ("u1", True, b'{"text":"one"}')
    assert mem.stats()["namespaces"] == {"u1": {"used": 2, "pinned": 2, "count_sum": 2}}


def test_bad_namespaces_and_record_counts_are_refused_alone() -> None:
    mem = memory()
    answers = mem.write_group(
        [
            Write(rows(1), "each", "has space"),
            Write(rows(2), "mean", records=(b"a", b"b")),
            Write(rows(1), "each", "ok"),
        ]
    )
    assert isinstance(answers[0], InvalidInput) and "got 'has space'" in str(answers[0])
    assert str(answers[1]) == "expected one record per stored slot (1, mode 'mean'), got 2"
    assert not isinstance(answers[2], Exception) and answers[2].slots == [0]
    assert mem.bank.used == 1


def test_forget_frees_a_whole_namespace_and_nothing_else() -> None:
    mem = memory()
    mem.write_group([Write(rows(3, 1), "each", "a"), Write(rows(2, 2), "each", "b")])
    before_b = [mem.get(s) for s in (3, 4)]
    assert mem.forget("a") == [0, 1, 2]
    assert mem.bank.used == 2 and mem.bank.namespace_slots("a") == []
    assert [mem.get(s).code.tolist() for s in (3, 4)] == [v.code.tolist() for v in before_b]
    with pytest.raises(NamespaceNotFound, match="namespace 'a' holds no slot"):
        mem.forget("a")
    with pytest.raises(NamespaceNotFound, match="namespace 'zzz' holds no slot"):
        mem.forget("zzz")


def test_pinned_slots_are_never_evicted_and_a_full_pinned_bank_refuses() -> None:
    mem = memory(capacity=4)
    mem.write(rows(2, 1), "each")
    mem.write_group([Write(rows(2, 2), "each", pinned=True)])  # slots 2, 3 pinned
    for i in range(5):  # each write evicts, never a pinned slot
        out = mem.write(rows(1, 10 + i), "each")
        assert set(out.slots) <= {0, 1}
    assert bool(mem.bank.meta.pinned[2]) and bool(mem.bank.meta.pinned[3])
    mem.pin(0)
    mem.pin(1)
    [refused] = mem.write_group([Write(rows(1, 99), "each")])
    assert isinstance(refused, BankFull)
    assert str(refused) == (
        "a write of 1 needs 1 slot(s) to evict but only 0 are not pinned: unpin or delete "
        "slots first"
    )
    assert mem.pin(2, False).pinned is False
    assert mem.write(rows(1, 100), "each").slots == [2]  # the one unpinned slot


def test_a_namespace_at_its_quota_replaces_its_own_lfu_slots() -> None:
    mem = memory(capacity=8, quota=3)
    mem.write(rows(2, 1), "each")  # default: slots 0, 1
    for i in range(6):
        mem.write_group([Write(rows(1, 20 + i), "each", "a")])
    assert len(mem.bank.namespace_slots("a")) == 3  # held at the quota
    assert mem.bank.namespace_slots("default") == [0, 1]  # never evicted by "a"
    assert mem.preview(1, "a").evicted != [] and set(mem.preview(1, "a").slots) <= set(
        mem.bank.namespace_slots("a")
    )
    assert mem.preview(1, "b").evicted == []  # "b" is under its quota: a free slot
    assert mem.preview(1, "b").slots == [5]


def test_a_group_plans_like_its_writes_one_at_a_time() -> None:
    # plan_each (pins, quotas) and the fast plan agree where both apply, and a group is
    # placed exactly as its writes one at a time.
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        bank = MemoryBank(12, M)
        n0 = int(torch.randint(0, 13, (1,), generator=g))
        if n0:
            bank.assign(list(range(n0)), torch.randn(n0, M, generator=g))
        for _ in range(int(torch.randint(0, 20, (1,), generator=g))):
            bank.read(torch.randn(1, M, generator=g))
        sizes = torch.randint(1, 6, (4,), generator=g).tolist()
        fast = lfu.plan(sizes, bank._policy())
        each = lfu.plan_each(sizes, bank._policy(), None, [0] * 4, [False] * 4, 0)
        assert fast == each, trial


def test_snapshot_keeps_namespaces_pins_and_records(tmp_path: Path) -> None:
    bank = MemoryBank(6, M)
    bank.assign([0, 2], rows(2), namespace="a", records=(b"x" * 5, None), pinned=True)
    bank.assign([4], rows(1, 3), namespace="b", records=(b"{}",))
    path = tmp_path / "s.safetensors"
    snapshot.save(bank, path, fingerprint=FP)
    back, _ = snapshot.load(path, expected_fingerprint=FP)
    for s in (0, 2, 4):
        got, want = back.get(s), bank.get(s)
        assert (got.namespace, got.pinned, got.record) == (want.namespace, want.pinned, want.record)
        assert torch.equal(got.code, want.code)
    assert back.stats()["namespaces"] == bank.stats()["namespaces"]
    assert back.meta.names == ["default", "a", "b"]
    # a free slot with a record is not a bank's state
    state = bank.state_dict()
    state["record_sizes"][0] = 4  # offsets say 5
    assert state_problem(state, 6, M, "float32") == (
        "inconsistent state: record_offsets do not match record_sizes"
    )
    meta = SlotMeta(6, torch.device("cpu"))
    meta.set(torch.tensor([1]), "default", [b""], False)  # as if slot 1 held a record
    bad = {**bank.state_dict(), **meta.state_tensors()}
    assert state_problem(bad, 6, M, "float32") == "inconsistent state: a free slot with a record"


def test_the_wal_replays_namespaces_records_pins_and_forgets(tmp_path: Path) -> None:
    p = Persistence(tmp_path)
    rec = p.recover(lambda: MemoryBank(CAP, M), fingerprint=FP, capacity=CAP, m=M)
    mem = IDRPMemory(IdentityCodec(M), rec.bank, log=p.log)
    mem.write_group([Write(rows(3), "each", "a", (b"1", b"2", None))])
    mem.write_group([Write(rows(2, 1), "each", "b", pinned=True)])
    mem.pin(0)
    mem.pin(4, False)
    mem.forget("a")
    mem.write_group([Write(rows(1, 2), "each", "c", (b'{"payload":{}}',))])
    live = {s: mem.get(s) for s in mem.bank.occupied.nonzero().squeeze(1).tolist()}
    p.close(clean=False)
    p2 = Persistence(tmp_path)
    back = p2.recover(lambda: MemoryBank(CAP, M), fingerprint=FP, capacity=CAP, m=M).bank
    assert back.used == len(live)
    for s, view in live.items():
        got = back.get(s)
        assert (got.namespace, got.pinned, got.record) == (view.namespace, view.pinned, view.record)
        assert torch.equal(got.code, view.code)
    assert back.namespace_slots("a") == []
    p2.close()


def test_assign_checks_records_and_namespace_before_any_change() -> None:
    bank = MemoryBank(4, M)
    with pytest.raises(ValueError, match=r"expected one record per slot \(2\), got 1"):
        bank.assign([0, 1], rows(2), records=(b"a",))
    with pytest.raises(ValueError, match="expected a namespace of 1-64 characters"):
        bank.apply(Assign([0], rows(1), "-bad"))
    assert bank.used == 0 and bank.tick == 0
