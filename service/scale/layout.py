"""Which sharded bank a shard's folder belongs to: MT_SNAPSHOT_DIR/shard-<i>/SHARD.json.

    SHARD.json   {"index": 1, "shards": 3}

Global slot ids (shard * MT_CAPACITY + local) and the namespace routing (crc32 % N) depend on
the number of shards, and each shard's folder holds only its part of the memories. A 3-shard
bank restarted with `--shards 2` would start shards 0 and 1 from their folders and silently
stop serving everything shard 2 acknowledged. So each shard claims its folder for (index, N)
before its engine recovers anything, and refuses a folder claimed for another layout, naming
both. Shard 0 also refuses when sibling folders shard-<j>, j >= N, hold data: that catches
folders written before SHARD.json existed. MT_CAPACITY and the model are checked per folder by
its MANIFEST.json (service/manifest.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from model.durable import atomic_write, write_bytes
from model.errors import RecoveryError, os_error

__all__ = ["LAYOUT_NAME", "check", "claim"]

LAYOUT_NAME = "SHARD.json"
_SHARD_DIR = re.compile(r"shard-(\d+)")


def check(root: Path, shards: int) -> None:
    """Refuse (RecoveryError) to start `shards` shards over MT_SNAPSHOT_DIR `root` when a
    shard-<j> folder there holds data and j >= shards, or was claimed for another layout.
    Read-only: `python -m service.ray` calls it before it deploys anything, so the command
    stops with the reason (a refusing replica only fails Serve's deploy)."""
    _refuse_extra_shards(root, shards)
    for index in range(shards):
        _check_claim(root / f"shard-{index}", index, shards)


def claim(folder: Path, index: int, shards: int) -> None:
    """Claim `folder` (MT_SNAPSHOT_DIR/shard-<index>) for shard `index` of `shards`: write
    SHARD.json the first time, refuse (RecoveryError) a folder claimed for another layout or,
    for shard 0, sibling folders of shards beyond the last."""
    if index == 0:
        _refuse_extra_shards(folder.parent, shards)
    if _check_claim(folder, index, shards):
        return
    folder.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"index": index, "shards": shards}, sort_keys=True).encode()
    path = folder / LAYOUT_NAME
    try:
        atomic_write(path, write_bytes(body))
    except OSError as e:
        raise os_error(f"cannot write {path}", e) from e


def _check_claim(folder: Path, index: int, shards: int) -> bool:
    """Whether folder is claimed (for this layout; another one raises RecoveryError)."""
    path = folder / LAYOUT_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise os_error(f"cannot read {path}", e) from e
    found = _parse(path, raw)
    if found != (index, shards):
        raise RecoveryError(
            f"{folder} holds shard {found[0]} of a {found[1]}-shard bank, but this is shard "
            f"{index} of {shards}: start with --shards {found[1]} (slot ids and namespace "
            "routing depend on it), or point MT_SNAPSHOT_DIR at another folder"
        )
    return True


def _parse(path: Path, raw: bytes) -> tuple[int, int]:
    try:
        obj = json.loads(raw)
        index, shards = obj["index"], obj["shards"]
        if not (isinstance(index, int) and isinstance(shards, int) and 0 <= index < shards):
            raise ValueError(f"index {index!r}, shards {shards!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise RecoveryError(
            f"{path} is damaged ({e}): refusing to guess the bank's layout"
        ) from None
    return index, shards


def _refuse_extra_shards(root: Path, shards: int) -> None:
    """RecoveryError when root holds a non-empty shard-<j> folder with j >= shards."""
    try:
        entries = list(root.iterdir()) if root.is_dir() else []
    except OSError as e:
        raise os_error(f"cannot list {root}", e) from e
    extra = []
    for entry in entries:
        match = _SHARD_DIR.fullmatch(entry.name)
        if match and int(match.group(1)) >= shards and entry.is_dir() and any(entry.iterdir()):
            extra.append(int(match.group(1)))
    if extra:
        names = ", ".join(f"shard-{j}" for j in sorted(extra))
        raise RecoveryError(
            f"{root} holds the data of {names}, beyond the {shards} shard(s) this bank is "
            f"started with: start with --shards {max(extra) + 1} at least (their memories "
            "would not be served), or point MT_SNAPSHOT_DIR at another folder"
        )
