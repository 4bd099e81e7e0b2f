"""Durable files, in one place: atomic writes, directory fsync, safetensors headers, tensor hashes.

Every file MemoryTransit keeps (weights, snapshots, the log's header) is written the way Redis
writes its RDB and Qdrant its segments: a temp file in the same folder, flush + fsync, rename
over the target, fsync the folder. A crash leaves the old file or the new one, never a torn one.

One error policy: `fsync_dir` and `atomic_write` raise OSError; callers that can carry on (a
rename already done, whose durability is only late) catch it and say so. `model.errors.os_error`
turns an OSError into the domain's PersistenceError / DiskFullError.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

__all__ = [
    "FileFacts",
    "atomic_write",
    "fsync_dir",
    "read_safetensors_file_header",
    "read_safetensors_header",
    "tensor_sha256",
    "write_safetensors",
]

# safetensors' own limit on the JSON header (a larger length is damage, not a header)
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class FileFacts:
    """A file just written: where, how many bytes, the sha256 of all its bytes."""

    path: Path
    bytes: int
    sha256: str


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """fsync a directory so that a rename or a new file in it survives a power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> int:
    """Run write(tmp) on a temp file beside `path`, fsync it, rename it over `path`, fsync the
    folder; returns the file's size. On any failure the temp file is removed and `path` is as
    it was. Temp files are named `.<name>.<random>.tmp` (what a crash can leave behind)."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
    return size


def write_bytes(data: bytes) -> Callable[[str], None]:
    """A writer for `atomic_write` that writes these bytes."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return write


def _cpu_bytes(t: Tensor) -> memoryview:
    """t's raw little-endian bytes, without a copy when t is a contiguous CPU tensor."""
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data


def tensor_sha256(tensors: Mapping[str, Tensor], *, describe: bool = False) -> str:
    """sha256 hex digest of the tensors' raw bytes in sorted key order; with describe=True each
    tensor's `name|dtype|shape|` goes before its bytes (a model fingerprint: two files whose
    bytes agree but whose layouts differ get different digests)."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        if describe:
            digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(_cpu_bytes(t))
    return digest.hexdigest()


def read_safetensors_header(data: bytes | memoryview) -> tuple[dict[str, Any], int] | None:
    """(header, offset of the first data byte) of a safetensors buffer, or None when the header
    cannot be parsed. header["__metadata__"], when present, is checked to be dict[str, str]."""
    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES or n > len(data) - 8:
        return None
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        return None
    return header, 8 + n


def _head_bytes(path: str | os.PathLike[str]) -> bytes:
    """The first 8 + header-length bytes of a file (all of it when it is shorter)."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        return head + (f.read(n) if n <= MAX_HEADER_BYTES else b"")


def read_safetensors_file_header(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The header of a safetensors file, reading only the header's bytes; None when it cannot
    be parsed. OSError when the file cannot be read."""
    parsed = read_safetensors_header(_head_bytes(path))
    return None if parsed is None else parsed[0]


def _save_file(tensors: Mapping[str, Tensor], path: str, metadata: dict[str, str]) -> None:
    """safetensors.torch.save_file (3x faster than save() to bytes + write, and no extra copy
    in memory), with its I/O failures raised as OSError like any other write: safetensors
    reports them as SafetensorError "... (os error 28)", and callers tell a full disk by errno.
    """
    try:
        safetensors.torch.save_file(dict(tensors), path, metadata=metadata)
    except safetensors.SafetensorError as e:
        found = re.search(r"os error (\d+)", str(e))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, f"{os.strerror(code)} ({e})", path) from e


def _file_sha256(path: str, tensors: Mapping[str, Tensor], size: int) -> str:
    """sha256 of a safetensors file just written from `tensors`, reading back only its header:
    the file is header + the tensors' bytes in data_offsets order, which we still hold."""
    head = _head_bytes(path)
    parsed = read_safetensors_header(head)
    if parsed is None:  # not what safetensors writes: hash the file itself
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    header, start = parsed
    spans = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")
    digest = hashlib.sha256(head)
    for _, key in spans:
        digest.update(_cpu_bytes(tensors[key]))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    assert start + end == size, f"{path}: header + data is {start + end} bytes, file {size}"
    return digest.hexdigest()


def write_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, Tensor], metadata: dict[str, str]
) -> FileFacts:
    """Write tensors (CPU, contiguous) and string metadata as one safetensors file, atomically;
    returns its size and the sha256 of its bytes, computed without reading the data back."""
    digest: list[str] = []

    def write(tmp: str) -> None:
        _save_file(tensors, tmp, metadata)
        digest.append(_file_sha256(tmp, tensors, os.path.getsize(tmp)))

    size = atomic_write(path, write)
    return FileFacts(path=Path(path), bytes=size, sha256=digest[0])
