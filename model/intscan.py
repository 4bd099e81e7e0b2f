"""int8 single reads in integer arithmetic, exact by a proven margin (LLVM IR kernels).

model/onepass.py's float scan of int8 codes widens every code to float32, and on a CPU with
AVX2 that widening, not memory, is its limit. This pass scores the stored bytes against the
query rounded to int16, in exact int32 sums, keeping one maximum per CHUNK slots:

- AVX-512 VNNI: vpdpbusd adds four byte products per 32-bit word (the codes, + 128 by an xor,
  as its unsigned operand; the query split into two signed bytes, Q = 256 hi + lo; the + 128
  taken off once per slot as 128 * sum Q), m = 4, 8, 16, 32, 64, 128 or 192;
- AVX2: pmaddwd on 16 dimensions at a time (codes sign-extended to int16), m a multiple of
  16 up to 512; other CPUs and widths keep the float scans (`int_scan` says which).

Then the chunks whose integer maximum is within twice the rounding's proven bound of the k-th
best are scanned again by the float kernels (`best`, top 1; `top_of_chunks`, top k), so the
answer is the float scan's, slot for slot (`certified`). At 1M x 16 on a Zen 4 EPYC (VNNI), one
thread: the integer pass 0.46-0.55 ms, onepass's `best` 0.91-0.95 ms, the one-pass floor of
the same bytes 0.28-0.35 ms (the L3's bandwidth there).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from model.kernel_ir import (
    CHUNK,
    FMAX_DECL,
    LANE_FLOATS,
    LANES,
    PREFETCH_DECL,
    compile_ir,
    join_ir,
    keep_best,
    maxima_ir,
    shuffle,
    tree,
    word_slots,
    words_layout,
)
from model.onepass import MAXIMA_FN, as_floats, best, streams, top_of_chunks, torch_scores

__all__ = [
    "Q_MAX",
    "certified",
    "int_kernel",
    "int_kernel_ir",
    "int_scan",
    "scale_spread",
    "vnni_kernel_ir",
    "warm",
]

_QUERIES = threading.local()  # `_query_buffer`

Q_MAX = 32639  # the largest |int16 query| of `certified`: 256 hi + lo with hi, lo signed bytes


def scale_spread(scales: Tensor) -> float:
    """sqrt(sum 1 / s^2) of int8 scales s (m,): the bound of `certified`'s rounding error."""
    s = scales.detach().cpu().numpy().astype(np.float64)
    return float(np.sqrt(np.sum(1.0 / (s * s))))


def warm(m: int, stream: bool = False) -> None:
    """Compile this CPU's integer scan for int8 codes of width m now, not in the first read
    (stream: the one for banks larger than the last-level cache, `onepass.streams`)."""
    scan = int_scan(m)
    if scan is not None:
        int_kernel(m, scan, stream)


def int_scan(m: int) -> str | None:
    """Which integer scan `certified` runs for int8 codes of width m on this CPU: "vnni"
    (AVX-512 VNNI; m = 4, 8, 16, 32, 64, 128 or 192), "avx2" (pmaddwd; m a multiple of 16 up
    to 512), or None. The bounds keep the int32 sums from overflowing."""
    have = _features()
    if {"avx512bw", "avx512vnni"} <= set(have) and words_layout("i8", m) and m <= 192:
        return "vnni"
    if "avx2" in have and m % 16 == 0 and m <= 512:
        return "avx2"
    return None


@functools.cache
def _features() -> tuple[str, ...]:
    """The host CPU's features that the integer scans use (cached: asked once)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    have = llvm.get_host_cpu_features()
    return tuple(f for f in ("avx2", "avx512bw", "avx512vnni") if have.get(f, False))


def certified(
    codes: Tensor, q: Tensor, inv: Tensor, k: int, spread: float, scan: str | None = None
) -> Tensor | None:
    """The slots (k,) of the k largest (q . codes[i]) * inv[i], best first (k = 1: the first
    maximum), for int8 codes (N, m) that `int_scan(m)` takes, q (m,) float32 = the unit query
    times the scales s, spread = `scale_spread(s)`: chunk maxima in one integer pass, then
    the chunks that can hold the top k scanned again in float32 (`best` for k = 1, torch's
    scores as `top` for k > 1).

    The pass scores S * q rounded to int16 (S = Q_MAX / max |q|, in the kernel): exact int32
    sums, off from S times the float score by at most M = 0.505 spread (|round error| <= 1/2
    per dimension, + 0.002 for the float32 product S * q, and sum |c_d| * inv <= spread,
    Cauchy-Schwarz) plus float rounding. A chunk whose integer maximum is more than 2M (+ the
    float32 score's own rounding) below the k-th largest chunk maximum cannot hold a top-k
    slot, so the answer is exactly the float32 scan's.
    None when that leaves more than a quarter of the bank to score (ties, a zero query), or
    when this CPU has no integer scan for m (`int_scan`; scan: force "vnni" or "avx2")."""
    n, m = codes.shape
    scan = scan or int_scan(m)
    if 4 * k * CHUNK > n or scan is None:
        return None
    if not codes.is_contiguous():
        raise ValueError("expected contiguous codes (the kernels read raw memory)")
    q, inv = as_floats(q), as_floats(inv)
    qbuf, address = _query_buffer(m)
    qbuf[:m] = q.numpy()
    nb = n - n % LANES
    out = np.full(-(-n // CHUNK), -np.inf, dtype=np.float32)  # numpy: cheaper calls than torch
    maxima_fn, _ = int_kernel(m, scan, streams(codes))
    maxima_fn(codes.data_ptr(), inv.data_ptr(), nb, address, out.ctypes.data)
    scale = float(qbuf[m])  # the kernel's S (float32); a zero query: 2^100 Q_MAX, all chunks tie
    if nb < n:  # the last N % LANES slots, in float32 (within the margin of their S * score)
        tail = float(torch_scores(codes[nb:], q, inv[nb:]).max()) * scale
        out[-1] = max(float(out[-1]), tail)
    # |integer score - S * score| <= M, and the float32 scores are off by at most (m + 2)
    # 2^-24 (bounded here with room to spare: (m + 4) 2^-23)
    rounding = 2.0**-22 * (scale + spread)
    margin = 2.0 * (0.505 * spread + rounding) + 2.0 * scale * (m + 4) * 2.0**-23
    kth = float(np.partition(out, -k)[-k]) if k > 1 else float(out.max())
    chunks = np.flatnonzero(out >= kth - margin)
    if 4 * chunks.size * CHUNK > n:
        return None
    if k == 1:  # `best` over those chunks: exactly its answer over the whole bank
        slot, _ = best(codes, q, inv, chunks.tolist())
        return torch.from_numpy(np.array([slot], dtype=np.int64)) if slot >= 0 else None
    return top_of_chunks(codes, q, inv, chunks, k)


def _query_buffer(m: int) -> tuple[np.ndarray, int]:
    """This thread's query buffer of the integer scans (m floats in, the kernel's S out at
    [m]) and its address, made once per thread and width."""
    buffers = _QUERIES.__dict__.setdefault("queries", {})
    found = buffers.get(m)
    if found is None:
        buf = np.zeros(m + 1, dtype=np.float32)
        found = buffers[m] = (buf, buf.ctypes.data)
    return found


@functools.cache
def int_kernel(
    m: int, scan: str, stream: bool = False
) -> tuple[Callable[[int, int, int, int, int], None], object]:
    """The compiled `imaxima` of this integer scan ("vnni", "avx2") for width m, and its
    engine (the machine code lives as long as it does); stream: `kernel_ir.prefetch`'s
    non-temporal hint."""
    engine = compile_ir(vnni_kernel_ir(m, stream) if scan == "vnni" else int_kernel_ir(m, stream))
    return MAXIMA_FN(engine.get_function_address("imaxima")), engine


def int_kernel_ir(m: int, stream: bool = False) -> str:
    """LLVM IR of `imaxima(codes, inv, nb, q, out)`: `maxima` for int8 codes against a query
    quantised to int16 (m of them at q, m a multiple of 16): each slot's 16 codes at a time
    sign-extended to int16 and multiplied by pmaddwd (pairs of products added, exact in
    int32), the 8 pair sums of two slots side by side in one vector, the tree in int32, then
    each slot's sum as float times its inverse norm."""
    g16 = m // 16
    prelude = [*_int_query(m), f"%qw = trunc <{m} x i32> %qi to <{m} x i16>"]
    for g in range(g16):
        dims = list(range(16 * g, 16 * g + 16))
        prelude.append(shuffle(f"%q{g}", "%qw", "poison", dims, m, "i16"))
    lines: list[str] = []
    sums = []
    for t in range(LANES):
        acc = ""
        for g in range(g16):
            n = f"{t}_{g}"
            lines += [
                f"%o{n} = add i64 %base, {t * m + 16 * g}",
                f"%p{n} = getelementptr i8, ptr %codes, i64 %o{n}",
                f"%c{n} = load <16 x i8>, ptr %p{n}, align 1",
                f"%cw{n} = sext <16 x i8> %c{n} to <16 x i16>",
                f"%pm{n} = call <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16> %cw{n}, "
                f"<16 x i16> %q{g})",
            ]
            if acc:
                lines.append(f"%pa{n} = add <8 x i32> {acc}, %pm{n}")
                acc = f"%pa{n}"
            else:
                acc = f"%pm{n}"
        sums.append(acc)
    vecs = []
    for t in range(0, LANES, 2):  # two slots' 8 pair sums side by side
        both = shuffle(f"%pp{t}", sums[t], sums[t + 1], list(range(16)), 8, "i32")
        lines.append(both)
        vecs.append((f"%pp{t}", [t] * 8 + [t + 1] * 8, 8))
    total, order = tree(lines, vecs, "i32")
    lines.append(f"%tf = sitofp <{LANES} x i32> {total} to {LANE_FLOATS}")
    keep_best(lines, "%tf", order)
    pre, step = join_ir(prelude, lines, m, 1, stream)
    pmadd = "declare <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16>, <16 x i16>)\n"
    return maxima_ir(pre, step, "imaxima") + _int_declarations(m) + pmadd


_DPBUSD = "@llvm.x86.avx512.vpdpbusd.512"


def vnni_kernel_ir(m: int, stream: bool = False) -> str:
    """LLVM IR of `imaxima` on AVX-512 VNNI: the codes read as 32-bit words (`words_layout`'s
    layout: 16 words, 64 codes, per vector), each byte + 128 (an xor) as the unsigned operand
    of vpdpbusd, which adds 4 byte products per word into int32, against the query's int16
    split into two signed bytes Q = 256 hi + lo; then 256 * (codes . hi) + codes . lo, less
    128 * sum Q (the +128), is codes . Q exactly."""
    r = m // 4
    per_slot = max(r // LANES, 1)
    lane_span = min(r, LANES)
    prelude = _split_query(m, per_slot, lane_span)
    lines: list[str] = []
    for g in range(r):  # the step's r vectors of 16 words, each byte + 128 (an unsigned byte)
        lines += [
            f"%wo{g} = add i64 %base, {g * 64}",
            f"%wp{g} = getelementptr i8, ptr %codes, i64 %wo{g}",
            f"%w{g} = load <16 x i32>, ptr %wp{g}, align 1",
            f"%u{g} = xor <16 x i32> %w{g}, splat (i32 -2139062144)",  # 0x80808080
        ]
    if r == 4:
        total, order = _transposed_sums(prelude, lines)
    else:
        total, order = _tree_sums(r, per_slot, lane_span, lines)
    lines.append(f"%tf = sitofp <{LANES} x i32> {total} to {LANE_FLOATS}")
    keep_best(lines, "%tf", order)
    pre, step = join_ir(prelude, lines, m, 1, stream)
    dpbusd = f"declare <16 x i32> {_DPBUSD}(<16 x i32>, <16 x i32>, <16 x i32>)\n"
    return maxima_ir(pre, step, "imaxima") + _int_declarations(m) + dpbusd


def _tree_sums(r: int, per_slot: int, lane_span: int, lines: list[str]) -> tuple[str, list[int]]:
    """The step's LANES slot sums codes . Q when each vector of words (%u{g}, bytes + 128)
    holds LANES // r slots: per vector 256 * (codes . hi) + codes . lo, then `tree` over the
    slots' lanes, less the + 128's 128 sum Q. Returns the sums' vector and its lane -> slot
    order."""
    partial = []
    for g in range(r):
        v = g % per_slot
        lines += [
            f"%h{g} = call <16 x i32> {_DPBUSD}(<16 x i32> zeroinitializer, <16 x i32> %u{g}, "
            f"<16 x i32> %qh{v})",
            f"%hs{g} = shl <16 x i32> %h{g}, splat (i32 8)",
            f"%d{g} = call <16 x i32> {_DPBUSD}(<16 x i32> %hs{g}, <16 x i32> %u{g}, "
            f"<16 x i32> %ql{v})",
        ]
        partial.append(f"%d{g}")
    vecs = word_slots(lines, partial, per_slot, lane_span, "add <16 x i32>")
    total, order = tree(lines, vecs, "i32")
    lines.append(f"%tc = sub <{LANES} x i32> {total}, %cv")
    return "%tc", order


def _transposed_sums(prelude: list[str], lines: list[str]) -> tuple[str, list[int]]:
    """`_tree_sums` for m = 16 (4 words a slot, 4 slots a vector, one per 128-bit lane),
    without the tree: a 4 x 4 transpose of words inside each 128-bit lane (8 unpack shuffles)
    puts word w of 16 slots in vector T_w, so vpdpbusd against word w of the query, chained
    over w, sums each slot in one lane: 8 products, 8 shuffles, 1 shift and 1 add a step where
    the tree took 8, 6, 4 and 4 (3 adds and the + 128's correction, which here is where the lo
    chain starts). Two chains, hi and lo, so the latency of one step is 4 products, not 8.
    Lane 4s + v holds slot 4v + s. Zen 4 EPYC, interleaved with the tree's kernel, p25 of 40:
    100k slots 0.478 -> 0.438 ns a slot, 1M 0.575 -> 0.504; the chunk maxima are equal."""
    for w in range(4):
        for name in ("h", "l"):
            picks = [4 * w + k for k in range(4)] * LANES
            prelude += [
                shuffle(f"%qb{name}{w}", f"%q{name}b", "poison", picks, 16, "i8"),
                f"%qw{name}{w} = bitcast <64 x i8> %qb{name}{w} to <16 x i32>",
            ]

    def unpack(pairs: tuple[int, int, int, int], lane: int) -> list[int]:
        return [lane * 4 + x if x < 4 else 16 + lane * 4 + x - 4 for x in pairs]

    lo_d, hi_d, lo_q, hi_q = (0, 4, 1, 5), (2, 6, 3, 7), (0, 1, 4, 5), (2, 3, 6, 7)
    step1 = [("%t0", "%u0", "%u1", lo_d), ("%t1", "%u0", "%u1", hi_d)]
    step1 += [("%t2", "%u2", "%u3", lo_d), ("%t3", "%u2", "%u3", hi_d)]
    step2 = [("%v0", "%t0", "%t2", lo_q), ("%v1", "%t0", "%t2", hi_q)]
    step2 += [("%v2", "%t1", "%t3", lo_q), ("%v3", "%t1", "%t3", hi_q)]
    for name, a, b, pick in step1 + step2:
        mask = [x for lane in range(4) for x in unpack(pick, lane)]
        lines.append(shuffle(name, a, b, mask, 16, "i32"))
    prelude.append("%ncv = sub <16 x i32> zeroinitializer, %cv")
    for name, acc in (("h", "zeroinitializer"), ("l", "%ncv")):
        for w in range(4):
            lines.append(
                f"%a{name}{w} = call <16 x i32> {_DPBUSD}(<16 x i32> {acc}, <16 x i32> %v{w}, "
                f"<16 x i32> %qw{name}{w})"
            )
            acc = f"%a{name}{w}"
    lines += [
        "%hs = shl <16 x i32> %ah3, splat (i32 8)",
        "%tq = add <16 x i32> %hs, %al3",
    ]
    return "%tq", [4 * (j % 4) + j // 4 for j in range(LANES)]


def _split_query(m: int, per_slot: int, lane_span: int) -> list[str]:
    """`vnni_kernel_ir`'s prelude: the int16 query (`_int_query`) as signed bytes hi and lo
    (Q = 256 hi + lo), laid out as the codes' words (word w of a slot's vector v holds
    dimensions 4 * (16 v + w % lane_span) + 0..3): %qh{v}, %ql{v}; and %cv, the splat of
    128 * sum Q that the codes' + 128 adds."""
    vi, vb = f"<{m} x i32>", f"<{m} x i8>"
    prelude = [
        *_int_query(m),
        f"%qz1 = add {vi} %qi, splat (i32 128)",
        f"%qz2 = and {vi} %qz1, splat (i32 255)",
        f"%qlo = sub {vi} %qz2, splat (i32 128)",
        f"%qhd = sub {vi} %qi, %qlo",
        f"%qhi = ashr {vi} %qhd, splat (i32 8)",
        f"%qhb = trunc {vi} %qhi to {vb}",
        f"%qlb = trunc {vi} %qlo to {vb}",
    ]
    for v in range(per_slot):
        dims = [4 * (v * LANES + w % lane_span) + k for w in range(LANES) for k in range(4)]
        for name in ("h", "l"):
            prelude += [
                shuffle(f"%q{name}{v}b", f"%q{name}b", "poison", dims, m, "i8"),
                f"%q{name}{v} = bitcast <64 x i8> %q{name}{v}b to <16 x i32>",
            ]
    return [
        *prelude,
        f"%qsum = call i32 @llvm.vector.reduce.add.v{m}i32({vi} %qi)",
        "%corr = mul i32 %qsum, 128",
        "%cv0 = insertelement <16 x i32> poison, i32 %corr, i32 0",
        "%cv = shufflevector <16 x i32> %cv0, <16 x i32> poison, <16 x i32> zeroinitializer",
    ]


def _int_query(m: int) -> list[str]:
    """The integer scans' prelude: the float query (m at q) times S = Q_MAX / max |q|,
    rounded half to even, as int32 %qi; S stored at q[m] for the caller's margin. A zero
    query takes S = Q_MAX * 2^100 and rounds to zeros."""
    v, sp = f"<{m} x float>", f"<{m} x i32> zeroinitializer"
    return [
        f"%qv = load {v}, ptr %q, align 4",
        f"%qa = call {v} @llvm.fabs.v{m}f32({v} %qv)",
        f"%pk0 = call float @llvm.vector.reduce.fmax.v{m}f32({v} %qa)",
        "%pk = call float @llvm.maxnum.f32(float %pk0, float 0x39B0000000000000)",  # 2^-100
        f"%sc = fdiv float {Q_MAX}.0, %pk",
        f"%scp = getelementptr float, ptr %q, i64 {m}",
        "store float %sc, ptr %scp, align 4",
        f"%sc0 = insertelement {v} poison, float %sc, i32 0",
        f"%scv = shufflevector {v} %sc0, {v} poison, {sp}",
        f"%qm = fmul {v} %qv, %scv",
        f"%qr = call {v} @llvm.rint.v{m}f32({v} %qm)",
        f"%qi = fptosi {v} %qr to <{m} x i32>",
    ]


def _int_declarations(m: int) -> str:
    """The intrinsics `_int_query` and the chunk maxima call (fmax over m and LANES floats)."""
    v = f"<{m} x float>"
    lines = {
        FMAX_DECL.strip(),
        PREFETCH_DECL.strip(),
        f"declare float @llvm.vector.reduce.fmax.v{m}f32({v})",
        f"declare {v} @llvm.fabs.v{m}f32({v})",
        f"declare {v} @llvm.rint.v{m}f32({v})",
        "declare float @llvm.maxnum.f32(float, float)",
        f"declare i32 @llvm.vector.reduce.add.v{m}i32(<{m} x i32>)",
    }
    return "\n" + "\n".join(sorted(lines)) + "\n"
