"""Snapshot generations of the bank: snap-<lsn>.safetensors, newest K kept, bad ones skipped.

A snapshot is one `model.memory.save_state` file (atomic: temp file, fsync, rename, fsync the
folder; a sha256 of the tensors in its metadata), written from the bank or from a copy of its
state as it is (no second bank, and so no second read cache, is built to save a copy). It is
named after the WAL LSN of the last mutation it holds, with that LSN in its metadata too.
Loading tries the newest first and falls back to the previous generation when a file fails any
check (truncated, bit flip, other model, other shape), naming the file and the reason; when
files exist but none is valid it refuses (`SnapshotError`) rather than hand back an empty bank
over existing data. File hashes are computed reading in chunks, never the whole file at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from model.errors import SnapshotError
from model.memory import MemoryBank, save_state
from service.wal import fsync_dir, os_error

__all__ = ["LoadResult", "SnapshotInfo", "SnapshotStore", "snapshot_name"]

log = logging.getLogger(__name__)

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_NAME = re.compile(r"^snap-(\d{16})\.safetensors$")
_TMP_GLOBS = (
    ".snap-*.tmp",
    "snap-*.tmp",
)  # save_state's temp files, left by a crash


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


def _file_facts(path: Path) -> tuple[str, str]:
    """(sha256 of the file, created_at from its safetensors metadata or ""), reading the file in
    chunks: a snapshot of a large bank is never held in memory whole for its hash."""
    created = ""
    with path.open("rb") as f:
        try:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if n <= _MAX_HEADER else {}
            created = str(header.get("__metadata__", {}).get("created_at", ""))
        except (ValueError, AttributeError):
            pass
        f.seek(0)
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return digest, created


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
        for pattern in _TMP_GLOBS:
            for p in self.directory.glob(pattern):
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
        initial_count: int = 0,
    ) -> SnapshotInfo:
        """Write state (a bank, or a copy of its `state_dict`) as snapshot `lsn`, then keep only
        the newest `keep` files. `initial_count` is the bank's (a state dict lacks it); a state
        dict with the wrong tensors is a ValueError.

        A failed write (disk full, folder not writable) raises DiskFullError / PersistenceError
        and leaves the existing snapshots as they were.
        """
        if isinstance(lsn, bool) or not isinstance(lsn, int) or lsn < 0:
            raise ValueError(f"expected lsn to be an int >= 0, got {lsn!r}")
        path = self.directory / snapshot_name(lsn)
        extra = {"lsn": str(lsn)}
        t0 = time.perf_counter()
        try:
            if isinstance(state, MemoryBank):
                size = state.save(path, fingerprint=fingerprint, extra=extra)
            else:
                size = save_state(
                    path, state, fingerprint=fingerprint, initial_count=initial_count, extra=extra
                )
            sha256, created = _file_facts(path)
        except OSError as e:
            raise os_error(f"cannot save the snapshot {path}", e) from e
        seconds = time.perf_counter() - t0
        info = SnapshotInfo(path, lsn, size, seconds, sha256, created)
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
        tried; SnapshotError listing every file and its reason when none is valid.
        """
        self.remove_temp_files()
        files = self.files()
        if not files:
            return None
        skipped: list[tuple[Path, str]] = []
        for lsn, path in files:
            t0 = time.perf_counter()
            try:
                bank, meta = MemoryBank.load(
                    path,
                    expected_fingerprint=fingerprint,
                    capacity=capacity,
                    m=m,
                    device=device,
                )
                if meta.get("lsn") != str(lsn):
                    raise SnapshotError(
                        f"snapshot {path} metadata lsn {meta.get('lsn')!r} does not match "
                        f"its file name (lsn {lsn})"
                    )
                sha256, _ = _file_facts(path)
                size = path.stat().st_size
            except (SnapshotError, OSError) as e:
                reason = str(e)
                log.warning("skipping snapshot %s: %s", path.name, reason)
                skipped.append((path, reason))
                continue
            info = SnapshotInfo(
                path=path,
                lsn=lsn,
                bytes=size,
                seconds=time.perf_counter() - t0,
                sha256=sha256,
                created_at=meta.get("created_at", ""),
            )
            return LoadResult(bank=bank, info=info, lsn=lsn, skipped=skipped, metadata=meta)
        listing = "; ".join(f"{p.name}: {reason}" for p, reason in skipped)
        raise SnapshotError(
            f"none of the {len(files)} snapshot(s) in {self.directory} is valid: {listing}"
        )
