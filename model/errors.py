"""Domain errors shared by model/ and service/.

service/errors.py maps each of these to one HTTP status in one place; model code never
imports anything from service/.
"""

from __future__ import annotations


class MemoryTransitError(Exception):
    """Base class of every error this package raises on purpose."""


class SlotNotFound(MemoryTransitError, KeyError):
    """A slot index that is out of range or not occupied."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "slot not found"


class SnapshotError(MemoryTransitError, ValueError):
    """A bank snapshot that cannot be loaded: the message says which check failed."""


class CheckpointError(MemoryTransitError, ValueError):
    """A weights file whose keys, shapes or config do not match the code."""
