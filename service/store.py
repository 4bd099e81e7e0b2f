"""Snapshot generations of the bank: snap-<lsn>.safetensors, newest K kept, bad ones skipped.

A snapshot is one `model.snapshot` file (atomic: temp file, fsync, rename, fsync the folder;
a sha256 of the tensors in its metadata), written from the bank or from a copy of its state as
it is (no second bank, and so no second read cache, is built to save a copy). It is named after
the WAL LSN of the last mutation it holds, with that LSN in its metadata too. Loading tries the
newest first and falls back to the previous generation when a file fails any check (truncated,
bit flip, other model, other shape), naming the file and the reason; when files exist but none
is valid it refuses (`SnapshotError`) rather than hand back an empty bank over existing data.
A file's size and sha256 come from `model.snapshot.save` / `load` as they write or read it:
nothing reads a snapshot a second time.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from model import snapshot
from model.bank import MemoryBank
from model.durable import fsync_dir
from model.errors import SnapshotError, SnapshotMismatch, os_error

__all__ = ["LoadResult", "SnapshotInfo", "SnapshotStore", "snapshot_name"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^snap-(\d{16})\.safetensors$")
_TMP_GLOB = ".snap-*.safetensors.*.tmp"  # model.durable.atomic_write's, left by a crash


def snapshot_name(lsn: int) -> str:
    return f"snap-{lsn:016d}.safetensors"


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot file: its LSN, size, how long saving (or loading) took, the sha256 of the
    whole file and when it was made (ISO 8601, UTC, from its metadata)."""

    path: Path
    lsn: int
    bytes: int
    seconds: float
    sha256: str
    created_at: str


@dataclass
class LoadResult:
    """The newest valid snapshot, loaded, and the newer files that were skipped (path, reason)."""

    bank: MemoryBank
    info: SnapshotInfo
    lsn: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


class SnapshotStore:
    """Snapshot generations in one folder; see the module docstring."""

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"expected keep to be an int >= 1, got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(f"cannot create the snapshot folder {self.directory}", e) from e

    def files(self) -> list[tuple[int, Path]]:
        """(lsn, path) of every snapshot file, newest first."""
        found = []
        for p in self.directory.iterdir():
            match = _NAME.match(p.name)
            if match and p.is_file():
                found.append((int(match.group(1)), p))
        return sorted(found, reverse=True)

    def lsns(self) -> list[int]:
        """LSNs of the snapshot files, newest first."""
        return [lsn for lsn, _ in self.files()]

    def remove_temp_files(self) -> list[Path]:
        """Delete temp files left by a crash during a save (call before any save starts)."""
        removed = []
        for p in self.directory.glob(_TMP_GLOB):
            try:
                p.unlink()
                removed.append(p)
                log.warning("removed %s, a snapshot temp file left by a crash", p)
            except OSError as e:
                log.warning("cannot remove the temp file %s: %s", p, e)
        return removed

    # ------------------------------------------------------------------ save

    def save(
        self,
        state: MemoryBank | Mapping[str, Tensor],
        *,
        fingerprint: str,
        lsn: int,
        initial_count: int | None = None,
    ) -> SnapshotInfo:
        """Write state (a bank, or a copy of its `state_dict`) as snapshot `lsn`, then keep only
        the newest `keep` files. `initial_count` is the bank's (a state dict lacks it; None: a
        bank's own, or 0); a state dict with the wrong tensors is a ValueError.

        A failed write (disk full, folder not writable) raises DiskFullError / PersistenceError
        and leaves the existing snapshots as they were.
        """
        if isinstance(lsn, bool) or not isinstance(lsn, int) or lsn < 0:
            raise ValueError(f"expected lsn to be an int >= 0, got {lsn!r}")
        path = self.directory / snapshot_name(lsn)
        extra = {"lsn": str(lsn)}
        t0 = time.perf_counter()
        try:
            file = snapshot.save(
                state, path, fingerprint=fingerprint, initial_count=initial_count, extra=extra
            )
        except OSError as e:
            raise os_error(f"cannot save the snapshot {path}", e) from e
        seconds = time.perf_counter() - t0
        info = SnapshotInfo(path, lsn, file.bytes, seconds, file.sha256, file.created_at)
        self.prune()
        return info

    def prune(self) -> list[Path]:
        """Delete all but the newest `keep` snapshot files; returns those deleted."""
        removed = []
        for _, p in self.files()[self.keep :]:
            try:
                p.unlink()
                removed.append(p)
            except OSError as e:
                log.warning("cannot remove the old snapshot %s: %s", p, e)
        if removed:
            try:
                fsync_dir(self.directory)
            except OSError as e:
                log.warning("cannot fsync %s: %s", self.directory, e)
        return removed

    # ------------------------------------------------------------------ load

    def load_latest(
        self,
        *,
        fingerprint: str,
        capacity: int,
        m: int,
        device: str | torch.device = "cpu",
    ) -> LoadResult | None:
        """The newest snapshot that passes every check; None when there is no snapshot file.

        A bad file is skipped with a warning naming it and the reason, and the previous one is
        tried; SnapshotError listing every file and its reason when none is valid, and its
        subclass SnapshotMismatch when one of them was made for another bank (model, capacity,
        m): then a setting differs from the saved bank, which no log replay may paper over.
        """
        self.remove_temp_files()
        files = self.files()
        if not files:
            return None
        skipped: list[tuple[Path, str]] = []
        mismatch = False
        for lsn, path in files:
            t0 = time.perf_counter()
            try:
                bank, file = snapshot.load(
                    path, expected_fingerprint=fingerprint, capacity=capacity, m=m, device=device
                )
                meta = file.metadata
                if meta.get("lsn") != str(lsn):
                    raise SnapshotError(
                        f"snapshot {path} metadata lsn {meta.get('lsn')!r} does not match "
                        f"its file name (lsn {lsn})"
                    )
            except (SnapshotError, OSError) as e:
                mismatch |= isinstance(e, SnapshotMismatch)
                reason = str(e)
                log.warning("skipping snapshot %s: %s", path.name, reason)
                skipped.append((path, reason))
                continue
            seconds = time.perf_counter() - t0
            info = SnapshotInfo(path, lsn, file.bytes, seconds, file.sha256, file.created_at)
            return LoadResult(bank=bank, info=info, lsn=lsn, skipped=skipped, metadata=meta)
        listing = "; ".join(f"{p.name}: {reason}" for p, reason in skipped)
        error = SnapshotMismatch if mismatch else SnapshotError
        raise error(f"none of the {len(files)} snapshot(s) in {self.directory} is valid: {listing}")
