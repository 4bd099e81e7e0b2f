"""The bank's read kernel: cosine top-k over unit-length codes, as pure functions over tensors.

The bank keeps a float32 copy of every slot's code scaled to unit length (zeros for free or
all-zero slots) and an additive mask (0 occupied, -inf free), so a read of B queries is one
masked matrix product per block of slots, (B, m) x (m, rows), then a top-k: no Python loop over
slots or queries. Returned scores are recomputed per (query, slot) pair, so they do not depend
on the batch or the blocking. Ties between equal scores go to the lower slot for top_k = 1; for
top_k > 1 a tie at the k-th place may go to either slot. Zero vectors score 0, never NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["all_finite", "rank_in_order", "search", "unit_rows"]

# Score-matrix elements per block in `search` (4 MiB of float32): a (B, rows) block stays in
# cache between the matrix product and the top-k that consumes it, and the buffer stays small at
# any N. A single query is never blocked: torch's matrix-vector product on row slices of the
# cache ran 3-4x slower than one product over all rows (bench/bank.py, 2-core Xeon).
BLOCK_ELEMENTS = 1 << 20


def all_finite(t: Tensor) -> bool:
    """No NaN or inf in t: one min/max pass (NaN propagates), 15x faster than isfinite().all()."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(lo > -math.inf) and bool(hi < math.inf)


def unit_rows(x: Tensor) -> Tensor:
    """Rows of x (n, m) float32 scaled to unit length; all-zero rows stay zero (score 0, no NaN).

    Each row's result depends on that row only (so a slot's cached row is the same whether it
    was computed at a write or on load). Rows whose squares could overflow (|x| ~ 1e20) or
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


def _top(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    if k == 1:  # max returns the first maximal index: ties go to the lower slot
        v, i = scores.max(dim=1, keepdim=True)
        return v, i
    v, i = torch.topk(scores, k, dim=1, largest=True, sorted=True)
    return v, i


def _candidates(
    qn: Tensor, unit: Tensor, mask: Tensor, k: int, block: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """Top k (<= N) masked scores of unit queries qn (B, m) over unit (N, m): values, slots
    (B, k). `block` holds a reusable score buffer (empty list: none yet)."""
    b, n = qn.shape[0], unit.shape[0]
    rows = max(k, BLOCK_ELEMENTS // b)
    if b == 1 or rows >= n:
        return _top(torch.addmm(mask, qn, unit.T), k)  # (B, N) scores
    if not block or block[0].numel() < b * rows:
        block[:] = [torch.empty(b * rows, dtype=torch.float32, device=unit.device)]
    values, slots = [], []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        out = block[0][: b * (stop - start)].view(b, stop - start)
        torch.addmm(mask[start:stop], qn, unit[start:stop].T, out=out)
        v, i = _top(out, min(k, stop - start))
        values.append(v)
        slots.append(i + start)
    v, j = _top(torch.cat(values, dim=1), k)
    return v, torch.gather(torch.cat(slots, dim=1), 1, j)


def search(
    qn: Tensor,
    unit: Tensor,
    mask: Tensor,
    occupied: Tensor,
    k: int,
    min_score: float | None,
    block: list[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """The best k (<= N) occupied slots for unit queries qn (B, m), best first, ties by lower
    slot: (slots, scores, valid), each (B, k); valid is False where the slot is free or its
    exact score is below min_score (those entries sort last)."""
    _, cand = _candidates(qn, unit, mask, k, block)  # (B, k)
    # Exact per-pair scores, independent of batch size and blocking; a cosine of unit rows
    # can round past +-1 (1.0000001): clipped, so a score is always in [-1, 1].
    scores = (qn.unsqueeze(1) * unit[cand]).sum(dim=2).clamp_(-1.0, 1.0)  # (B, k)
    valid = occupied[cand]
    if min_score is not None:
        valid &= scores >= min_score
    key = torch.where(valid, scores, -math.inf)
    if k > 1:  # best first, ties by lower slot: by slot, then stably by score, invalid last
        by_slot = torch.argsort(cand, dim=1, stable=True)
        cand, key, valid = cand.gather(1, by_slot), key.gather(1, by_slot), valid.gather(1, by_slot)
        order = torch.argsort(key, dim=1, descending=True, stable=True)
        cand, key, valid = cand.gather(1, order), key.gather(1, order), valid.gather(1, order)
    return cand, torch.where(valid, key, 0.0), valid


def rank_in_order(slots: Tensor, b: int) -> Tensor:
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
