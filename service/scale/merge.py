"""The arithmetic of N bank shards behind one API, as pure functions (no Ray, no HTTP).

Slot ids. Shard s owns the global slots [s * C, (s + 1) * C) of a bank of capacity C: global =
s * C + local, stable for as long as C is (`to_global`, `to_local`).

Reads. Every shard answers stage one (IDRPMemory.search: its own top k, nothing counted);
`merge` ranks the N * k candidates of each query by score into the global top k (ties: the
lower shard first, then each shard's own order), then `for_shard` says what each shard counts
in stage two (IDRPMemory.touch): the rows where it holds a kept hit, and, for the reads / hits /
misses counters, each query once: on the shard of its best hit, a query that missed everywhere
on the first shard that answered. So only returned hits count an access, as in one process,
and the shards' counters sum to one process's. `assemble` puts the shards' stage-two answers
back in the global order (a hit whose slot was rewritten between the stages is dropped).

Writes (`route`). A write goes to one shard, whole (one WAL append there):
- a namespace other than "default": the shard crc32(namespace) % N, so a namespace lives on one
  shard (its quota, its forget and its LFU order are exactly one process's);
- else the shard with the most free slots (less the slots of writes in flight to it), so the
  shards fill evenly;
- else (all full) the shard whose LFU victim has the lowest count, ties to the lower shard.
Eviction is per shard: a write evicts its shard's least used slot, which is the global LFU
slot only when that shard holds it. With default-namespace writes the rule above sends the
write to the shard whose victim is least used, so the victim is the global LFU one up to ties
and the routing table's staleness (it is refreshed by every write's answer); a namespaced write
evicts within its own shard only. A shard that is down is not skipped: a write routed to it
fails (503), it never goes silently elsewhere.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from model.enums import DEFAULT_NAMESPACE

__all__ = [
    "Assembled",
    "Merged",
    "Route",
    "Searched",
    "ShardTouch",
    "Touched",
    "assemble",
    "for_shard",
    "merge",
    "route",
    "to_global",
    "to_local",
]

Searched = tuple[Tensor, Tensor, Tensor, Tensor]  # slots, scores, code scores, written (B, k)
Touched = tuple[Tensor, Tensor, Tensor, list[list[bytes | None]] | None]  # IDRPMemory.touch


def to_global(shard: int, local: int, capacity: int) -> int:
    return shard * capacity + local


def to_local(slot: int, capacity: int) -> tuple[int, int]:
    """(shard, local slot) of a global slot id."""
    return divmod(slot, capacity)


@dataclass(frozen=True)
class Route:
    """What the router knows of a shard: free slots, and the count of the slot its next write
    would evict when it has none free (None: it has free slots, or none it may evict)."""

    free: int
    victim_count: int | None = None


def route(namespace: str, routes: Sequence[Route], pending: Sequence[int], n: int = 1) -> int:
    """The shard a write of n slots into `namespace` goes to (the module docstring's rule)."""
    if namespace != DEFAULT_NAMESPACE:
        return zlib.crc32(namespace.encode()) % len(routes)
    free = [r.free - p for r, p in zip(routes, pending, strict=True)]
    best = max(range(len(routes)), key=lambda s: (free[s], -s))
    if free[best] >= n:
        return best
    victims = [math.inf if r.victim_count is None else r.victim_count for r in routes]
    least = min(range(len(routes)), key=lambda s: (victims[s], s))
    return least if victims[least] != math.inf else best


@dataclass(frozen=True)
class Merged:
    """The global top k of B queries: per (query, rank), the shard (-1: no hit), its local
    slot, score, code score and the last_write tick stage one saw."""

    shard: Tensor  # (B, k) int64
    local: Tensor  # (B, k) int64
    scores: Tensor  # (B, k) float32
    code_scores: Tensor  # (B, k) float32
    written: Tensor  # (B, k) int64
    counter: Tensor  # (B,) int64: the shard that counts each query's read


def merge(
    found: Sequence[Searched | None],
    top_k: int,
    candidates: int = 0,
    min_score: float | None = None,
) -> Merged:
    """The global top_k of each query from the shards' stage-one answers (None: a shard that
    did not answer). Needs at least one answer. Rescored reads (candidates > 0: each shard
    sent all its R = max(candidates, top_k) code neighbours with their rescored scores): the
    global top R by code score, ranked by rescored score (ties: code order), min_score on
    that score, as one bank's rescore (model/rescore.py) does."""
    answered = [(s, f) for s, f in enumerate(found) if f is not None]
    assert answered, "merge needs at least one shard's answer"
    b = answered[0][1][0].shape[0]
    slots = torch.cat([f[0].cpu() for _, f in answered], dim=1)  # (B, S * k)
    shard = torch.cat([torch.full_like(f[0].cpu(), s) for s, f in answered], dim=1)  # (B, S * k)
    scores = torch.cat([f[1].cpu() for _, f in answered], dim=1)
    code = torch.cat([f[2].cpu() for _, f in answered], dim=1)
    written = torch.cat([f[3].cpu() for _, f in answered], dim=1)
    if candidates:  # the global top R by code score first, in code order
        r = max(candidates, top_k)
        by_code = torch.where(slots >= 0, code, -math.inf)
        pool = torch.argsort(by_code, dim=1, descending=True, stable=True)[:, :r]
        slots, shard, scores = slots.gather(1, pool), shard.gather(1, pool), scores.gather(1, pool)
        code, written = code.gather(1, pool), written.gather(1, pool)
        if min_score is not None:
            slots = torch.where(scores >= min_score, slots, -1)
    key = torch.where(slots >= 0, scores, -math.inf)
    take = torch.argsort(key, dim=1, descending=True, stable=True)[:, :top_k]  # (B, k)
    hit = slots.gather(1, take) >= 0
    out_shard = torch.where(hit, shard.gather(1, take), -1)
    first = answered[0][0]
    counter = torch.where(hit[:, 0], out_shard[:, 0], first) if top_k else torch.full((b,), first)
    return Merged(
        shard=out_shard,
        local=torch.where(hit, slots.gather(1, take), -1),
        scores=torch.where(hit, scores.gather(1, take), 0.0),
        code_scores=torch.where(hit, code.gather(1, take), 0.0),
        written=torch.where(hit, written.gather(1, take), -1),
        counter=counter,
    )


@dataclass(frozen=True)
class ShardTouch:
    """Stage two for one shard: the rows (queries) it sees, their slots (-1: not its hit),
    the ticks stage one saw, and which rows it counts as reads."""

    rows: Tensor  # (R,) int64, ascending
    slots: Tensor  # (R, k)
    written: Tensor  # (R, k)
    counted: Tensor  # (R,) bool


def for_shard(m: Merged, shard: int) -> ShardTouch | None:
    """What `shard` counts in stage two (None: nothing)."""
    mine = m.shard == shard  # (B, k)
    counts_here = m.counter == shard
    rows = torch.nonzero(mine.any(dim=1) | counts_here).squeeze(1)
    if not rows.numel():
        return None
    sel = mine[rows]
    return ShardTouch(
        rows=rows,
        slots=torch.where(sel, m.local[rows], -1),
        written=torch.where(sel, m.written[rows], -1),
        counted=counts_here[rows],
    )


@dataclass(frozen=True)
class Assembled:
    """A read's answer: slots (B, k) global (-1 after each row's hits), scores, code scores,
    counts after this read; the hits' codes (H, m) in (query, rank) order; records or None."""

    slots: Tensor
    scores: Tensor
    code_scores: Tensor
    counts: Tensor
    codes: Tensor
    records: list[list[bytes | None]] | None


def assemble(
    m: Merged,
    touches: Sequence[tuple[int, ShardTouch, Touched]],
    capacity: int,
    code_dim: int,
) -> Assembled:
    """The read's answer in global order from each shard's (shard, ShardTouch, touch answer).
    A hit its shard did not keep, or whose shard did not answer stage two, is dropped."""
    b, k = m.shard.shape
    slots = torch.full((b, k), -1, dtype=torch.int64)
    counts = torch.zeros((b, k), dtype=torch.int64)
    codes = torch.zeros((b, k, code_dim), dtype=torch.float32)
    records: list[list[bytes | None]] | None = None
    for shard, t, (kept, cnt, hit_codes, recs) in touches:
        kept, cnt = kept.cpu(), cnt.cpu()
        ok = kept >= 0  # (R, k)
        rows = t.rows.unsqueeze(1).expand_as(kept)
        cols = torch.arange(k).expand_as(kept)
        r, c = rows[ok], cols[ok]
        slots[r, c] = kept[ok] + shard * capacity
        counts[r, c] = cnt[ok]
        codes[r, c] = hit_codes.cpu().float()
        if recs is not None:
            if records is None:
                records = [[None] * k for _ in range(b)]
            for i, row in enumerate(t.rows.tolist()):
                for j in range(k):
                    if recs[i][j] is not None:
                        records[row][j] = recs[i][j]
    # each row's hits first, in rank order (a dropped hit leaves no gap)
    order = torch.argsort((slots < 0).to(torch.int8), dim=1, stable=True)
    slots, counts = slots.gather(1, order), counts.gather(1, order)
    scores = torch.where(slots >= 0, m.scores.gather(1, order), 0.0)
    code_scores = torch.where(slots >= 0, m.code_scores.gather(1, order), 0.0)
    codes = codes.gather(1, order.unsqueeze(2).expand(b, k, code_dim))
    if records is not None:
        records = [[records[i][j] for j in order[i].tolist()] for i in range(b)]
    return Assembled(slots, scores, code_scores, counts, codes[slots >= 0], records)
