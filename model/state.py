"""What a bank's state is: its tensors, their dtypes and shapes, and the rules they obey.

One place for the contract that `MemoryBank.load_state_dict`, snapshot saving and snapshot
loading check: `layout_problem` (keys, dtypes, shapes; values not looked at) and
`state_problem` (the layout plus consistency of the values). Each returns why a state is not a
bank's state, or None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from model.enums import BANK_DTYPES, BankDtype
from model.search import all_finite
from model.slots import META_KEYS, meta_problem

__all__ = [
    "COUNTER_NAMES",
    "COUNT_MAX",
    "DTYPES",
    "INT8_MAX",
    "RATE_KEYS",
    "RATE_LEVELS",
    "STATE_KEYS",
    "TICK_MAX",
    "BankDtype",
    "code_width",
    "from_v1",
    "layout_problem",
    "rate_problem",
    "rebase_ticks",
    "state_problem",
]

DTYPES: dict[str, torch.dtype] = dict(
    zip(BANK_DTYPES, (torch.float32, torch.float16, torch.int8, torch.uint8), strict=True)
)
# A "rate" bank (model/quant.py) keeps its code book beside the codes: bits per dimension and a
# table of RATE_LEVELS levels per dimension; its codes are packed bytes, not m values.
RATE_KEYS = ("rate_bits", "rate_levels")
RATE_LEVELS = 256
MAX_RATE_BITS = 8
COUNTER_NAMES = ("tick", "reads", "hits", "misses", "writes", "evictions", "tick_base")
STATE_KEYS = ("codes", "counts", "occupied", "last_write", "last_access", "counters")
INT8_MAX = 127
# Per-slot counters are int32 (format 2): a count saturates at COUNT_MAX; a slot's ticks are
# stored relative to the bank's tick_base (absolute = tick_base + stored, 0 = never) and the
# bank rebases them before the relative tick would pass TICK_MAX (`rebase_ticks`).
COUNT_MAX = TICK_MAX = 2**31 - 1


def rate_problem(bits: Tensor, levels: Tensor, m: int) -> str | None:
    """Why (bits, levels) is not the code book of a rate bank of m dimensions, or None: bits
    (m,) uint8 in 0..8, levels (m, 256) float32, finite, each dimension's first 2^bits levels
    non-decreasing (its index order is its value order)."""
    if not isinstance(bits, Tensor) or bits.dtype != torch.uint8 or tuple(bits.shape) != (m,):
        return f"rate_bits is not uint8 ({m},)"
    if not isinstance(levels, Tensor) or levels.dtype != torch.float32:
        return "rate_levels is not float32"
    if tuple(levels.shape) != (m, RATE_LEVELS):
        return f"rate_levels has shape {tuple(levels.shape)}, expected {(m, RATE_LEVELS)}"
    b = bits.detach().to("cpu", torch.int64)
    if bool((b > MAX_RATE_BITS).any()):
        return f"rate_bits exceed {MAX_RATE_BITS}"
    if int(b.sum()) == 0:
        return "rate_bits are all 0 (a code of 0 bytes)"
    lv = levels.detach().to("cpu")
    if not all_finite(lv):
        return "rate_levels are not finite"
    used = torch.arange(RATE_LEVELS - 1)[None, :] < ((1 << b) - 1)[:, None]  # (m, 255)
    if bool(((lv[:, 1:] < lv[:, :-1]) & used).any()):
        return "rate_levels are not sorted"
    return None


def code_width(state: Mapping[str, Tensor], m: int, dtype: str) -> int:
    """Storage values per code: m, or for "rate" the packed bytes of its rate_bits."""
    if dtype != "rate":
        return m
    return math.ceil(int(state["rate_bits"].to(torch.int64).sum()) / 8)


def layout_problem(state: Mapping[str, Tensor], capacity: int, m: int, dtype: str) -> str | None:
    """Why `state` does not have the tensors (keys, dtypes, shapes) of a bank of this capacity,
    m and dtype, or None when it does. Values are not looked at, except a rate bank's code
    book (`rate_problem`), which sets the width of its packed codes."""
    expected = set(STATE_KEYS) | ({"scales"} if dtype == "int8" else set())
    expected |= set(RATE_KEYS) if dtype == "rate" else set()
    if any(k in state for k in META_KEYS):  # the slot metadata: all of it or none (older)
        expected |= set(META_KEYS)
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing:
        return f"lacks tensor(s) {missing}"
    if extra:
        return f"has unexpected tensor(s) {extra}"
    if dtype == "rate":
        problem = rate_problem(state["rate_bits"], state["rate_levels"], m)
        if problem is not None:
            return problem
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {
        "codes": (DTYPES[dtype], (capacity, code_width(state, m, dtype))),
        "counts": (torch.int32, (capacity,)),
        "occupied": (torch.bool, (capacity,)),
        "last_write": (torch.int32, (capacity,)),
        "last_access": (torch.int32, (capacity,)),
        "counters": (torch.int64, (len(COUNTER_NAMES),)),
        "scales": (torch.float32, (m,)),
    }
    for key in sorted(expected - set(META_KEYS) - set(RATE_KEYS)):
        t = state[key]
        if not isinstance(t, Tensor):
            return f"tensor {key!r} is not a tensor"
        want_dtype, shape = specs[key]
        if t.dtype != want_dtype:
            return f"tensor {key!r} has dtype {t.dtype}, expected {want_dtype}"
        if tuple(t.shape) != shape:
            return f"tensor {key!r} has shape {tuple(t.shape)}, expected {shape}"
    return None


def state_problem(state: Mapping[str, Tensor], capacity: int, m: int, dtype: str) -> str | None:
    """Why `state` cannot be the state of a bank of this capacity, m and dtype, or None."""
    problem = layout_problem(state, capacity, m, dtype)
    if problem is not None:
        return problem
    for key in META_KEYS:
        if key in state and not isinstance(state[key], Tensor):
            return f"tensor {key!r} is not a tensor"
    cpu = {k: v.detach().to("cpu") for k, v in state.items()}
    problem = _counter_problem(cpu["counters"].tolist()) or _slot_problem(cpu)
    if problem is None and META_KEYS[0] in cpu:
        problem = meta_problem(cpu, capacity)
    return problem


def _counter_problem(counters: list[int]) -> str | None:
    tick, reads, hits, misses, writes, evictions, tick_base = counters
    if min(counters) < 0:
        return f"inconsistent state: negative counter in {counters}"
    if tick_base > tick:
        return f"inconsistent state: tick_base {tick_base} > tick {tick}"
    if hits + misses != reads:
        return f"inconsistent state: hits {hits} + misses {misses} != reads {reads}"
    if evictions > writes:
        return f"inconsistent state: evictions {evictions} > writes {writes}"
    return None


def _slot_problem(cpu: Mapping[str, Tensor]) -> str | None:
    occ, codes = cpu["occupied"], cpu["codes"]
    tick = int(cpu["counters"][0]) - int(cpu["counters"][6])  # relative, as slot ticks are
    if "scales" in cpu:
        s = cpu["scales"]
        if not all_finite(s) or not bool((s > 0).all()):
            return "inconsistent state: scales must be finite and > 0"
    if codes.is_floating_point():
        if not all_finite(codes):
            return "inconsistent state: non-finite codes"
    elif codes.dtype == torch.int8 and bool((codes < -INT8_MAX).any()):
        return f"inconsistent state: int8 codes below -{INT8_MAX}"
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


def rebase_ticks(
    last_write: Tensor,
    last_access: Tensor,
    occupied: Tensor,
    tick: int,
    base: int,
    ahead: int,
    limit: int = TICK_MAX,
) -> tuple[Tensor, Tensor, int]:
    """Slot ticks (any int dtype, relative to `base`) re-expressed relative to a new base such
    that the relative tick `tick + ahead - new_base` fits `limit`: int32 (lw, la, new_base).

    The new base is the oldest occupied slot's last write minus one, so every tick keeps its
    absolute value and the order of last touches, which LFU ties use, is kept. Only when that
    leaves no room (a slot written more than `limit` ticks ago: TICK_MAX, smaller in tests)
    does the base move past it: ticks older than the new base become 1 (absolute: base + 1),
    so such ancient slots tie among the oldest."""
    occupied_writes = last_write.to(torch.int64)[occupied]
    oldest = int(occupied_writes.min()) + base if occupied_writes.numel() else tick
    new_base = max(oldest - 1, tick + ahead - limit, base)
    shift = new_base - base

    def moved(t: Tensor, keep: Tensor) -> Tensor:
        return torch.where(keep, (t.to(torch.int64) - shift).clamp(min=1), 0).to(torch.int32)

    return moved(last_write, occupied), moved(last_access, last_access > 0), new_base


def from_v1(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A format-1 state (int64 counts and absolute int64 ticks, 6 counters) as format 2."""
    out = dict(state)
    out["counts"] = state["counts"].clamp(max=COUNT_MAX).to(torch.int32)
    tick = int(state["counters"][0])
    lw, la, base = state["last_write"], state["last_access"], 0
    if tick > TICK_MAX:  # a bank that old: rebased as a running bank would have been
        lw, la, base = rebase_ticks(lw, la, state["occupied"], tick, 0, 0)
    out["last_write"], out["last_access"] = lw.to(torch.int32), la.to(torch.int32)
    out["counters"] = torch.cat([state["counters"], torch.tensor([base], dtype=torch.int64)])
    return out
