"""The enumerations that settings, request schemas and code share, declared once.

Plain `Literal` aliases with no torch import, so `service.settings` can check MT_* values
before anything heavy loads (a bad setting fails fast).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["BANK_DTYPES", "FSYNC_POLICIES", "WRITE_MODES", "BankDtype", "FsyncPolicy", "WriteMode"]

BankDtype = Literal["float32", "float16", "int8"]
"""How the bank stores codes (model/quant.py)."""

WriteMode = Literal["mean", "each"]
""""mean": one slot holds the mean code of a write's items (the paper); "each": one per item."""

FsyncPolicy = Literal["always", "everysec", "off"]
"""When the write-ahead log is fsynced (service/wal.py, docs/DURABILITY.md)."""

BANK_DTYPES: tuple[str, ...] = get_args(BankDtype)
WRITE_MODES: tuple[str, ...] = get_args(WriteMode)
FSYNC_POLICIES: tuple[str, ...] = get_args(FsyncPolicy)
