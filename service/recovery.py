"""Recovery of a snapshot folder: which files to trust, what to replay, when to refuse.

The bank served is the newest snapshot that passes every check plus the WAL records after its
LSN. Start-up is refused (RecoveryError naming every file and check, and nothing on disk
changed) whenever that could serve fewer mutations than were acknowledged:
- MANIFEST.json (service/manifest.py) is damaged, or names another model, capacity or m (both
  values named), or an intact snapshot was made for another bank;
- every snapshot is damaged, unless wal.log exists and starts at LSN 0 (then it holds every
  mutation of the folder's life; a log created by this start proves nothing);
- wal.log starts after the newest valid snapshot (the records between are in no file);
- wal.log is missing although the folder has held data, unless the manifest proves that the
  last run stopped cleanly at the LSN of the newest valid snapshot;
- the last clean stop's LSN is beyond what the files hold (a truncated log);
- wal.log is damaged (not only a torn tail), from another model, or holds a record that cannot
  be replayed.
Files change only once recovery has succeeded: skipped (damaged) snapshots are moved into
quarantine-<UTC time>/ so that no later snapshot overwrites or prunes them, the bytes of a torn
WAL tail are saved there before the cut, a missing wal.log is created and the manifest written.
allow_fresh: instead of refusing, move every file of the folder into quarantine and start empty.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from model.bank import MemoryBank
from model.durable import atomic_write, fsync_dir, write_bytes
from model.enums import FsyncPolicy
from model.errors import (
    RecoveryError,
    SlotNotFound,
    SnapshotError,
    SnapshotMismatch,
    WalCorruptError,
    os_error,
)
from model.ops import Free
from service import manifest, records
from service.manifest import MANIFEST_NAME, Manifest
from service.store import LoadResult, SnapshotInfo, SnapshotStore
from service.wal import WriteAheadLog

__all__ = ["FRESH_HINT", "WAL_NAME", "Recovery", "recover_folder"]

log = logging.getLogger(__name__)

WAL_NAME = "wal.log"
FRESH_HINT = "set MT_ALLOW_FRESH=1 (allow_fresh=True) to move them aside and start empty"


@dataclass
class Recovery:
    """What recovery found: the bank to serve, the snapshot it started from (None when it
    started empty), how many WAL records were replayed on top, and warnings (skipped
    snapshots, a torn WAL tail, files moved aside) for the log and /readyz."""

    bank: MemoryBank
    snapshot: SnapshotInfo | None
    replayed: int
    warnings: list[str] = field(default_factory=list)
    last_lsn: int = 0


@dataclass
class _Found:
    """The folder's files as opened, before anything is changed."""

    manifest: Manifest | None = None
    wal: WriteAheadLog | None = None
    wal_existed: bool = False
    loaded: LoadResult | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.loaded.lsn if self.loaded is not None else 0


def recover_folder(
    store: SnapshotStore,
    make_bank: Callable[[], MemoryBank],
    *,
    fingerprint: str,
    capacity: int,
    m: int,
    device: str | torch.device,
    fsync: FsyncPolicy,
    allow_fresh: bool,
) -> tuple[Recovery, WriteAheadLog, Manifest]:
    """Recover the bank of store.directory (see the module docstring): the Recovery, the open
    WAL to append to, and the manifest now on disk."""
    directory = store.directory
    found = _open(store, fingerprint, capacity, m, device, fsync)
    bank, replayed = None, 0
    if not found.problems:
        bank = _base_bank(found.loaded, make_bank, capacity, m)
        assert found.wal is not None or not found.wal_existed
        if found.wal is not None:
            try:
                replayed = _replay(bank, found.wal, found.start, found.warnings)
            except RecoveryError as e:
                found.problems.append(str(e))
    warnings = found.warnings
    if found.problems:
        if found.wal is not None:
            found.wal.close()
        if not allow_fresh:
            raise RecoveryError(
                f"cannot recover the bank from {directory} without losing data: "
                + "; ".join(found.problems)
                + f". Nothing was changed: repair or restore the files, or {FRESH_HINT}."
            )
        names = [p.name for _, p in store.files()] + [
            n for n in (WAL_NAME, MANIFEST_NAME) if os.path.lexists(directory / n)
        ]
        moved_to = _quarantine(directory, names)
        warnings = [
            f"started with an empty bank (allow_fresh): {'; '.join(found.problems)}; "
            f"the old files were moved to {moved_to}"
        ]
        found = _Found()
        bank = _base_bank(None, make_bank, capacity, m)
    assert bank is not None
    wal = _settle(directory, found, fsync, fingerprint, warnings)
    state = found.manifest or Manifest(fingerprint, capacity, m)
    state = state.with_(snapshots=tuple(store.lsns()), clean_stop_lsn=None)
    manifest.write(directory, state)
    recovery = Recovery(
        bank=bank,
        snapshot=found.loaded.info if found.loaded is not None else None,
        replayed=replayed,
        warnings=warnings,
        last_lsn=wal.last_lsn,
    )
    return recovery, wal, state


def _open(
    store: SnapshotStore,
    fingerprint: str,
    capacity: int,
    m: int,
    device: str | torch.device,
    fsync: FsyncPolicy,
) -> _Found:
    """Open the manifest, the WAL and the newest valid snapshot, changing nothing, and list
    the problems that make serving them lose data."""
    directory, found = store.directory, _Found()
    try:
        found.manifest = manifest.read(directory)
    except RecoveryError as e:
        found.problems.append(str(e))
    if found.manifest is not None:
        found.problems += found.manifest.mismatch(fingerprint, capacity, m)
    path = directory / WAL_NAME
    found.wal_existed = path.exists() and path.stat().st_size > 0
    if found.wal_existed:
        try:
            found.wal = WriteAheadLog(path, fsync=fsync, tag=fingerprint, cut_torn=False)
        except RecoveryError as e:
            found.problems.append(str(e))
    all_bad: str | None = None
    try:
        found.loaded = store.load_latest(
            fingerprint=fingerprint, capacity=capacity, m=m, device=device
        )
    except SnapshotMismatch as e:
        found.problems.append(f"{e} (a setting that does not match the saved bank)")
    except SnapshotError as e:
        all_bad = str(e)
    if found.loaded is not None:
        found.warnings += [f"skipped snapshot {p.name}: {why}" for p, why in found.loaded.skipped]
    _check_coverage(found, all_bad, bool(store.files()))
    return found


def _check_coverage(found: _Found, all_bad: str | None, any_snapshot: bool) -> None:
    """The problems of a WAL and a snapshot that do not cover each other."""
    wal, start, man = found.wal, found.start, found.manifest
    if all_bad is not None:
        if wal is not None and wal.base_lsn == 0:
            found.warnings.append(f"{all_bad}; rebuilt the bank from the whole {WAL_NAME}")
        elif not found.wal_existed:
            found.problems.append(f"{all_bad}, and {WAL_NAME} is missing")
        else:
            found.problems.append(all_bad)
    elif wal is not None and wal.base_lsn > start:
        what = f"snapshot {found.loaded.info.path.name}" if found.loaded else "no snapshot file"
        found.problems.append(
            f"the newest valid snapshot is at lsn {start} ({what}) but {WAL_NAME} "
            f"starts after lsn {wal.base_lsn}: mutations {start + 1}..{wal.base_lsn} "
            f"are in no readable file"
        )
    clean = man.clean_stop_lsn if man is not None else None
    if not found.wal_existed and (any_snapshot or man is not None):
        # The folder has had a life (a manifest is written at every start): its log is gone.
        if clean is not None and clean == start and all_bad is None:
            if found.loaded is not None:
                found.warnings.append(
                    f"{WAL_NAME} was missing; the last run stopped cleanly at lsn {clean}, "
                    f"which snapshot {found.loaded.info.path.name} holds: nothing is lost, "
                    "started a new log"
                )
        elif all_bad is None:
            what = f"snapshot lsn {start}" if found.loaded is not None else "an empty bank"
            found.problems.append(
                f"{WAL_NAME} is missing and nothing proves that {what} holds every "
                f"acknowledged mutation ({MANIFEST_NAME} records "
                + ("no clean stop" if clean is None else f"a clean stop at lsn {clean}")
                + ")"
            )
    if clean is not None:
        held = max(start, wal.last_lsn if wal is not None else 0)
        if held < clean:
            found.problems.append(
                f"the last run stopped cleanly at lsn {clean} ({MANIFEST_NAME}) but the files "
                f"hold mutations up to lsn {held}: {held + 1}..{clean} are missing"
            )


def _settle(
    directory: Path, found: _Found, fsync: FsyncPolicy, fingerprint: str, warnings: list[str]
) -> WriteAheadLog:
    """Recovery succeeded: keep what it will not use (skipped snapshots, a torn tail) in
    quarantine, cut the torn tail, open a new WAL if there was none, and make sure new LSNs
    come after the snapshot's."""
    wal = found.wal
    skipped = [p.name for p, _ in found.loaded.skipped] if found.loaded is not None else []
    torn = wal.torn_tail if wal is not None else None
    if skipped or torn is not None:
        where = _quarantine(directory, skipped, torn)
        warnings.append(f"moved what recovery did not use to {where}")
    if wal is None:
        wal = WriteAheadLog(directory / WAL_NAME, fsync=fsync, tag=fingerprint)
    else:
        warnings += wal.warnings
        wal.cut_torn_tail()
    if wal.last_lsn < found.start:
        wal.truncate_through(found.start)
    for w in warnings:
        log.warning("%s", w)
    return wal


def _base_bank(
    loaded: LoadResult | None, make_bank: Callable[[], MemoryBank], capacity: int, m: int
) -> MemoryBank:
    """The bank replay starts from: the snapshot's, or a new empty one."""
    if loaded is not None:
        return loaded.bank
    bank = make_bank()
    if bank.capacity != capacity or bank.m != m:
        raise ValueError(
            f"expected make_bank() to build capacity={capacity}, m={m}, got "
            f"capacity={bank.capacity}, m={bank.m}"
        )
    return bank


def _replay(bank: MemoryBank, wal: WriteAheadLog, start: int, warnings: list[str]) -> int:
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


def _quarantine(directory: Path, names: list[str], torn_tail: bytes | None = None) -> Path:
    """Move these files into a new quarantine-<UTC time>/ (and save a torn WAL tail there as
    wal.log.torn-tail): nothing recovery does not use is ever deleted or overwritten."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = directory / f"quarantine-{stamp}"
    try:
        target.mkdir()
        for name in names:
            os.replace(directory / name, target / name)
        if torn_tail is not None:
            atomic_write(target / f"{WAL_NAME}.torn-tail", write_bytes(torn_tail))
        fsync_dir(target)
        fsync_dir(directory)
    except OSError as e:
        raise os_error(f"cannot move the files recovery does not use to {target}", e) from e
    return target
