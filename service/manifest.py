"""The snapshot folder's manifest: what the folder has held, so that recovery can tell a folder
that never held data from one whose files were lost.

    MANIFEST.json   {"format": 1, "fingerprint": "...", "capacity": 1000, "m": 16,
                     "created_at": "2026-12-01T13:00:00+00:00",
                     "snapshots": [12, 9], "clean_stop_lsn": null, "sha256": "..."}

- fingerprint, capacity, m: the bank the folder belongs to. A server started with another
  model, MT_CAPACITY or m is refused, naming both values.
- snapshots: the LSNs of the snapshot files the last run kept, newest first.
- clean_stop_lsn: the last LSN when the last run stopped cleanly (the WAL fsynced and closed),
  null while a run is going on or after a crash. It is what proves, after a clean stop, that
  a snapshot at that LSN holds every mutation, and that a WAL ending before it lost records.

sha256: of the other fields (sorted keys, compact JSON), so that any damage is caught.
Written whole (temp file, fsync, rename, fsync the folder: model.durable.atomic_write) when a
run starts, after every snapshot and at a clean stop. A manifest that cannot be read is
damage: recovery refuses to start rather than guess, and never overwrites it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from model.durable import atomic_write, write_bytes
from model.errors import RecoveryError, os_error

__all__ = ["MANIFEST_NAME", "Manifest", "read", "write"]

MANIFEST_NAME = "MANIFEST.json"
FORMAT = 1
T = TypeVar("T")


@dataclass(frozen=True)
class Manifest:
    """One folder's manifest; see the module docstring."""

    fingerprint: str
    capacity: int
    m: int
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    snapshots: tuple[int, ...] = ()
    clean_stop_lsn: int | None = None
    format: int = FORMAT

    def with_(self, **changes: object) -> Manifest:
        return replace(self, **changes)  # type: ignore[arg-type]

    def mismatch(self, fingerprint: str, capacity: int, m: int) -> list[str]:
        """The settings that differ from the folder's bank, each naming both values."""
        found = []
        if self.fingerprint != fingerprint:
            found.append(
                f"the folder holds a bank of model {self.fingerprint}, the server loads model "
                f"{fingerprint}"
            )
        if self.capacity != capacity:
            found.append(
                f"the folder holds a bank of capacity {self.capacity}, the server is set to "
                f"capacity {capacity} (MT_CAPACITY)"
            )
        if self.m != m:
            found.append(f"the folder holds codes of m={self.m}, the model's m is {m}")
        return found


def read(directory: Path) -> Manifest | None:
    """The folder's manifest; None when there is none; RecoveryError when it is damaged."""
    path = directory / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RecoveryError(f"{MANIFEST_NAME} cannot be read: {e.strerror or e}") from None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"expected an object with format {FORMAT}")
        if data.pop("sha256", None) != _digest(data):
            raise ValueError("checksum mismatch")
        manifest = Manifest(
            fingerprint=_typed(data, "fingerprint", str),
            capacity=_typed(data, "capacity", int),
            m=_typed(data, "m", int),
            created_at=_typed(data, "created_at", str),
            snapshots=tuple(_ints(data["snapshots"], "snapshots")),
            clean_stop_lsn=None
            if data.get("clean_stop_lsn") is None
            else _typed(data, "clean_stop_lsn", int),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise RecoveryError(f"{MANIFEST_NAME} is damaged ({e})") from None
    return manifest


def _typed(data: dict[str, object], key: str, kind: type[T]) -> T:
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{key} is not {kind.__name__}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{key} is negative")
    return value


def _ints(values: object, key: str) -> list[int]:
    if not isinstance(values, list):
        raise ValueError(f"{key} is not a list")
    return [_typed({key: v}, key, int) for v in values]


def _digest(fields: dict[str, object]) -> str:
    """sha256 of the fields in a canonical form: any damage to the file is caught."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def write(directory: Path, manifest: Manifest) -> None:
    """Replace the folder's manifest atomically; PersistenceError / DiskFullError on failure."""
    path = directory / MANIFEST_NAME
    data: dict[str, object] = asdict(manifest)
    data["snapshots"] = list(manifest.snapshots)
    data["sha256"] = _digest(data)
    body = (json.dumps(data, indent=1) + "\n").encode()
    try:
        atomic_write(path, write_bytes(body))
    except OSError as e:
        raise os_error(f"cannot write {path}", e) from e
