"""MemoryBank: the runtime memory of the MemoryTransit paper, IDRP codes (m,) + access counters.

A read returns the slots whose codes are most similar (cosine) to the query's code and counts an
access on each; a write stores codes in the first free slots, or, when none is free, in the
least frequently used ones (model/lfu.py), whose counters restart. Codes are stored as float32,
float16, int8 (per-dimension scales) or rate-allocated packed bits (model/quant.py). The
snapshot file format is model/snapshot.py; the codec + bank loop (encode, plan, log, apply,
decode) is model/memory.py.

Differences from the paper, each on purpose:
- A slot is free when `occupied` is False, never when its count is 0. The paper's free test
  `AFF_ctrl[i] == 0` treats a slot whose counter was just reset as free, so two writes in a row
  would overwrite each other.
- LFU ties break by least recently touched, then by slot; `initial_count` and optional aging
  (`decay_ticks`) as Redis LFU does (model/lfu.py).
- Reads return the top k slots and refuse hits below `min_score`; writes store one slot per
  row (`mode="each"`) as well as the batch mean.

Every mutation is one of three operations, `Assign`, `Free`, `Clear`, applied by `apply`: the
memory loop hands them to a durability callback before applying them, and a log replays them.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, SupportsIndex

import numpy as np
import torch
from torch import Tensor

from model import lfu
from model.enums import DEFAULT_NAMESPACE, check_namespace
from model.errors import SlotNotFound
from model.ops import Assign, Clear, Forget, Free, Op, Pin, combine
from model.quant import Quantiser, RateTables
from model.ratecode import RateCode
from model.search import all_finite, inverse_norms, rank_in_order, search, unit_queries
from model.search import warm as warm_scans  # model/onepass.py's kernels
from model.slots import META_KEYS, SlotMeta
from model.state import COUNT_MAX, COUNTER_NAMES, DTYPES, TICK_MAX, rebase_ticks, state_problem

__all__ = [
    "COUNTER_NAMES",
    "DTYPES",
    "Assign",
    "Free",
    "MemoryBank",
    "Op",
    "ReadResult",
    "SlotView",
    "WriteResult",
    "as_int",
    "combine",
]

# Reads whose B x k hits are at most this many count them one by one through numpy views
# (`_touch_few`); larger ones take the vectorised torch path.
TOUCH_FEW = 64


@dataclass(frozen=True)
class ReadResult:
    """Answer of `MemoryBank.read` for B queries and k = top_k, best first along k.

    slots (B, k) int64: -1 where there is no hit (bank has fewer occupied slots than k, the score
    is below min_score, or the whole query missed). scores (B, k) float32: cosine, 0.0 where the
    slot is -1. counts (B, k) int64: the slot's count right after this hit, 0 where the slot is -1.
    """

    slots: Tensor
    scores: Tensor
    counts: Tensor


@dataclass(frozen=True)
class WriteResult:
    """Slots written, in the order of the rows written, which of them held a code before, and
    how many slots are occupied right after this write."""

    slots: list[int]
    evicted: list[int]
    used: int


@dataclass(frozen=True)
class SlotView:
    """One occupied slot: its counters, its dequantised code (m,) float32, its namespace, pin
    and record (model/slots.py) and, from the memory loop, the code decoded (d,) float32
    (None from the bank, which holds no codec)."""

    slot: int
    count: int
    last_write: int
    last_access: int
    code: Tensor
    reconstruction: Tensor | None = None
    namespace: str = DEFAULT_NAMESPACE
    pinned: bool = False
    record: bytes | None = None


def as_int(value: object, name: str, minimum: int) -> int:
    """An int-like value (int, numpy or one-element tensor integer, not bool) >= minimum."""
    v = None if isinstance(value, bool) else _index(value)
    if v is None:
        raise ValueError(f"expected {name} to be an int >= {minimum}, got {value!r}")
    if v < minimum:
        raise ValueError(f"expected {name} >= {minimum}, got {name}={v}")
    return v


def _index(value: object) -> int | None:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


class MemoryBank:
    """A fixed number of slots holding codes (m,), read by cosine and replaced by LFU.

    State, all tensors on `device` (see `state_dict`):
      codes (capacity, m) in the storage dtype. float32 and float16 hold the code; int8 holds
        round(z / scales) clamped to [-127, 127] (round half to even), whose value is
        codes * scales. Free slots hold zeros.
      "rate" codes are (capacity, code_bytes) uint8: each code's level indices packed, which
        read back through the code book rate_bits (m,) uint8 and rate_levels (m, 256) float32
        (model/quant.py, model/ratecode.py); a free slot holds zero bytes.
      scales (m,) float32, int8 only: per-dimension scale, all > 0 (the codec's `code_scales`).
      counts int32: accesses since the slot was last written, starting at `initial_count`,
        saturating at 2^31 - 1.
      occupied bool: whether the slot holds a code (a written slot whose count is 0 is not free).
      last_write, last_access int32: the tick of the slot's last write / last read hit (0 =
        never), relative to `tick_base` (`SlotView` and `ticks` give them absolute). Before the
        relative tick would pass 2^31 - 1 the bank rebases them (model.state.rebase_ticks):
        the order of last touches, which LFU ties use, is kept.
    Scalar counters: tick, reads, hits, misses, writes, evictions, tick_base (`COUNTER_NAMES`).
    So a slot costs its code plus 13 bytes of state, plus 4 bytes of read cache.

    Ticks. `tick` counts operations. Each query of a read is one operation (a read of B queries
    advances tick by B and query i's hits get last_access = tick_before + i + 1), so a batch
    leaves exactly the state that B single reads leave, LRU order included. An assign (and so a
    write, whatever its number of rows), a delete and a clear each advance tick by one; all
    slots of one assign share its tick.

    Reads search the stored codes in their dtype (model/search.py), with one float32 per slot
    on top of the state: the inverse norm of its dequantised code (`stats()["cache_bytes"]`,
    rebuilt on load, never saved), plus one reused block buffer.

    Not thread-safe: one caller at a time (model.memory.IDRPMemory holds a lock).
    """

    TICK_MAX = TICK_MAX  # the largest relative slot tick; tests lower it to see rebases

    def __init__(
        self,
        capacity: int,
        m: int,
        *,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        scales: Tensor | Sequence[float] | None = None,
        rate: RateCode | RateTables | None = None,
        initial_count: int = 0,
        decay_ticks: int = 0,
        namespace_quota: int = 0,
    ) -> None:
        self._configure(capacity, m, device, dtype, scales, initial_count, decay_ticks, rate)
        self.namespace_quota = as_int(namespace_quota, "namespace_quota", 0)
        self._allocate()

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Tensor],
        *,
        initial_count: int = 0,
        device: str | torch.device = "cpu",
    ) -> MemoryBank:
        """A bank adopting state tensors already checked with `model.state.state_problem` (as
        a snapshot load does), without allocating its own first or copying them."""
        codes = state["codes"]
        names = {v: k for k, v in DTYPES.items()}
        if codes.dim() != 2 or codes.dtype not in names:
            raise ValueError(f"expected codes (capacity, m) in {sorted(DTYPES)}, got {codes.dtype}")
        bank = cls.__new__(cls)
        dtype = names[codes.dtype]
        # A placeholder scale passes the int8 check; the real one comes with the state.
        scales = torch.ones(codes.shape[1]) if dtype == "int8" else None
        rate = (state["rate_bits"], state["rate_levels"]) if dtype == "rate" else None
        m = state["rate_bits"].shape[0] if rate is not None else codes.shape[1]
        bank._configure(codes.shape[0], m, device, dtype, scales, initial_count, 0, rate)
        bank.namespace_quota = 0
        bank._adopt(state, copy=False)
        return bank

    def _configure(
        self,
        capacity: int,
        m: int,
        device: str | torch.device,
        dtype: str,
        scales: Tensor | Sequence[float] | None,
        initial_count: int,
        decay_ticks: int,
        rate: RateCode | RateTables | None = None,
    ) -> None:
        self.capacity = as_int(capacity, "capacity", 1)
        self.m = as_int(m, "m", 1)
        self.initial_count = as_int(initial_count, "initial_count", 0)
        self.decay_ticks = as_int(decay_ticks, "decay_ticks", 0)
        self.device = torch.device(device)
        self.quant = Quantiser(dtype, self.m, scales, self.device, rate)
        self.dtype = dtype

    def _allocate(self) -> None:
        """An empty bank: all slots free, all counters 0."""
        n, dev = self.capacity, self.device
        self.codes = torch.zeros(n, self.quant.width, dtype=self.quant.storage, device=dev)
        self.counts = torch.zeros(n, dtype=torch.int32, device=dev)
        self.occupied = torch.zeros(n, dtype=torch.bool, device=dev)
        self.last_write = torch.zeros(n, dtype=torch.int32, device=dev)
        self.last_access = torch.zeros(n, dtype=torch.int32, device=dev)
        self.tick = self.reads = self.hits = self.misses = self.writes = self.evictions = 0
        self.tick_base = 0
        # Read cache: the inverse norm of each slot's dequantised code (0: free or zero).
        self._inv = torch.zeros(n, dtype=torch.float32, device=dev)
        self._blocks: list[Tensor] = []  # the reused block buffer of reads, once made
        self.meta = SlotMeta(n, dev)

    # ------------------------------------------------------------------ checks of its contract

    def check_codes(
        self, x: Tensor | Sequence[Sequence[float]], name: str = "codes", finite: bool = True
    ) -> Tensor:
        """x (B >= 1, m), real and finite -> float32 on the bank's device; ValueError else
        (finite=False: the caller checks finiteness itself)."""
        # a plain tensor as it is, with no torch call: a single read's calls run cold
        t = x if isinstance(x, Tensor) and not x.requires_grad else torch.as_tensor(x).detach()
        if t.dim() != 2 or t.shape[1] != self.m or t.shape[0] < 1:
            raise ValueError(f"expected {name} of shape (B >= 1, {self.m}), got {tuple(t.shape)}")
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"expected real {name}, got dtype {t.dtype}")
        if t.dtype != torch.float32 or t.device != self.device:
            t = t.to(device=self.device, dtype=torch.float32)
        if finite and not all_finite(t):
            raise ValueError(f"expected finite {name}, got NaN or inf")
        return t

    def _check_slot(self, slot: object, occupied: bool = True) -> int:
        """An int-like slot in range (and occupied) -> int; SlotNotFound otherwise."""
        s = None if isinstance(slot, bool) else _index(slot)
        if s is None:
            raise ValueError(f"expected an int slot, got {slot!r}")
        if not 0 <= s < self.capacity:
            raise SlotNotFound(f"slot {s} is out of range [0, {self.capacity})")
        if occupied and not bool(self.occupied[s]):
            raise SlotNotFound(f"slot {s} is not occupied")
        return s

    @property
    def scales(self) -> Tensor | None:
        """int8: the per-dimension scales (m,); None for float dtypes."""
        return self.quant.scales

    @property
    def code_bytes(self) -> int:
        """Bytes of one stored code (m x the dtype's size; "rate": the packed budget)."""
        return self.quant.code_bytes

    # ------------------------------------------------------------------ properties

    @property
    def _scans_compiled(self) -> bool:
        """Whether single-query reads use the quantiser's compiled kernel (model/scan.py: int8
        and rate codes, CPU only)."""
        return self.quant.has_dot and self.device.type == "cpu"

    def warm(self) -> None:
        """Load (or compile) the single-query scan kernels now, not in the first read."""
        warm_scans(self.codes)
        if self._scans_compiled:
            self.quant.warm()

    @property
    def _block(self) -> Tensor | None:
        """The score buffer of blocked reads (None until a read needed one)."""
        return self._blocks[0] if self._blocks else None

    @property
    def used(self) -> int:
        # count_nonzero: no temporary (a bool sum() upcasts the whole column to int64)
        return int(torch.count_nonzero(self.occupied))

    def __len__(self) -> int:
        return self.used

    def __repr__(self) -> str:
        return (
            f"MemoryBank(capacity={self.capacity}, m={self.m}, dtype={self.dtype!r}, "
            f"used={self.used}, device={str(self.device)!r}, initial_count={self.initial_count})"
        )

    # ------------------------------------------------------------------ read

    def read(
        self,
        queries: Tensor | Sequence[Sequence[float]],
        top_k: int = 1,
        min_score: float | None = None,
        namespace: str | None = None,
    ) -> ReadResult:
        """The top_k occupied slots by cosine to each query (B, m), best first; counts accesses.

        Every returned hit adds one to its slot's count and sets its last_access; `counts` in the
        result is the slot's count right after that hit, sequential within the batch (query i
        sees the hits of queries < i), so a batch answers exactly like B single reads. Entries
        whose score is below min_score are not hits (slot -1, nothing counted); a query with no
        hit is a miss. An empty bank answers all misses. reads += B, hits/misses per query.
        namespace: search only that namespace's slots (an unknown one: all misses).
        = `search` (changes nothing) + `touch` (the accounting).
        """
        slots, scores = self.search(queries, top_k, min_score, namespace)
        return ReadResult(slots=slots, scores=scores, counts=self.touch(slots))

    def search(
        self,
        queries: Tensor | Sequence[Sequence[float]],
        top_k: int = 1,
        min_score: float | None = None,
        namespace: str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """`read`'s slots (B, k) (-1: none) and scores (B, k) (0 where -1), best first, without
        counting anything: the first stage of a rescored read (model/memory.py)."""
        q = self.check_codes(queries, "queries", finite=False)  # (B, m)
        qn = unit_queries(q)  # the finiteness check and the unit rows in one pass
        if qn is None:
            raise ValueError("expected finite queries, got NaN or inf")
        k = as_int(top_k, "top_k", 1)
        if min_score is not None:
            if isinstance(min_score, bool) or not isinstance(min_score, numbers.Real):
                raise ValueError(f"expected min_score to be a float or None, got {min_score!r}")
            min_score = float(min_score)
            if not math.isfinite(min_score):
                raise ValueError(f"expected a finite min_score, got {min_score}")
        b, dev = q.shape[0], self.device
        kk = min(k, self.capacity)
        allowed = self.occupied
        if namespace is not None:
            allowed = self.meta.in_namespace(namespace, self.occupied)
        found, scores = search(
            qn,
            self.codes,
            self.quant.dequantise,
            self.quant.scales,
            self._inv,
            allowed,
            kk,
            min_score,
            self._blocks,
            zero_free=namespace is None,  # free slots score 0: inverse norm 0 (`_free`)
            decode=self.quant.dequantise if self.quant.packed else None,
            dot=self.quant.dot if self._scans_compiled else None,
            spread=self.quant.spread,
        )
        if kk == k:  # top_k within the capacity: no padding columns
            return found, scores
        slots = torch.full((b, k), -1, dtype=torch.int64, device=dev)
        out_scores = torch.zeros((b, k), dtype=torch.float32, device=dev)
        slots[:, :kk] = found
        out_scores[:, :kk] = scores
        return slots, out_scores

    def touch(self, slots: Tensor) -> Tensor:
        """Count the accesses of a read of B queries that returned these slots (B, k), each row
        best first with -1 after its hits: counts, last_access, tick, reads, hits, misses, as
        `read` does; returns each entry's count right after its hit (0 where -1)."""
        b, k = slots.shape
        if b * k <= TOUCH_FEW and self.device.type == "cpu":
            return self._touch_few(slots)
        out_counts = torch.zeros((b, k), dtype=torch.int64, device=self.device)
        flat = slots.reshape(-1)  # (B * k,), query-major: the order B single reads would take
        hit_pos = torch.nonzero(flat >= 0).squeeze(1)  # (H,)
        hit_slots = flat[hit_pos]  # (H,)
        self._make_room(b)
        if hit_slots.numel():
            before = self.counts[hit_slots].to(torch.int64)
            out_counts.view(-1)[hit_pos] = (before + rank_in_order(hit_slots, b)).clamp_(
                max=COUNT_MAX
            )
            self.counts.index_add_(0, hit_slots, torch.ones_like(hit_slots, dtype=torch.int32))
            if int(before.max()) > COUNT_MAX - b * k:  # saturate: a count never wraps
                wrapped = hit_slots[self.counts[hit_slots] < 0]
                self.counts[wrapped] = COUNT_MAX
            now = self.tick - self.tick_base + 1  # relative tick of this read's first query
            hit_ticks = (now + torch.div(hit_pos, k, rounding_mode="floor")).to(torch.int32)
            self.last_access.scatter_reduce_(0, hit_slots, hit_ticks, reduce="amax")
        n_hit = int((slots[:, 0] >= 0).sum().item()) if k else 0
        self.tick += b
        self.reads += b
        self.hits += n_hit
        self.misses += b - n_hit
        return out_counts

    def _touch_few(self, slots: Tensor) -> Tensor:
        """`touch` of a few hits on the CPU (B * k <= TOUCH_FEW), one hit after another through
        numpy views of the columns: for a batch of 16 top-1 reads ~15 us, where the batch
        path's dozen torch calls (argsort, index_add_, scatter_reduce_, ...) took ~200 us; the
        same counts, ticks and totals (tests/test_memory_props.py checks both paths)."""
        b, k = slots.shape
        self._make_room(b)
        flat = slots.reshape(-1).tolist()  # query-major: the order B single reads would take
        out = [0] * len(flat)
        counts, last = self.counts.numpy(), self.last_access.numpy()
        now = self.tick - self.tick_base + 1  # relative tick of this read's first query
        for j, slot in enumerate(flat):
            if slot >= 0:
                count = out[j] = min(int(counts[slot]) + 1, COUNT_MAX)  # saturate, never wrap
                counts[slot] = count
                last[slot] = max(int(last[slot]), now + j // k)
        n_hit = sum(1 for q in range(b) if flat[q * k] >= 0) if k else 0
        self.tick += b
        self.reads += b
        self.hits += n_hit
        self.misses += b - n_hit
        return torch.from_numpy(np.array(out, dtype=np.int64).reshape(b, k))

    # ------------------------------------------------------------------ write

    def _make_room(self, ahead: int) -> None:
        """Rebase the slot ticks when `ahead` more ticks would take the relative tick past
        TICK_MAX (model.state.rebase_ticks)."""
        if self.tick + ahead - self.tick_base > self.TICK_MAX:
            self.last_write, self.last_access, self.tick_base = rebase_ticks(
                self.last_write,
                self.last_access,
                self.occupied,
                self.tick,
                self.tick_base,
                ahead,
                self.TICK_MAX,
            )

    def ticks(self, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Absolute (last_write, last_access) int64 of these slots (0 = never)."""

        def absolute(t: Tensor) -> Tensor:
            v = t[slots].to(torch.int64)
            return torch.where(v > 0, v + self.tick_base, 0)

        return absolute(self.last_write), absolute(self.last_access)

    def _policy(self, pinned: bool = True) -> lfu.Policy:
        return lfu.Policy(
            self.occupied,
            self.counts,
            self.last_write,
            self.last_access,
            self.tick - self.tick_base,
            self.initial_count,
            self.decay_ticks,
            self.meta.pinned_or_none() if pinned else None,
        )

    def choose_slots(self, n: int) -> lfu.Plan:
        """Slots for n new codes, and which of them are occupied now (to be evicted). Pure
        (model/lfu.py). n > capacity -> ValueError; too few unpinned slots -> BankFull."""
        n = as_int(n, "n", 0)
        if n > self.capacity:
            raise ValueError(f"expected n <= capacity={self.capacity}, got n={n}")
        return self.plan_writes([n])[0]

    def plan_writes(
        self,
        sizes: Sequence[int],
        namespaces: Sequence[str] | None = None,
        pins: Sequence[bool] | None = None,
    ) -> list[lfu.Plan]:
        """(slots, evicted) for consecutive writes of these sizes (into these namespaces, to be
        pinned or not), exactly what assigning each in turn would give, without changing
        anything. Pinned slots are never chosen; with `namespace_quota` a write beyond its
        namespace's quota replaces that namespace's own LFU slots (model/lfu.py)."""
        sizes = [as_int(n, "n", 0) for n in sizes]
        if any(n > self.capacity for n in sizes):
            raise ValueError(f"expected sizes <= capacity={self.capacity}, got {sizes}")
        namespaces = list(namespaces or [DEFAULT_NAMESPACE] * len(sizes))
        pins = list(pins or [False] * len(sizes))
        any_pinned = self.meta.any_pinned()
        if self.namespace_quota or any_pinned or any(pins):
            ids = [self.meta.id_of(ns) for ns in namespaces]
            ns_ids = [-1 - i if v is None else v for i, v in enumerate(ids)]  # new: unique
            namespace = self.meta.namespace if self.namespace_quota else None  # quotas only
            return lfu.plan_each(
                sizes, self._policy(), namespace, ns_ids, pins, self.namespace_quota
            )
        return lfu.plan(sizes, self._policy(pinned=False))  # no pin anywhere

    def assign(
        self,
        slots: Sequence[int] | Tensor,
        codes: Tensor | Sequence[Sequence[float]],
        *,
        namespace: str = DEFAULT_NAMESPACE,
        records: Sequence[bytes | None] | None = None,
        pinned: bool = False,
    ) -> None:
        """Store codes (n, m) float32 in these distinct slots (replay-safe: a log replays this),
        in `namespace`, pinned or not, with one record per slot (or none).

        occupied = True, count = initial_count, last_write = the new tick, last_access = 0;
        writes += n, evictions += how many of the slots were occupied before. Everything is
        checked before anything changes."""
        idx = torch.as_tensor(slots).detach()
        if idx.dim() != 1 or (idx.numel() and (idx.is_floating_point() or idx.dtype == torch.bool)):
            raise ValueError(f"expected slots as a 1-d sequence of ints, got {slots!r}")
        idx = idx.to(device=self.device, dtype=torch.int64)
        z = self.check_codes(codes)
        if z.shape[0] != idx.numel():
            raise ValueError(f"expected one code per slot ({idx.numel()}), got {z.shape[0]} codes")
        self._check_slots(idx)
        check_namespace(namespace)
        if records is not None and len(records) != idx.numel():
            raise ValueError(f"expected one record per slot ({idx.numel()}), got {len(records)}")
        stored = self.quant.quantise(z)  # validates before any mutation
        self._make_room(1)
        self.tick += 1
        self.evictions += int(self.occupied[idx].sum().item())
        self.writes += idx.numel()
        self.codes[idx] = stored
        self.occupied[idx] = True
        self.counts[idx] = min(self.initial_count, COUNT_MAX)
        self.last_write[idx] = self.tick - self.tick_base
        self.last_access[idx] = 0
        self._inv[idx] = inverse_norms(self.quant.dequantise(stored))
        self.meta.set(idx, namespace, records, pinned)

    def _inverse_norms(self, rows: int = 1 << 16) -> Tensor:
        """The read cache of every slot, built in blocks (no full float32 copy of the codes); 0
        for free slots (whose zero bytes a rate code reads back as its lowest levels)."""
        out = torch.empty(self.capacity, dtype=torch.float32, device=self.device)
        for start in range(0, self.capacity, rows):
            block = self.codes[start : start + rows]
            out[start : start + rows] = inverse_norms(self.quant.dequantise(block))
        return out.masked_fill_(~self.occupied, 0.0)

    def _check_slots(self, idx: Tensor) -> None:
        bad = idx[(idx < 0) | (idx >= self.capacity)]
        if bad.numel():
            raise ValueError(f"expected slots in [0, {self.capacity}), got {bad.tolist()}")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError(f"expected distinct slots, got {idx.tolist()}")

    def write(self, codes: Tensor | Sequence[Sequence[float]], mode: str = "mean") -> WriteResult:
        """Store codes (B, m): "mean" -> one slot with the batch's mean code (the paper's write),
        "each" -> one slot per row (`combine`), in the slots `choose_slots` gives."""
        z = combine(self.check_codes(codes), mode)
        slots, evicted = self.choose_slots(z.shape[0])
        self.assign(slots, z)
        return WriteResult(slots=slots, evicted=evicted, used=self.used)

    def apply(self, op: Op) -> None:
        """Carry out one logged operation (the memory loop's, or a log's on replay)."""
        if isinstance(op, Assign):
            self.assign(
                op.slots, op.codes, namespace=op.namespace, records=op.records, pinned=op.pinned
            )
        elif isinstance(op, Free):
            self.delete(op.slot)
        elif isinstance(op, Forget):
            self.forget(op.slots)
        elif isinstance(op, Pin):
            self.pin(op.slots, op.pinned)
        elif isinstance(op, Clear):
            self.clear()
        else:
            raise ValueError(f"expected a bank operation, got {op!r}")

    # ------------------------------------------------------------------ slots

    def get(self, slot: SupportsIndex) -> SlotView:
        """The slot's dequantised code, counters, namespace, pin and record (not an access)."""
        s = self._check_slot(slot)
        last_write, last_access = self.ticks(torch.tensor([s], device=self.device))
        return SlotView(
            slot=s,
            count=int(self.counts[s]),
            last_write=int(last_write[0]),
            last_access=int(last_access[0]),
            code=self.quant.dequantise(self.codes[s : s + 1])[0].clone(),
            namespace=self.meta.namespace_of(s),
            pinned=self.meta.is_pinned(s),
            record=self.meta.record(s),
        )

    def codes_at(self, slots: Tensor | Sequence[int]) -> Tensor:
        """Dequantised float32 codes (n, m) of occupied slots (n,); SlotNotFound otherwise."""
        idx = self._occupied_index(slots)
        return self.quant.dequantise(self.codes[idx])

    def hit_codes(self, slots: Tensor) -> Tensor:
        """Dequantised float32 codes (n, m) of slots a read just returned (int64 (n,) on the
        bank's device, all occupied): the read path's gather, without codes_at's checks."""
        return self.quant.dequantise(self.codes[slots])

    def _occupied_index(self, slots: Tensor | Sequence[int]) -> Tensor:
        idx = torch.as_tensor(slots, dtype=torch.int64).detach().to(self.device).reshape(-1)
        bad = idx[(idx < 0) | (idx >= self.capacity)]
        if bad.numel():
            raise SlotNotFound(f"slot {int(bad[0])} is out of range [0, {self.capacity})")
        free = idx[~self.occupied[idx]]
        if free.numel():
            raise SlotNotFound(f"slot {int(free[0])} is not occupied")
        return idx

    def records_at(self, slots: Sequence[int]) -> list[bytes | None]:
        """The records of these slots (-1: None), as stored."""
        return [None if s < 0 else self.meta.record(s) for s in slots]

    def namespace_slots(self, namespace: str) -> list[int]:
        """The occupied slots of a namespace, ascending ([] when it has none)."""
        return torch.nonzero(self.meta.in_namespace(namespace, self.occupied)).squeeze(1).tolist()

    def check_occupied(self, slot: SupportsIndex) -> int:
        """The slot as an int when it is occupied; SlotNotFound (or ValueError) otherwise."""
        return self._check_slot(slot)

    def delete(self, slot: SupportsIndex) -> None:
        """Free one occupied slot (its code, count and ticks go back to zero)."""
        s = self._check_slot(slot)
        self._make_room(1)
        self.tick += 1
        self._free(torch.tensor([s], device=self.device))

    def forget(self, slots: Sequence[int]) -> None:
        """Free these occupied slots at once (one tick); SlotNotFound before any change."""
        idx = self._occupied_index(slots)
        self._check_slots(idx)
        self._make_room(1)
        self.tick += 1
        self._free(idx)

    def pin(self, slots: Sequence[int], pinned: bool) -> None:
        """Pin (never evicted) or unpin these occupied slots; no tick, no counter."""
        self.meta.pin(self._occupied_index(slots), bool(pinned))

    def clear(self) -> None:
        """Free every slot. The lifetime counters (reads, hits, ..., tick) keep running."""
        self._make_room(1)
        self.tick += 1
        self._free(torch.arange(self.capacity, device=self.device))

    def _free(self, idx: Tensor) -> None:
        self.codes[idx] = 0
        self.occupied[idx] = False
        self.counts[idx] = 0
        self.last_write[idx] = 0
        self.last_access[idx] = 0
        self._inv[idx] = 0.0
        self.meta.free(idx)

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """Counters and occupancy. count_* are over occupied slots (0 when the bank is empty);
        code_bytes = one stored code, bytes = the code and counter tensors, cache_bytes = the
        read cache on top of them (the inverse norms and the block buffer), meta_bytes =
        namespaces, pins and records (model/slots.py); namespaces = per namespace with a slot:
        used, pinned, count_sum."""
        used = self.used
        count_sum, count_min, count_max = self._count_stats()
        cache = [self._inv, *self._blocks]
        return {
            "capacity": self.capacity,
            "used": used,
            "free": self.capacity - used,
            "reads": self.reads,
            "hits": self.hits,
            "misses": self.misses,
            "writes": self.writes,
            "evictions": self.evictions,
            "count_min": count_min,
            "count_mean": count_sum / used if used else 0.0,
            "count_max": count_max,
            "count_sum": count_sum,
            "dtype": self.dtype,
            "code_bytes": self.code_bytes,
            "bytes": sum(t.numel() * t.element_size() for t in self._core_tensors().values()),
            "cache_bytes": sum(t.numel() * t.element_size() for t in cache),
            "meta_bytes": self.meta.nbytes(),
            "namespaces": self.meta.stats(self.occupied, self.counts, used, count_sum),
            "initial_count": self.initial_count,
            "tick": self.tick,
        }

    def _count_stats(self, rows: int = 1 << 16) -> tuple[int, int, int]:
        """Sum, min and max of the occupied slots' counts (0, 0, 0 when none), a block at a
        time: a whole-column reduction leaves tens of MB in the allocator at 1M slots."""
        total, low, high, seen = 0, COUNT_MAX, 0, False
        for start in range(0, self.capacity, rows):
            occ = self.occupied[start : start + rows]
            if not bool(occ.any()):
                continue
            counts = self.counts[start : start + rows][occ]
            total += int(counts.sum())
            low, high, seen = min(low, int(counts.min())), max(high, int(counts.max())), True
        return (total, low, high) if seen else (0, 0, 0)

    # ------------------------------------------------------------------ state

    def state_tensors(self) -> dict[str, Tensor]:
        """The state without copies of the codes and counters (read-only use: a snapshot of a
        bank nobody mutates), the slot metadata's tensors (model/slots.py) with it."""
        return {**self._core_tensors(), **self.meta.state_tensors()}

    def _core_tensors(self) -> dict[str, Tensor]:
        counters = [getattr(self, name) for name in COUNTER_NAMES]
        state = {
            "codes": self.codes,
            "counts": self.counts,
            "occupied": self.occupied,
            "last_write": self.last_write,
            "last_access": self.last_access,
            "counters": torch.tensor(counters, dtype=torch.int64, device=self.device),
        }
        if self.quant.scales is not None:
            state["scales"] = self.quant.scales
        if self.quant.rate_bits is not None and self.quant.rate_levels is not None:
            state["rate_bits"], state["rate_levels"] = self.quant.rate_bits, self.quant.rate_levels
        return state

    def state_dict(self) -> dict[str, Tensor]:
        """Copies of the state tensors; "counters" is int64 (6,) in `COUNTER_NAMES` order. A
        state without the metadata tensors (older snapshots) loads as all "default", unpinned,
        without records."""
        return {k: v.detach().clone() for k, v in self.state_tensors().items()}

    def load_state_dict(self, state: Mapping[str, Tensor], *, copy: bool = True) -> None:
        """Replace the state with `state` (as from `state_dict`), checked first: ValueError
        naming the problem, and the bank is left unchanged. copy=False adopts the tensors."""
        problem = state_problem(state, self.capacity, self.m, self.dtype)
        if problem is not None:
            raise ValueError(f"state dict {problem}")
        self._adopt(state, copy=copy)

    def _adopt(self, state: Mapping[str, Tensor], *, copy: bool) -> None:
        dev = self.device
        adopt = {
            k: (v.detach().clone() if copy else v).to(dev)
            for k, v in state.items()
            if k not in META_KEYS
        }
        self.codes, self.counts = adopt["codes"], adopt["counts"]
        self.occupied = adopt["occupied"]
        self.last_write, self.last_access = adopt["last_write"], adopt["last_access"]
        if self.dtype == "int8":
            self.quant = Quantiser("int8", self.m, adopt["scales"], dev)
        if self.dtype == "rate":
            rate = (adopt["rate_bits"], adopt["rate_levels"])
            self.quant = Quantiser("rate", self.m, device=dev, rate=rate)
        for name, value in zip(COUNTER_NAMES, adopt["counters"].tolist(), strict=True):
            setattr(self, name, int(value))
        self._inv = self._inverse_norms()  # free slots hold zero codes: 0
        self._blocks = []
        self.meta = SlotMeta(self.capacity, dev)
        if META_KEYS[0] in state:
            self.meta.adopt(state, copy=copy)
