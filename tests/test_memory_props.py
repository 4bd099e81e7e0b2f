"""MemoryBank against a plain-Python reference bank, over random operation sequences.

Codes are small integers (and means of 1, 2 or 4 of them), so every dtype stores them exactly
(int8 with scales 1 rounds half to even, as Python's round does) and eviction order is exact.
Cosine scores tie often (m = 1 has only -1, 0, 1), so a read is checked for validity against
brute-force cosines with a tolerance, and the reference then follows the bank's choice.
"""

from __future__ import annotations

import copy
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from model import bank as bank_module
from model import search
from model.bank import MemoryBank
from model.errors import SlotNotFound

TOL = 1e-5
small = st.integers(-3, 3).map(float)


class RefBank:
    """The bank's contract in lists: no tensors, no vectorisation."""

    def __init__(self, capacity: int, m: int, dtype: str, initial_count: int) -> None:
        self.capacity, self.m, self.dtype, self.initial_count = capacity, m, dtype, initial_count
        self.codes: list[list[float] | None] = [None] * capacity
        self.counts = [0] * capacity
        self.last_write = [0] * capacity
        self.last_access = [0] * capacity
        self.tick = self.reads = self.hits = self.misses = self.writes = self.evictions = 0

    def occupied(self) -> list[int]:
        return [s for s in range(self.capacity) if self.codes[s] is not None]

    def store(self, z: list[float]) -> list[float]:
        if self.dtype == "int8":  # scales are all 1.0
            return [float(max(-127, min(127, round(v)))) for v in z]
        return list(z)

    def choose_slots(self, n: int) -> tuple[list[int], list[int]]:
        free = [s for s in range(self.capacity) if self.codes[s] is None][:n]
        key = {
            s: (self.counts[s], max(self.last_write[s], self.last_access[s]), s)
            for s in range(self.capacity)
        }
        evicted = sorted(self.occupied(), key=key.__getitem__)[: n - len(free)]
        return free + evicted, evicted

    def assign(self, slots: list[int], codes: list[list[float]]) -> None:
        self.tick += 1
        for s, z in zip(slots, codes, strict=True):
            self.evictions += self.codes[s] is not None
            self.codes[s] = self.store(z)
            self.counts[s] = self.initial_count
            self.last_write[s] = self.tick
            self.last_access[s] = 0
        self.writes += len(slots)

    def cosine(self, q: list[float], s: int) -> float:
        c = self.codes[s]
        assert c is not None
        nq, nc = math.hypot(*q), math.hypot(*c)
        if nq == 0 or nc == 0:
            return 0.0
        return sum(a * b for a, b in zip(q, c, strict=True)) / (nq * nc)

    def free(self, s: int) -> None:
        self.codes[s] = None
        self.counts[s] = self.last_write[s] = self.last_access[s] = 0


class BankMachine(RuleBasedStateMachine):
    bank: MemoryBank
    ref: RefBank

    @initialize(
        capacity=st.integers(1, 6),
        m=st.integers(1, 4),
        dtype=st.sampled_from(["float32", "float16", "int8"]),
        initial_count=st.integers(0, 3),
        block=st.sampled_from([search.BLOCK_ELEMENTS, 2, 4]),
        few=st.sampled_from([bank_module.TOUCH_FEW, 0]),
    )
    def setup(
        self, capacity: int, m: int, dtype: str, initial_count: int, block: int, few: int
    ) -> None:
        # Tiny score blocks make reads of more than one query search block by block; few = 0
        # counts every read's hits by the vectorised path, not one by one.
        self.saved_block, self.saved_few = search.BLOCK_ELEMENTS, bank_module.TOUCH_FEW
        search.BLOCK_ELEMENTS, bank_module.TOUCH_FEW = block, few
        scales = torch.ones(m) if dtype == "int8" else None
        self.bank = MemoryBank(capacity, m, dtype=dtype, scales=scales, initial_count=initial_count)
        self.ref = RefBank(capacity, m, dtype, initial_count)

    def rows(self, draw: st.DataObject, n: int) -> list[list[float]]:
        return draw.draw(
            st.lists(
                st.lists(small, min_size=self.ref.m, max_size=self.ref.m), min_size=n, max_size=n
            )
        )

    @rule(data=st.data(), b=st.sampled_from([1, 2, 4]), mode=st.sampled_from(["mean", "each"]))
    def write(self, data: st.DataObject, b: int, mode: str) -> None:
        rows = self.rows(data, b)
        if mode == "each" and b > self.ref.capacity:
            return
        codes = [[sum(col) / b for col in zip(*rows, strict=True)]] if mode == "mean" else rows
        expected = self.ref.choose_slots(len(codes))
        result = self.bank.write(torch.tensor(rows), mode=mode)
        assert (result.slots, result.evicted) == expected
        self.ref.assign(expected[0], codes)

    @rule(data=st.data())
    def assign(self, data: st.DataObject) -> None:
        slots = data.draw(st.lists(st.integers(0, self.ref.capacity - 1), min_size=1, unique=True))
        codes = self.rows(data, len(slots))
        self.bank.assign(slots, torch.tensor(codes))
        self.ref.assign(slots, codes)

    @rule(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=5))
    def plan(self, sizes: list[int]) -> None:
        sizes = [min(n, self.ref.capacity) for n in sizes]
        ref = copy.deepcopy(self.ref)
        expected = []
        for n in sizes:  # the same writes one after another
            slots, evicted = ref.choose_slots(n)
            ref.assign(slots, [[0.0] * ref.m] * n)
            expected.append((slots, evicted))
        assert self.bank.plan_writes(sizes) == expected  # and nothing changed: see same_state

    @rule(n=st.integers(0, 6))
    def choose(self, n: int) -> None:
        if n <= self.ref.capacity:
            assert self.bank.choose_slots(n) == self.ref.choose_slots(n)

    @rule(
        data=st.data(),
        b=st.integers(1, 4),
        top_k=st.integers(1, 7),
        min_score=st.sampled_from([None, None, -0.5, 0.0, 0.3, 0.95]),
    )
    def read(self, data: st.DataObject, b: int, top_k: int, min_score: float | None) -> None:
        queries = self.rows(data, b)
        ref = self.ref
        r = self.bank.read(torch.tensor(queries), top_k=top_k, min_score=min_score)
        assert r.slots.shape == r.scores.shape == r.counts.shape == (b, top_k)
        start = ref.tick
        for i, q in enumerate(queries):
            slots, scores, counts = r.slots[i].tolist(), r.scores[i].tolist(), r.counts[i].tolist()
            n_hit = sum(s >= 0 for s in slots)
            assert all(s >= 0 for s in slots[:n_hit]) and all(s == -1 for s in slots[n_hit:])
            assert scores[n_hit:] == [0.0] * (top_k - n_hit) and counts[n_hit:] == [0] * (
                top_k - n_hit
            )
            hit = slots[:n_hit]
            assert len(set(hit)) == n_hit and all(ref.codes[s] is not None for s in hit)
            exact = {s: ref.cosine(q, s) for s in ref.occupied()}
            for s, score in zip(hit, scores, strict=False):
                assert abs(score - exact[s]) <= TOL
                assert min_score is None or exact[s] >= min_score - TOL
            assert all(scores[j] >= scores[j + 1] for j in range(n_hit - 1))  # best first
            others = [s for s in exact if s not in hit]
            if hit:  # nothing left out beats the worst returned hit
                assert all(exact[s] <= scores[n_hit - 1] + TOL for s in others)
            if n_hit < min(top_k, len(exact)):  # fewer than k: the rest fell below min_score
                assert min_score is not None and all(exact[s] < min_score + TOL for s in others)
            for s, count in zip(hit, counts, strict=False):
                ref.counts[s] += 1
                ref.last_access[s] = start + i + 1
                assert count == ref.counts[s]
            ref.hits += n_hit > 0
            ref.misses += n_hit == 0
        ref.tick += b
        ref.reads += b

    @rule(slot=st.integers(-1, 6))
    def delete(self, slot: int) -> None:
        if 0 <= slot < self.ref.capacity and self.ref.codes[slot] is not None:
            self.bank.delete(slot)
            self.ref.tick += 1
            self.ref.free(slot)
        else:
            try:
                self.bank.delete(slot)
            except SlotNotFound:
                pass
            else:
                raise AssertionError(f"delete({slot}) of a free or missing slot succeeded")

    @precondition(lambda self: self.ref.tick % 7 == 3)
    @rule()
    def clear(self) -> None:
        self.bank.clear()
        self.ref.tick += 1
        for s in range(self.ref.capacity):
            self.ref.free(s)

    @rule()
    def reload(self) -> None:
        bank = MemoryBank(
            self.bank.capacity,
            self.bank.m,
            dtype=self.bank.dtype,
            scales=self.bank.scales,
            initial_count=self.bank.initial_count,
        )
        bank.load_state_dict(self.bank.state_dict())
        self.bank = bank

    def teardown(self) -> None:
        if hasattr(self, "saved_block"):
            search.BLOCK_ELEMENTS, bank_module.TOUCH_FEW = self.saved_block, self.saved_few

    @invariant()
    def same_state(self) -> None:
        ref, bank = self.ref, self.bank
        occupied = [c is not None for c in ref.codes]
        assert bank.occupied.tolist() == occupied
        assert bank.counts.tolist() == ref.counts
        assert bank.last_write.tolist() == ref.last_write
        assert bank.last_access.tolist() == ref.last_access
        for s in range(ref.capacity):
            code = ref.codes[s]
            if code is not None:
                assert bank.get(s).code.tolist() == code
        assert not bank.codes[~bank.occupied].any()
        used = [ref.counts[s] for s in ref.occupied()]
        stats = bank.stats()
        expected = {
            "capacity": ref.capacity,
            "used": len(used),
            "free": ref.capacity - len(used),
            "reads": ref.reads,
            "hits": ref.hits,
            "misses": ref.misses,
            "writes": ref.writes,
            "evictions": ref.evictions,
            "count_min": min(used, default=0),
            "count_max": max(used, default=0),
            "count_sum": sum(used),
            "tick": ref.tick,
            "initial_count": ref.initial_count,
            "dtype": ref.dtype,
        }
        assert {k: stats[k] for k in expected} == expected
        assert math.isclose(stats["count_mean"], sum(used) / len(used) if used else 0.0)


BankMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBankMachine = BankMachine.TestCase


@given(
    seed=st.integers(0, 2**31 - 1),
    capacity=st.integers(1, 40),
    initial_count=st.integers(0, 3),
    decay_ticks=st.sampled_from([0, 0, 1, 2, 5]),
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=8),
)
@settings(max_examples=150, deadline=None)
def test_plan_writes_equals_writes_one_after_another(
    seed: int, capacity: int, initial_count: int, decay_ticks: int, sizes: list[int]
) -> None:
    g = torch.Generator().manual_seed(seed)
    bank = MemoryBank(capacity, 2, initial_count=initial_count, decay_ticks=decay_ticks)
    for _ in range(int(torch.randint(0, 12, (1,), generator=g))):  # writes, reads, deletes
        op = int(torch.randint(0, 4, (1,), generator=g))
        if op == 0:
            n = int(torch.randint(1, capacity + 1, (1,), generator=g))
            bank.write(torch.randint(-2, 3, (n, 2), generator=g).float(), mode="each")
        elif op in (1, 2):
            bank.read(torch.randint(-2, 3, (3, 2), generator=g).float(), top_k=2)
        elif bank.used:
            bank.delete(int(torch.nonzero(bank.occupied)[0]))
    sizes = [min(n, capacity) for n in sizes]
    before = bank.state_dict()
    plans = bank.plan_writes(sizes)
    assert all(torch.equal(v, bank.state_dict()[k]) for k, v in before.items())  # pure
    one_by_one = MemoryBank(capacity, 2, initial_count=initial_count, decay_ticks=decay_ticks)
    one_by_one.load_state_dict(before)
    expected = []
    for n in sizes:
        r = one_by_one.write(torch.ones(n, 2), mode="each")
        expected.append((r.slots, r.evicted))
    assert plans == expected
