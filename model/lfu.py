"""The write policy of the MemoryTransit paper, as pure functions over the bank's tensors.

A write takes the lowest free slots first, then the occupied slots with the lowest
(count, last touched, slot), last touched = max(last_write, last_access): least frequently used,
ties by least recently used, then by slot. Nothing here changes a tensor it is given.

Aging. With `decay_ticks` > 0 the count used for the choice is halved for every decay_ticks
ticks the slot sat untouched, as Redis ages its LFU counters (LFU_DECAY_TIME); the counts
stored and reported never change. It is a policy setting, not state (snapshots do not save it).

initial_count. A written slot's count starts at initial_count (the paper: 0). Redis LFU
starts new keys at LFU_INIT_VAL = 5 so that a fresh key, which has had no time to be read,
is not the first thing evicted: there, counters decay with idle time, so old keys that stop
being read sink below a fresh key's 5. Without decay every count is initial_count + hits
since the write, and the order (count, last touched, slot) comes out the same for every
initial_count: a fresh slot already outlives every older slot that has not been hit either
(it is the most recently touched), and it cannot outlive older slots that have been hit (in a
full bank whose other slots were all read, consecutive writes keep replacing the newest
slot). With decay on, initial_count does protect fresh slots, as in Redis: a slot hit often
long ago decays below a fresh slot's initial_count and goes first. 0 and no decay, the
defaults, reproduce the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from model.errors import BankFull

__all__ = ["Plan", "Policy", "choose", "first_free", "plan", "plan_each"]


class Policy(NamedTuple):
    """The state the choice reads: per-slot tensors (capacity,), the bank's tick, the policy."""

    occupied: Tensor
    counts: Tensor
    last_write: Tensor
    last_access: Tensor
    tick: int
    initial_count: int
    decay_ticks: int
    pinned: Tensor | None = None  # never chosen for eviction


class Plan(NamedTuple):
    """Slots for one write, in the order of its rows, and which of them are evicted (held a
    code before)."""

    slots: list[int]
    evicted: list[int]


def aged(counts: Tensor, touched: Tensor, tick: int, decay_ticks: int) -> Tensor:
    """Counts halved once per decay_ticks ticks since touched (Redis LFU aging); as is at 0."""
    if not decay_ticks:
        return counts
    halvings = ((tick - touched) // decay_ticks).clamp(max=62)
    return counts >> halvings


def first_free(occupied: Tensor, n: int, chunk: int = 1 << 16) -> list[int]:
    """The lowest n free slots (fewer when there are not that many), found `chunk` slots at a
    time: the indices of every free slot of a large, mostly free bank (8 bytes each, 8 MB at
    1M slots) are never made, so no write leaves such a block in the allocator's arenas."""
    out: list[int] = []
    for start in range(0, occupied.numel(), chunk):
        if len(out) >= n:
            break
        idx = torch.nonzero(~occupied[start : start + chunk]).squeeze(1)[: n - len(out)]
        out += (idx + start).tolist()
    return out


# The order key of a slot: (count, touched) in one int64, counts and relative ticks being
# below 2**31 (model.state); NEVER marks slots that may not be chosen.
KEY_SHIFT = 31
NEVER = torch.iinfo(torch.int64).max
KEY_CHUNK = 1 << 16


def order_keys(p: Policy, evictable: Tensor, start: int, stop: int, out: Tensor) -> Tensor:
    """(aged count, last touched) of slots start..stop as one int64 key, NEVER where the slot
    is not evictable: comparing keys compares (count, touched). Written into `out` (2, >= stop -
    start) int64, which a caller reuses from chunk to chunk: fresh half-MB tensors cost their
    page faults again every time, and so does an int32 operand promoted by an int64 add."""
    s = slice(start, stop)
    touched = torch.maximum(p.last_write[s], p.last_access[s])
    key, wide = out[:, : touched.numel()]
    key.copy_(aged(p.counts[s], touched, p.tick, p.decay_ticks))
    key.bitwise_left_shift_(KEY_SHIFT).add_(wide.copy_(touched))
    return key.masked_fill_(~evictable[s], NEVER)


def lowest(n: int, p: Policy, evictable: Tensor, chunk: int = KEY_CHUNK) -> list[int]:
    """The n evictable slots lowest in (count, touched, slot), in that order (n <= the number
    of evictable slots). Each chunk of slots gives its own lowest n and the union holds the
    answer, so no key or index tensor of the whole bank is made (at 1M slots a whole-bank
    kthvalue cost ~0.1 s a write)."""
    out = torch.empty(2, min(chunk, evictable.numel()), dtype=torch.int64, device=evictable.device)
    slots, keys = [], []
    for start in range(0, evictable.numel(), chunk):
        key = order_keys(p, evictable, start, start + chunk, out)
        idx = _chunk_lowest(key, min(n, key.numel()))
        slots.append(idx + start)
        keys.append(key[idx])
    slot, key = torch.cat(slots), torch.cat(keys)
    by_slot = torch.argsort(slot)
    slot, key = slot[by_slot], key[by_slot]
    return slot[torch.argsort(key, stable=True)[:n]].tolist()


def _chunk_lowest(key: Tensor, k: int) -> Tensor:
    """Indices of the k lowest (key, index) of one chunk, in any order, leaving out NEVER: every
    key below the k-th smallest, then the first indices at it."""
    if k == 1:
        idx = torch.argmin(key).reshape(1)  # argmin: the first of equal minima
    else:
        kth = torch.topk(key, k, largest=False, sorted=False).values.max()
        below = torch.nonzero(key < kth).squeeze(1)
        at = torch.nonzero(key == kth).squeeze(1)[: k - below.numel()]
        idx = torch.cat([below, at])
    return idx[key[idx] != NEVER]


def choose(n: int, p: Policy, within: Tensor | None = None, use_free: bool = True) -> Plan:
    """Slots for n new codes (n <= capacity, checked by callers): free first (use_free), then
    the LFU occupied slots that are not pinned (and, given `within`, among those slots only).
    BankFull when there are not enough."""
    chosen = first_free(p.occupied, n) if use_free and n else []
    need = n - len(chosen)
    if need == 0:
        return Plan(chosen, [])
    evictable = p.occupied if p.pinned is None else p.occupied & ~p.pinned
    if within is not None:
        evictable = evictable & within
    available = int(torch.count_nonzero(evictable))
    if available < need:
        where = " of the namespace, at its quota," if within is not None else ""
        raise BankFull(
            f"a write of {n} needs {need} slot(s) to evict but only {available}{where} are "
            "not pinned: unpin or delete slots first"
        )
    evicted = lowest(need, p, evictable)
    return Plan(chosen + evicted, evicted)


def plan(sizes: Sequence[int], p: Policy) -> list[Plan]:
    """Plans for consecutive writes of these sizes: exactly what choose(n) then storing n
    codes would give for each in turn (the codes do not matter to the choice), without
    changing anything. A later write of the group may take a slot an earlier one just wrote
    (in a full bank whose other slots were all read, the fresh slot is the LFU one), as
    consecutive writes do.

    Without decay one pass over the bank serves the whole group: the slots the group has not
    touched keep their order (count, last touched, slot) from write to write, so the first
    sum(sizes) of them in that order, merged with the group's fresh slots (count
    initial_count, touched at their write's tick, which is later than any other), decide every
    choice. With decay the counts age with each write's tick: each write is chosen on a copy
    of the counters, one pass per write.
    """
    if p.decay_ticks:
        return _plan_aged(sizes, p)
    capacity = p.occupied.numel()
    first, _ = choose(min(sum(sizes), capacity), p)
    first_t = torch.tensor(first, dtype=torch.int64, device=p.occupied.device)
    was_occupied = p.occupied[first_t].tolist()
    counts = p.counts[first_t].tolist()
    fresh: list[int] = []  # slots the group wrote, in order (count initial_count), oldest first
    pos, plans = 0, []
    for n in sizes:
        slots, evicted = [], []
        f = 0
        for _ in range(n):
            # An untouched slot goes first when free, or when its (count, touched) is below a
            # fresh slot's (initial_count, a later tick): count <= initial_count.
            take_first = pos < len(first) and (
                not was_occupied[pos] or counts[pos] <= p.initial_count or f == len(fresh)
            )
            if take_first:
                slot = first[pos]
                if was_occupied[pos]:
                    evicted.append(slot)
                pos += 1
            else:
                slot = fresh[f]
                evicted.append(slot)
                f += 1
            slots.append(slot)
        # this write's slots are the freshest now, among themselves by slot (same tick)
        fresh = fresh[f:] + sorted(slots)
        plans.append(Plan(slots, evicted))
    return plans


def _plan_aged(sizes: Sequence[int], p: Policy) -> list[Plan]:
    return plan_each(sizes, p, None, [0] * len(sizes), [False] * len(sizes), 0)


def plan_each(
    sizes: Sequence[int],
    p: Policy,
    namespace: Tensor | None,
    ns_ids: Sequence[int],
    pins: Sequence[bool],
    quota: int,
) -> list[Plan]:
    """Plans for consecutive writes, each chosen on a copy of the state that the writes before
    it changed: the general path (aging, pinned slots, namespace quotas), one pass per write.

    Write i goes into namespace ns_ids[i] (namespace: the slots' ids, None when there are no
    quotas) and pins its slots when pins[i]. With quota > 0 a write may take free or LFU slots
    only while its namespace holds fewer than `quota` slots; beyond that it replaces the
    namespace's own LFU slots ("LFU within the quota"). BankFull when a write cannot be placed.
    """
    occupied, counts, last_write, last_access = p.occupied, p.counts, p.last_write, p.last_access
    pinned, ns, tick, plans, copied = p.pinned, namespace, p.tick, [], False
    for i, (n, ns_id, pin) in enumerate(zip(sizes, ns_ids, pins, strict=True)):
        step = Policy(
            occupied, counts, last_write, last_access, tick, p.initial_count, p.decay_ticks, pinned
        )
        own = (ns == ns_id) & occupied if ns is not None else None
        open_ = n if not quota or own is None else min(n, max(0, quota - int(own.sum())))
        first = choose(open_, step)
        slots, evicted = list(first.slots), list(first.evicted)
        if open_ < n:  # beyond the quota: the namespace's own LFU slots, not these new ones
            assert own is not None
            busy = torch.zeros_like(occupied)
            busy[torch.tensor(slots, dtype=torch.int64, device=occupied.device)] = True
            rest = choose(n - open_, step, within=own & ~busy, use_free=False)
            slots += rest.slots
            evicted += rest.evicted
        plans.append(Plan(slots, evicted))
        if i + 1 == len(sizes):
            break
        # the next write sees this one: store it in a copy of the state (made once; a lone
        # write copies nothing, 5-6 tensors of 1-4 MB each at 1M slots)
        if not copied:
            occupied, counts = occupied.clone(), counts.clone()
            last_write, last_access = last_write.clone(), last_access.clone()
            pinned = torch.zeros_like(occupied) if pinned is None else pinned.clone()
            ns = None if ns is None else ns.clone()
            copied = True
        idx = torch.tensor(slots, dtype=torch.int64, device=occupied.device)
        tick += 1  # as storing does
        occupied[idx], counts[idx] = True, p.initial_count
        last_write[idx], last_access[idx] = tick, 0
        assert pinned is not None  # made with the copy
        pinned[idx] = pin
        if ns is not None:
            ns[idx] = ns_id
    return plans
