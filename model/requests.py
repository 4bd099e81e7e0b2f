"""The memory loop's requests and answers, as values, and the checks of the in-process boundary.

    Write(items, mode, namespace, records, pinned)      one write request
    Read(queries, top_k, min_score, reconstruct, namespace, rescore)
    IDRPReadResult / Hit                                what a read answers
    as_rows(rows, noun, d)                              rows (B, d) of finite numbers, or why not

model/memory.py (IDRPMemory) takes and gives these; the messages of the checks name the
request's item or query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from model.enums import DEFAULT_NAMESPACE, check_namespace
from model.errors import InvalidInput
from model.ops import Assign, Op
from model.search import all_finite

__all__ = [
    "CODE_RANGE",
    "Codec",
    "Hit",
    "IDRPReadResult",
    "Log",
    "Read",
    "Rows",
    "Write",
    "as_rows",
    "finite_parts",
]

Rows = Sequence[Sequence[float]] | Tensor
# A write stores codes up to this many times the codec's largest training code (per dimension,
# `code_scales` * 127), in every bank dtype; an int8 bank saturates at 1x (its calibrated
# range). Every shipped codec decodes codes up to 1000x that range to finite values
# (tests/test_memory.py), so a stored code always has a finite reconstruction.
CODE_RANGE = 4
# The durability callback: log these operations (all or nothing) and return the position
# after them (a WAL's LSN); raise, and nothing is applied.
Log = Callable[[Sequence[Op]], int]


class _CodecConfig(Protocol):
    @property
    def d(self) -> int: ...

    @property
    def m(self) -> int: ...


class Codec(Protocol):
    """What IDRPMemory needs of a model (model.idrp.IDRP and CompiledCodec satisfy it)."""

    @property
    def config(self) -> _CodecConfig: ...

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Write:
    """One write request: items (B, d); "mean" -> one slot, "each" -> one slot per item; in a
    namespace, pinned or not, with one opaque record per stored slot (model/slots.py)."""

    items: Rows
    mode: str = "mean"
    namespace: str = DEFAULT_NAMESPACE
    records: Sequence[bytes | None] | None = None
    pinned: bool = False


@dataclass(frozen=True)
class Read:
    """One read request: queries (B, d), the top_k slots each, hits below min_score dropped."""

    queries: Rows
    top_k: int = 1
    min_score: float | None = None
    reconstruct: bool = True
    namespace: str | None = None  # None: every namespace
    rescore: int = 0  # R > 0: rank the top max(R, top_k) by their reconstructions (rescore.py)


@dataclass(frozen=True)
class Hit:
    """One slot found by a read. reconstruction is a float32 array (d,) (orjson writes it as a
    JSON list in float32's shortest form), None when the read asked for no reconstruction."""

    slot: int
    score: float
    count: int
    reconstruction: NDArray[np.float32] | None
    record: bytes | None = None
    code_score: float | None = None  # the stage-1 cosine of codes (= score when not rescored)


@dataclass(frozen=True)
class IDRPReadResult:
    """`model.bank.ReadResult` plus the decoded stored codes: reconstructions (B, k, d) float32,
    zeros where the slot is -1; None when read(..., reconstruct=False)."""

    slots: Tensor
    scores: Tensor
    counts: Tensor
    reconstructions: Tensor | None
    records: list[list[bytes | None]] | None = None  # (B, k), the slots' records
    code_scores: Tensor | None = None  # (B, k) stage-1 cosines; None: the scores are those

    def hits(self) -> list[list[Hit]]:
        """Per query, its hits best first (a miss is [])."""
        recon = None if self.reconstructions is None else self.reconstructions.cpu().numpy()
        scores = self.scores.tolist()
        code = scores if self.code_scores is None else self.code_scores.tolist()
        rows = zip(self.slots.tolist(), scores, self.counts.tolist(), code, strict=True)
        records = self.records
        return [
            [
                Hit(
                    slot,
                    score,
                    count,
                    None if recon is None else recon[i, j],
                    None if records is None else records[i][j],
                    code_score,
                )
                for j, (slot, score, count, code_score) in enumerate(zip(*row, strict=True))
                if slot >= 0
            ]
            for i, row in enumerate(rows)
        ]


def as_rows(rows: Rows, noun: str, d: int, *, finite: bool = True) -> Tensor:
    """Rows (B >= 1, d) of finite numbers -> float32 (B, d) on the CPU; InvalidInput naming
    the row and the problem otherwise. finite=False leaves the NaN / infinity check to the
    caller (`finite_parts`, one check for a whole batch)."""
    if isinstance(rows, Tensor):
        if rows.dim() != 2 or rows.shape[1] != d or rows.shape[0] < 1:
            raise InvalidInput(f"expected {noun} of shape (B >= 1, {d}), got {tuple(rows.shape)}")
        x = rows.detach().to(device="cpu", dtype=torch.float32)
    else:
        if len(rows) == 0:
            raise InvalidInput(f"expected at least one {noun}, got none")
        for i, row in enumerate(rows):
            if len(row) != d:
                raise InvalidInput(f"{noun} {i}: expected {d} values per {noun}, got {len(row)}")
        try:  # numpy parses nested lists of floats ~10x faster than torch.tensor
            x = torch.from_numpy(np.asarray(rows, dtype=np.float32))
        except (TypeError, ValueError):
            raise InvalidInput(f"{noun}s must be lists of numbers") from None
        if x.dim() != 2:
            raise InvalidInput(f"{noun}s must be lists of numbers")
    bad = first_bad(x) if finite else None
    if bad is not None:
        raise InvalidInput(f"{noun} {bad} contains NaN or infinity")
    return x


def finite_parts(
    parts: list[tuple[int, Tensor]],
) -> tuple[list[tuple[int, Tensor]], list[tuple[int, int]]]:
    """The (request, rows) parts whose rows are all finite, and (request, first bad row) for
    the others: one reduction over the whole batch in the usual case, where all are."""
    if not parts or all_finite(torch.cat([x for _, x in parts]) if len(parts) > 1 else parts[0][1]):
        return parts, []
    good: list[tuple[int, Tensor]] = []
    bad: list[tuple[int, int]] = []
    for i, x in parts:
        row = first_bad(x)
        if row is None:
            good.append((i, x))
        else:
            bad.append((i, row))
    return good, bad


def assign_op(slots: list[int], z: Tensor, w: Write) -> Assign:
    records = None if w.records is None else tuple(w.records)
    return Assign(slots, z, w.namespace, records, w.pinned)


def checked_namespace(name: str) -> str:
    try:
        return check_namespace(name)
    except ValueError as e:
        raise InvalidInput(str(e)) from None


def read_key(r: Read) -> tuple[int, float | None, str | None, int]:
    """Reads with equal keys share one bank read."""
    return (r.top_k, r.min_score, r.namespace, r.rescore)


@dataclass
class Found:
    """One request's share of a bank read: (n, k) tensors, and its reconstructions once known."""

    i: int
    slots: Tensor
    scores: Tensor
    counts: Tensor
    code_scores: Tensor | None
    recon: Tensor | None
    records: list[list[bytes | None]] | None = None


def first_bad(z: Tensor) -> int | None:
    """The first row of z with a NaN or infinity, else None."""
    if all_finite(z):  # the usual case, in one reduction
        return None
    bad = ~torch.isfinite(z).all(dim=1)
    return int(bad.nonzero()[0]) if bool(bad.any()) else None
