"""Several queries' best slots in one pass over the stored codes (an LLVM IR kernel).

A read of B queries (the batches concurrent HTTP reads make) went through torch: per block of
slots a cast to float32, a (B, m) x (m, rows) matrix product, the product with the inverse
norms and a top-k. With m = 16 that product is thin and slow: at 100k slots a batch of 16 cost
more per query than 16 single reads (onepass's scan). This kernel reads each slot's code once
for W queries at a time (W = 8 or 16, one vector lane per query): every code element, widened
to float32, broadcast and multiplied (fused) with the vector of the W queries' matching
components, so a slot costs m fused multiply-adds for all W queries (the product's least
work, at one such vector instruction a cycle); times the slot's inverse norm; one maximum per
CHUNK slots and query. At 1M x 16 float32, one thread (Zen 4 EPYC): 16 queries in 5.6 ms,
0.35 ns a slot and query, against torch's 22.7 ms and 16 single reads' ~48 ms; 100k: 0.5 ms.

Then, per query, the chunks whose maximum is within the rounding `margin` of its largest (top
1) or k-th largest (top k), ranked by `onepass.tops_of_chunks` on the single scans' own scores
(first maximum: `onepass.best`'s slot). The margin covers both scans' rounding (their
sums run in different orders), so every slot the single scan could answer is among those
chunks and the answer is the single scan's, slot for slot: a batch answers as its queries read
one by one. Returned scores are recomputed per pair (model/search.py).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from model.kernel_ir import CHUNK, compile_ir
from model.onepass import DTYPES, as_floats, best, margin, tops_of_chunks

__all__ = ["MANY_MIN", "STEP", "groups", "many_ir", "maxima_many", "top_many", "widths"]

# The smallest batch `top_many` takes, by dtype: fewer queries are cheaper as single scans
# (model/onepass.py, model/intscan.py), which read float16 and int8 codes at 1-1.5 ns a slot
# against this kernel's ~3.4 ns for up to 8 queries (float32: ~3 ns a slot out of DRAM).
MANY_MIN = {torch.float32: 2, torch.float16: 4, torch.int8: 4}
STEP = 8  # slots per step: eight chains of m fused multiply-adds in flight
BLOCK = 64  # slots per block: widened into scratch (codes narrower than float32), summed
GROUP = 16  # dimensions per group of a block's multiply-adds (codes narrower than float32)
_NEG_INF = "0xFFF0000000000000"


class ManyKernel(NamedTuple):
    """One dtype, width and W's compiled scan (a ctypes function over raw pointers)."""

    maxima: Callable[[int, int, int, int, int, int], None]  # codes, inv, nb, qt, out, scratch
    engine: object  # llvmlite's execution engine: the machine code lives as long as it does


def many_ir(el: str, m: int, w: int) -> str:
    """LLVM IR of `many(codes, inv, nb, qt, out, scratch)`: slots [0, nb) (nb a multiple of
    STEP) of codes (nb, m) of IR type el against W queries, qt (m, W) float32 (row j: the
    queries' component j), out (ceil(nb / CHUNK), W): each chunk's largest score per query.

    BLOCK slots at a time. Codes narrower than float32 are first widened into scratch
    (BLOCK * m float32, in L1), which the multiply-adds read: taking lanes out of a widened
    vector instead (a permute per code) ran at half float32's speed. Their dimensions are then
    taken GROUP at a time (`groups`), the block's partial sums kept in scratch between groups,
    so a group's query vectors stay in registers (m = 48 and 64 int8: 3.0 -> 2.2 ms for 16
    queries over 100k slots); float32 codes, read in place, ran faster in one group."""
    vec = f"<{w} x float>"
    wide = el != "float"
    parts = groups(m) if wide else [list(range(m))]
    lines = [
        "entry:",
        f"  %acc = getelementptr float, ptr %scratch, i64 {BLOCK * m}",
        "  br label %chunk",
        "chunk:",
        "  %ch = phi i64 [0, %entry], [%ch1, %close]",
        f"  %lo = mul i64 %ch, {CHUNK}",
        f"  %hi0 = add i64 %lo, {CHUNK}",
        "  %cut = icmp slt i64 %nb, %hi0",
        "  %hi = select i1 %cut, i64 %nb, i64 %hi0",
        "  br label %block",
        "block:",
        "  %blo = phi i64 [%lo, %chunk], [%bhi, %bnext]",
        f"  %bvb = phi {vec} [splat (float {_NEG_INF}), %chunk], [%bvb1, %bnext]",
        f"  %bhi0 = add i64 %blo, {BLOCK}",
        "  %bcut = icmp slt i64 %hi, %bhi0",
        "  %bhi = select i1 %bcut, i64 %hi, i64 %bhi0",
        f"  br label %{'widen' if wide else 'g0pre'}",
    ]
    if wide:
        lines += _widen_ir(el, m)
    last = len(parts) - 1
    for g, dims in enumerate(parts):
        lines += _group_ir(g, dims, g == last, m, w, wide)
    lines += [
        "bnext:",
        f"  %bvb1 = phi {vec} [%g{last}bvn, %g{last}]",
        "  %bagain = icmp slt i64 %bhi, %hi",
        "  br i1 %bagain, label %block, label %close",
        "close:",
        f"  %mo = mul i64 %ch, {w}",
        "  %mp = getelementptr float, ptr %om, i64 %mo",
        f"  store {vec} %bvb1, ptr %mp, align 4",
        "  %ch1 = add nuw nsw i64 %ch, 1",
        "  %again = icmp slt i64 %hi, %nb",
        "  br i1 %again, label %chunk, label %exit",
        "exit:",
        "  ret void",
    ]
    body = "\n".join(lines)
    return f"""
define void @many(ptr noalias %codes, ptr noalias %inv, i64 %nb, ptr noalias %qt,
                  ptr noalias %om, ptr noalias %scratch) {{
{body}
}}

declare {vec} @llvm.fma.v{w}f32({vec}, {vec}, {vec})
declare {vec} @llvm.maxnum.v{w}f32({vec}, {vec})
"""


def _widen_ir(el: str, m: int) -> list[str]:
    """`many`'s block widening: the block's codes [%blo, %bhi) as float32 rows in scratch."""
    cast = "sitofp" if el == "i8" else "fpext"
    return [
        "widen:",
        "  %u = phi i64 [%blo, %block], [%u1, %widen]",
        f"  %uo = mul i64 %u, {m}",
        f"  %up = getelementptr {el}, ptr %codes, i64 %uo",
        f"  %uv = load <{m} x {el}>, ptr %up, align 1",
        f"  %uf = {cast} <{m} x {el}> %uv to <{m} x float>",
        "  %ur = sub i64 %u, %blo",
        f"  %uro = mul i64 %ur, {m}",
        "  %uq = getelementptr float, ptr %scratch, i64 %uro",
        f"  store <{m} x float> %uf, ptr %uq, align 4",
        "  %u1 = add nuw nsw i64 %u, 1",
        "  %umore = icmp slt i64 %u1, %bhi",
        "  br i1 %umore, label %widen, label %g0pre",
    ]


def _group_ir(g: int, dims: list[int], last: bool, m: int, w: int, wide: bool) -> list[str]:
    """`many`'s loop over the block's steps for dimension group g (`dims`): its query vectors
    loaded once, then per slot of the step the sums of the groups before (from scratch, g > 0),
    one multiply-add per dimension, and the sums stored back, or, in the last group, times the
    inverse norm into the tree of maxima that ends in %g{g}bvn."""
    vec, p = f"<{w} x float>", f"g{g}"
    fma = f"@llvm.fma.v{w}f32"
    lines = [f"{p}pre:"]
    for j in dims:
        lines += [
            f"  %{p}qp{j} = getelementptr float, ptr %qt, i64 {j * w}",
            f"  %{p}qt{j} = load {vec}, ptr %{p}qp{j}, align 4",
        ]
    lines += [f"  br label %{p}", f"{p}:", f"  %{p}i = phi i64 [%blo, %{p}pre], [%{p}i1, %{p}]"]
    if last:
        lines.append(f"  %{p}bv = phi {vec} [%bvb, %{p}pre], [%{p}bvn, %{p}]")
    scores = []
    for t in range(STEP):
        x = f"%{p}_{t}"
        lines += [f"  {x}s = add i64 %{p}i, {t}", f"  {x}r = sub i64 {x}s, %blo"]
        # the slot's place: in scratch (widened) or in the codes
        lines.append(f"  {x}o = mul i64 {x}r, {m}" if wide else f"  {x}o = mul i64 {x}s, {m}")
        lines += [
            f"  {x}ep = getelementptr float, ptr {'%scratch' if wide else '%codes'}, i64 {x}o",
            f"  {x}ao = mul i64 {x}r, {w}",
            f"  {x}ap = getelementptr float, ptr %acc, i64 {x}ao",
        ]
        acc = ""
        if g > 0:  # the sums of the groups before
            lines.append(f"  {x}a0 = load {vec}, ptr {x}ap, align 4")
            acc = f"{x}a0"
        for j in dims:  # a scalar load: the multiply-add's broadcast operand
            n = f"{x}_{j}"
            lines += [
                f"  {n}eq = getelementptr float, ptr {x}ep, i64 {j}",
                f"  {n}e = load float, ptr {n}eq, align 4",
                *_splat(f"{n}i", f"{n}b", f"{n}e", w),
                f"  {n}a = call {vec} {fma}({vec} {n}b, {vec} %{p}qt{j}, {vec} {acc})"
                if acc
                else f"  {n}a = fmul {vec} {n}b, %{p}qt{j}",
            ]
            acc = f"{n}a"
        if not last:
            lines.append(f"  store {vec} {acc}, ptr {x}ap, align 4")
            continue
        lines += [
            f"  {x}vp = getelementptr float, ptr %inv, i64 {x}s",
            f"  {x}vs = load float, ptr {x}vp, align 4",
            *_splat(f"{x}vi", f"{x}vb", f"{x}vs", w),
            f"  {x}x = fmul {vec} {acc}, {x}vb",
        ]
        scores.append(f"{x}x")
    if last:  # a tree of maxima, the running one last
        names, level = [*scores, f"%{p}bv"], 0
        while len(names) > 1:
            nxt = []
            for a in range(0, len(names) - 1, 2):
                name = f"%{p}mx{level}_{a}" if len(names) > 2 else f"%{p}bvn"
                lines.append(
                    f"  {name} = call {vec} @llvm.maxnum.v{w}f32({vec} {names[a]}, "
                    f"{vec} {names[a + 1]})"
                )
                nxt.append(name)
            names, level = nxt + names[len(names) - len(names) % 2 :], level + 1
    lines += [
        f"  %{p}i1 = add nuw nsw i64 %{p}i, {STEP}",
        f"  %{p}more = icmp slt i64 %{p}i1, %bhi",
        f"  br i1 %{p}more, label %{p}, label %{'bnext' if last else f'g{g + 1}pre'}",
    ]
    return lines


def _splat(inserted: str, name: str, value: str, w: int) -> list[str]:
    """name = the float value in all w lanes (insert, then a zero-mask shuffle: a broadcast)."""
    vec = f"<{w} x float>"
    return [
        f"  {inserted} = insertelement {vec} poison, float {value}, i64 0",
        f"  {name} = shufflevector {vec} {inserted}, {vec} poison, <{w} x i32> zeroinitializer",
    ]


def groups(m: int) -> list[list[int]]:
    """The dimensions of codes narrower than float32, GROUP at a time (up to 1.5 GROUP: one)."""
    if m <= GROUP + GROUP // 2:
        return [list(range(m))]
    return [list(range(a, min(a + GROUP, m))) for a in range(0, m, GROUP)]


@functools.cache
def kernel(dtype: torch.dtype, m: int, w: int) -> ManyKernel:
    """The compiled `many` for codes of this dtype and width and W = w queries (cached)."""
    engine = compile_ir(many_ir(DTYPES[dtype], m, w))
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    fn = ctypes.CFUNCTYPE(None, ptr, ptr, i64, ptr, ptr, ptr)(engine.get_function_address("many"))
    return ManyKernel(maxima=fn, engine=engine)


def widths(b: int) -> list[int]:
    """The query groups of a batch of b: 16 at a time, the last 8 when 8 or fewer remain."""
    out = []
    while b > 0:
        w = 8 if b <= 8 else 16
        out.append(w)
        b -= w
    return out


def maxima_many(codes: Tensor, qs: Tensor, inv: Tensor) -> np.ndarray:
    """The largest (qs[b] . codes[i]) * inv[i] of each CHUNK slots and query, (ceil(N /
    CHUNK), B) float32, in one pass per group of 8 or 16 queries (`widths`)."""
    n, m = codes.shape
    if not codes.is_contiguous():
        raise ValueError("expected contiguous codes (the kernels read raw memory)")
    inv = as_floats(inv)
    q = qs.numpy().astype(np.float32)
    b = q.shape[0]
    nb = n - n % STEP
    chunks = -(-n // CHUNK)
    out = np.full((chunks, b), -np.inf, dtype=np.float32)
    scratch = np.empty(BLOCK * (m + 16), dtype=np.float32)  # widened codes, partial sums
    at = 0
    for w in widths(b):
        part = q[at : at + w]
        qt = np.zeros((m, w), dtype=np.float32)
        qt[:, : part.shape[0]] = part.T
        # -inf where the kernel writes nothing: a last chunk holding only the N % STEP tail
        got = np.full((chunks, w), -np.inf, dtype=np.float32)
        if nb:
            kernel(codes.dtype, m, w).maxima(
                codes.data_ptr(),
                inv.data_ptr(),
                nb,
                qt.ctypes.data,
                got.ctypes.data,
                scratch.ctypes.data,
            )
        out[:, at : at + part.shape[0]] = got[:, : part.shape[0]]
        at += w
    if nb < n:  # the last N % STEP slots: in the last chunk
        tail = (codes[nb:].to(torch.float32) @ qs.T) * inv[nb:].unsqueeze(1)  # (tail, B)
        out[-1] = np.maximum(out[-1], tail.amax(dim=0).numpy())
    return out


def top_many(codes: Tensor, qs: Tensor, inv: Tensor, k: int, bound: float) -> Tensor | None:
    """The slots (B, k) of each query's k largest (qs[b] . codes[i]) * inv[i], best first:
    exactly what B single reads answer (`onepass.best` for k = 1, `onepass.top` for k > 1),
    since the chunks kept reach the best (k = 1) or k-th best chunk maximum less the rounding
    `margin` (bound: as there) and are ranked on the single scans' scores. A query whose top k
    would need more than a quarter of the bank scored again (ties: an item copied across the
    bank, free slots at 0) gets a row of -1, for the caller to read alone; None when every
    query does, or when k * CHUNK is near N."""
    n, m = codes.shape
    if k > 1 and 4 * k * CHUNK > n:
        return None
    tops = maxima_many(codes, qs, inv)  # (chunks, B)
    if k == 1:
        kth = tops.max(axis=0)
    else:
        kth = np.partition(tops, tops.shape[0] - k, axis=0)[tops.shape[0] - k]
    floor = (kth - margin(m, bound))[:, None]  # (B, 1)
    keep = np.greater_equal(tops.T, floor)  # (B, chunks): may hold a top-k slot
    ok = 4 * keep.sum(axis=1) * CHUNK <= n  # (B,): the others would rescan most of the bank
    if not ok.any():
        return None
    out = np.full((len(keep), k), -1, dtype=np.int64)
    picks = [np.flatnonzero(row) for row in keep[ok]]
    if k > 1:
        out[ok] = tops_of_chunks(codes, qs[torch.from_numpy(ok)], inv, picks, k)
        return torch.from_numpy(out)
    for j, chunks in zip(np.flatnonzero(ok), picks, strict=True):  # one `best_in` call each
        out[j, 0], _ = best(codes, qs[j], inv, chunks)
    return torch.from_numpy(out)
