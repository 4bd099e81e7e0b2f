"""Durability of the bank: snapshot generations (service/store.py) + write-ahead log (wal.py).

One folder holds everything (docs/DURABILITY.md has the rules and the operator's view):

    LOCK                         marks the folder; the folder's flock: one process owns it
    MANIFEST.json                the folder's bank, kept snapshots, last clean stop
    wal.log                      mutations since the oldest kept snapshot, fingerprinted
    snap-<lsn:016d>.safetensors  the newest `keep` snapshots
    quarantine-<time>/           what recovery did not use (never deleted)

The engine's contract:
- at start, `recover(make_bank, ...)` returns the bank: the newest valid snapshot plus the WAL
  records after its LSN (a fresh `make_bank()` plus the whole WAL when there is no snapshot),
  or refuses when that could lose data (the rules are service/recovery.py's);
- `log(ops)` is the memory loop's durability callback (`IDRPMemory(..., log=persistence.log)`):
  it logs a group of operations (model/ops.py, encoded by service/records.py) with one append,
  *before* the loop applies them, so a failed append (DiskFullError) leaves the bank unchanged;
- a snapshot is a copy of the bank's state and the LSN it holds, taken together under the bank
  lock (`IDRPMemory.checkpoint()`), passed to `snapshot(state, lsn)` outside it; the WAL then
  drops the records that every kept snapshot holds.

Read counters (counts, last_access, reads/hits/misses, tick) change on reads, which are not
logged: after a crash they are those of the snapshot, at most one snapshot interval old.
Codes and occupancy are exact.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.bank import MemoryBank
from model.enums import FSYNC_POLICIES, FsyncPolicy
from model.errors import PersistenceError, os_error
from model.ops import Op
from service import manifest, records
from service.manifest import Manifest
from service.recovery import Recovery, recover_folder
from service.store import SnapshotInfo, SnapshotStore
from service.wal import WriteAheadLog

__all__ = ["Persistence", "Recovery"]

log = logging.getLogger(__name__)

LOCK_NAME = "LOCK"


class Persistence:
    """Snapshots + WAL in one folder for one bank; see the module docstring.

    allow_fresh: when the saved state cannot be recovered without loss (every snapshot bad, a
    WAL from another model or corrupt in the middle, records missing between the newest valid
    snapshot and the WAL, a record that cannot be replayed), move the files to
    quarantine-<time>/ and start from `make_bank()` instead of raising RecoveryError.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = "always",
        keep: int = 3,
        allow_fresh: bool = False,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"expected fsync in {list(FSYNC_POLICIES)}, got {fsync!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"expected keep to be an int >= 1, got {keep!r}")
        self.directory = Path(directory)
        self.fsync = fsync
        self.keep = keep
        self.allow_fresh = allow_fresh
        self._wal: WriteAheadLog | None = None
        self._store: SnapshotStore | None = None
        self._lock_fd: int | None = None
        self._fingerprint = ""
        self._initial_count = 0
        self._last_snapshot: SnapshotInfo | None = None
        self._manifest: Manifest | None = None
        self._snapshot_lock = threading.Lock()

    def recover(
        self,
        make_bank: Callable[[], MemoryBank],
        *,
        fingerprint: str,
        capacity: int,
        m: int,
        device: str | torch.device = "cpu",
    ) -> Recovery:
        """Open the folder and rebuild the bank; RecoveryError (naming every problem) when
        that would lose data and allow_fresh is off. Call once, before any `log` call."""
        if self._wal is not None:
            raise RuntimeError("recover() was already called")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(f"expected a non-empty fingerprint string, got {fingerprint!r}")
        self._store = SnapshotStore(self.directory, keep=self.keep)
        self._take_lock()
        try:
            rec, self._wal, self._manifest = recover_folder(
                self._store,
                make_bank,
                fingerprint=fingerprint,
                capacity=capacity,
                m=m,
                device=device,
                fsync=self.fsync,
                allow_fresh=self.allow_fresh,
            )
        except BaseException:
            self.close()
            raise
        self._fingerprint = fingerprint
        self._initial_count = rec.bank.initial_count
        self._last_snapshot = rec.snapshot
        return rec

    def _take_lock(self) -> None:
        """flock the folder itself (its directory fd), not only the LOCK file: deleting LOCK
        by hand cannot let a second process in (a new LOCK file would be a new inode, and its
        flock a different lock). LOCK stays as the folder's marker for people."""
        path = self.directory / LOCK_NAME
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise os_error(f"cannot open {self.directory}", e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PersistenceError(
                f"another process is using the snapshot folder {self.directory} (it holds "
                f"the folder's lock): one process owns a bank"
            ) from None
        self._lock_fd = fd
        try:
            path.touch()
        except OSError as e:
            self.close()
            raise os_error(f"cannot create {path}", e) from e

    def _open_log(self) -> WriteAheadLog:
        if self._wal is None:
            raise PersistenceError("persistence is not open: call recover() first")
        return self._wal

    def log(self, ops: Sequence[Op]) -> int:
        """Log operations (all or nothing, one append and, with fsync "always", one fsync)
        and return the LSN of the last one: the memory loop's durability callback, called
        under its lock before it applies them. DiskFullError / PersistenceError (or a
        ValueError for an operation that cannot be encoded) mean nothing was logged and the
        bank must not change."""
        wal = self._open_log()
        lsns = wal.append([records.encode(op) for op in ops])
        return lsns[-1] if lsns else wal.last_lsn

    def _write_manifest(self, **changes: object) -> None:
        assert self._manifest is not None
        self._manifest = self._manifest.with_(**changes)
        manifest.write(self.directory, self._manifest)

    @property
    def last_lsn(self) -> int:
        """The LSN of the last logged operation."""
        return self._open_log().last_lsn

    @property
    def last_snapshot(self) -> SnapshotInfo | None:
        return self._last_snapshot

    def snapshot(self, state: Mapping[str, Tensor] | MemoryBank, lsn: int) -> SnapshotInfo:
        """Save state (a copy of the bank's state and the LSN it holds, taken together under
        the bank lock: `IDRPMemory.checkpoint()`) as snapshot `lsn`, keep the newest `keep`,
        and drop the WAL records that every kept snapshot holds. Safe to call from a
        background thread while writes go on.

        DiskFullError / PersistenceError when the snapshot cannot be written: the previous
        snapshots and the WAL are unchanged, so nothing is lost.
        """
        wal = self._open_log()
        assert self._store is not None
        if isinstance(lsn, bool) or not isinstance(lsn, int) or not 0 <= lsn <= wal.last_lsn:
            raise ValueError(f"expected lsn in [0, {wal.last_lsn}] (last logged), got {lsn!r}")
        with self._snapshot_lock:
            last = self._last_snapshot
            if last is not None and lsn < last.lsn:
                raise ValueError(f"expected lsn >= {last.lsn} (the last snapshot's), got {lsn}")
            info = self._store.save(
                state, fingerprint=self._fingerprint, lsn=lsn, initial_count=self._initial_count
            )
            self._last_snapshot = info
            # Keep every record after the OLDEST kept snapshot, and all of them until `keep`
            # snapshots exist, so that falling back to any kept generation (or to an empty
            # bank) replays to the same state when the newest snapshot turns out damaged.
            kept = self._store.lsns()
            self._write_manifest(snapshots=tuple(kept))
            if len(kept) >= self.keep:
                try:
                    wal.truncate_through(min(kept))
                except PersistenceError as e:  # the snapshot is good; the log is only longer
                    log.warning("snapshot %s saved, but %s", info.path.name, e)
            return info

    def stats(self) -> dict[str, Any]:
        """Facts for /stats and metrics."""
        wal, snap = self._wal, self._last_snapshot
        return {
            "fsync": self.fsync,
            "last_lsn": wal.last_lsn if wal is not None else 0,
            "wal_records": len(wal) if wal is not None else 0,
            "wal_bytes": wal.size_bytes if wal is not None else 0,
            "snapshot_lsn": snap.lsn if snap is not None else None,
            "snapshot_bytes": snap.bytes if snap is not None else None,
            "snapshot_created_at": snap.created_at if snap is not None else None,
            "snapshot_seconds": snap.seconds if snap is not None else None,
        }

    def close(self, *, clean: bool = True) -> None:
        """fsync and close the WAL, record the clean stop in the manifest (its last LSN) and
        release the folder. Idempotent. Take a last snapshot (if wanted) before this.
        clean=False lets go as a crash would (no clean-stop record): what tests use for
        kill -9."""
        if self._wal is not None and not self._wal.closed:
            last = self._wal.last_lsn
            self._wal.close()  # fsyncs: every logged mutation is on disk now
            if clean and self._manifest is not None:  # proves where the log ended
                self._write_manifest(clean_stop_lsn=last)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
