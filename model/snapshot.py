"""The bank's file format: one safetensors file (no pickle), saved atomically, loaded with every
check named.

    tensors    codes, counts, occupied, last_write, last_access, counters (+ scales for int8,
               + rate_bits and rate_levels for rate, whose codes are packed uint8 bytes):
               the bank's state as `MemoryBank.state_dict()` gives it (model/state.py)
    metadata   format_version  "2" (int32 slot counters, ticks relative to counters'
                               tick_base); "1" files (int64 counters, absolute ticks) load too
               capacity, m     ints, as text
               dtype           float32 | float16 | int8 | rate
               initial_count   the bank's (no tensor holds it)
               fingerprint     the codec's: a bank is never decoded by another model
               created_at      ISO 8601, UTC
               sha256          of the tensors' raw bytes in sorted key order, then of the
                               other metadata but created_at (`content_sha256`;
                               safetensors checks neither)
               ...             the caller's own keys (e.g. the log position "lsn")

`load` never returns an empty bank in place of a bad file: every failed check raises
SnapshotError saying which one. Both directions report the file's facts (size, sha256 of its
bytes), so nothing reads a snapshot twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from model.bank import MemoryBank, as_int
from model.durable import read_safetensors_header, tensor_sha256, write_safetensors
from model.errors import SnapshotError, SnapshotMismatch
from model.state import DTYPES, from_v1, layout_problem, state_problem

__all__ = ["FORMAT_VERSION", "RESERVED_METADATA", "SnapshotFile", "load", "save"]

FORMAT_VERSION = "2"
V1_SPECS = {  # what format 1 held where format 2 differs (model.state.from_v1 converts)
    "counts": torch.int64,
    "last_write": torch.int64,
    "last_access": torch.int64,
    "counters": torch.int64,
}
RESERVED_METADATA = (
    "format_version",
    "capacity",
    "m",
    "dtype",
    "initial_count",
    "fingerprint",
    "created_at",
    "sha256",
)


@dataclass(frozen=True)
class SnapshotFile:
    """A snapshot on disk: where, its size, the sha256 of all its bytes, its metadata."""

    path: Path
    bytes: int
    sha256: str
    metadata: dict[str, str]

    @property
    def created_at(self) -> str:
        return self.metadata.get("created_at", "")


def save(
    state: MemoryBank | Mapping[str, Tensor],
    path: str | os.PathLike[str],
    *,
    fingerprint: str,
    initial_count: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> SnapshotFile:
    """Write a bank, or a copy of its state (`MemoryBank.state_dict()`), as one snapshot,
    atomically (temp file, fsync, rename, fsync the folder); returns the file's facts.

    capacity, m and dtype come from the codes tensor (a rate bank's m from its rate_bits);
    initial_count, which no tensor holds, is
    the bank's (give it with a state dict; default 0). The layout (keys, dtypes, shapes) is
    checked here, ValueError naming the problem; the values are checked when the file is
    loaded. No bank is built, so saving a copy taken under a lock costs no second read cache.
    """
    if isinstance(state, MemoryBank):
        if initial_count is None:
            initial_count = state.initial_count
        state = state.state_tensors()  # the bank's own tensors: no copy on the CPU
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ValueError(f"expected a non-empty fingerprint string, got {fingerprint!r}")
    initial_count = as_int(initial_count or 0, "initial_count", 0)
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(RESERVED_METADATA))
    if clash:
        raise ValueError(f"expected extra keys other than {list(RESERVED_METADATA)}, got {clash}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise ValueError(f"expected extra as dict[str, str], got {extra!r}")
    codes = state.get("codes")
    names = {v: k for k, v in DTYPES.items()}
    if not isinstance(codes, Tensor) or codes.dim() != 2 or codes.dtype not in names:
        what = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, Tensor) else repr(codes)
        raise ValueError(f"expected codes (capacity, m) in {sorted(DTYPES)}, got {what}")
    (capacity, m), dtype = codes.shape, names[codes.dtype]
    bits = state.get("rate_bits")
    if dtype == "rate" and isinstance(bits, Tensor) and bits.dim() == 1:
        m = bits.shape[0]  # the codes are packed bytes; the code book says how many values
    problem = layout_problem(state, capacity, m, dtype)
    if problem is not None:
        raise ValueError(f"state dict {problem}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}  # no copy on CPU
    metadata = {
        **extra,
        "format_version": FORMAT_VERSION,
        "capacity": str(capacity),
        "m": str(m),
        "dtype": dtype,
        "initial_count": str(initial_count),
        "fingerprint": fingerprint,
        "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
    }
    metadata["sha256"] = content_sha256(tensors, metadata)
    facts = write_safetensors(path, tensors, metadata)
    return SnapshotFile(facts.path, facts.bytes, facts.sha256, metadata)


def load(
    path: str | os.PathLike[str],
    *,
    expected_fingerprint: str | None = None,
    capacity: int | None = None,
    m: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[MemoryBank, SnapshotFile]:
    """Read a snapshot written by `save`: (bank, its file's facts). The bank's decay_ticks is
    0: a policy, not state, which the caller sets. SnapshotError naming the failed check."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"snapshot {p} does not exist") from None
    except OSError as e:
        raise SnapshotError(f"snapshot {p} cannot be read: {e.strerror or e}") from None
    parsed = read_safetensors_header(data)
    try:
        tensors = safetensors.torch.load(data) if parsed is not None else None
    except Exception:  # safetensors raises its own error types for bad buffers
        tensors = None
    if parsed is None or tensors is None:
        raise SnapshotError(f"snapshot {p} is truncated or not a safetensors file")
    meta: dict[str, str] = parsed[0].get("__metadata__", {})
    _check_metadata(p, meta, tensors, expected_fingerprint)
    ints = _metadata_ints(p, meta)
    if m is not None and ints["m"] != m:
        raise SnapshotMismatch(f"snapshot {p} has m={ints['m']}, expected m={m}")
    if capacity is not None and ints["capacity"] != capacity:
        raise SnapshotMismatch(
            f"snapshot {p} has capacity={ints['capacity']}, expected capacity={capacity}"
        )
    dtype = meta["dtype"]
    if dtype not in DTYPES:
        raise SnapshotError(f"snapshot {p} has dtype {dtype!r}, expected one of {sorted(DTYPES)}")
    if meta["format_version"] == "1":
        tensors = _from_v1(p, tensors)
    problem = state_problem(tensors, ints["capacity"], ints["m"], dtype)
    if problem is not None:
        raise SnapshotError(f"snapshot {p} {problem}")
    # fresh tensors from the file: adopted, not copied
    bank = MemoryBank.from_state(tensors, initial_count=ints["initial_count"], device=device)
    digest = hashlib.sha256(data).hexdigest()
    return bank, SnapshotFile(p, len(data), digest, dict(meta))


def content_sha256(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """The snapshot's checksum. Format 2: of the tensors' raw bytes in sorted key order, then
    every metadata entry but created_at as sorted JSON, so a damaged initial_count or lsn is
    refused like a damaged code, and the same state saved twice has the same checksum.
    Format 1 covered the tensors only (its files still load)."""
    tensors_digest = tensor_sha256(tensors)
    if metadata.get("format_version") == "1":
        return tensors_digest
    rest = {k: v for k, v in metadata.items() if k not in ("sha256", "created_at")}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{tensors_digest}|{text}".encode()).hexdigest()


def _check_metadata(
    p: Path, meta: Mapping[str, str], tensors: Mapping[str, Tensor], fingerprint: str | None
) -> None:
    for key in RESERVED_METADATA:
        if key not in meta:
            raise SnapshotError(f"snapshot {p} metadata lacks {key!r}")
    if meta["format_version"] not in ("1", FORMAT_VERSION):
        raise SnapshotError(
            f"snapshot {p} has format_version {meta['format_version']!r}, "
            f"expected '1' or {FORMAT_VERSION!r}"
        )
    if content_sha256(tensors, meta) != meta["sha256"]:
        raise SnapshotError(f"snapshot {p}: content checksum mismatch")
    if fingerprint is not None and meta["fingerprint"] != fingerprint:
        raise SnapshotMismatch(
            f"snapshot {p} was made by model {meta['fingerprint']}, expected {fingerprint}"
        )


def _metadata_ints(p: Path, meta: Mapping[str, str]) -> dict[str, int]:
    ints: dict[str, int] = {}
    for key, low in (("capacity", 1), ("m", 1), ("initial_count", 0)):
        try:
            ints[key] = int(meta[key])
        except ValueError:
            raise SnapshotError(
                f"snapshot {p} metadata {key}={meta[key]!r} is not an int"
            ) from None
        if ints[key] < low:
            raise SnapshotError(f"snapshot {p} metadata {key}={ints[key]} is below {low}")
    return ints


def _from_v1(p: Path, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    for key, dtype in V1_SPECS.items():
        t = tensors.get(key)
        if t is None or t.dtype != dtype or t.dim() != 1:
            what = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
            raise SnapshotError(
                f"snapshot {p} (format 1) tensor {key!r} is {what}, expected {dtype}"
            )
    if tensors["counters"].numel() != 6 or "occupied" not in tensors:
        raise SnapshotError(f"snapshot {p} (format 1) lacks its 6 counters or occupancy")
    return from_v1(tensors)
