"""The LLVM IR of the single-query scans (model/onepass.py, model/intscan.py), as text.

A scan's step takes LANES slots at a time and ends with their LANES scores, times the slots'
inverse norms, in one vector; `best` keeps each lane's running maximum and its slot, `maxima`
one maximum per CHUNK slots. How a step is laid out:

- each slot's m products in a vector, then a transpose-and-add tree of shuffles (`tree`) that
  turns the LANES product vectors into one vector of LANES sums (15 adds, no horizontal sum
  per slot); float16 and float32 codes with m a multiple of 16 are read two slots at a time
  as halves of 8 codes (`_pair_products`), so the loads make the tree's first level: at 100k
  x 16 (cache-resident), 1.17 -> 0.97 ns a slot for float16 and 1.07 -> 0.86 for float32
  (Zen 4 EPYC, interleaved);
- int8 codes with m a multiple of 4 are read as 32-bit words, 4 codes each, and the bytes
  taken out by shifts (integer ports) instead of a sign-extending shuffle per slot (the
  shuffle port was the limit); float16 codes are widened by the CPU's conversion, float32
  codes read as they are;
- lane t keeps the first maximum of the slots it saw (a strict >), so the first of equal
  maxima over all lanes is the lowest slot among the lanes holding the maximum (`best`);
- codes narrower than float32 are prefetched ahead of the scan (`prefetch`): out of DRAM, the
  hardware's prefetcher alone left those scans 1.4-1.9x slower; a scan larger than the CPU's
  last-level cache prefetches without keeping what it reads (the stream hint), so the read's
  other work finds its data and code still cached.

The text is generated per (dtype, m) and compiled with llvmlite (`compile_ir`: numba's LLVM,
already a serving dependency, no C compiler at run time) for the host CPU's features.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = [
    "CHUNK",
    "EL_BYTES",
    "FMAX_DECL",
    "LANES",
    "LANE_FLOATS",
    "PREFETCH_AHEAD",
    "PREFETCH_DECL",
    "STREAM_AHEAD",
    "compile_ir",
    "join_ir",
    "keep_best",
    "kernel_ir",
    "maxima_ir",
    "prefetch",
    "scores_in_ir",
    "shuffle",
    "tree",
    "word_slots",
    "words_layout",
]

LANES = 16  # slots per step; the kernel scans the first N - N % LANES slots, torch the rest
CHUNK = 512  # slots per maximum of `maxima` (a multiple of LANES)
PREFETCH_AHEAD = 16384  # bytes: how far ahead `prefetch` reads (into L2) in a cached bank
STREAM_AHEAD = 4096  # bytes: the same for a bank larger than the last-level cache
EL_BYTES = {"i8": 1, "half": 2, "float": 4}  # bytes per code, by IR element type
_NEG_INF = "0xFFF0000000000000"  # -inf as LLVM IR writes a float constant


def compile_ir(ir: str) -> Any:
    """LLVM IR -> llvmlite's execution engine holding its machine code for the host CPU."""
    import llvmlite.binding as llvm  # numba's LLVM; loaded with the first scan, not the import

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3
    )
    module = llvm.parse_assembly(ir)
    module.verify()
    passes = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    passes.getModulePassManager().run(module, passes)
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    return engine


def words_layout(el: str, m: int) -> bool:
    """int8 codes read as 32-bit words (4 codes each, little-endian): m a multiple of 4 whose
    words per slot divide 16 or are a multiple of 16 (m = 4, 8, 16, 32, 64, 128, 192, ...)."""
    r = m // 4
    return el == "i8" and m % 4 == 0 and (16 % r == 0 or r % 16 == 0) and sys.byteorder == "little"


LANE_FLOATS, _B, _I = (
    f"<{LANES} x float>",
    f"<{LANES} x i1>",
    f"<{LANES} x i64>",
)  # lane vector types


def kernel_ir(el: str, m: int, stream: bool = False) -> str:
    """LLVM IR of both scans of slots [0, nb) (nb a multiple of LANES, m floats at q), which
    share one step (LANES slots' scores, and the lane maxima %bv -> %bv1):
    `best(codes, inv, nb, q, out_values, out_slots)` writes each lane's best value and slot
    (LANES of each; slot -1 where a lane saw nothing above -inf); `maxima(codes, inv, nb, q,
    out)` the largest score of each CHUNK slots. stream: `prefetch`'s non-temporal hint."""
    lines: list[str] = []
    prelude: list[str] = [f"%qv = load <{m} x float>, ptr %q, align 4"]
    if words_layout(el, m):
        vecs = _words_products(m, lines, prelude)
    elif el != "i8" and m % LANES == 0:
        vecs = _pair_products(el, m, lines, prelude)
    else:
        vecs = _products(el, m, lines)
    total, order = tree(lines, vecs)
    keep_best(lines, total, order)
    pre, step = join_ir(prelude, lines, m, EL_BYTES[el], stream)
    lanes = [f"i64 {s}" for s in order]
    scans = _best_ir(pre, step, lanes) + _best_in_ir(pre, step, lanes) + maxima_ir(pre, step)
    return scans + scores_in_ir(pre, step, order) + FMAX_DECL + PREFETCH_DECL


def join_ir(
    prelude: list[str], lines: list[str], m: int, size: int, stream: bool = False
) -> tuple[str, str]:
    """A scan's prelude and its step (which starts at the step's first code, %base; codes of
    `size` bytes each; stream: `prefetch`'s) as the text `_best_ir` and `maxima_ir` take."""
    step = [f"%base = mul i64 %i, {m}", *prefetch(m, size, stream), *lines]
    return "\n  ".join(prelude), "\n  ".join(step)


def prefetch(m: int, size: int, stream: bool = False) -> list[str]:
    """Software prefetches of the slots PREFETCH_AHEAD bytes (at least two steps) ahead of
    the step: every cache line of their codes, and their inverse norms, for codes narrower
    than float32 (size < 4 bytes). Those scans do more work per byte, and with the hardware's
    prefetcher alone they ran at about the sum of their compute and memory times out of DRAM.
    On the 2-core Zen 2 EPYC (16 MiB L3), 1M x 16, min of 12 interleaved runs, ns per slot:
    `best` float16 3.61 -> 1.88 against a 1.94 `torch.sum` floor; the int8 integer pass
    (model/intscan.py) 1.28 -> 0.91 against 1.11; cache-resident speeds unchanged; 2048 to
    16384 bytes ahead all alike. float32 is left to the hardware: prefetching made that scan
    slower, quiet host or busy (3.76 -> 5.31 ns, floor 3.63-3.76). A prefetch past the end
    of the codes is a hint, not a load: it cannot fault.

    stream: the non-temporal hint (prefetchnta) instead of keeping the lines in every cache
    level, for scans larger than the last-level cache (`onepass.streams`): such a scan otherwise
    evicts all the read's other data and code, whose torch calls then run from DRAM. Same
    host, whole `MemoryBank.read` of one query at 1M x 16: int8 1.55 -> 1.28 ms, float16
    2.57-2.89 -> 2.24-2.41 ms (floors 0.85 and 2.0 ms); cache-resident (100k-300k int8)
    the hint made reads 2-5% slower, so those keep a temporal hint.

    Cache-resident (not stream): 16 KiB ahead into L2 (locality 2, prefetcht1), which the
    Zen 4 EPYC (32 MiB L3, 1M x 16 int8 resident in it) prefers to 4 KiB into L1: medians of
    9 interleaved runs, the int8 integer pass 570-695 -> 437-467 us against a 405 us floor,
    float16 `best` 1765 -> 1451 us; at 100k (2 MB) all alike."""
    if size >= 4:
        return []
    slot = m * size
    ahead = max((STREAM_AHEAD if stream else PREFETCH_AHEAD) // slot, 2 * LANES)  # slots
    locality = 0 if stream else 2  # llvm.prefetch: 0 = no temporal locality, 2 = into L2
    hint = f"i32 0, i32 {locality}, i32 1"  # a read, the locality, the data cache
    lines = [f"%pfs = add i64 %i, {ahead}", f"%pfb = mul i64 %pfs, {slot}"]
    for j, off in enumerate(range(0, LANES * slot, 64)):
        lines += [
            f"%pfo{j} = add i64 %pfb, {off}",
            f"%pfp{j} = getelementptr i8, ptr %codes, i64 %pfo{j}",
            f"call void @llvm.prefetch.p0(ptr %pfp{j}, {hint})",
        ]
    lines += [
        "%pfq = getelementptr float, ptr %inv, i64 %pfs",
        f"call void @llvm.prefetch.p0(ptr %pfq, {hint})",
    ]
    return lines


def keep_best(lines: list[str], total: str, order: list[int]) -> None:
    """The step's end: its LANES sums (lane j: slot order[j] of the step) times the slots'
    inverse norms, and the lane maxima %bv -> %bv1."""
    perm = ", ".join(f"i32 {s}" for s in order)
    lines += [
        "%ip = getelementptr float, ptr %inv, i64 %i",
        f"%iv0 = load {LANE_FLOATS}, ptr %ip, align 4",
        f"%iv = shufflevector {LANE_FLOATS} %iv0, {LANE_FLOATS} poison, <{LANES} x i32> <{perm}>",
        f"%val = fmul {LANE_FLOATS} {total}, %iv",
        f"%gt = fcmp ogt {LANE_FLOATS} %val, %bv",
        f"%bv1 = select {_B} %gt, {LANE_FLOATS} %val, {LANE_FLOATS} %bv",
    ]


def _best_ir(pre: str, step: str, lanes: list[str]) -> str:
    """`best`: one loop over the steps; each lane keeps its first maximum (strict >) and that
    slot (lanes: each lane's slot within a step, the tree's order)."""
    v, i = LANE_FLOATS, _I
    return f"""
define void @best(ptr noalias %codes, ptr noalias %inv, i64 %nb, ptr noalias %q,
                  ptr %ov, ptr %oi) {{
entry:
  {pre}
  %any = icmp sgt i64 %nb, 0
  br i1 %any, label %body, label %exit
body:
  %i = phi i64 [0, %entry], [%i1, %body]
  %bv = phi {v} [splat (float {_NEG_INF}), %entry], [%bv1, %body]
  %bi = phi {i} [splat (i64 -1), %entry], [%bi1, %body]
  {step}
  {_track_slots(lanes)}
  %i1 = add nuw nsw i64 %i, {LANES}
  %more = icmp slt i64 %i1, %nb
  br i1 %more, label %body, label %exit
{_lanes_out("%bv1", "%bi1", "%body")}
}}
"""


def _lanes_out(values: str, slots: str, after: str) -> str:
    """The end of `best` and `best_in`: each lane's maximum and its slot (the values and slots
    coming from block `after`; -inf and -1 when no step ran) stored at %ov and %oi."""
    v, i = LANE_FLOATS, _I
    return f"""exit:
  %fv = phi {v} [splat (float {_NEG_INF}), %entry], [{values}, {after}]
  %fi = phi {i} [splat (i64 -1), %entry], [{slots}, {after}]
  store {v} %fv, ptr %ov, align 4
  store {i} %fi, ptr %oi, align 8
  ret void"""


def _track_slots(lanes: list[str]) -> str:
    """A step's slots per lane (%i plus the lane's place) kept where the lane's maximum
    changed (%gt): %bi -> %bi1."""
    i = _I
    return f"""%i0 = insertelement {i} poison, i64 %i, i32 0
  %isp = shufflevector {i} %i0, {i} poison, <{LANES} x i32> zeroinitializer
  %idx = add {i} %isp, <{", ".join(lanes)}>
  %bi1 = select {_B} %gt, {i} %idx, {i} %bi"""


def _chunks_head(pre: str) -> str:
    """The start of a scan over a list of nc chunks (`best_in`, `scores_in`): the prelude,
    nothing to do when nc is 0, the list's place %ci."""
    return f"""entry:
  {pre}
  %anyc = icmp sgt i64 %nc, 0
  br i1 %anyc, label %chunk, label %exit
chunk:
  %ci = phi i64 [0, %entry], [%ci1, %next]"""


# The slots [%lo, %hi) of the list's chunk %ci, below nb (`best_in`, `scores_in`).
_CHUNK_SPAN = f"""%cp = getelementptr i64, ptr %chunks, i64 %ci
  %c = load i64, ptr %cp, align 8
  %lo = mul i64 %c, {CHUNK}
  %hi0 = add i64 %lo, {CHUNK}
  %cut = icmp slt i64 %nb, %hi0
  %hi = select i1 %cut, i64 %nb, i64 %hi0"""


def _best_in_ir(pre: str, step: str, lanes: list[str]) -> str:
    """`best_in(codes, inv, nb, q, out_values, out_slots, chunks, nc)`: `best` over the slots
    of nc CHUNK-slot chunks alone (chunks: their indices, int64, ascending), below nb, in one
    call: the lanes' running maxima carry from chunk to chunk, so the answer is `best`'s over
    those slots (ties included), with absolute slots."""
    v, i = LANE_FLOATS, _I
    return f"""
define void @best_in(ptr noalias %codes, ptr noalias %inv, i64 %nb, ptr noalias %q,
                     ptr %ov, ptr %oi, ptr noalias %chunks, i64 %nc) {{
{_chunks_head(pre)}
  %cv = phi {v} [splat (float {_NEG_INF}), %entry], [%nv, %next]
  %cx = phi {i} [splat (i64 -1), %entry], [%nx, %next]
  {_CHUNK_SPAN}
  %some = icmp slt i64 %lo, %hi
  br i1 %some, label %body, label %next
body:
  %i = phi i64 [%lo, %chunk], [%i1, %body]
  %bv = phi {v} [%cv, %chunk], [%bv1, %body]
  %bi = phi {i} [%cx, %chunk], [%bi1, %body]
  {step}
  {_track_slots(lanes)}
  %i1 = add nuw nsw i64 %i, {LANES}
  %more = icmp slt i64 %i1, %hi
  br i1 %more, label %body, label %next
next:
  %nv = phi {v} [%cv, %chunk], [%bv1, %body]
  %nx = phi {i} [%cx, %chunk], [%bi1, %body]
  %ci1 = add nuw nsw i64 %ci, 1
  %again = icmp slt i64 %ci1, %nc
  br i1 %again, label %chunk, label %exit
{_lanes_out("%nv", "%nx", "%next")}
}}
"""


def scores_in_ir(pre: str, step: str, order: list[int]) -> str:
    """`scores_in(codes, inv, nb, q, out, chunks, nc)`: every score of the slots below nb of
    nc CHUNK-slot chunks (chunks: their indices, int64), chunk j's slot lo + r at out[j CHUNK
    + r], in slot order (the step's lanes put back by the inverse of `order`): the scores
    `best` compares, for ranking a few chunks in one call (`onepass.tops_of_chunks`)."""
    v = LANE_FLOATS
    back = [0] * LANES
    for lane, slot in enumerate(order):
        back[slot] = lane
    return f"""
define void @scores_in(ptr noalias %codes, ptr noalias %inv, i64 %nb, ptr noalias %q,
                       ptr noalias %os, ptr noalias %chunks, i64 %nc) {{
{_chunks_head(pre)}
  {_CHUNK_SPAN}
  %at = mul i64 %ci, {CHUNK}
  %some = icmp slt i64 %lo, %hi
  br i1 %some, label %body, label %next
body:
  %i = phi i64 [%lo, %chunk], [%i1, %body]
  %bv = phi {v} [splat (float {_NEG_INF}), %chunk], [%bv1, %body]
  {step}
  {shuffle("%sv", "%val", "poison", back, LANES)}
  %rel = sub i64 %i, %lo
  %to = add i64 %at, %rel
  %sp = getelementptr float, ptr %os, i64 %to
  store {v} %sv, ptr %sp, align 4
  %i1 = add nuw nsw i64 %i, {LANES}
  %more = icmp slt i64 %i1, %hi
  br i1 %more, label %body, label %next
next:
  %ci1 = add nuw nsw i64 %ci, 1
  %again = icmp slt i64 %ci1, %nc
  br i1 %again, label %chunk, label %exit
exit:
  ret void
}}
"""


def maxima_ir(pre: str, step: str, name: str = "maxima") -> str:
    """`maxima`: the steps of each CHUNK slots (the last chunk may be shorter), then the
    largest of the lane maxima stored for that chunk."""
    v = LANE_FLOATS
    return f"""
define void @{name}(ptr noalias %codes, ptr noalias %inv, i64 %nb, ptr noalias %q,
                    ptr noalias %om) {{
entry:
  {pre}
  br label %chunk
chunk:
  %ch = phi i64 [0, %entry], [%ch1, %close]
  %lo = mul i64 %ch, {CHUNK}
  %hi0 = add i64 %lo, {CHUNK}
  %cut = icmp slt i64 %nb, %hi0
  %hi = select i1 %cut, i64 %nb, i64 %hi0
  br label %body
body:
  %i = phi i64 [%lo, %chunk], [%i1, %body]
  %bv = phi {v} [splat (float {_NEG_INF}), %chunk], [%bv1, %body]
  {step}
  %i1 = add nuw nsw i64 %i, {LANES}
  %more = icmp slt i64 %i1, %hi
  br i1 %more, label %body, label %close
close:
  %top = call float @llvm.vector.reduce.fmax.v{LANES}f32({v} %bv1)
  %mp = getelementptr float, ptr %om, i64 %ch
  store float %top, ptr %mp, align 4
  %ch1 = add nuw nsw i64 %ch, 1
  %again = icmp slt i64 %hi, %nb
  br i1 %again, label %chunk, label %exit
exit:
  ret void
}}
"""


FMAX_DECL = f"\ndeclare float @llvm.vector.reduce.fmax.v{LANES}f32({LANE_FLOATS})\n"
PREFETCH_DECL = (  # `prefetch`'s intrinsic: every scan built with `join_ir` declares it
    "\ndeclare void @llvm.prefetch.p0(ptr nocapture readonly, i32 immarg, i32 immarg, i32 immarg)\n"
)


def shuffle(name: str, a: str, b: str, mask: list[int], width: int, el: str = "float") -> str:
    picks = ", ".join(f"i32 {x}" for x in mask)
    w = f"<{width} x {el}>"
    return f"{name} = shufflevector {w} {a}, {w} {b}, <{len(mask)} x i32> <{picks}>"


def _products(el: str, m: int, lines: list[str]) -> list[tuple[str, list[int], int]]:
    """Per slot t of the step: its m products, widened to float32 and folded into LANES lanes
    (zero-padded to a multiple of LANES, the pieces added): (vector, lane -> slot, width)."""
    wide = -(-m // LANES) * LANES
    vecs = []
    for t in range(LANES):
        lines += [
            f"%o{t} = add i64 %base, {t * m}",
            f"%p{t} = getelementptr {el}, ptr %codes, i64 %o{t}",
            f"%c{t} = load <{m} x {el}>, ptr %p{t}, align 1",
        ]
        code = f"%c{t}"
        if el != "float":
            cast = "sitofp" if el == "i8" else "fpext"
            lines.append(f"%cf{t} = {cast} <{m} x {el}> %c{t} to <{m} x float>")
            code = f"%cf{t}"
        lines.append(f"%x{t} = fmul reassoc nsz <{m} x float> {code}, %qv")
        cur = f"%x{t}"
        if wide != m:
            pad = [j if j < m else m for j in range(wide)]
            lines.append(shuffle(f"%xp{t}", cur, "zeroinitializer", pad, m))
            cur = f"%xp{t}"
        acc = cur
        if wide > LANES:
            pieces = []
            for g in range(wide // LANES):
                mask = list(range(g * LANES, (g + 1) * LANES))
                lines.append(shuffle(f"%xc{t}_{g}", cur, "poison", mask, wide))
                pieces.append(f"%xc{t}_{g}")
            acc = pieces[0]
            for g, piece in enumerate(pieces[1:]):
                lines.append(f"%xa{t}_{g} = fadd reassoc nsz <{LANES} x float> {acc}, {piece}")
                acc = f"%xa{t}_{g}"
        vecs.append((acc, [t] * LANES, LANES))
    return vecs


def _pair_products(
    el: str, m: int, lines: list[str], prelude: list[str]
) -> list[tuple[str, list[int], int]]:
    """Float codes (half, float) with m a multiple of LANES, two slots t, t + 1 at a time: the
    first half of each 16 dimensions of both slots in one vector, read as two 8-code loads
    (load and insert, no shuffle), the second halves in another, both widened and multiplied by
    the query's matching halves, added (fused) across the two and the m / 16 groups: the
    vector of 8 partial sums per slot that the tree's first level would make from two slots'
    products, without that level's two cross-lane permutes, add and second multiply."""
    half = LANES // 2
    for g in range(m // LANES):
        for h in range(2):
            dims = [LANES * g + half * h + j for j in range(half)] * 2
            prelude.append(shuffle(f"%qp{g}_{h}", "%qv", "poison", dims, m))
    vecs = []
    fadd, fmul = "fadd reassoc nsz contract", "fmul reassoc nsz contract"
    for t in range(0, LANES, 2):
        acc = ""
        for g in range(m // LANES):
            for h in range(2):
                n = f"{t}_{g}_{h}"
                for s, slot in (("a", t), ("b", t + 1)):
                    lines += [
                        f"%o{s}{n} = add i64 %base, {slot * m + LANES * g + half * h}",
                        f"%p{s}{n} = getelementptr {el}, ptr %codes, i64 %o{s}{n}",
                        f"%l{s}{n} = load <{half} x {el}>, ptr %p{s}{n}, align 1",
                    ]
                lines.append(shuffle(f"%c{n}", f"%la{n}", f"%lb{n}", list(range(LANES)), half, el))
                code = f"%c{n}"
                if el != "float":
                    lines.append(f"%cf{n} = fpext <{LANES} x {el}> %c{n} to {LANE_FLOATS}")
                    code = f"%cf{n}"
                lines.append(f"%x{n} = {fmul} {LANE_FLOATS} {code}, %qp{g}_{h}")
                if acc:
                    lines.append(f"%s{n} = {fadd} {LANE_FLOATS} {acc}, %x{n}")
                    acc = f"%s{n}"
                else:
                    acc = f"%x{n}"
        vecs.append((acc, [t] * half + [t + 1] * half, half))
    return vecs


def _words_products(
    m: int, lines: list[str], prelude: list[str]
) -> list[tuple[str, list[int], int]]:
    """int8 read as 32-bit words: the step's LANES * m bytes are r = m / 4 vectors of 16 words;
    byte k of every word is (word << (24 - 8k)) >> 24 (arithmetic), widened and multiplied by
    the query's dimensions in that word's byte k. r <= 16: each vector holds 16 / r slots, r
    lanes each; r > 16: each slot spans r / 16 vectors, added into one."""
    r = m // 4
    per_slot = max(r // LANES, 1)  # vectors per slot
    lane_span = min(r, LANES)  # lanes per slot within a vector
    for v in range(per_slot):
        for k in range(4):
            dims = [4 * (v * LANES + w % lane_span) + k for w in range(LANES)]
            prelude.append(shuffle(f"%q{v}_{k}", "%qv", "poison", dims, m))
    partial: list[str] = []
    for g in range(r):
        lines += [
            f"%wo{g} = add i64 %base, {g * 64}",
            f"%wp{g} = getelementptr i8, ptr %codes, i64 %wo{g}",
            f"%w{g} = load <16 x i32>, ptr %wp{g}, align 1",
        ]
        acc = None
        for k in range(4):
            x = f"%w{g}"
            if k < 3:
                lines.append(f"%ws{g}_{k} = shl <16 x i32> %w{g}, splat (i32 {24 - 8 * k})")
                x = f"%ws{g}_{k}"
            lines += [
                f"%wa{g}_{k} = ashr <16 x i32> {x}, splat (i32 24)",
                f"%wf{g}_{k} = sitofp <16 x i32> %wa{g}_{k} to <16 x float>",
                f"%wm{g}_{k} = fmul reassoc nsz contract <16 x float> %wf{g}_{k}, "
                f"%q{g % per_slot}_{k}",
            ]
            if acc is not None:
                add = f"fadd reassoc nsz contract <16 x float> {acc}, %wm{g}_{k}"
                lines.append(f"%wt{g}_{k} = {add}")
                acc = f"%wt{g}_{k}"
            else:
                acc = f"%wm{g}_{k}"
        assert acc is not None
        partial.append(acc)
    return word_slots(lines, partial, per_slot, lane_span, "fadd reassoc nsz <16 x float>")


def word_slots(
    lines: list[str], partial: list[str], per_slot: int, lane_span: int, add: str
) -> list[tuple[str, list[int], int]]:
    """The word vectors' partial sums as `tree`'s input: a slot spanning per_slot vectors
    gets them added (`add`: the instruction and type); else each vector holds LANES //
    lane_span slots of lane_span lanes each."""
    vecs = []
    for s in range(len(partial) // per_slot):  # one vector per LANES // lane_span slots
        acc = partial[s * per_slot]
        for j in range(1, per_slot):
            lines.append(f"%wj{s}_{j} = {add} {acc}, {partial[s * per_slot + j]}")
            acc = f"%wj{s}_{j}"
        if per_slot > 1:
            slots = [s] * LANES
        else:
            slots = [s * (LANES // lane_span) + w // lane_span for w in range(LANES)]
        vecs.append((acc, slots, lane_span))
    return vecs


def _halves(width: int, at: int) -> list[int]:
    """`tree`'s shuffle mask that takes lanes at..at + width/2 of every group of `width` lanes
    from both vectors (x: 0..LANES-1, y: LANES..): groups of at most 4 lanes stay inside their
    128-bit lane (x's picks, then y's, per lane: unpck and shufps, which cost a fraction of a
    cross-lane permute), wider ones give all of x's picks, then all of y's."""
    half = width // 2
    span = 4 if width <= 4 else LANES  # 4 x 32 bits: one 128-bit lane
    out = []
    for block in range(0, LANES, span):
        picks = [block + g + at + j for g in range(0, span, width) for j in range(half)]
        out += picks + [LANES + x for x in picks]
    return out


def tree(
    lines: list[str], vecs: list[tuple[str, list[int], int]], el: str = "float"
) -> tuple[str, list[int]]:
    """Add vectors of per-slot partial sums (groups of `width` lanes, one slot each) pairwise
    into one vector of LANES sums: each level halves the groups' width and doubles the
    vectors' slots (two shuffles and an add per pair). Returns it and its lane -> slot order.
    el: the lanes' type, float (fadd) or i32 (add)."""
    add = "fadd reassoc nsz" if el == "float" else "add"
    width = vecs[0][2]
    level = 0
    items = [(name, slots) for name, slots, _ in vecs]
    while width > 1:
        half = width // 2
        lo_mask, hi_mask = _halves(width, 0), _halves(width, half)
        nxt = []
        for a in range(0, len(items), 2):
            (x, sx), (y, sy) = items[a], items[a + 1]
            name = f"%r{level}_{a}"
            lines += [
                shuffle(name + "l", x, y, lo_mask, LANES, el),
                shuffle(name + "h", x, y, hi_mask, LANES, el),
                f"{name} = {add} <{LANES} x {el}> {name}l, {name}h",
            ]
            nxt.append((name, [(sx + sy)[j] for j in lo_mask]))
        items, width, level = nxt, half, level + 1
    assert len(items) == 1, "the step's slots do not fill one vector"
    return items[0]
