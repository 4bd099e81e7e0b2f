"""MemoryBank: the runtime memory of the MemoryTransit paper (IDRP codes + counters), and snapshots.

The paper keeps a bank of `capacity` slots, each holding one compressed code z_comp (m,) and an
access counter. A read returns the slot whose code is most similar (cosine) to the query's code
and increments that slot's counter; a write stores the mean code of a batch in the first free slot,
or, when none is free, in the least frequently used one (LFU), whose counter restarts.

Differences from the paper, each on purpose:
- A slot is free when `occupied` is False, never when its count is 0. The paper's free test
  `AFF_ctrl[i] == 0` treats a slot whose counter was just reset as free, so two writes in a row
  would overwrite each other.
- LFU ties break by least recently touched (max of last write and last access), then by slot.
- `initial_count` (default 0, the paper's reset value) can start fresh slots above zero, like
  Redis LFU's LFU_INIT_VAL = 5: see `MemoryBank`.
- Reads can return the top k slots and refuse hits below `min_score`; writes can store one slot
  per row (`mode="each"`) as well as the batch mean.
- Codes can be stored as float16 or int8 (per-dimension scales) to fit more slots in memory.

Snapshots are one safetensors file (no pickle): the state tensors plus metadata (format version,
shape, dtype, the codec's fingerprint, creation time, and a sha256 of the tensor bytes, which
safetensors itself does not check), written atomically.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import numbers
import operator
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, SupportsIndex

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from model.errors import SlotNotFound, SnapshotError

__all__ = [
    "COUNTER_NAMES",
    "DTYPES",
    "FORMAT_VERSION",
    "Codec",
    "IDRPMemory",
    "IDRPReadResult",
    "MemoryBank",
    "ReadResult",
    "SlotView",
    "WriteResult",
    "save_state",
]

FORMAT_VERSION = "1"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "int8": torch.int8,
}
COUNTER_NAMES = ("tick", "reads", "hits", "misses", "writes", "evictions")
WRITE_MODES = ("mean", "each")
_INT8_MAX = 127
# Score-matrix elements per block in `read` (4 MiB of float32): a (B, rows) block stays in cache
# between the matrix product and the top-k that consumes it, and the buffer stays small at any N.
# A single query is never blocked: torch's matrix-vector product on row slices of the cache ran
# 3-4x slower than one product over all rows (bench/bank.py, 2-core Xeon).
_BLOCK_ELEMENTS = 1 << 20
_STATE_KEYS = ("codes", "counts", "occupied", "last_write", "last_access", "counters")
_RESERVED_METADATA = (
    "format_version",
    "capacity",
    "m",
    "dtype",
    "initial_count",
    "fingerprint",
    "created_at",
    "sha256",
)


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
    """Slots written, in the order of the rows written, and which of them held a code before."""

    slots: list[int]
    evicted: list[int]


@dataclass(frozen=True)
class SlotView:
    """One occupied slot: its dequantised code (m,) float32 and its counters."""

    slot: int
    code: Tensor
    count: int
    last_write: int
    last_access: int


def _int_like(value: object) -> int | None:
    """value as an int if it is int-like (int, numpy or one-element tensor integer, not bool)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _as_int(value: object, name: str, minimum: int) -> int:
    """An int-like value that is >= minimum, as an int."""
    v = _int_like(value)
    if v is None:
        raise ValueError(f"expected {name} to be an int >= {minimum}, got {value!r}")
    if v < minimum:
        raise ValueError(f"expected {name} >= {minimum}, got {name}={v}")
    return v


def _unit_rows(x: Tensor) -> Tensor:
    """Rows of x (n, m) float32 scaled to unit length; all-zero rows stay zero (score 0, no NaN).

    Each row's result depends on that row only (so a slot's cached row is the same whether it
    was computed at assign or on load). Rows whose squares could overflow (|x| ~ 1e20) or
    underflow (|x| ~ 1e-20) take a slower path that first divides by the largest |entry|.
    """
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (n, 1)
    ok = (norm > 1e-15) & (norm < math.inf)  # (n, 1)
    out = x / torch.where(ok, norm, 1.0)  # (n, m)
    if not bool(ok.all()):
        rows = torch.nonzero(~ok[:, 0]).squeeze(1)
        out[rows] = _unit_rows_rescaled(x[rows])
    return out


def _unit_rows_rescaled(x: Tensor) -> Tensor:
    peak = x.abs().amax(dim=1, keepdim=True)  # (n, 1)
    scaled = x / torch.where(peak > 0, peak, 1.0)  # (n, m), entries in [-1, 1]
    norm = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)  # (n, 1): 0 or in [1, sqrt(m)]
    return scaled / torch.where(norm > 0, norm, 1.0)


def _all_finite(t: Tensor) -> bool:
    """No NaN or inf in t: one min/max pass (NaN propagates), 15x faster than isfinite().all()."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(lo > -math.inf) and bool(hi < math.inf)


def _rank_in_order(slots: Tensor, b: int) -> Tensor:
    """For each entry of slots (H,), how many entries on the same slot come before it, itself
    included (1, 2, ...): a stable sort groups equal slots in their original order."""
    if b == 1:  # one query's top-k slots are distinct
        return torch.ones_like(slots)
    order = torch.argsort(slots, stable=True)
    grouped = slots[order]
    pos = torch.arange(slots.numel(), device=slots.device)
    starts = torch.ones_like(grouped, dtype=torch.bool)
    starts[1:] = grouped[1:] != grouped[:-1]
    group_start = torch.cummax(torch.where(starts, pos, 0), dim=0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - group_start + 1
    return rank


def _content_sha256(tensors: dict[str, Tensor]) -> str:
    """sha256 hex digest of the tensors' raw (little-endian) bytes, in sorted key order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)  # a memoryview: no copy
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still done
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class MemoryBank:
    """A fixed number of slots holding codes (m,), read by cosine and replaced by LFU.

    State, all tensors on `device` (see `state_dict`):
      codes (capacity, m) in the storage dtype. float32 and float16 hold the code; int8 holds
        round(z / scales) clamped to [-127, 127] (round half to even), whose value is
        codes * scales. Free slots hold zeros.
      scales (m,) float32, int8 only: per-dimension scale, all > 0 (the codec's `code_scales`).
      counts int64: accesses since the slot was last written, starting at `initial_count`.
      occupied bool: whether the slot holds a code. Kept apart from counts: a written slot whose
        count is 0 is not free (the paper's `count == 0` free test is a bug).
      last_write, last_access int64: the tick of the slot's last write / last read hit (0 = never).
    Scalar counters: tick, reads, hits, misses, writes, evictions (see `COUNTER_NAMES`).

    Ticks. `tick` counts operations. Each query of a read is one operation (a read of B queries
    advances tick by B and query i's hits get last_access = tick_before + i + 1), so a batch
    leaves exactly the state that B single reads leave, LRU order included. An assign (and so a
    write, whatever its number of rows), a delete and a clear each advance tick by one; all
    slots of one assign share its tick.

    Replacement. `choose_slots` takes the lowest free slots first, then the occupied slots with
    the lowest (count, last touched, slot), last touched = max(last_write, last_access). With
    `decay_ticks` > 0 (a policy setting, not state: it is not saved in snapshots), the count used
    for that choice is halved for every decay_ticks ticks the slot sat untouched, as Redis ages
    its LFU counters (LFU_DECAY_TIME); the counts stored and reported never change.

    initial_count. A written slot's count starts at initial_count (the paper: 0). Redis LFU
    starts new keys at LFU_INIT_VAL = 5 so that a fresh key, which has had no time to be read,
    is not the first thing evicted: there, counters decay with idle time (LFU_DECAY_TIME), so old
    keys that stop being read sink below a fresh key's 5. Counts here do not decay, so every
    count is initial_count + hits since the write, and the replacement order (count, last
    touched, slot) comes out the same for every initial_count: a fresh slot already outlives
    every older slot that has not been hit either (it is the most recently touched), and it
    cannot outlive older slots that have been hit, whatever initial_count is (in a full bank
    whose other slots were all read, consecutive writes keep replacing the newest slot). With
    decay on (`decay_ticks` > 0) initial_count does protect fresh slots, as in Redis: a slot
    hit often long ago decays below a fresh slot's initial_count and goes first. Without decay,
    initial_count > 0 only changes the counts reported; with the paper's free test (count == 0)
    it would also have kept a just-written slot from looking free. 0 and no decay, the
    defaults, reproduce the paper.

    Reads. The bank keeps a float32 copy of every slot's code scaled to unit length (zeros for
    free or all-zero slots) and an additive mask (0 occupied, -inf free), so a read of B queries
    is one masked matrix product per block of slots, (B, m) x (m, rows), then a top-k: no Python
    loop over slots or queries. The copy costs capacity * (m + 1) * 4 bytes on top of the state
    (`stats()["cache_bytes"]`, e.g. 68 MB for 1M slots of m = 16): it doubles a float32 bank's
    memory and costs float16 / int8 banks most of what their storage saves. What it buys,
    measured by bench/bank.py (1M slots, m = 16, 1 thread): a single query reads 4x faster
    than casting float16/int8 blocks to float32 on the fly (the read is memory-bound); for 256
    queries the time goes to the (B, rows) score blocks and every variant costs about the same.
    Returned scores are recomputed per (query, slot) pair, so they do not depend on the batch.
    Ties between equal scores go to the lower slot for top_k = 1; for top_k > 1 a tie at the
    k-th place may go to either slot. Zero vectors score 0 against everything, never NaN.

    Not thread-safe: one caller at a time (the service's engine holds a lock).
    """

    def __init__(
        self,
        capacity: int,
        m: int,
        *,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        scales: Tensor | Sequence[float] | None = None,
        initial_count: int = 0,
        decay_ticks: int = 0,
    ) -> None:
        self._configure(capacity, m, device, dtype, scales, initial_count)
        self.decay_ticks = _as_int(decay_ticks, "decay_ticks", 0)
        self._allocate()

    def _configure(
        self,
        capacity: int,
        m: int,
        device: str | torch.device,
        dtype: str,
        scales: Tensor | Sequence[float] | None,
        initial_count: int,
    ) -> None:
        self.capacity = _as_int(capacity, "capacity", 1)
        self.m = _as_int(m, "m", 1)
        self.initial_count = _as_int(initial_count, "initial_count", 0)
        if dtype not in DTYPES:
            raise ValueError(f"expected dtype in {sorted(DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        self.device = torch.device(device)
        self._storage_dtype = DTYPES[dtype]
        self.scales: Tensor | None = None
        if dtype == "int8":
            if scales is None:
                raise ValueError("expected scales (m,) for dtype 'int8', got None")
            self.scales = self._check_scales(scales)
        elif scales is not None:
            raise ValueError(f"expected scales=None for dtype {dtype!r} (int8 only), got a value")

    def _allocate(self) -> None:
        """An empty bank: all slots free, all counters 0."""
        n, dev = self.capacity, self.device
        self.codes = torch.zeros(n, self.m, dtype=self._storage_dtype, device=dev)
        self.counts = torch.zeros(n, dtype=torch.int64, device=dev)
        self.occupied = torch.zeros(n, dtype=torch.bool, device=dev)
        self.last_write = torch.zeros(n, dtype=torch.int64, device=dev)
        self.last_access = torch.zeros(n, dtype=torch.int64, device=dev)
        self.tick = self.reads = self.hits = self.misses = self.writes = self.evictions = 0
        # Read cache: unit-length float32 codes and the additive free-slot mask.
        self._unit = torch.zeros(n, self.m, dtype=torch.float32, device=dev)
        self._mask = torch.full((n,), -math.inf, dtype=torch.float32, device=dev)
        self._block: Tensor | None = None  # reused (B * rows) score buffer

    # ------------------------------------------------------------------ validation helpers

    def _check_scales(self, scales: Tensor | Sequence[float]) -> Tensor:
        s = torch.as_tensor(scales).detach()
        if s.shape != (self.m,):
            raise ValueError(f"expected scales of shape ({self.m},), got {tuple(s.shape)}")
        s = s.to(device=self.device, dtype=torch.float32)
        if not _all_finite(s) or not bool((s > 0).all()):
            raise ValueError(f"expected finite scales > 0, got {s.tolist()}")
        return s.clone()

    def _check_rows(self, x: Tensor | Sequence[Sequence[float]], name: str) -> Tensor:
        """x (B, m) with B >= 1 and finite values -> float32 on the bank's device."""
        t = torch.as_tensor(x).detach()
        if t.dim() != 2 or t.shape[1] != self.m or t.shape[0] < 1:
            raise ValueError(f"expected {name} of shape (B >= 1, {self.m}), got {tuple(t.shape)}")
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"expected real {name}, got dtype {t.dtype}")
        t = t.to(device=self.device, dtype=torch.float32)
        if not _all_finite(t):
            raise ValueError(f"expected finite {name}, got NaN or inf")
        return t

    def _check_slot(self, slot: object) -> int:
        """An int-like slot -> int in range."""
        s = _int_like(slot)
        if s is None:
            raise ValueError(f"expected an int slot, got {slot!r}")
        if not 0 <= s < self.capacity:
            raise SlotNotFound(f"slot {s} is out of range [0, {self.capacity})")
        return s

    # ------------------------------------------------------------------ storage dtype

    def _quantise(self, z: Tensor) -> Tensor:
        """float32 codes (n, m) -> storage dtype."""
        if self.dtype == "int8":
            assert self.scales is not None
            q = torch.round(z / self.scales).clamp_(-_INT8_MAX, _INT8_MAX)
            return q.to(torch.int8)
        stored = z.to(self._storage_dtype)
        if not _all_finite(stored):
            raise ValueError(f"expected codes within {self.dtype} range, got values that overflow")
        return stored

    def _dequantise(self, c: Tensor) -> Tensor:
        """storage dtype (n, m) -> float32 codes."""
        if self.dtype == "int8":
            assert self.scales is not None
            return c.to(torch.float32) * self.scales
        return c.to(torch.float32)

    def _rebuild_cache(self) -> None:
        self._unit = _unit_rows(self._dequantise(self.codes))  # free slots hold zero codes
        self._mask = torch.where(self.occupied, 0.0, -math.inf).to(torch.float32)
        self._block = None

    # ------------------------------------------------------------------ properties

    @property
    def used(self) -> int:
        return int(self.occupied.sum().item())

    def __len__(self) -> int:
        return self.used

    def __repr__(self) -> str:
        return (
            f"MemoryBank(capacity={self.capacity}, m={self.m}, dtype={self.dtype!r}, "
            f"used={self.used}, device={str(self.device)!r}, initial_count={self.initial_count})"
        )

    # ------------------------------------------------------------------ read

    def _search(self, qn: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top k (<= capacity) masked scores of unit queries qn (B, m): values, slots (B, k)."""
        b = qn.shape[0]
        n = self.capacity
        rows = max(k, _BLOCK_ELEMENTS // b)
        if b == 1 or rows >= n:
            scores = torch.addmm(self._mask, qn, self._unit.T)  # (B, N)
            return self._top(scores, k)
        if self._block is None or self._block.numel() < b * rows:
            self._block = torch.empty(b * rows, dtype=torch.float32, device=self.device)
        values, slots = [], []
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            out = self._block[: b * (stop - start)].view(b, stop - start)
            torch.addmm(self._mask[start:stop], qn, self._unit[start:stop].T, out=out)
            v, i = self._top(out, min(k, stop - start))
            values.append(v)
            slots.append(i + start)
        v, j = self._top(torch.cat(values, dim=1), k)
        return v, torch.gather(torch.cat(slots, dim=1), 1, j)

    @staticmethod
    def _top(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if k == 1:  # max returns the first maximal index: ties go to the lower slot
            v, i = scores.max(dim=1, keepdim=True)
            return v, i
        v, i = torch.topk(scores, k, dim=1, largest=True, sorted=True)
        return v, i

    def read(
        self,
        queries: Tensor | Sequence[Sequence[float]],
        top_k: int = 1,
        min_score: float | None = None,
    ) -> ReadResult:
        """The top_k occupied slots by cosine to each query (B, m), best first; counts accesses.

        Every returned hit adds one to its slot's count and sets its last_access; `counts` in the
        result is the slot's count right after that hit, sequential within the batch (query i
        sees the hits of queries < i), so a batch answers exactly like B single reads. Entries
        whose score is below min_score are not hits (slot -1, nothing counted); a query with no
        hit is a miss. An empty bank answers all misses. reads += B, hits/misses per query.
        """
        q = self._check_rows(queries, "queries")  # (B, m)
        k = _as_int(top_k, "top_k", 1)
        if min_score is not None:
            if isinstance(min_score, bool) or not isinstance(min_score, numbers.Real):
                raise ValueError(f"expected min_score to be a float or None, got {min_score!r}")
            min_score = float(min_score)
            if not math.isfinite(min_score):
                raise ValueError(f"expected a finite min_score, got {min_score}")
        b, dev = q.shape[0], self.device
        kk = min(k, self.capacity)
        qn = _unit_rows(q)  # (B, m)

        _, cand = self._search(qn, kk)  # (B, kk)
        # Exact per-pair scores, independent of batch size and blocking.
        scores = (qn.unsqueeze(1) * self._unit[cand]).sum(dim=2)  # (B, kk)
        valid = self.occupied[cand]
        if min_score is not None:
            valid &= scores >= min_score
        key = torch.where(valid, scores, -math.inf)
        if kk > 1:  # best first, ties by lower slot: by slot, then stably by score, invalid last
            by_slot = torch.argsort(cand, dim=1, stable=True)
            cand, key = cand.gather(1, by_slot), key.gather(1, by_slot)
            valid = valid.gather(1, by_slot)
            order = torch.argsort(key, dim=1, descending=True, stable=True)
            cand, key, valid = cand.gather(1, order), key.gather(1, order), valid.gather(1, order)

        slots = torch.full((b, k), -1, dtype=torch.int64, device=dev)
        out_scores = torch.zeros((b, k), dtype=torch.float32, device=dev)
        out_counts = torch.zeros((b, k), dtype=torch.int64, device=dev)
        slots[:, :kk] = torch.where(valid, cand, -1)
        out_scores[:, :kk] = torch.where(valid, key, 0.0)

        flat = slots.reshape(-1)  # (B * k,), query-major: the order B single reads would take
        hit_pos = torch.nonzero(flat >= 0).squeeze(1)  # (H,)
        hit_slots = flat[hit_pos]  # (H,)
        if hit_slots.numel():
            out_counts.view(-1)[hit_pos] = self.counts[hit_slots] + _rank_in_order(hit_slots, b)
            self.counts.index_add_(0, hit_slots, torch.ones_like(hit_slots))
            hit_ticks = self.tick + 1 + torch.div(hit_pos, k, rounding_mode="floor")
            self.last_access.scatter_reduce_(0, hit_slots, hit_ticks, reduce="amax")

        n_hit = int((slots[:, 0] >= 0).sum().item())
        self.tick += b
        self.reads += b
        self.hits += n_hit
        self.misses += b - n_hit
        return ReadResult(slots=slots, scores=out_scores, counts=out_counts)

    # ------------------------------------------------------------------ write

    def choose_slots(self, n: int) -> tuple[list[int], list[int]]:
        """Slots for n new codes, and which of them are occupied now (to be evicted). Pure.

        The lowest free slots first, then occupied slots by (count, last touched, slot),
        last touched = max(last_write, last_access). n > capacity -> ValueError.
        """
        n = _as_int(n, "n", 0)
        if n > self.capacity:
            raise ValueError(f"expected n <= capacity={self.capacity}, got n={n}")
        return _choose(
            n,
            self.occupied,
            self.counts,
            self.last_write,
            self.last_access,
            self.tick,
            self.decay_ticks,
        )

    def plan_writes(self, sizes: Sequence[int]) -> list[tuple[list[int], list[int]]]:
        """(slots, evicted) for consecutive writes of these sizes, exactly what choose_slots(n)
        then assign(slots, ...) for each in turn would give (the codes do not matter to the
        choice), without changing anything: a group of writes is planned, logged, then
        assigned one by one. A later write of the group may take a slot an earlier one just
        wrote (in a full bank whose other slots were all read, the fresh slot is the LFU one),
        as consecutive writes do.

        Without decay one pass over the bank serves the whole group: the slots the group has
        not touched keep their order (count, last touched, slot) from write to write, so the
        first sum(sizes) of them in that order, merged with the group's fresh slots (count
        initial_count, touched at their write's tick, which is later than any other), decide
        every choice. With decay the counts age with each write's tick: each write is chosen
        on a copy of the counters, one pass per write.
        """
        sizes = [_as_int(n, "n", 0) for n in sizes]
        if any(n > self.capacity for n in sizes):
            raise ValueError(f"expected sizes <= capacity={self.capacity}, got {sizes}")
        if self.decay_ticks:
            return self._plan_writes_aged(sizes)
        first, _ = _choose(
            min(sum(sizes), self.capacity),
            self.occupied,
            self.counts,
            self.last_write,
            self.last_access,
            self.tick,
            0,
        )
        first_t = torch.tensor(first, dtype=torch.int64, device=self.device)
        was_occupied = self.occupied[first_t].tolist()
        counts = self.counts[first_t].tolist()
        fresh: list[int] = []  # slots the group wrote, in order (count initial_count), oldest first
        pos, plans = 0, []
        for n in sizes:
            slots, evicted = [], []
            f = 0
            for _ in range(n):
                # An untouched slot goes first when free, or when its (count, touched) is below a
                # fresh slot's (initial_count, a later tick): count <= initial_count.
                take_first = pos < len(first) and (
                    not was_occupied[pos] or counts[pos] <= self.initial_count or f == len(fresh)
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
            plans.append((slots, evicted))
        return plans

    def _plan_writes_aged(self, sizes: list[int]) -> list[tuple[list[int], list[int]]]:
        occupied, counts = self.occupied.clone(), self.counts.clone()
        last_write, last_access = self.last_write.clone(), self.last_access.clone()
        tick, plans = self.tick, []
        for n in sizes:
            slots, evicted = _choose(
                n, occupied, counts, last_write, last_access, tick, self.decay_ticks
            )
            idx = torch.tensor(slots, dtype=torch.int64, device=self.device)
            tick += 1  # as assign does
            occupied[idx], counts[idx] = True, self.initial_count
            last_write[idx], last_access[idx] = tick, 0
            plans.append((slots, evicted))
        return plans

    def assign(
        self, slots: Sequence[int] | Tensor, codes: Tensor | Sequence[Sequence[float]]
    ) -> None:
        """Store codes (n, m) float32 in these distinct slots (replay-safe: the WAL replays this).

        occupied = True, count = initial_count, last_write = the new tick, last_access = 0;
        writes += n, evictions += how many of the slots were occupied before. Slots and codes are
        checked before anything changes."""
        idx = torch.as_tensor(slots).detach()
        if idx.dim() != 1 or (idx.numel() and (idx.is_floating_point() or idx.dtype == torch.bool)):
            raise ValueError(f"expected slots as a 1-d sequence of ints, got {slots!r}")
        idx = idx.to(device=self.device, dtype=torch.int64)
        z = self._check_rows(codes, "codes")
        if z.shape[0] != idx.numel():
            raise ValueError(f"expected one code per slot ({idx.numel()}), got {z.shape[0]} codes")
        bad = idx[(idx < 0) | (idx >= self.capacity)]
        if bad.numel():
            raise ValueError(f"expected slots in [0, {self.capacity}), got {bad.tolist()}")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError(f"expected distinct slots, got {idx.tolist()}")
        stored = self._quantise(z)  # validates before any mutation
        self.tick += 1
        self.evictions += int(self.occupied[idx].sum().item())
        self.writes += idx.numel()
        self.codes[idx] = stored
        self.occupied[idx] = True
        self.counts[idx] = self.initial_count
        self.last_write[idx] = self.tick
        self.last_access[idx] = 0
        self._unit[idx] = _unit_rows(self._dequantise(stored))
        self._mask[idx] = 0.0

    def write(self, codes: Tensor | Sequence[Sequence[float]], mode: str = "mean") -> WriteResult:
        """Store codes (B, m): "mean" -> one slot with the batch's mean code (the paper's write),
        "each" -> one slot per row. choose_slots + assign."""
        if mode not in WRITE_MODES:
            raise ValueError(f"expected mode in {list(WRITE_MODES)}, got {mode!r}")
        z = self._check_rows(codes, "codes")  # (B, m)
        if mode == "mean":
            z = z.mean(dim=0, keepdim=True)  # (1, m)
        slots, evicted = self.choose_slots(z.shape[0])
        self.assign(slots, z)
        return WriteResult(slots=slots, evicted=evicted)

    # ------------------------------------------------------------------ slots

    def get(self, slot: SupportsIndex) -> SlotView:
        """The slot's dequantised code and counters (does not count as an access)."""
        s = self._check_slot(slot)
        if not bool(self.occupied[s]):
            raise SlotNotFound(f"slot {s} is not occupied")
        return SlotView(
            slot=s,
            code=self._dequantise(self.codes[s : s + 1])[0].clone(),
            count=int(self.counts[s]),
            last_write=int(self.last_write[s]),
            last_access=int(self.last_access[s]),
        )

    def codes_at(self, slots: Tensor | Sequence[int]) -> Tensor:
        """Dequantised float32 codes (n, m) of occupied slots (n,); SlotNotFound otherwise."""
        idx = torch.as_tensor(slots, dtype=torch.int64).detach().to(self.device).reshape(-1)
        bad = idx[(idx < 0) | (idx >= self.capacity)]
        if bad.numel():
            raise SlotNotFound(f"slot {int(bad[0])} is out of range [0, {self.capacity})")
        free = idx[~self.occupied[idx]]
        if free.numel():
            raise SlotNotFound(f"slot {int(free[0])} is not occupied")
        return self._dequantise(self.codes[idx])

    def delete(self, slot: SupportsIndex) -> None:
        """Free one occupied slot (its code, count and ticks go back to zero)."""
        s = self._check_slot(slot)
        if not bool(self.occupied[s]):
            raise SlotNotFound(f"slot {s} is not occupied")
        self.tick += 1
        self._free(torch.tensor([s], device=self.device))

    def clear(self) -> None:
        """Free every slot. The lifetime counters (reads, hits, ..., tick) keep running."""
        self.tick += 1
        self._free(torch.arange(self.capacity, device=self.device))

    def _free(self, idx: Tensor) -> None:
        self.codes[idx] = 0
        self.occupied[idx] = False
        self.counts[idx] = 0
        self.last_write[idx] = 0
        self.last_access[idx] = 0
        self._unit[idx] = 0.0
        self._mask[idx] = -math.inf

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """Counters and occupancy. count_* are over occupied slots (0 when the bank is empty);
        bytes = the state tensors, cache_bytes = the float32 read cache on top of them (both
        beyond the contract's keys, as is tick)."""
        occ = self.counts[self.occupied]
        used = int(occ.numel())
        state = self._state_tensors()
        cache = [self._unit, self._mask] + ([self._block] if self._block is not None else [])
        return {
            "capacity": self.capacity,
            "used": used,
            "free": self.capacity - used,
            "reads": self.reads,
            "hits": self.hits,
            "misses": self.misses,
            "writes": self.writes,
            "evictions": self.evictions,
            "count_min": int(occ.min()) if used else 0,
            "count_mean": float(occ.double().mean()) if used else 0.0,
            "count_max": int(occ.max()) if used else 0,
            "count_sum": int(occ.sum()),
            "dtype": self.dtype,
            "bytes": sum(t.numel() * t.element_size() for t in state.values()),
            "cache_bytes": sum(t.numel() * t.element_size() for t in cache),
            "initial_count": self.initial_count,
            "tick": self.tick,
        }

    # ------------------------------------------------------------------ state

    def _counters(self) -> list[int]:
        return [getattr(self, name) for name in COUNTER_NAMES]

    def _state_tensors(self) -> dict[str, Tensor]:
        """The state without copies (read-only use)."""
        state = {
            "codes": self.codes,
            "counts": self.counts,
            "occupied": self.occupied,
            "last_write": self.last_write,
            "last_access": self.last_access,
            "counters": torch.tensor(self._counters(), dtype=torch.int64, device=self.device),
        }
        if self.scales is not None:
            state["scales"] = self.scales
        return state

    def state_dict(self) -> dict[str, Tensor]:
        """Copies of the state tensors; "counters" is int64 (6,) in `COUNTER_NAMES` order."""
        return {k: v.detach().clone() for k, v in self._state_tensors().items()}

    def _state_problem(self, state: Mapping[str, Tensor]) -> str | None:
        """Why `state` cannot be this bank's state, or None when it can."""
        problem = _layout_problem(state, self.capacity, self.m, self.dtype)
        if problem is not None:
            return problem
        cpu = {k: v.detach().to("cpu") for k, v in state.items()}
        occ, codes = cpu["occupied"], cpu["codes"]
        tick, reads, hits, misses, writes, evictions = cpu["counters"].tolist()
        if min(tick, reads, hits, misses, writes, evictions) < 0:
            return f"inconsistent state: negative counter in {cpu['counters'].tolist()}"
        if hits + misses != reads:
            return f"inconsistent state: hits {hits} + misses {misses} != reads {reads}"
        if evictions > writes:
            return f"inconsistent state: evictions {evictions} > writes {writes}"
        if "scales" in cpu:
            s = cpu["scales"]
            if not _all_finite(s) or not bool((s > 0).all()):
                return "inconsistent state: scales must be finite and > 0"
        if codes.is_floating_point():
            if not _all_finite(codes):
                return "inconsistent state: non-finite codes"
        elif bool((codes < -_INT8_MAX).any()):
            return f"inconsistent state: int8 codes below -{_INT8_MAX}"
        free = ~occ
        for key in ("counts", "last_write", "last_access"):
            if bool((cpu[key][free] != 0).any()):
                return f"inconsistent state: {key} nonzero on a free slot"
            if bool((cpu[key] < 0).any()):
                return f"inconsistent state: negative {key}"
        if bool((codes[free] != 0).any()):
            return "inconsistent state: code stored in a free slot"
        if bool((cpu["last_write"][occ] < 1).any()):
            return "inconsistent state: occupied slot without a write tick"
        if bool((cpu["last_write"] > tick).any()) or bool((cpu["last_access"] > tick).any()):
            return f"inconsistent state: slot tick beyond the bank's tick {tick}"
        return None

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Replace the state with `state` (as from `state_dict`), checked first: ValueError
        naming the problem, and the bank is left unchanged."""
        problem = self._state_problem(state)
        if problem is not None:
            raise ValueError(f"state dict {problem}")
        self._set_state({k: v.detach().clone() for k, v in state.items()})

    def _set_state(self, state: dict[str, Tensor]) -> None:
        """Adopt checked state tensors (not copied when already on the device)."""
        dev = self.device
        self.codes = state["codes"].to(dev)
        self.counts = state["counts"].to(dev)
        self.occupied = state["occupied"].to(dev)
        self.last_write = state["last_write"].to(dev)
        self.last_access = state["last_access"].to(dev)
        if self.dtype == "int8":
            self.scales = state["scales"].to(dev)
        for name, value in zip(COUNTER_NAMES, state["counters"].tolist(), strict=True):
            setattr(self, name, int(value))
        self._rebuild_cache()

    # ------------------------------------------------------------------ snapshots

    def save(
        self, path: str | os.PathLike[str], *, fingerprint: str, extra: dict[str, str] | None = None
    ) -> int:
        """Write one safetensors snapshot atomically; returns its size in bytes. See
        `save_state`, which this calls with the bank's own tensors (no copy on the CPU)."""
        return save_state(
            path,
            self._state_tensors(),
            fingerprint=fingerprint,
            initial_count=self.initial_count,
            extra=extra,
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        expected_fingerprint: str | None = None,
        capacity: int | None = None,
        m: int | None = None,
        device: str | torch.device = "cpu",
    ) -> tuple[MemoryBank, dict[str, str]]:
        """Read a snapshot written by `save`: (bank, metadata). Never returns an empty bank in
        place of a bad file: every failed check raises SnapshotError saying which one."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise SnapshotError(f"snapshot {p} does not exist") from None
        except OSError as e:
            raise SnapshotError(f"snapshot {p} cannot be read: {e.strerror or e}") from None
        meta = _read_metadata(data)
        try:
            tensors = safetensors.torch.load(data) if meta is not None else None
        except Exception:  # safetensors raises its own error types for bad buffers
            tensors = None
        if meta is None or tensors is None:
            raise SnapshotError(f"snapshot {p} is truncated or not a safetensors file")

        for key in _RESERVED_METADATA:
            if key not in meta:
                raise SnapshotError(f"snapshot {p} metadata lacks {key!r}")
        if meta["format_version"] != FORMAT_VERSION:
            raise SnapshotError(
                f"snapshot {p} has format_version {meta['format_version']!r}, "
                f"expected {FORMAT_VERSION!r}"
            )
        if _content_sha256(tensors) != meta["sha256"]:
            raise SnapshotError(f"snapshot {p}: content checksum mismatch")
        if expected_fingerprint is not None and meta["fingerprint"] != expected_fingerprint:
            raise SnapshotError(
                f"snapshot {p} was made by model {meta['fingerprint']}, "
                f"expected {expected_fingerprint}"
            )
        ints: dict[str, int] = {}
        for key, low in (("capacity", 1), ("m", 1), ("initial_count", 0)):
            try:
                ints[key] = int(meta[key])
            except ValueError:
                raise SnapshotError(
                    f"snapshot {p} metadata {key}={meta[key]!r} is not an int"
                ) from None
            if ints[key] < low:
                raise SnapshotError(f"snapshot {p} metadata {key}={ints[key]} is below {low}")
        if m is not None and ints["m"] != m:
            raise SnapshotError(f"snapshot {p} has m={ints['m']}, expected m={m}")
        if capacity is not None and ints["capacity"] != capacity:
            raise SnapshotError(
                f"snapshot {p} has capacity={ints['capacity']}, expected capacity={capacity}"
            )
        dtype = meta["dtype"]
        if dtype not in DTYPES:
            raise SnapshotError(
                f"snapshot {p} has dtype {dtype!r}, expected one of {sorted(DTYPES)}"
            )

        # Configure without allocating (the state comes from the file); a placeholder scale
        # passes the int8 check, the real one comes with the state after its checks.
        scales = torch.ones(ints["m"]) if dtype == "int8" else None
        bank = cls.__new__(cls)
        bank._configure(ints["capacity"], ints["m"], device, dtype, scales, ints["initial_count"])
        bank.decay_ticks = 0  # a policy, not state: not in the file, the caller sets its own
        problem = bank._state_problem(tensors)
        if problem is not None:
            raise SnapshotError(f"snapshot {p} {problem}")
        bank._set_state(tensors)  # fresh tensors from the file: no copy needed
        return bank, dict(meta)


def _choose(
    n: int,
    occupied: Tensor,
    counts: Tensor,
    last_write: Tensor,
    last_access: Tensor,
    tick: int,
    decay_ticks: int,
) -> tuple[list[int], list[int]]:
    """MemoryBank.choose_slots over these state tensors (n <= capacity, checked by callers)."""
    free = torch.nonzero(~occupied).squeeze(1)  # ascending
    chosen = free[:n].tolist()
    need = n - len(chosen)
    if need == 0:
        return chosen, []
    cand = torch.nonzero(occupied).squeeze(1)  # (U,), ascending slot
    touched = torch.maximum(last_write[cand], last_access[cand])
    count = counts[cand]
    if decay_ticks:  # LFU aging: halve a slot's count per decay_ticks it sat idle
        halvings = ((tick - touched) // decay_ticks).clamp(max=62)
        count = count >> halvings
    # Select the `need` smallest (count, touched, slot) in O(U): threshold on count, then
    # on touched among the tied, then the lowest slots; sort only the few chosen.
    c_kth = torch.kthvalue(count, need).values
    take = count < c_kth
    tied = count == c_kth
    r = need - int(take.sum().item())
    t_kth = torch.kthvalue(touched[tied], r).values
    take |= tied & (touched < t_kth)
    last = torch.nonzero(tied & (touched == t_kth)).squeeze(1)
    take[last[: need - int(take.sum().item())]] = True
    sel = cand[take]
    sel_count, sel_touched = count[take], touched[take]
    # Order the selected by (count, touched, slot): sel is already by slot; stable sorts.
    o = torch.argsort(sel_touched, stable=True)
    o = o[torch.argsort(sel_count[o], stable=True)]
    evicted = sel[o].tolist()
    return chosen + evicted, evicted


def _layout_problem(state: Mapping[str, Tensor], capacity: int, m: int, dtype: str) -> str | None:
    """Why `state` does not have the tensors (keys, dtypes, shapes) of a bank of this capacity,
    m and dtype, or None when it does. Values are not looked at."""
    expected = set(_STATE_KEYS) | ({"scales"} if dtype == "int8" else set())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing:
        return f"lacks tensor(s) {missing}"
    if extra:
        return f"has unexpected tensor(s) {extra}"
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {
        "codes": (DTYPES[dtype], (capacity, m)),
        "counts": (torch.int64, (capacity,)),
        "occupied": (torch.bool, (capacity,)),
        "last_write": (torch.int64, (capacity,)),
        "last_access": (torch.int64, (capacity,)),
        "counters": (torch.int64, (len(COUNTER_NAMES),)),
        "scales": (torch.float32, (m,)),
    }
    for key in sorted(expected):
        t = state[key]
        if not isinstance(t, Tensor):
            return f"tensor {key!r} is not a tensor"
        want_dtype, shape = specs[key]
        if t.dtype != want_dtype:
            return f"tensor {key!r} has dtype {t.dtype}, expected {want_dtype}"
        if tuple(t.shape) != shape:
            return f"tensor {key!r} has shape {tuple(t.shape)}, expected {shape}"
    return None


def save_state(
    path: str | os.PathLike[str],
    state: Mapping[str, Tensor],
    *,
    fingerprint: str,
    initial_count: int = 0,
    extra: Mapping[str, str] | None = None,
) -> int:
    """Write a bank's state (`MemoryBank.state_dict()`, or a copy of it) as one safetensors
    snapshot, atomically; returns the file's size in bytes. `MemoryBank.load` reads it back.

    capacity, m and dtype come from the codes tensor; initial_count, which no tensor holds, is
    the bank's. The layout (keys, dtypes, shapes) is checked here, ValueError naming the
    problem; the values are checked when the file is loaded. No bank is built, so saving a copy
    taken under a lock costs no second read cache.

    Temp file in the same folder, flush + fsync, os.replace over `path`, fsync the folder:
    a crash leaves either the old file or the new one, never a torn one.
    """
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ValueError(f"expected a non-empty fingerprint string, got {fingerprint!r}")
    initial_count = _as_int(initial_count, "initial_count", 0)
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED_METADATA))
    if clash:
        raise ValueError(f"expected extra keys other than {list(_RESERVED_METADATA)}, got {clash}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise ValueError(f"expected extra as dict[str, str], got {extra!r}")
    codes = state.get("codes")
    names = {v: k for k, v in DTYPES.items()}
    if not isinstance(codes, Tensor) or codes.dim() != 2 or codes.dtype not in names:
        what = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, Tensor) else repr(codes)
        raise ValueError(f"expected codes (capacity, m) in {sorted(DTYPES)}, got {what}")
    (capacity, m), dtype = codes.shape, names[codes.dtype]
    problem = _layout_problem(state, capacity, m, dtype)
    if problem is not None:
        raise ValueError(f"state dict {problem}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}  # no copy on CPU
    metadata = {
        **extra,
        "format_version": FORMAT_VERSION,
        "capacity": str(capacity),
        "m": str(m),
        "dtype": dtype,
        "initial_count": str(initial_count),
        "fingerprint": fingerprint,
        "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "sha256": _content_sha256(tensors),
    }
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        _save_file(tensors, tmp, metadata)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
    return size


def _save_file(tensors: dict[str, Tensor], path: str, metadata: dict[str, str]) -> None:
    """safetensors.torch.save_file (3x faster than save() to bytes + write, and no extra copy
    in memory), with its I/O failures raised as OSError like any other write: safetensors
    reports them as SafetensorError "... (os error 28)", and callers tell a full disk by errno.
    """
    try:
        safetensors.torch.save_file(tensors, path, metadata=metadata)
    except safetensors.SafetensorError as e:
        found = re.search(r"os error (\d+)", str(e))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, f"{os.strerror(code)} ({e})", path) from e


def _read_metadata(data: bytes) -> dict[str, str] | None:
    """The safetensors header's __metadata__, or None when the header cannot be parsed."""
    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        return None
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        return None
    return meta


# ---------------------------------------------------------------------- codec + bank


class _CodecConfig(Protocol):
    d: int
    m: int


class Codec(Protocol):
    """What IDRPMemory needs of a model (model.idrp.IDRP satisfies it)."""

    @property
    def config(self) -> _CodecConfig: ...

    @property
    def fingerprint(self) -> str: ...

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class IDRPReadResult:
    """`ReadResult` plus the decoded stored codes: reconstructions (B, k, d) float32, zeros where
    the slot is -1; None when read(..., reconstruct=False)."""

    slots: Tensor
    scores: Tensor
    counts: Tensor
    reconstructions: Tensor | None


class IDRPMemory:
    """The paper's memory loop: encode inputs with a codec, keep the codes in a MemoryBank,
    decode what a read finds."""

    def __init__(self, model: Codec, bank: MemoryBank) -> None:
        if model.config.m != bank.m:
            raise ValueError(f"expected a bank with m={model.config.m}, got m={bank.m}")
        self.model = model
        self.bank = bank

    def _check_inputs(self, x: Tensor | Sequence[Sequence[float]]) -> Tensor:
        d = self.model.config.d
        t = torch.as_tensor(x).detach()
        if t.dim() != 2 or t.shape[1] != d or t.shape[0] < 1:
            raise ValueError(f"expected x of shape (B >= 1, {d}), got {tuple(t.shape)}")
        t = t.to(torch.float32)
        if not _all_finite(t):
            raise ValueError("expected finite x, got NaN or inf")
        return t

    def write(self, x: Tensor | Sequence[Sequence[float]], mode: str = "mean") -> WriteResult:
        """Encode x (B, d) and write the codes (mean -> one slot, each -> B slots)."""
        return self.bank.write(self.model.encode(self._check_inputs(x)), mode=mode)

    def read(
        self,
        x: Tensor | Sequence[Sequence[float]],
        top_k: int = 1,
        min_score: float | None = None,
        reconstruct: bool = True,
    ) -> IDRPReadResult:
        """Encode x (B, d), read the bank, and decode the stored codes of the hits."""
        x = self._check_inputs(x)
        r = self.bank.read(self.model.encode(x), top_k=top_k, min_score=min_score)
        recon = None
        if reconstruct:
            b, k = r.slots.shape
            d = self.model.config.d
            flat = r.slots.reshape(-1)
            hit = torch.nonzero(flat >= 0).squeeze(1)
            out = torch.zeros(b * k, d, dtype=torch.float32, device=x.device)
            if hit.numel():
                z = self.bank.codes_at(flat[hit])  # (H, m)
                out[hit.to(out.device)] = self.model.decode(z).to(out)
            recon = out.view(b, k, d)
        return IDRPReadResult(
            slots=r.slots, scores=r.scores, counts=r.counts, reconstructions=recon
        )
