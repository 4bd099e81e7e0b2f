"""model.lfu's chunked LFU choice against a sort of the whole bank.

Banks here hold far fewer slots than one key chunk, so the chunk is made small (1 to 7 slots)
to put the lowest slots and their ties on every side of a chunk border.
"""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from model import lfu


def random_policy(seed: int, n: int, decay_ticks: int) -> tuple[lfu.Policy, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def ints(hi: int) -> torch.Tensor:
        return torch.randint(0, hi, (n,), generator=g, dtype=torch.int32)

    # few distinct counts and ticks: many slots tie on (count, touched)
    policy = lfu.Policy(
        occupied=ints(4) > 0,
        counts=ints(3),
        last_write=ints(4),
        last_access=ints(3),
        tick=6,
        initial_count=0,
        decay_ticks=decay_ticks,
    )
    return policy, policy.occupied & (ints(5) > 0)


def by_sorting(p: lfu.Policy, evictable: torch.Tensor, n: int) -> list[int]:
    touched = torch.maximum(p.last_write, p.last_access)
    count = lfu.aged(p.counts, touched, p.tick, p.decay_ticks)
    keys = {s: (int(count[s]), int(touched[s]), s) for s in range(evictable.numel())}
    return sorted((s for s in keys if evictable[s]), key=keys.__getitem__)[:n]


@given(
    seed=st.integers(0, 2**31 - 1),
    size=st.integers(1, 60),
    chunk=st.integers(1, 7),
    decay_ticks=st.sampled_from([0, 0, 1, 2]),
    share=st.floats(0.0, 1.0),
)
@settings(max_examples=300, deadline=None)
def test_lowest_equals_a_sort_of_the_whole_bank(
    seed: int, size: int, chunk: int, decay_ticks: int, share: float
) -> None:
    p, evictable = random_policy(seed, size, decay_ticks)
    available = int(evictable.sum())
    assume(available > 0)
    n = max(1, round(share * available))
    assert lfu.lowest(n, p, evictable, chunk=chunk) == by_sorting(p, evictable, n)


def test_ties_across_chunks_go_to_the_lowest_slots() -> None:
    # every slot ties: the answer is the lowest slots, whatever the chunking
    n = 10
    zeros = torch.zeros(n, dtype=torch.int32)
    p = lfu.Policy(torch.ones(n, dtype=torch.bool), zeros, zeros, zeros, 0, 0, 0)
    evictable = torch.ones(n, dtype=torch.bool)
    evictable[[0, 4]] = False
    for chunk in (1, 3, 4, 16):
        assert lfu.lowest(1, p, evictable, chunk=chunk) == [1]
        assert lfu.lowest(4, p, evictable, chunk=chunk) == [1, 2, 3, 5]


def test_count_outranks_touched_and_touched_outranks_slot() -> None:
    counts = torch.tensor([2, 0, 1, 0, 0], dtype=torch.int32)
    last_write = torch.tensor([1, 9, 1, 3, 3], dtype=torch.int32)
    last_access = torch.tensor([0, 0, 0, 0, 5], dtype=torch.int32)
    p = lfu.Policy(torch.ones(5, dtype=torch.bool), counts, last_write, last_access, 9, 0, 0)
    every = torch.ones(5, dtype=torch.bool)
    for chunk in (1, 2, 5):
        assert lfu.lowest(5, p, every, chunk=chunk) == [3, 4, 1, 2, 0]
