"""Domain errors of MemoryTransit, in one home.

model/ and service/ raise these; service/errors.py maps each to one HTTP status in one place.
model code never imports anything from service/.

    error                          raised when                                         HTTP
    InvalidInput (a ValueError)    input the memory loop or the engine refuses          422
    SlotNotFound (a KeyError)      a slot out of range or not occupied                  404
    SnapshotError (a ValueError)   a snapshot file fails a check (which one is named)   -
    CheckpointError (a ValueError) a weights file does not match the code               -
    NotReady                       the engine is starting, stopping or failed           503
    PersistenceError               the log or a snapshot could not be written           507
      DiskFullError                ... for lack of space (ENOSPC, EDQUOT, EFBIG)        507
      RecoveryError                saved state cannot be recovered without loss         -
        WalCorruptError            a damaged log record with valid records after it     -
        WalFingerprintError        a log written for another codec                      -
"""

from __future__ import annotations

import errno

__all__ = [
    "CheckpointError",
    "DiskFullError",
    "InvalidInput",
    "MemoryTransitError",
    "NotReady",
    "PersistenceError",
    "RecoveryError",
    "SlotNotFound",
    "SnapshotError",
    "WalCorruptError",
    "WalFingerprintError",
    "os_error",
]


class MemoryTransitError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInput(MemoryTransitError, ValueError):
    """Input the memory refuses; the message names the item and the problem."""


class SlotNotFound(MemoryTransitError, KeyError):
    """A slot index that is out of range or not occupied."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "slot not found"


class BankFull(MemoryTransitError):
    """A write needs more slots than are free or evictable (the others are pinned, or the
    namespace at its quota has too few unpinned slots): nothing was written."""


class NamespaceNotFound(MemoryTransitError, KeyError):
    """A namespace that holds no slot."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "namespace not found"


class SnapshotError(MemoryTransitError, ValueError):
    """A bank snapshot that cannot be loaded: the message says which check failed."""


class SnapshotMismatch(SnapshotError):
    """A readable, intact snapshot made for another bank (model, capacity or m): a setting
    that does not match existing data, never skipped as if the file were damaged."""


class CheckpointError(MemoryTransitError, ValueError):
    """A weights file whose keys, shapes or config do not match the code."""


class NotReady(MemoryTransitError):
    """The engine is starting, stopping or failed to start: try again later."""


class PersistenceError(MemoryTransitError):
    """The log or a snapshot could not be written (the mutation was not made)."""


class DiskFullError(PersistenceError):
    """A write failed for lack of space (ENOSPC, EDQUOT, EFBIG): the HTTP layer's 507."""


class RecoveryError(PersistenceError):
    """The saved state cannot be recovered without losing data: the service refuses to start."""


class WalCorruptError(RecoveryError):
    """A damaged record with valid records after it (or a malformed file header)."""


class WalFingerprintError(RecoveryError):
    """The log was written for another codec (model fingerprint)."""


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def os_error(what: str, e: OSError) -> PersistenceError:
    """DiskFullError for a full disk, PersistenceError otherwise; the message names `what`."""
    detail = f"{what}: {e.strerror or e}"
    if e.errno in _FULL_ERRNOS:
        return DiskFullError(f"{detail} (disk full)")
    return PersistenceError(detail)
