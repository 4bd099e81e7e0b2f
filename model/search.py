"""The bank's read kernel: cosine top-k over the stored codes, as pure functions over tensors.

The bank searches the codes it stores, in their storage dtype, with no float32 copy: per slot
it keeps only the inverse norm of the dequantised code (`inverse_norms`, 0 for free or
all-zero slots). On the CPU, int8, float16 and float32 codes are scanned by compiled passes
that keep running maxima in registers: one query by model/onepass.py (near the
memory-bandwidth floor; the top 1, or chunk maxima for the top k; int8 by an integer pass that
only picks the chunks, model/intscan.py), a batch of at least `manyscan.MANY_MIN` queries by
model/manyscan.py (each code read once for 16 queries), smaller batches query by query; a
batch answers exactly as its queries read one by one (the scans keep every chunk within a
proven rounding margin, `onepass.margin`). Both fall back to the masked scan when a free slot
makes the top k. Other reads (a namespace's slots, packed rate codes, other devices) are, per
block of slots, one cast of the block to float32 (none for float32 codes), one matrix product
(B, m) x (m, rows) against the queries scaled to unit length and multiplied by the
per-dimension scales (int8: code * scales = the dequantised code, so the scales fold into the
query; packed rate codes are dequantised a block at a time by the quantiser's `decode`
instead of cast), a product with the block's inverse norms, the free-slot mask and a top-k
(top 1: each block's maximum alone, then the block that won a query scored again for the
queries it won, to find the slot): no Python loop over slots or queries. The block's scores
stay in cache between the product and the top-k that consumes it, and no N x B score matrix
exists.
Returned scores are recomputed per (query, slot) pair from the dequantised codes, so they do
not depend on the batch or the blocking; on the CPU that step, and the queries' unit rows, run
in numpy (`unit_queries`, `_ranked_cpu`): after a scan has pushed torch's code and data out of
cache, each of the read's ~30 small torch calls cost 20-80 us, most of a single read's
bookkeeping (other devices: `_unit_queries_torch`, `_ranked_torch`). Ties between equal scores
go to the lower slot; on the torch block path, for top_k > 1, a tie at the k-th place may go
to either slot. Zero vectors score 0, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from model import intscan, manyscan, onepass

__all__ = [
    "all_finite",
    "finite_inverse_norms",
    "inverse_norms",
    "rank_in_order",
    "search",
    "unit_queries",
    "unit_rows",
    "warm",
]

# Score-matrix elements per block in `search` (4 MiB of float32): a (B, rows) block stays in
# cache between the matrix product and the top-k that consumes it, and the buffer stays small at
# any N.
BLOCK_ELEMENTS = 1 << 20
Dot = Callable[[Tensor, Tensor, Tensor], None]  # (codes (N, width), q (m,), out (N,)) -> None
# Rows per block of a single query over codes that need a cast (float16, int8): the cast block
# (rows x m float32) stays in L2. Measured on the 2-core Xeon at 1M x 16: 16k rows 2.4 ms, 4k
# 4-5 ms, 64k 2.9-3.2 ms. float32 codes are not cast: one product over all rows (a
# matrix-vector product on row slices ran 3-4x slower, bench/bank.py).
CAST_ROWS = 1 << 14
# top-k (k > 1) of rows of at least CHUNKED_TOP_MIN scores: by chunk maxima first (`_top_chunked`).
# Measured on the 2-core Xeon, one thread: 1M scores, k = 3 or 10, torch.topk 2.1 ms, chunked
# 0.38-0.41 ms; a (16, 65536) block, k = 3 / 10, 1.32 -> 0.47 / 0.78 ms; k = 100 no faster.
TOP_CHUNK = 512
CHUNKED_TOP_MIN = 1 << 15
CHUNKED_TOP_MAX_K = 32
# sum_j |qs_j code_ij| inv_i of a bank's scores (onepass.margin): qs = the unit query times
# the scales, inv = 1 / |dequantised code| (Cauchy-Schwarz)
COSINE_BOUND = 1.0


def all_finite(t: Tensor) -> bool:
    """No NaN or inf in t: one min/max pass (NaN propagates), 15x faster than isfinite().all()."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return -math.inf < float(lo) and float(hi) < math.inf  # False for NaN


def unit_rows(x: Tensor) -> Tensor:
    """Rows of x (n, m) float32 scaled to unit length; all-zero rows stay zero (score 0, no NaN).

    Each row's result depends on that row only. Rows whose squares could overflow (|x| ~ 1e20)
    or underflow (|x| ~ 1e-20) take a slower path that first divides by the largest |entry|.
    """
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (n, 1)
    if _all_plain(norm):  # the usual case in 3 torch calls (a read pays ~5 us per call)
        return x / norm
    ok = (norm > 1e-15) & (norm < math.inf)  # (n, 1)
    out = x / torch.where(ok, norm, 1.0)  # (n, m)
    if not bool(ok.all()):
        rows = torch.nonzero(~ok[:, 0]).squeeze(1)
        out[rows] = _unit_rows_rescaled(x[rows])
    return out


def _all_plain(norm: Tensor) -> bool:
    """Whether every norm is in (1e-15, inf): rows that need neither the zero rule nor the
    rescaled path (NaN is not plain)."""
    if norm.numel() == 0:
        return False
    lo, hi = torch.aminmax(norm)
    return float(lo) > 1e-15 and float(hi) < math.inf


def _unit_rows_rescaled(x: Tensor) -> Tensor:
    peak = x.abs().amax(dim=1, keepdim=True)  # (n, 1)
    scaled = x / torch.where(peak > 0, peak, 1.0)  # (n, m), entries in [-1, 1]
    norm = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)  # (n, 1): 0 or in [1, sqrt(m)]
    return scaled / torch.where(norm > 0, norm, 1.0)


def finite_inverse_norms(x: Tensor) -> Tensor | None:
    """`inverse_norms` of x, or None when x holds NaN or inf: one norm pass answers both in
    the usual case (a norm in (1e-15, inf) has finite entries), so a query is checked and
    measured at once."""
    norm = torch.linalg.vector_norm(x, dim=1)  # (n,)
    if _all_plain(norm):  # = `_inverse_norms`'s usual case, without asking twice
        return torch.reciprocal(norm)
    return _inverse_norms(x, norm) if all_finite(x) else None


def unit_queries(q: Tensor) -> Tensor | None:
    """Queries q (B, m) float32 scaled to unit rows (all-zero rows stay zero), or None when q
    holds NaN or inf. On the CPU in numpy, in float64, where no float32 row's squares overflow
    or underflow: one norm per row, a few numpy calls instead of a dozen torch ones (a single
    read's calls run after a scan that has pushed their code and data out of cache, where a
    torch call cost 20-80 us). Each row's result depends on that row only, as a batch read
    answering like single reads needs. Other devices: `_unit_queries_torch`."""
    if q.device.type != "cpu":
        return _unit_queries_torch(q)
    x = q.numpy().astype(np.float64)
    norm = np.sqrt(np.square(x).sum(axis=1, keepdims=True))  # (B, 1), inf or NaN if not finite
    if not np.isfinite(norm).all():
        return None
    unit = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    return torch.from_numpy(unit.astype(np.float32))


def _unit_queries_torch(q: Tensor) -> Tensor | None:
    """`unit_queries` in torch, float32 (a GPU's queries stay on it)."""
    inv = finite_inverse_norms(q)
    return None if inv is None else q * inv.unsqueeze(1)


def inverse_norms(x: Tensor) -> Tensor:
    """1 / |row| of x (n, m) float32, (n,); 0 for all-zero rows: the bank's read cache, which
    ranks candidates (their scores are then recomputed with `unit_rows`). Rows whose squares
    could overflow or underflow are measured after dividing by their largest |entry|."""
    return _inverse_norms(x, torch.linalg.vector_norm(x, dim=1))


def _inverse_norms(x: Tensor, norm: Tensor) -> Tensor:
    """`inverse_norms` of x given its row norms (n,)."""
    if _all_plain(norm):  # the usual case: = the masked formula below, in 3 torch calls
        return torch.reciprocal(norm)
    ok = (norm > 1e-15) & (norm < math.inf)
    inv = torch.where(ok, 1.0 / torch.where(ok, norm, 1.0), 0.0)
    if not bool(ok.all()):
        rows = torch.nonzero(~ok).squeeze(1)
        inv[rows] = _inverse_norms_rescaled(x[rows])
    return inv


def _inverse_norms_rescaled(x: Tensor) -> Tensor:
    peak = x.abs().amax(dim=1)  # (n,)
    scaled = x / torch.where(peak > 0, peak, 1.0).unsqueeze(1)  # entries in [-1, 1]
    norm = torch.linalg.vector_norm(scaled, dim=1)  # 0 or in [1, sqrt(m)]
    # (1 / norm) / peak, not 1 / (norm * peak), which overflows for |x| ~ 3e38
    return torch.where(norm > 0, 1.0 / torch.where(norm > 0, norm, 1.0) / peak, 0.0)


def _top(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    if k == 1:  # the first maximal index: ties go to the lower slot
        return _first_max(scores)
    if scores.shape[1] >= CHUNKED_TOP_MIN and k <= CHUNKED_TOP_MAX_K:
        found = _top_chunked(scores, k)
        if found is not None:
            return found
    v, i = torch.topk(scores, k, dim=1, largest=True, sorted=True)
    return v, i


def _first_max(scores: Tensor) -> tuple[Tensor, Tensor]:
    """scores.max(dim=1, keepdim=True) for rows (B, n), the first maximal index included, ~10x
    sooner on long rows: torch's max with an index (and argmax) ran at ~0.4 G scores/s here,
    its amax without one at ~9 (AMD EPYC, one thread). So: the amax of every TOP_CHUNK-score
    chunk, the first chunk reaching the row's maximum, then max with its index in that chunk
    alone. The values are compared, never computed, so the answer is max's exactly."""
    b, n = scores.shape
    c = TOP_CHUNK
    if n < 2 * c:
        v, i = scores.max(dim=1, keepdim=True)
        return v, i
    n0 = n - n % c
    best = scores[:, :n0].view(b, n0 // c, c).amax(dim=2)  # (b, chunks)
    if n0 < n:  # the tail, shorter than a chunk
        best = torch.cat([best, scores[:, n0:].amax(dim=1, keepdim=True)], dim=1)
    v, chunk = best.max(dim=1, keepdim=True)  # (b, 1): the first chunk reaching the maximum
    idx = chunk * c + torch.arange(c, device=scores.device)  # (b, c)
    inside = scores.gather(1, idx.clamp(max=n - 1)).masked_fill_(idx >= n, -math.inf)
    return v, idx.gather(1, inside.max(dim=1, keepdim=True).indices)


def _top_chunked(scores: Tensor, k: int) -> tuple[Tensor, Tensor] | None:
    """torch.topk(scores, k) for long rows (B, n), about 3-5x sooner: one max per chunk of
    TOP_CHUNK scores; the k-th largest chunk max is a threshold that at least k scores reach
    (each of those chunks' own max), so the top k lie in the chunks whose max reaches it; one
    topk over those chunks (and the tail) alone. None when the threshold selects many chunks
    (ties, masked rows at -inf): then a topk over the whole row is the cheaper one."""
    b, n = scores.shape
    c = TOP_CHUNK
    n0 = n - n % c
    chunks = scores[:, :n0].view(b, n0 // c, c)
    best = chunks.amax(dim=2)  # (b, chunks)
    kth = torch.topk(best, min(k, best.shape[1]), dim=1).values[:, -1:]  # (b, 1)
    sel = best >= kth
    per_row = sel.sum(dim=1)  # (b,)
    most = int(per_row.max())
    if 4 * most * c > n:
        return None
    rows, which = torch.nonzero(sel, as_tuple=True)  # row-major: each row's chunks in order
    starts = torch.cumsum(per_row, 0) - per_row  # (b,): where each row's chunks begin
    pos = torch.arange(rows.numel(), device=scores.device) - starts[rows]
    vals = torch.full((b, most, c), -math.inf, dtype=scores.dtype, device=scores.device)
    vals[rows, pos] = chunks[rows, which]
    idx = torch.zeros((b, most, c), dtype=torch.int64, device=scores.device)
    idx[rows, pos] = which.unsqueeze(1) * c + torch.arange(c, device=scores.device)
    vals, idx = vals.view(b, most * c), idx.view(b, most * c)
    if n0 < n:  # the tail, shorter than a chunk: every row keeps all of it
        vals = torch.cat([vals, scores[:, n0:]], dim=1)
        tail = torch.arange(n0, n, device=scores.device).expand(b, n - n0)
        idx = torch.cat([idx, tail], dim=1)
    v, j = torch.topk(vals, k, dim=1, largest=True, sorted=True)
    return v, idx.gather(1, j)


def _candidates(
    qs: Tensor,
    codes: Tensor,
    inv: Tensor,
    allowed: Tensor,
    k: int,
    block: list[Tensor],
    zero_free: bool,
    decode: Callable[[Tensor], Tensor] | None = None,
    dot: Dot | None = None,
    spread: float | None = None,
) -> Tensor:
    """Slots (B, k) of the top k (<= N) scores of queries qs (B, m) (unit, times the scales)
    over codes (N, width) in their storage dtype: score = qs . code * inv, -inf where not
    allowed. `block` holds a reusable float32 buffer (empty list: none yet). zero_free: the
    slots not allowed are exactly the free ones, which score 0 (inverse norm 0, see
    `_single`). decode: rows of packed codes -> float32 (rows, m), called per block. dot: a
    compiled single-query scan of the stored codes (int8, packed). spread: int8's
    `intscan.scale_spread`, for one query's integer scan (None: no integer scan)."""
    b = qs.shape[0]
    fused = zero_free and decode is None and _fused(codes)
    if fused and b >= manyscan.MANY_MIN[codes.dtype]:
        found = manyscan.top_many(codes, qs, inv, k, COSINE_BOUND)  # one pass per 16 queries
        if found is not None:  # rows the batch gave up on, or where a free slot won: alone
            f = found.numpy()
            alone = (f < 0).any(axis=1) | ~allowed.numpy()[np.maximum(f, 0)].all(axis=1)
            for row in np.flatnonzero(alone).tolist():
                found[row] = _single(
                    qs[row], codes, inv, allowed, k, block, zero_free, decode, dot, spread
                )[0]
            return found
    if b == 1 or fused:  # one pass per query: the same answer
        one = [
            _single(q, codes, inv, allowed, k, block, zero_free, decode, dot, spread) for q in qs
        ]
        return torch.cat(one)
    return _blocked(qs, codes, inv, allowed, k, block, decode)


def _blocked(
    qs: Tensor,
    codes: Tensor,
    inv: Tensor,
    allowed: Tensor,
    k: int,
    block: list[Tensor],
    decode: Callable[[Tensor], Tensor] | None,
) -> Tensor:
    """`_candidates` for a batch without a compiled pass: torch matrix products over blocks
    of rows (cast or decoded to float32 into `block`'s buffer), each block's top k kept, then
    the top k of those."""
    b = qs.shape[0]
    n, m = codes.shape[0], qs.shape[1]
    cast = decode is None and codes.dtype != torch.float32
    rows = max(k, BLOCK_ELEMENTS // b)
    if cast or decode is not None:  # the float32 copy of a block: CAST_ROWS rows at most
        rows = max(k, min(rows, CAST_ROWS))
    rows = min(rows, n)
    need = b * rows + (rows * m if cast else 0)
    buf = _buffer(block, need, rows == n, codes.device)
    starts = list(range(0, n, rows))

    def scores(start: int, q: Tensor) -> Tensor:
        """Scores (len(q), rows) of queries q against the block at start, -inf where not
        allowed (added: a broadcast masked_fill costs ~10x a row add)."""
        stop = min(start + rows, n)
        c = _as_float(codes[start:stop], buf[b * rows :], decode)
        out = buf[: q.shape[0] * (stop - start)].view(q.shape[0], stop - start)
        torch.mm(q, c.T, out=out)
        out.mul_(inv[start:stop])
        mask = allowed[start:stop]
        if not bool(mask.all()):
            out.add_(torch.where(mask, 0.0, -math.inf))
        return out

    if k == 1:
        return _best(scores, starts, qs)
    values, slots = [], []
    for start in starts:
        out = scores(start, qs)
        v, i = _top(out, min(k, out.shape[1]))
        values.append(v)
        slots.append(i + start)
    if len(values) == 1:
        return slots[0]
    _, j = _top(torch.cat(values, dim=1), k)
    return torch.gather(torch.cat(slots, dim=1), 1, j)


def _best(scores: Callable[[int, Tensor], Tensor], starts: list[int], qs: Tensor) -> Tensor:
    """Slots (B, 1) of each query's best score over the blocks at `starts`: first each block's
    maximum alone (amax, ~15x cheaper than a max with its index), then each query's first
    block reaching its maximum scored again, for the queries it won alone, to find the slot
    (the first of equal maxima, as max gives)."""
    if len(starts) == 1:  # one block: its scores are all there is
        return _first_max(scores(starts[0], qs))[1]
    b = qs.shape[0]
    best = torch.empty(len(starts), b, dtype=torch.float32, device=qs.device)
    for j, start in enumerate(starts):
        torch.amax(scores(start, qs), dim=1, out=best[j])
    block_of = best.max(dim=0).indices  # (B,): the first block reaching each maximum
    slots = torch.empty(b, 1, dtype=torch.int64, device=qs.device)
    for j in torch.unique(block_of).tolist():
        who = torch.nonzero(block_of == j).squeeze(1)
        slots[who, 0] = _first_max(scores(starts[j], qs[who]))[1][:, 0] + starts[j]
    return slots


def _as_float(rows: Tensor, buf: Tensor, decode: Callable[[Tensor], Tensor] | None) -> Tensor:
    """A block of stored codes (r, width) as float32 (r, m): decoded (packed codes), as they
    are (float32), or cast into the front of buf (float16, int8)."""
    if decode is not None:
        return decode(rows)
    if rows.dtype == torch.float32:
        return rows
    r, m = rows.shape
    return buf[: r * m].view(r, m).copy_(rows)


def _buffer(block: list[Tensor], need: int, once: bool, device: torch.device) -> Tensor:
    if once:  # one block: a temporary, as large as this read needs
        return torch.empty(need, dtype=torch.float32, device=device)
    if not block or block[0].numel() < need:  # blocked: one buffer, kept for the next reads
        block[:] = [torch.empty(need, dtype=torch.float32, device=device)]
    return block[0]


def _single(
    q: Tensor,
    codes: Tensor,
    inv: Tensor,
    allowed: Tensor,
    k: int,
    block: list[Tensor],
    zero_free: bool,
    decode: Callable[[Tensor], Tensor] | None = None,
    dot: Dot | None = None,
    spread: float | None = None,
) -> Tensor:
    """One query (m,): over all slots (zero_free), int8, float16 and float32 codes on the CPU
    take one fused pass (model/onepass.py: the top 1, or the chunk maxima that hold the top
    k); otherwise every score into one (N,) vector, one product with the inverse norms, one
    top-k; (1, k) slots. There, float32 codes take one matrix-vector product; float16 and
    int8 are cast CAST_ROWS rows at a time into a buffer that stays in L2 and packed codes
    decoded CAST_ROWS rows at a time, unless `dot` scores them in one compiled pass
    (model/scan.py).

    With zero_free the free-slot mask is applied only when needed: a free slot scores exactly
    0 and cannot outrank an occupied slot of positive score, so the mask pass is skipped
    unless a free slot made the top k (then the top k is taken again, masked)."""
    n, m = codes.shape[0], q.shape[0]
    if zero_free and decode is None and _fused(codes):
        found = _fused_top(q, codes, inv, k, spread)
        if found is not None:
            slots = found.numpy()
            if allowed.numpy()[slots].all():  # else a free slot won
                return torch.from_numpy(slots.reshape(1, -1))
    scores = torch.empty(n, dtype=torch.float32, device=codes.device)
    if dot is not None:
        dot(codes, q, scores)
    elif decode is None and codes.dtype == torch.float32:
        torch.mv(codes, q, out=scores)
    else:
        rows = min(CAST_ROWS, n)
        cast = decode is None  # packed codes are decoded into new tensors: no buffer
        buf = _buffer(block, rows * m, rows == n, codes.device) if cast else scores[:0]
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            c = _as_float(codes[start:stop], buf, decode)
            torch.mv(c, q, out=scores[start:stop])
    scores.mul_(inv)
    if not zero_free:
        scores.masked_fill_(~allowed, -math.inf)
    _, cand = _top(scores.unsqueeze(0), k)
    if zero_free and not bool(allowed[cand].all()):
        scores.masked_fill_(~allowed, -math.inf)
        _, cand = _top(scores.unsqueeze(0), k)
    return cand


def _fused_top(
    q: Tensor, codes: Tensor, inv: Tensor, k: int, spread: float | None
) -> Tensor | None:
    """The top k slots (k,) of one query by model/onepass.py's scans, or None (a small bank,
    ties): int8 codes by the integer scan when this CPU has one (model/intscan.py, given the
    scales' spread), else the float scans (`best`, `top`)."""
    if spread is not None and codes.dtype == torch.int8:
        found = intscan.certified(codes, q, inv, k, spread)
        if found is not None:
            return found
    if k > 1:
        return onepass.top(codes, q, inv, k, COSINE_BOUND)
    slot, _ = onepass.best(codes, q, inv)
    return torch.from_numpy(np.array([slot], dtype=np.int64)) if slot >= 0 else None


def _fused(codes: Tensor) -> bool:
    """Whether model/onepass.py's kernel scans these codes (int8, float16, float32 on the CPU)."""
    return codes.device.type == "cpu" and codes.dtype in onepass.DTYPES and codes.is_contiguous()


def warm(codes: Tensor) -> None:
    """Compile model/onepass.py's kernels for these codes (int8: and model/intscan.py's) now,
    not in the first read."""
    if _fused(codes):
        m, stream = codes.shape[1], onepass.streams(codes)
        onepass.kernels(codes.dtype, m)  # a chunk's rescan (int8) or a small bank
        onepass.kernels(codes.dtype, m, stream)
        if codes.dtype == torch.int8:
            intscan.warm(m, stream)


def search(
    qn: Tensor,
    codes: Tensor,
    dequantise: Callable[[Tensor], Tensor],
    scales: Tensor | None,
    inv: Tensor,
    allowed: Tensor,
    k: int,
    min_score: float | None,
    block: list[Tensor],
    zero_free: bool = False,
    decode: Callable[[Tensor], Tensor] | None = None,
    dot: Dot | None = None,
    spread: float | None = None,
) -> tuple[Tensor, Tensor]:
    """The best k (<= N) allowed slots for unit queries qn (B, m), best first, ties by lower
    slot: (slots, scores), each (B, k); slot -1 and score 0 where there is no hit: the slot is
    not allowed, or its exact score is below min_score (those entries sort last). codes (N, m)
    are the stored codes, `dequantise` turns them into float32 codes (= stored * scales when
    scales is given); inv (N,) their inverse norms; allowed (N,) bool the occupied slots that
    may answer. zero_free: the slots not allowed are the free ones, and their inverse norms
    are zero. decode: for packed codes (N, width), the block dequantiser (= `dequantise`) the
    scan uses instead of a cast; dot(codes, q, out): one query's inner products with the
    stored codes (q . dequantised code for packed codes, qs . code for int8) into out (N,),
    which a single-query scan uses instead of casting or decoding blocks. spread: int8's
    `intscan.scale_spread(scales)`, which lets a single query over int8 codes take the integer
    scan (None: it does not)."""
    cpu = codes.device.type == "cpu"
    if scales is None:
        qs = qn
    else:  # on the CPU in numpy (see `_ranked_cpu`), the same float32 products
        qs = torch.from_numpy(qn.numpy() * scales.numpy()) if cpu else qn * scales
    cand = _candidates(qs, codes, inv, allowed, k, block, zero_free, decode, dot, spread)
    if cpu:
        if decode is None:  # = dequantise, in numpy: the same float32 values
            rows = codes.numpy()[cand.numpy().reshape(-1)].astype(np.float32)
            if scales is not None:
                rows *= scales.numpy()
        else:
            rows = dequantise(codes.index_select(0, cand.reshape(-1))).numpy()
        return _ranked_cpu(qn, cand, rows, allowed, min_score)
    found = dequantise(codes.index_select(0, cand.reshape(-1)))  # (B * k, m) float32
    return _ranked_torch(qn, cand, found, allowed, min_score)


def _ranked_torch(
    qn: Tensor, cand: Tensor, found: Tensor, allowed: Tensor, min_score: float | None
) -> tuple[Tensor, Tensor]:
    """`_ranked_cpu` in torch, in float32, on the candidates' device (found (B * k, m): their
    dequantised codes): the same answer, scores within float32 rounding. A cosine of unit rows
    can round past +-1 (1.0000001): clipped, so a score is always in [-1, 1]."""
    k = cand.shape[1]
    unit = unit_rows(found).view(*cand.shape, -1)  # (B, k, m)
    scores = (qn.unsqueeze(1) * unit).sum(dim=2).clamp_(-1.0, 1.0)  # (B, k)
    valid = allowed[cand]
    if min_score is not None:
        valid &= scores >= min_score
    if k > 1:  # best first, ties by lower slot: by slot, then stably by score, invalid last
        key = torch.where(valid, scores, -math.inf)
        by_slot = torch.argsort(cand, dim=1, stable=True)
        cand, key, valid = cand.gather(1, by_slot), key.gather(1, by_slot), valid.gather(1, by_slot)
        order = torch.argsort(key, dim=1, descending=True, stable=True)
        cand, scores, valid = cand.gather(1, order), key.gather(1, order), valid.gather(1, order)
    return torch.where(valid, cand, -1), torch.where(valid, scores, 0.0)


def _ranked_cpu(
    qn: Tensor, cand: Tensor, rows: np.ndarray, allowed: Tensor, min_score: float | None
) -> tuple[Tensor, Tensor]:
    """`search`'s answer on the CPU, in numpy: the exact score of each (query, candidate) pair
    (cand (B, k); rows (B * k, m) float32, their dequantised codes), in float64, where no
    float32 row's squares overflow or underflow, clipped to [-1, 1]; the order best first, ties
    by lower slot (one lexsort), invalid last. A single read runs these after a scan that has pushed
    torch's code and data out of cache (a torch call cost 20-80 us there, a numpy one a few);
    each pair's score depends on that pair only, so a batch answers exactly as single reads."""
    b, k = cand.shape
    slots = cand.numpy()
    wide = rows.astype(np.float64).reshape(b, k, -1)
    norm = np.sqrt(np.square(wide).sum(axis=2))  # (B, k)
    dots = (qn.numpy().astype(np.float64)[:, None, :] * wide).sum(axis=2)
    cos = np.divide(dots, norm, out=np.zeros_like(dots), where=norm > 0)  # zero codes score 0
    scores = np.clip(cos, -1.0, 1.0).astype(np.float32)
    valid = allowed.numpy()[slots]
    if min_score is not None:
        valid &= scores >= min_score
    if k > 1:
        order = np.lexsort((slots, -np.where(valid, scores, -np.inf)), axis=1)
        slots, scores, valid = (np.take_along_axis(x, order, 1) for x in (slots, scores, valid))
    hits = torch.from_numpy(np.where(valid, slots, -1))
    return hits, torch.from_numpy(np.where(valid, scores, np.float32(0.0)))


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
