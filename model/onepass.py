"""One query's best slots over the stored codes, in one pass at memory speed (LLVM IR kernels).

A single-query read scores every slot, `(q . code_i) * inv_i`, and keeps the best. torch does
that in three passes (a matrix-vector product into an (N,) vector, the product with the
inverse norms, the top-k), and numba's loop over slots stalls on the running maximum and on
one horizontal sum per slot. These kernels (their IR: model/kernel_ir.py) make one pass over
the stored codes and their inverse norms and keep only running maxima in registers:

- `best` (top 1): the first slot of the largest score, the answer of torch's `max`;
- `maxima` (CHUNK slots per maximum), for `top` (top k): the k-th largest chunk maximum is a
  score at least k slots reach, so the top k lie in the chunks reaching it, which `scores`
  (every slot's score, in slot order) scores again to rank them alone (a few thousand scores
  instead of N).

A scan larger than the CPU's last-level cache takes the stream prefetch hint (`streams`).

Measured at 1M x 16, one thread, on the 2-core Xeon, `best` alone: int8 0.77-0.86 ms against
a 0.67 ms one-pass `torch.sum` floor (numba's loop: 2.9 ms), float16 1.21 ms (floor 1.21),
float32 2.30 ms (floor 2.30); `top` of 3: int8 ~1.06 ms (numba's scores, the product with
the inverse norms and the chunked top-k: ~3.5 ms). Whole reads: bench/results/bank.md.

int8 codes of a CPU with AVX2 take an integer pass first (model/intscan.py), whose kernels
are built from model/kernel_ir.py's pieces too.

The kernels are compiled once per process and (dtype, m) (~20 ms) and called through ctypes,
which releases the GIL. The sums' order differs from torch's, so a score may differ in its
last bits: the kernel only finds the slot, whose returned score model/search.py recomputes
per pair. CPU tensors only.
"""

from __future__ import annotations

import ctypes
import functools
import math
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from model.kernel_ir import CHUNK, LANES, compile_ir, kernel_ir

__all__ = [
    "CHUNK",
    "DTYPES",
    "LANES",
    "MAXIMA_FN",
    "as_floats",
    "best",
    "kernels",
    "last_level_cache",
    "margin",
    "maxima",
    "streams",
    "top",
    "top_of_chunks",
    "tops_of_chunks",
    "torch_scores",
]

DEFAULT_CACHE = 32 << 20  # `last_level_cache` where the OS does not say
DTYPES = {torch.int8: "i8", torch.float16: "half", torch.float32: "float"}  # -> IR type
_LANES_OUT = threading.local()  # `_lanes`


class Kernels(NamedTuple):
    """One dtype and width's compiled scans (ctypes functions over raw pointers)."""

    best: Callable[[int, int, int, int, int, int], None]  # codes, inv, nb, q, values, slots
    best_in: Callable[..., None]  # the same, then chunks, nc: over those chunks alone
    maxima: Callable[[int, int, int, int, int], None]  # codes, inv, nb, q, chunk maxima
    scores_in: Callable[..., None]  # codes, inv, nb, q, out, chunks, nc: those chunks' scores
    engine: object  # llvmlite's execution engine: the machine code lives as long as it does


def best(
    codes: Tensor, q: Tensor, inv: Tensor, chunks: Sequence[int] | np.ndarray | None = None
) -> tuple[int, float]:
    """The first slot i with the largest (q . codes[i]) * inv[i], and that score, for codes
    (N, m) int8, float16 or float32 (contiguous, on the CPU), q (m,) and inv (N,) float32;
    (-1, -inf) when N is 0 (or no score beats -inf). chunks: among the slots of these
    CHUNK-slot chunks alone (ascending; model/intscan.py's and model/manyscan.py's rescans),
    in one kernel call (`best_in`): no slicing, one call however many chunks."""
    n, m = codes.shape
    if not codes.is_contiguous():
        raise ValueError("expected contiguous codes (the kernels read raw memory)")
    q, inv = as_floats(q), as_floats(inv)
    values, slots, out = _lanes()
    nb = n - n % LANES
    if chunks is None:
        values.fill(-np.inf)  # no step when N < LANES
        if nb:
            kernels(codes.dtype, m, streams(codes)).best(
                codes.data_ptr(), inv.data_ptr(), nb, q.data_ptr(), *out
            )
        tail = nb < n
    else:  # a few chunks, cache-resident: the cached bank's prefetch
        picked = np.ascontiguousarray(chunks, dtype=np.int64)
        tail = nb < n and picked.size > 0 and int(picked[-1]) == (n - 1) // CHUNK
        kernels(codes.dtype, m).best_in(
            codes.data_ptr(),
            inv.data_ptr(),
            nb,
            q.data_ptr(),
            *out,
            picked.ctypes.data,
            picked.size,
        )
    slot, value = -1, -math.inf
    lane_values = values.tolist()  # 16 Python floats: cheaper than numpy's reductions
    top = max(lane_values)
    if top > value:  # the first slot of the lanes' maximum: on a tie the lower slot wins
        slot = min(s for v, s in zip(lane_values, slots.tolist(), strict=True) if v == top)
        value = top
    if tail:  # the last N % LANES slots, strictly greater to replace
        v, i = torch_scores(codes[nb:], q, inv[nb:]).max(dim=0)
        if float(v) > value:
            slot, value = nb + int(i), float(v)
    return slot, value


def as_floats(t: Tensor) -> Tensor:
    """t as the kernels read it, float32 and contiguous (they read raw memory): t itself, with
    no torch call, when it already is (a single read's calls follow a scan that has pushed
    torch's code out of cache, where each cost tens of microseconds)."""
    if t.dtype == torch.float32 and t.is_contiguous():
        return t
    return t.to(torch.float32).contiguous()


def _lanes() -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """This thread's output buffers of `best` (LANES lane maxima and their slots) and their
    addresses: numpy, ~10x cheaper than torch at 16 elements, made once per thread (a read
    then pays no allocation and no ctypes address look-up, ~1 us each)."""
    lanes = getattr(_LANES_OUT, "lanes", None)
    if lanes is None:
        values = np.empty(LANES, dtype=np.float32)
        slots = np.empty(LANES, dtype=np.int64)
        lanes = _LANES_OUT.lanes = (values, slots, (values.ctypes.data, slots.ctypes.data))
    return lanes


def maxima(codes: Tensor, q: Tensor, inv: Tensor) -> Tensor:
    """The largest (q . codes[i]) * inv[i] of each CHUNK slots [c * CHUNK, (c + 1) * CHUNK),
    (ceil(N / CHUNK),) float32, in one pass (the last chunk may be shorter)."""
    n, m = codes.shape
    if not codes.is_contiguous():
        raise ValueError("expected contiguous codes (the kernels read raw memory)")
    q, inv = as_floats(q), as_floats(inv)
    nb = n - n % LANES
    out = torch.full((-(-n // CHUNK),), -math.inf, dtype=torch.float32)
    if nb:
        kernels(codes.dtype, m, streams(codes)).maxima(
            codes.data_ptr(), inv.data_ptr(), nb, q.data_ptr(), out.data_ptr()
        )
    if nb < n:  # the last N % LANES slots: in the last chunk
        out[-1] = max(float(out[-1]), float(torch_scores(codes[nb:], q, inv[nb:]).max()))
    return out


def top(codes: Tensor, q: Tensor, inv: Tensor, k: int, bound: float | None = None) -> Tensor | None:
    """The slots (k,) of the k largest (q . codes[i]) * inv[i], best first (ties: the lower
    slot first), for 1 < k and k * CHUNK well below N: the chunk maxima in one pass; the k-th
    largest of them is a score that at least k slots reach, so the top k lie in the chunks
    whose maximum reaches it, less the rounding `margin` (bound: as there; None: measured
    here, a pass over the codes), ranked alone by `top_of_chunks`. None when that selects
    more than a quarter of the bank (ties, free slots at 0): then one scan of every score is
    the cheaper way."""
    n, m = codes.shape
    if 4 * k * CHUNK > n:  # the chunks that hold the top k alone would exceed a quarter
        return None
    best_of = maxima(codes, q, inv).numpy()
    if bound is None:
        bound = float(q.norm() * (codes.to(torch.float32).norm(dim=1) * inv).max())
    kth = float(np.partition(best_of, -k)[-k])
    chunks = np.flatnonzero(best_of >= kth - margin(m, bound))
    if 4 * chunks.size * CHUNK > n:
        return None
    return top_of_chunks(codes, q, inv, chunks, k)


def margin(m: int, bound: float) -> float:
    """How far below the k-th largest chunk maximum a chunk's maximum may lie and still hold
    a top-k slot of another scan, for scores whose terms add up to at most bound in magnitude
    (sum_j |q_j c_ij| inv_i <= bound; 1 for the bank's cosines: unit queries times the
    scales, inv = 1 / |dequantised code|). Each scan's float32 score is within e = (m + 2)
    2^-24 bound of the exact one (m products and sums in any order, fused or not, then the
    product with inv), so two scans' scores of a slot differ by at most 2e and a slot the
    other scan ranks k-th or better scores at least 4e below this scan's k-th: the margin is
    (m + 4) 2^-22 bound. Chunks kept with it hold every slot `best` and `top_of_chunks`
    could answer, so manyscan's batches answer as onepass's single scans."""
    return bound * (m + 4) * 2.0**-22


def top_of_chunks(
    codes: Tensor, q: Tensor, inv: Tensor, chunks: np.ndarray | Tensor, k: int
) -> Tensor:
    """The k best slots (k,) of one query among the slots of these chunks (`tops_of_chunks`)."""
    picked = np.asarray(chunks, dtype=np.int64)
    return torch.from_numpy(tops_of_chunks(codes, q.unsqueeze(0), inv, [picked], k)[0])


def tops_of_chunks(
    codes: Tensor, qs: Tensor, inv: Tensor, picks: Sequence[np.ndarray], k: int
) -> np.ndarray:
    """The k best slots of each query (B, k) int64, best first, ties by lower slot, among the
    slots of its chunks (picks[b]: chunk indices): the scores `best` compares (the kernel's,
    chunk by chunk in place; the N % LANES tail by `torch_scores`), so a slot's score does not
    depend on which other chunks are ranked with it; per query its k-th largest score, then
    the slots reaching it in one lexsort over all queries.

    The queries' scores lie end to end in one buffer (as much as they kept, not B times the
    most any kept): a query whose top k is a memory copied across the bank keeps hundreds of
    chunks, and padding the others' rows to that width with -inf once cost 130-270 ms a batch
    of 16 (1M slots, 170 copies of 576 items, k = 3 or 32): numpy's partition of a row of
    mostly equal values is ~200x slower than of distinct ones."""
    n, m = codes.shape
    qs, inv = as_floats(qs), as_floats(inv)
    b = len(picks)
    picked = [np.ascontiguousarray(p, dtype=np.int64) for p in picks]
    sizes = np.array([p.size for p in picked], dtype=np.int64) * CHUNK  # scores per query
    ends = np.cumsum(sizes)
    starts = ends - sizes
    score = np.full(int(ends[-1]) if b else 0, -np.inf, dtype=np.float32)
    nb, last = n - n % LANES, (n - 1) // CHUNK
    scan = kernels(codes.dtype, m).scores_in
    at_codes, at_inv, at_q, at_out = (
        codes.data_ptr(),
        inv.data_ptr(),
        qs.data_ptr(),
        score.ctypes.data,
    )
    for j, chunks in enumerate(picked):  # one call per query: its chunks' scores, CHUNK apart
        at = int(starts[j])
        q_at, out_at = at_q + 4 * m * j, at_out + 4 * at
        scan(at_codes, at_inv, nb, q_at, out_at, chunks.ctypes.data, chunks.size)
        if nb < n and chunks.size and int(chunks[-1]) == last:  # the tail, in the last chunk
            at += (chunks.size - 1) * CHUNK + nb - last * CHUNK
            score[at : at + n - nb] = torch_scores(codes[nb:], qs[j], inv[nb:]).numpy()
    if b and bool((sizes == sizes[0]).all()):  # alike: one partition over the rows
        w = int(sizes[0])
        kth = np.partition(score.reshape(b, w), w - k, axis=1)[:, w - k]
    else:
        kth = np.array(
            [
                np.partition(score[s:e], e - s - k)[e - s - k]
                for s, e in zip(starts, ends, strict=True)
            ],
            dtype=np.float32,
        )
    pos = np.flatnonzero(score >= np.repeat(kth, sizes))
    who = np.searchsorted(ends, pos, side="right")  # the query of each score kept
    local = pos - starts[who]
    chunk = np.concatenate(picked)[starts[who] // CHUNK + local // CHUNK] if b else local
    slots, values = chunk * CHUNK + local % CHUNK, score[pos]
    order = np.lexsort((slots, -values, who))
    counts = np.bincount(who, minlength=b)
    first = np.cumsum(counts) - counts
    return slots[order[(first[:, None] + np.arange(k)).reshape(-1)]].reshape(b, k)


def torch_scores(codes: Tensor, q: Tensor, inv: Tensor) -> Tensor:
    """(q . codes[i]) * inv[i] in torch, for the few slots the kernels leave (the N % LANES
    tail, the chunks that may hold the top k)."""
    return (codes.to(torch.float32) @ q) * inv


def streams(codes: Tensor) -> bool:
    """Whether a scan of these codes (and their float32 inverse norms) takes the streaming
    prefetch (`kernel_ir.prefetch`): codes narrower than float32 (float32 has no software
    prefetch) whose bytes exceed the last-level cache, so that no read finds them cached
    anyway."""
    size = codes.element_size()
    return size < 4 and codes.shape[0] * (codes.shape[1] * size + 4) > last_level_cache()


@functools.cache
def last_level_cache() -> int:
    """Bytes of this CPU's largest cache, from sysfs (Linux); DEFAULT_CACHE where unreadable."""
    import pathlib

    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for f in pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=DEFAULT_CACHE)


@functools.cache
def kernels(dtype: torch.dtype, m: int, stream: bool = False) -> Kernels:
    """The compiled scans for codes of this dtype and width (cached: compiled once, ~20 ms);
    stream: with `kernel_ir.prefetch`'s non-temporal hint (`streams`)."""
    engine = compile_ir(kernel_ir(DTYPES[dtype], m, stream))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    best_fn = ctypes.CFUNCTYPE(None, ptr, ptr, i64, ptr, ptr, ptr)
    best_in_fn = ctypes.CFUNCTYPE(None, ptr, ptr, i64, ptr, ptr, ptr, ptr, i64)
    scores_in_fn = ctypes.CFUNCTYPE(None, ptr, ptr, i64, ptr, ptr, ptr, i64)
    return Kernels(
        best=best_fn(engine.get_function_address("best")),
        best_in=best_in_fn(engine.get_function_address("best_in")),
        maxima=MAXIMA_FN(engine.get_function_address("maxima")),
        scores_in=scores_in_fn(engine.get_function_address("scores_in")),
        engine=engine,
    )


MAXIMA_FN = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p
)
