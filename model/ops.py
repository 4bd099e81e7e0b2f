"""The bank's mutations as values: what a write stores, and the operations a log holds.

The memory loop (model/memory.py) turns each request into operations, hands them to its
durability callback *before* applying them (`MemoryBank.apply`), and a log replays the same
operations at start. service/records.py turns them into bytes and back.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from model.enums import DEFAULT_NAMESPACE, WRITE_MODES, WriteMode

__all__ = ["WRITE_MODES", "Assign", "Clear", "Forget", "Free", "Op", "Pin", "WriteMode", "combine"]


@dataclass(frozen=True)
class Assign:
    """Store codes (n, m) float32 in these distinct slots (n,): `MemoryBank.assign`, in a
    namespace, pinned or not, with one opaque record per slot (or none: model/slots.py)."""

    slots: list[int]
    codes: Tensor
    namespace: str = DEFAULT_NAMESPACE
    records: tuple[bytes | None, ...] | None = None
    pinned: bool = False


@dataclass(frozen=True)
class Free:
    """Free one occupied slot."""

    slot: int


@dataclass(frozen=True)
class Forget:
    """Free these occupied slots at once (a whole namespace: `DELETE /namespaces/{ns}`)."""

    slots: list[int]


@dataclass(frozen=True)
class Pin:
    """Pin (never evicted) or unpin these occupied slots."""

    slots: list[int]
    pinned: bool


@dataclass(frozen=True)
class Clear:
    """Free every slot."""


Op = Assign | Free | Forget | Pin | Clear


def combine(z: Tensor, mode: str) -> Tensor:
    """The rows a write stores for codes z (B, m): "mean" -> their mean (1, m), the paper's
    write; "each" -> z itself, one slot per row."""
    if mode not in WRITE_MODES:
        raise ValueError(f"expected mode in {list(WRITE_MODES)}, got {mode!r}")
    return z.mean(dim=0, keepdim=True) if mode == "mean" else z
