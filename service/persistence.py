"""Durability of the bank: snapshot generations (service/store.py) + write-ahead log (wal.py).

One folder holds everything (docs/DURABILITY.md has the rules and the operator's view):

    LOCK                         flock: one process owns the folder
    wal.log                      mutations since the oldest kept snapshot, fingerprinted
    snap-<lsn:016d>.safetensors  the newest `keep` snapshots
    quarantine-<time>/           what allow_fresh moved aside (never deleted)

The engine's contract:
- at start, `recover(make_bank, ...)` returns the bank: the newest valid snapshot plus the WAL
  records after its LSN (a fresh `make_bank()` plus the whole WAL when there is no snapshot);
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.bank import MemoryBank
from model.durable import fsync_dir
from model.enums import FSYNC_POLICIES, FsyncPolicy
from model.errors import (
    PersistenceError,
    RecoveryError,
    SlotNotFound,
    SnapshotError,
    WalCorruptError,
    os_error,
)
from model.ops import Free, Op
from service import records
from service.store import LoadResult, SnapshotInfo, SnapshotStore
from service.wal import WriteAheadLog

__all__ = ["Persistence", "Recovery"]

log = logging.getLogger(__name__)

WAL_NAME = "wal.log"
LOCK_NAME = "LOCK"
FRESH_HINT = "set MT_ALLOW_FRESH=1 (allow_fresh=True) to move them aside and start empty"


@dataclass
class Recovery:
    """What `Persistence.recover` found: the bank to serve, the snapshot it started from (None
    when it started empty), how many WAL records were replayed on top, and warnings (skipped
    snapshots, a torn WAL tail, files moved aside) for the log and /readyz."""

    bank: MemoryBank
    snapshot: SnapshotInfo | None
    replayed: int
    warnings: list[str] = field(default_factory=list)
    last_lsn: int = 0


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
            return self._recover(make_bank, fingerprint, capacity, m, device)
        except BaseException:
            self.close()
            raise

    def _take_lock(self) -> None:
        path = self.directory / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise os_error(f"cannot open {path}", e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PersistenceError(
                f"another process is using the snapshot folder {self.directory} (it holds "
                f"{LOCK_NAME}): one process owns a bank"
            ) from None
        self._lock_fd = fd

    def _recover(
        self,
        make_bank: Callable[[], MemoryBank],
        fingerprint: str,
        capacity: int,
        m: int,
        device: str | torch.device,
    ) -> Recovery:
        warnings: list[str] = []
        wal, loaded, problems = self._open_files(fingerprint, capacity, m, device, warnings)
        bank: MemoryBank | None = None
        start = replayed = 0
        if wal is not None and not problems:
            bank, start = self._base_bank(loaded, make_bank, capacity, m)
            warnings += wal.warnings
            if wal.created and start > 0:
                warnings.append(
                    f"{WAL_NAME} was missing: started a new one after snapshot lsn {start}; "
                    "mutations after that snapshot, if there were any, are lost"
                )
            try:
                replayed = self._replay(bank, wal, start, warnings)
            except RecoveryError as e:
                problems.append(str(e))
        if problems:
            wal = self._start_fresh(wal, problems, fingerprint, warnings)
            loaded, replayed = None, 0
            bank, start = self._base_bank(None, make_bank, capacity, m)
        assert wal is not None and bank is not None
        self._wal = wal
        if wal.last_lsn < start:  # new LSNs must come after the snapshot's
            wal.truncate_through(start)
        for w in warnings:
            log.warning("%s", w)
        self._fingerprint = fingerprint
        self._initial_count = bank.initial_count
        self._last_snapshot = loaded.info if loaded is not None else None
        return Recovery(
            bank=bank,
            snapshot=self._last_snapshot,
            replayed=replayed,
            warnings=warnings,
            last_lsn=wal.last_lsn,
        )

    def _open_wal(self, fingerprint: str) -> WriteAheadLog:
        return WriteAheadLog(self.directory / WAL_NAME, fsync=self.fsync, tag=fingerprint)

    def _open_files(
        self,
        fingerprint: str,
        capacity: int,
        m: int,
        device: str | torch.device,
        warnings: list[str],
    ) -> tuple[WriteAheadLog | None, LoadResult | None, list[str]]:
        """The WAL (None when it cannot be opened), the newest valid snapshot (None when there
        is none) and the problems that make recovering them lose data."""
        assert self._store is not None
        problems: list[str] = []
        wal: WriteAheadLog | None = None
        try:
            wal = self._open_wal(fingerprint)
        except RecoveryError as e:
            problems.append(str(e))
        loaded: LoadResult | None = None
        all_bad: str | None = None
        try:
            loaded = self._store.load_latest(
                fingerprint=fingerprint, capacity=capacity, m=m, device=device
            )
        except SnapshotError as e:
            all_bad = str(e)
        if loaded is not None:
            warnings += [f"skipped snapshot {p.name}: {why}" for p, why in loaded.skipped]
        start = loaded.lsn if loaded is not None else 0
        if all_bad is not None and wal is not None and wal.base_lsn == 0:
            # The log still holds every mutation since the bank was empty: no loss.
            warnings.append(f"{all_bad}; rebuilt the bank from the whole {WAL_NAME}")
        elif all_bad is not None:
            problems.append(all_bad)
        elif wal is not None and wal.base_lsn > start:
            what = f"snapshot {loaded.info.path.name}" if loaded else "no snapshot file"
            problems.append(
                f"the newest valid snapshot is at lsn {start} ({what}) but {WAL_NAME} "
                f"starts after lsn {wal.base_lsn}: mutations {start + 1}..{wal.base_lsn} "
                f"are in no readable file"
            )
        return wal, loaded, problems

    def _start_fresh(
        self, wal: WriteAheadLog | None, problems: list[str], fingerprint: str, warnings: list[str]
    ) -> WriteAheadLog:
        """RecoveryError listing the problems; with allow_fresh, move the files aside and open
        a new, empty WAL instead."""
        if wal is not None:
            wal.close()
        if not self.allow_fresh:
            raise RecoveryError(
                f"cannot recover the bank from {self.directory} without losing data: "
                + "; ".join(problems)
                + f". Nothing was changed: repair or restore the files, or {FRESH_HINT}."
            )
        moved_to = self._quarantine()
        warnings.append(
            f"started with an empty bank (allow_fresh): {'; '.join(problems)}; "
            f"the old files were moved to {moved_to}"
        )
        return self._open_wal(fingerprint)

    @staticmethod
    def _base_bank(
        loaded: LoadResult | None, make_bank: Callable[[], MemoryBank], capacity: int, m: int
    ) -> tuple[MemoryBank, int]:
        """The bank replay starts from and its LSN: the snapshot's, or a new empty one."""
        if loaded is not None:
            return loaded.bank, loaded.lsn
        bank = make_bank()
        if bank.capacity != capacity or bank.m != m:
            raise ValueError(
                f"expected make_bank() to build capacity={capacity}, m={m}, got "
                f"capacity={bank.capacity}, m={bank.m}"
            )
        return bank, 0

    def _replay(self, bank: MemoryBank, wal: WriteAheadLog, start: int, warnings: list[str]) -> int:
        """Apply the records after `start` to the bank; RecoveryError naming the first record
        that is malformed or cannot be applied."""
        replayed = 0
        missing_deletes = []
        for lsn, data in wal.records(after_lsn=start):
            try:
                op = records.decode(data)
            except ValueError as e:
                raise WalCorruptError(f"{WAL_NAME}: record lsn {lsn} is malformed: {e}") from e
            try:
                bank.apply(op)
            except SlotNotFound:
                if not isinstance(op, Free):
                    raise
                missing_deletes.append(lsn)  # a delete of a free slot changes nothing
            except ValueError as e:
                raise RecoveryError(
                    f"{WAL_NAME}: record lsn {lsn} ({records.kind(op)}) cannot be replayed into "
                    f"a bank of capacity {bank.capacity}, m {bank.m}: {e}"
                ) from e
            replayed += 1
        if missing_deletes:
            warnings.append(
                f"{WAL_NAME}: {len(missing_deletes)} delete(s) of free slots replayed as no-ops "
                f"(lsn {missing_deletes[:5]})"
            )
        return replayed

    def _quarantine(self) -> Path:
        """Move the snapshots and the WAL into quarantine-<UTC time>/ (nothing is deleted)."""
        assert self._store is not None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.directory / f"quarantine-{stamp}"
        try:
            target.mkdir()
            names = [p.name for _, p in self._store.files()]
            names += [WAL_NAME] if (self.directory / WAL_NAME).exists() else []
            for name in names:
                os.replace(self.directory / name, target / name)
            fsync_dir(target)
            fsync_dir(self.directory)
        except OSError as e:
            raise os_error(f"cannot move the unreadable files to {target}", e) from e
        return target

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

    def close(self) -> None:
        """fsync and close the WAL and release the folder. Idempotent. Take a last snapshot
        (if wanted) before this."""
        if self._wal is not None:
            self._wal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
