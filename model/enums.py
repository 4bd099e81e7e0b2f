"""The enumerations and names that settings, request schemas and code share, declared once.

Plain `Literal` aliases and the namespace rule, with no torch import, so `service.settings` can
check MT_* values before anything heavy loads (a bad setting fails fast) and `service.client`
imports without torch.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

__all__ = [
    "BANK_DTYPES",
    "DEFAULT_NAMESPACE",
    "FSYNC_POLICIES",
    "NAMESPACE_PATTERN",
    "WRITE_MODES",
    "BankDtype",
    "FsyncPolicy",
    "WriteMode",
    "check_namespace",
    "stored_slots",
]

BankDtype = Literal["float32", "float16", "int8", "rate"]
"""How the bank stores codes (model/quant.py); "rate": rate-allocated bits, packed."""

WriteMode = Literal["mean", "each"]
""""mean": one slot holds the mean code of a write's items (the paper); "each": one per item."""

FsyncPolicy = Literal["always", "everysec", "off"]
"""When the write-ahead log is fsynced (service/wal.py, docs/DURABILITY.md)."""

BANK_DTYPES: tuple[str, ...] = get_args(BankDtype)
WRITE_MODES: tuple[str, ...] = get_args(WriteMode)
FSYNC_POLICIES: tuple[str, ...] = get_args(FsyncPolicy)


def stored_slots(items: int, mode: str) -> int:
    """The slots a write of this many items takes: one per item ("each"), else one ("mean")."""
    return items if mode == "each" else 1


# Namespaces (model/slots.py): every slot belongs to one; "default" when a write names none.
DEFAULT_NAMESPACE = "default"
NAMESPACE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}"
_NAMESPACE = re.compile(NAMESPACE_PATTERN)


def check_namespace(name: object) -> str:
    """A namespace name: 1-64 characters, letters, digits and . _ : @ - (not first); else
    ValueError naming the problem."""
    if not isinstance(name, str) or _NAMESPACE.fullmatch(name) is None:
        shown = repr(name) if not isinstance(name, str) or len(name) <= 70 else repr(name[:64])
        raise ValueError(
            "expected a namespace of 1-64 characters: letters, digits and . _ : @ - (not "
            f"first), got {shown}"
        )
    return name
