"""Durability of the bank: snapshot generations (service/store.py) + write-ahead log (wal.py).

One folder holds everything (docs/DURABILITY.md has the rules and the operator's view):

    LOCK                         flock: one process owns the folder
    wal.log                      mutations since the oldest kept snapshot, fingerprinted
    snap-<lsn:016d>.safetensors  the newest `keep` snapshots
    quarantine-<time>/           what allow_fresh moved aside (never deleted)

The engine's contract:
- at start, `recover(make_bank, ...)` returns the bank: the newest valid snapshot plus the WAL
  records after its LSN (a fresh `make_bank()` plus the whole WAL when there is no snapshot);
- every mutation is logged under the engine's bank lock *before* the bank changes
  (`log_write(slots, codes)` with the float32 codes given to `bank.assign`, `log_delete`,
  `log_clear`), so a failed append (DiskFullError) leaves the bank unchanged;
- a snapshot is a copy of `bank.state_dict()` and `last_lsn`, both taken under the bank lock,
  passed to `snapshot(state, lsn)` outside it; the WAL then drops the records that every kept
  snapshot holds.

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

from model.errors import SlotNotFound, SnapshotError
from model.memory import MemoryBank
from service.store import LoadResult, SnapshotInfo, SnapshotStore
from service.wal import (
    FSYNC_POLICIES,
    DiskFullError,
    PersistenceError,
    RecoveryError,
    WalCorruptError,
    WalFingerprintError,
    WalRecord,
    WriteAheadLog,
    fsync_dir,
    os_error,
)

__all__ = [
    "DiskFullError",
    "Persistence",
    "PersistenceError",
    "Recovery",
    "RecoveryError",
    "SnapshotError",
    "SnapshotInfo",
    "WalCorruptError",
    "WalFingerprintError",
]

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
    snapshot and the WAL), move the files to quarantine-<time>/ and start from `make_bank()`
    instead of raising RecoveryError.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: str = "always",
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

    # ------------------------------------------------------------------ recover

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
        that would lose data and allow_fresh is off. Call once, before any log_* call."""
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
        assert self._store is not None
        warnings: list[str] = []
        problems: list[str] = []
        wal: WriteAheadLog | None = None
        loaded: LoadResult | None = None
        try:
            wal = WriteAheadLog(
                self.directory / WAL_NAME, fsync=self.fsync, fingerprint=fingerprint
            )
        except RecoveryError as e:
            problems.append(str(e))
        all_bad: str | None = None
        try:
            loaded = self._store.load_latest(
                fingerprint=fingerprint, capacity=capacity, m=m, device=device
            )
        except SnapshotError as e:
            all_bad = str(e)
        if loaded is not None:
            warnings += [f"skipped snapshot {p.name}: {why}" for p, why in loaded.skipped]
        if wal is not None and not problems:
            start = loaded.lsn if loaded is not None else 0
            if all_bad is not None and wal.base_lsn == 0:
                # The log still holds every mutation since the bank was empty: no loss.
                warnings.append(f"{all_bad}; rebuilt the bank from the whole {WAL_NAME}")
            elif all_bad is not None:
                problems.append(all_bad)
            elif wal.base_lsn > start:
                what = f"snapshot {loaded.info.path.name}" if loaded else "no snapshot file"
                problems.append(
                    f"the newest valid snapshot is at lsn {start} ({what}) but {WAL_NAME} "
                    f"starts after lsn {wal.base_lsn}: mutations {start + 1}..{wal.base_lsn} "
                    f"are in no readable file"
                )
        elif all_bad is not None:
            problems.append(all_bad)
        if problems:
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
            log.warning("%s", warnings[-1])
            wal = WriteAheadLog(
                self.directory / WAL_NAME, fsync=self.fsync, fingerprint=fingerprint
            )
            loaded = None
        assert wal is not None
        self._wal = wal
        warnings += wal.warnings

        if loaded is not None:
            bank, start = loaded.bank, loaded.lsn
        else:
            bank, start = make_bank(), 0
            if bank.capacity != capacity or bank.m != m:
                raise ValueError(
                    f"expected make_bank() to build capacity={capacity}, m={m}, got "
                    f"capacity={bank.capacity}, m={bank.m}"
                )
        if wal.created and start > 0:
            warnings.append(
                f"{WAL_NAME} was missing: started a new one after snapshot lsn {start}; "
                "mutations after that snapshot, if there were any, are lost"
            )
        replayed = self._replay(bank, wal, start, warnings)
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

    def _replay(self, bank: MemoryBank, wal: WriteAheadLog, start: int, warnings: list[str]) -> int:
        replayed = 0
        missing_deletes = []
        for rec in wal.records(after_lsn=start):
            try:
                self._apply(bank, rec)
            except SlotNotFound:
                missing_deletes.append(rec.lsn)  # a delete of a free slot changes nothing
            except ValueError as e:
                raise RecoveryError(
                    f"{WAL_NAME}: record lsn {rec.lsn} ({rec.op}) cannot be replayed into a "
                    f"bank of capacity {bank.capacity}, m {bank.m}: {e}"
                ) from e
            replayed += 1
        if missing_deletes:
            warnings.append(
                f"{WAL_NAME}: {len(missing_deletes)} delete(s) of free slots replayed as no-ops "
                f"(lsn {missing_deletes[:5]})"
            )
        return replayed

    @staticmethod
    def _apply(bank: MemoryBank, rec: WalRecord) -> None:
        if rec.op == "write":
            assert rec.slots is not None and rec.codes is not None
            bank.assign(rec.slots, rec.codes)
        elif rec.op == "delete":
            assert rec.slot is not None
            bank.delete(rec.slot)
        else:
            bank.clear()

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

    # ------------------------------------------------------------------ log

    def _log(self) -> WriteAheadLog:
        if self._wal is None:
            raise PersistenceError("persistence is not open: call recover() first")
        return self._wal

    def log_write(self, slots: Any, codes: Tensor) -> int:
        """Log codes (n, m) float32 about to be assigned to slots (n,); returns the LSN.
        Call under the bank lock before `bank.assign`; DiskFullError / PersistenceError mean
        nothing was logged and the bank must not change."""
        return self._log().append_write(slots, codes)

    def log_writes(self, writes: Sequence[tuple[Any, Tensor]]) -> list[int]:
        """Log several writes (slots, codes) in order, with one fsync (WriteAheadLog.append_writes);
        returns their LSNs. All or nothing: on DiskFullError / PersistenceError none is logged
        and the bank must not change."""
        return self._log().append_writes(writes)

    def log_delete(self, slot: int) -> int:
        """Log a delete (call after checking the slot is occupied, before `bank.delete`)."""
        return self._log().append_delete(slot)

    def log_clear(self) -> int:
        """Log a clear (before `bank.clear`)."""
        return self._log().append_clear()

    @property
    def last_lsn(self) -> int:
        """The LSN of the last logged mutation (read it under the bank lock with the state)."""
        return self._log().last_lsn

    # ------------------------------------------------------------------ snapshot

    @property
    def last_snapshot(self) -> SnapshotInfo | None:
        return self._last_snapshot

    def snapshot(self, state: Mapping[str, Tensor] | MemoryBank, lsn: int) -> SnapshotInfo:
        """Save state (a copy of `bank.state_dict()` taken with `last_lsn` under the bank
        lock) as snapshot `lsn`, keep the newest `keep`, and drop the WAL records that every
        kept snapshot holds. Safe to call from a background thread while writes go on.

        DiskFullError / PersistenceError when the snapshot cannot be written: the previous
        snapshots and the WAL are unchanged, so nothing is lost.
        """
        wal = self._log()
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

    # ------------------------------------------------------------------ stats / close

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
