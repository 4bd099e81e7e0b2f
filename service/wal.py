"""Write-ahead log of bank mutations: framed, checksummed, binary records replayed at start.

The engine appends one record per mutation (write / delete / clear) *before* it changes the
bank, so an acknowledged mutation is in the log; at start the newest valid snapshot is loaded
and the records after its LSN are replayed (service/persistence.py). After a snapshot is saved
the records it covers are dropped (`truncate_through`). Modelled on Redis' AOF and Qdrant's WAL.

File layout (all integers little-endian):

    file header   b"MTWALv1\\0" | base_lsn u64 | fp_len u16 | fingerprint (utf-8) | crc32 u32
    record        magic 0xA7 u8 | version 1 u8 | payload length u32 | crc32 u32 | payload
    payload       lsn u64 | op u8 | body
      write  (1)  n u32 | m u32 | slots int64 (n) | codes float32 (n, m)
      delete (2)  slot int64
      clear  (3)  (empty)

The record CRC32 covers the length field and the payload, so a damaged length is caught too.
`base_lsn` is the LSN the file starts after (records already in a snapshot were dropped); it
keeps LSNs increasing across truncations. `fingerprint` is the codec's: codes written by one
model are never replayed into a bank read by another. The header is only ever written whole,
to a temp file that is fsynced and renamed, so it is never torn.

Damage, as found when the log is opened:
- a torn last record (short header or payload, bad CRC, zeros) with no valid record after it
  is what a crash during an append leaves: it is dropped with a warning and the file is cut
  back to the last good record;
- a bad record with valid records after it is corruption, not a crash: `WalCorruptError`
  names the byte offset and the last good LSN, and nothing is dropped (see `repair`);
- a CRC-valid record whose LSN does not increase, or whose body is malformed, is corruption.

Durability (`fsync`):
- "always": every append is fsynced before it returns: an acknowledged write survives a
  power loss.
- "everysec": a background thread fsyncs once a second: a power loss (or kernel crash) can
  lose about the last second of acknowledged writes; a process crash loses nothing, since the
  data is already in the OS page cache.
- "off": never fsynced while running (the OS writes back on its own, typically within ~30 s):
  a power loss can lose that much; a process crash loses nothing.
`close()` fsyncs once in every mode.

An append writes the whole record with one write call (no user-space buffer). A failed write
or fsync (ENOSPC, EIO, ...) cuts the file back to where it was and raises `DiskFullError` or
`PersistenceError`, so the log never holds a record the caller was told failed.
`append_writes` appends a group of write records the same way, with one write call and one
fsync for all of them (group commit: the engine logs concurrent writes together), and cuts
all of them back on a failure. A crash during it can leave a prefix of the group's records,
none of them acknowledged yet, which is what a crash during single appends could leave too.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import numpy as np
import torch
from torch import Tensor

from model.errors import MemoryTransitError

__all__ = [
    "FSYNC_POLICIES",
    "DiskFullError",
    "PersistenceError",
    "RecoveryError",
    "WalCorruptError",
    "WalFingerprintError",
    "WalRecord",
    "WriteAheadLog",
    "fsync_dir",
    "os_error",
]

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "everysec", "off"]
FSYNC_POLICIES: tuple[str, ...] = ("always", "everysec", "off")

FILE_MAGIC = b"MTWALv1\x00"
_FILE_HEAD = struct.Struct("<8sQH")  # magic, base_lsn, fingerprint length
_CRC = struct.Struct("<I")
RECORD_MAGIC = 0xA7
RECORD_VERSION = 1
_REC_HEAD = struct.Struct("<BBII")  # magic, version, payload length, crc32(length + payload)
_PAYLOAD_HEAD = struct.Struct("<QB")  # lsn, op
_WRITE_HEAD = struct.Struct("<II")  # n, m
_DELETE_BODY = struct.Struct("<q")  # slot
_MAX_PAYLOAD = 1 << 30  # a length above this is damage, not a record

OP_WRITE, OP_DELETE, OP_CLEAR = 1, 2, 3
Slots = Sequence[int] | Tensor | np.ndarray
Codes = Tensor | np.ndarray | Sequence[Sequence[float]]
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class PersistenceError(MemoryTransitError):
    """The log or a snapshot could not be written (the mutation was not made)."""


class DiskFullError(PersistenceError):
    """A write failed for lack of space (ENOSPC, EDQUOT, EFBIG): the HTTP layer's 507."""


class RecoveryError(PersistenceError):
    """The saved state cannot be recovered without losing data: the service refuses to start."""


class WalCorruptError(RecoveryError):
    """A damaged record with valid records after it (or a malformed file header)."""


class WalFingerprintError(RecoveryError):
    """The log was written for another codec (model fingerprint)."""


def os_error(what: str, e: OSError) -> PersistenceError:
    """DiskFullError for a full disk, PersistenceError otherwise; the message names `what`."""
    detail = f"{what}: {e.strerror or e}"
    if e.errno in _FULL_ERRNOS:
        return DiskFullError(f"{detail} (disk full)")
    return PersistenceError(detail)


def fsync_dir(folder: Path) -> None:
    """fsync a directory so that a rename or a new file in it survives a power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class WalRecord:
    """One logged mutation. write: slots (n,) int64 and codes (n, m) float32 (CPU tensors);
    delete: slot; clear: nothing."""

    lsn: int
    op: str
    slots: Tensor | None = None
    codes: Tensor | None = None
    slot: int | None = None


class _Bad(Exception):
    """Internal: the bytes at an offset are not a valid record (reason in args[0])."""


def _encode_header(base_lsn: int, fingerprint: str) -> bytes:
    fp = fingerprint.encode()
    head = _FILE_HEAD.pack(FILE_MAGIC, base_lsn, len(fp)) + fp
    return head + _CRC.pack(zlib.crc32(head))


def _frame(payload: bytes) -> bytes:
    length = struct.pack("<I", len(payload))
    crc = zlib.crc32(payload, zlib.crc32(length))
    return _REC_HEAD.pack(RECORD_MAGIC, RECORD_VERSION, len(payload), crc) + payload


def _decode_payload(payload: bytes) -> WalRecord:
    """Payload bytes -> WalRecord; _Bad when the body does not match its op."""
    if len(payload) < _PAYLOAD_HEAD.size:
        raise _Bad(f"payload of {len(payload)} bytes is shorter than lsn + op")
    lsn, op = _PAYLOAD_HEAD.unpack_from(payload)
    body = memoryview(payload)[_PAYLOAD_HEAD.size :]
    if op == OP_WRITE:
        if len(body) < _WRITE_HEAD.size:
            raise _Bad(f"write record (lsn {lsn}) lacks n and m")
        n, m = _WRITE_HEAD.unpack_from(body)
        want = _WRITE_HEAD.size + 8 * n + 4 * n * m
        if n < 1 or m < 1 or len(body) != want:
            raise _Bad(f"write record (lsn {lsn}) with n={n}, m={m} has a {len(body)}-byte body")
        off = _WRITE_HEAD.size
        slots = np.frombuffer(body, dtype="<i8", count=n, offset=off)
        codes = np.frombuffer(body, dtype="<f4", count=n * m, offset=off + 8 * n)
        return WalRecord(
            lsn=lsn,
            op="write",
            slots=torch.from_numpy(slots.astype(np.int64)),  # copies: owns its memory
            codes=torch.from_numpy(codes.astype(np.float32).reshape(n, m)),
        )
    if op == OP_DELETE:
        if len(body) != _DELETE_BODY.size:
            raise _Bad(f"delete record (lsn {lsn}) has a {len(body)}-byte body")
        return WalRecord(lsn=lsn, op="delete", slot=_DELETE_BODY.unpack_from(body)[0])
    if op == OP_CLEAR:
        if len(body):
            raise _Bad(f"clear record (lsn {lsn}) has a {len(body)}-byte body")
        return WalRecord(lsn=lsn, op="clear")
    raise _Bad(f"unknown op {op} (lsn {lsn})")


def _frame_at(data: bytes | memoryview, off: int) -> tuple[bytes, int]:
    """The CRC-checked payload of the record framed at data[off:] and the offset after it."""
    end = len(data)
    if end - off < _REC_HEAD.size:
        raise _Bad(f"short record header ({end - off} of {_REC_HEAD.size} bytes)")
    magic, version, length, crc = _REC_HEAD.unpack_from(data, off)
    if magic != RECORD_MAGIC or version != RECORD_VERSION:
        raise _Bad(f"bad record magic/version {magic:#04x}/{version}")
    if length > _MAX_PAYLOAD:
        raise _Bad(f"record length {length} is implausible")
    start = off + _REC_HEAD.size
    if end - start < length:
        raise _Bad(f"short payload ({end - start} of {length} bytes)")
    payload = bytes(data[start : start + length])
    if zlib.crc32(payload, zlib.crc32(struct.pack("<I", length))) != crc:
        raise _Bad("CRC mismatch")
    return payload, start + length


def _valid_record_after(data: bytes, off: int) -> int | None:
    """Offset of the first CRC-valid, well-formed record starting after `off`, else None."""
    magic = bytes([RECORD_MAGIC, RECORD_VERSION])
    pos = data.find(magic, off + 1)
    while pos != -1:
        try:
            payload, _ = _frame_at(data, pos)
            _decode_payload(payload)
            return pos
        except _Bad:
            pos = data.find(magic, pos + 1)
    return None


def _as_slots(slots: Sequence[int] | Tensor | np.ndarray) -> np.ndarray:
    arr = slots.detach().to("cpu").numpy() if isinstance(slots, Tensor) else np.asarray(slots)
    if arr.ndim != 1 or arr.size < 1 or arr.dtype.kind not in "iu":
        raise ValueError(
            f"expected slots as a non-empty 1-d sequence of ints, got {arr.dtype} {arr.shape}"
        )
    return arr.astype("<i8")


def _as_codes(codes: Tensor | np.ndarray | Sequence[Sequence[float]], n: int) -> np.ndarray:
    if isinstance(codes, Tensor):
        arr = codes.detach().to(device="cpu", dtype=torch.float32).numpy()
    else:
        arr = np.asarray(codes, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
        raise ValueError(f"expected codes of shape ({n}, m >= 1), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("expected finite codes, got NaN or inf")
    return arr.astype("<f4")


class WriteAheadLog:
    """An append-only log of bank mutations in one file; see the module docstring.

    Thread-safe: appends, `truncate_through`, `records` and the everysec fsync thread share one
    lock (a truncation copies the bulk of the kept records without holding it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: str = "always",
        fingerprint: str = "",
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"expected fsync in {list(FSYNC_POLICIES)}, got {fsync!r}")
        self.path = Path(path)
        self.fsync_policy = fsync
        self.fingerprint = fingerprint
        self.warnings: list[str] = []  # what opening found and repaired (torn tail)
        self.created = False  # True when this call made a new, empty log
        self._lock = threading.RLock()
        self._truncate_lock = threading.Lock()
        self._failed: str | None = None  # set when the file may not hold what it should
        self._dirty = False
        self._closed = False
        self._remove_stale_tmp()
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._create(base_lsn=0)
        self._fd = os.open(self.path, os.O_RDWR)
        try:
            self._open_existing()
        except BaseException:
            os.close(self._fd)
            raise
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if fsync == "everysec":
            self._syncer = threading.Thread(target=self._sync_loop, name="wal-fsync", daemon=True)
            self._syncer.start()

    # ------------------------------------------------------------------ open

    @property
    def _tmp(self) -> Path:
        return self.path.with_name(f".{self.path.name}.tmp")

    def _remove_stale_tmp(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def _create(self, base_lsn: int) -> None:
        """Write a log holding only the header, atomically (tmp + fsync + rename + fsync dir)."""
        try:
            with open(self._tmp, "wb") as f:
                f.write(_encode_header(base_lsn, self.fingerprint))
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as e:
            self._remove_stale_tmp()
            raise os_error(f"cannot create the write-ahead log {self.path}", e) from e
        self.created = True

    def _read_header(self, data: bytes) -> tuple[int, str, int]:
        """(base_lsn, fingerprint, header length) of the file's bytes; WalCorruptError if bad."""
        name = self.path.name
        if len(data) < _FILE_HEAD.size or data[:8] != FILE_MAGIC:
            raise WalCorruptError(f"{name}: not a MemoryTransit write-ahead log (bad file header)")
        _, base, fp_len = _FILE_HEAD.unpack_from(data)
        end = _FILE_HEAD.size + fp_len
        if len(data) < end + _CRC.size:
            raise WalCorruptError(f"{name}: truncated file header")
        (crc,) = _CRC.unpack_from(data, end)
        if zlib.crc32(data[:end]) != crc:
            raise WalCorruptError(f"{name}: file header CRC mismatch")
        try:
            fingerprint = data[_FILE_HEAD.size : end].decode()
        except UnicodeDecodeError:
            raise WalCorruptError(f"{name}: file header fingerprint is not utf-8") from None
        return base, fingerprint, end + _CRC.size

    def _open_existing(self) -> None:
        with open(self._fd, "rb", closefd=False) as f:
            data = f.read()
        base, fingerprint, pos = self._read_header(data)
        if fingerprint != self.fingerprint:
            raise WalFingerprintError(
                f"{self.path.name} was written for model {fingerprint or '(none)'}, "
                f"expected model {self.fingerprint or '(none)'}: its codes cannot be replayed"
            )
        self._base = base
        self._header_len = pos
        self._lsns: list[int] = []
        self._offsets: list[int] = []
        prev = base
        while pos < len(data):
            try:
                payload, nxt = _frame_at(data, pos)
            except _Bad as bad:
                self._drop_torn_tail(data, pos, prev, str(bad))
                break
            try:
                rec = _decode_payload(payload)
            except _Bad as bad:
                raise self._corrupt(pos, prev, str(bad)) from None
            if rec.lsn <= prev:
                raise self._corrupt(pos, prev, f"lsn {rec.lsn} does not increase")
            self._lsns.append(rec.lsn)
            self._offsets.append(pos)
            prev, pos = rec.lsn, nxt
        else:
            self._end = pos
        self._next = prev + 1

    def _corrupt(self, off: int, prev: int, reason: str) -> WalCorruptError:
        return WalCorruptError(
            f"{self.path.name}: bad record at byte {off} (after lsn {prev}): {reason}"
        )

    def _drop_torn_tail(self, data: bytes, off: int, prev: int, reason: str) -> None:
        after = _valid_record_after(data, off)
        if after is not None:
            raise self._corrupt(off, prev, f"{reason}; a valid record follows at byte {after}")
        msg = (
            f"{self.path.name}: dropped a torn last record at byte {off} (after lsn {prev}): "
            f"{reason}; {len(data) - off} bytes cut"
        )
        log.warning(msg)
        self.warnings.append(msg)
        try:
            os.ftruncate(self._fd, off)
            os.fsync(self._fd)
        except OSError as e:
            raise os_error(f"cannot cut the torn tail of {self.path}", e) from e
        self._end = off

    # ------------------------------------------------------------------ properties

    @property
    def last_lsn(self) -> int:
        """The LSN of the newest record (or the base LSN when the log holds none)."""
        return self._next - 1

    @property
    def base_lsn(self) -> int:
        """The LSN this file starts after: records <= base_lsn were dropped (in a snapshot)."""
        return self._base

    @property
    def size_bytes(self) -> int:
        return self._end

    def __len__(self) -> int:
        return len(self._lsns)

    # ------------------------------------------------------------------ append

    def append_write(self, slots: Slots, codes: Codes) -> int:
        """Log codes (n, m) float32 stored in slots (n,); returns the record's LSN."""
        return self.append_writes([(slots, codes)])[0]

    def append_writes(self, writes: Sequence[tuple[Slots, Codes]]) -> list[int]:
        """Log several writes (slots, codes) as consecutive records with ONE write call and,
        with fsync "always", ONE fsync (group commit); returns their LSNs. All or nothing: a
        failure cuts every one of them back off and raises, as a single append does."""
        bodies = []
        for slots, codes in writes:
            s = _as_slots(slots)
            c = _as_codes(codes, s.size)
            bodies.append(
                (OP_WRITE, _WRITE_HEAD.pack(s.size, c.shape[1]) + s.tobytes() + c.tobytes())
            )
        return self._append_many(bodies)

    def append_delete(self, slot: int) -> int:
        """Log the deletion of one slot; returns the record's LSN."""
        if isinstance(slot, bool) or not isinstance(slot, int | np.integer):
            raise TypeError(f"expected an int slot, got {slot!r}")
        return self._append(OP_DELETE, _DELETE_BODY.pack(int(slot)))

    def append_clear(self) -> int:
        """Log the clearing of the whole bank; returns the record's LSN."""
        return self._append(OP_CLEAR, b"")

    def _append(self, op: int, body: bytes) -> int:
        return self._append_many([(op, body)])[0]

    def _append_many(self, records: Sequence[tuple[int, bytes]]) -> list[int]:
        """Frame and append records (op, body) with consecutive LSNs in one write."""
        if not records:
            return []
        with self._lock:
            self._check_open()
            lsns = list(range(self._next, self._next + len(records)))
            frames = [
                _frame(_PAYLOAD_HEAD.pack(lsn, op) + body)
                for lsn, (op, body) in zip(lsns, records, strict=True)
            ]
            data = b"".join(frames)
            start = self._end
            try:
                view = memoryview(data)
                done = 0
                while done < len(data):  # one call, unless the kernel writes less
                    n = os.pwrite(self._fd, view[done:], start + done)
                    if n == 0:
                        raise OSError(errno.ENOSPC, "no progress writing the record")
                    done += n
                if self.fsync_policy == "always":
                    os.fdatasync(self._fd)
            except OSError as e:
                self._undo(start)
                raise os_error(f"cannot append to the write-ahead log {self.path}", e) from e
            self._end = start + len(data)
            offset = start
            for lsn, frame in zip(lsns, frames, strict=True):
                self._lsns.append(lsn)
                self._offsets.append(offset)
                offset += len(frame)
            self._next = lsns[-1] + 1
            self._dirty = self.fsync_policy != "always"
            return lsns

    def _undo(self, start: int) -> None:
        """Cut the file back to `start` after a failed append; if even that fails, refuse
        every later append (the file's tail is unknown)."""
        try:
            os.ftruncate(self._fd, start)
        except OSError as e:
            self._failed = f"could not cut a failed append back ({e.strerror or e})"
            log.error("%s: %s", self.path, self._failed)

    def _check_open(self) -> None:
        if self._closed:
            raise PersistenceError(f"the write-ahead log {self.path} is closed")
        if self._failed is not None:
            raise PersistenceError(
                f"the write-ahead log {self.path} refuses writes until restart: {self._failed}"
            )

    # ------------------------------------------------------------------ fsync

    def sync(self) -> None:
        """fsync now (what the everysec thread does once a second)."""
        with self._lock:
            if self._closed or not self._dirty:
                return
            fd = os.dup(self._fd)  # fsync outside the lock: appends go on meanwhile
            self._dirty = False
        try:
            os.fdatasync(fd)
        except OSError as e:
            # Acknowledged writes may be lost: refuse new ones (like Redis after an AOF fsync
            # error) rather than acknowledge more on a disk that does not keep them.
            with self._lock:
                self._failed = f"fsync failed ({e.strerror or e})"
            log.error("%s: %s", self.path, self._failed)
        finally:
            os.close(fd)

    def _sync_loop(self) -> None:
        while not self._stop.wait(1.0):
            self.sync()

    # ------------------------------------------------------------------ read

    def records(self, after_lsn: int = 0) -> Iterator[WalRecord]:
        """The records with lsn > after_lsn, oldest first (CRC-checked again while read)."""
        with self._lock:
            if self._closed:
                raise PersistenceError(f"the write-ahead log {self.path} is closed")
            i = bisect.bisect_right(self._lsns, after_lsn)
            start = self._offsets[i] if i < len(self._offsets) else self._end
            end = self._end
            fd = os.dup(self._fd)  # keeps this file's contents even if truncate swaps it
        try:
            data = os.pread(fd, end - start, start) if end > start else b""
        finally:
            os.close(fd)
        pos, prev = 0, after_lsn
        while pos < len(data):
            try:
                payload, pos_next = _frame_at(data, pos)
                rec = _decode_payload(payload)
            except _Bad as bad:
                raise self._corrupt(start + pos, prev, str(bad)) from None
            prev, pos = rec.lsn, pos_next
            yield rec

    # ------------------------------------------------------------------ truncate

    def truncate_through(self, lsn: int) -> int:
        """Drop the records with lsn <= `lsn` (they are in a snapshot); returns how many.

        Writes the kept records after a new header (base_lsn = lsn) to a temp file, fsyncs it,
        renames it over the log and fsyncs the folder. The bulk is copied without the lock;
        only the records appended meanwhile are copied while appends wait. LSNs continue
        above max(lsn, last_lsn). On failure the log is unchanged.
        """
        if isinstance(lsn, bool) or not isinstance(lsn, int) or lsn < 0:
            raise ValueError(f"expected lsn to be an int >= 0, got {lsn!r}")
        with self._truncate_lock:
            with self._lock:
                self._check_open()
                if lsn <= self._base:
                    return 0
                drop = bisect.bisect_right(self._lsns, lsn)
                start = self._offsets[drop] if drop < len(self._offsets) else self._end
                bulk_end = self._end
                src = os.dup(self._fd)
            header = _encode_header(lsn, self.fingerprint)
            out: int | None = None
            try:
                out = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(out, header)
                self._copy(src, out, start, bulk_end, len(header))
                os.fsync(out)
                with self._lock:
                    self._check_open()
                    end = self._end
                    self._copy(src, out, bulk_end, end, len(header) + bulk_end - start)
                    os.fsync(out)
                    os.replace(self._tmp, self.path)
                    # Committed: from here on nothing can fail.
                    old, self._fd, out = self._fd, out, None
                    os.close(old)
                    shift = len(header) - start
                    self._lsns = self._lsns[drop:]
                    self._offsets = [o + shift for o in self._offsets[drop:]]
                    self._end = end + shift
                    self._base = lsn
                    self._header_len = len(header)
                    self._next = max(self._next, lsn + 1)
                    self._dirty = False
            except OSError as e:
                raise os_error(f"cannot truncate the write-ahead log {self.path}", e) from e
            finally:
                os.close(src)
                if out is not None:  # not committed
                    os.close(out)
                    self._remove_stale_tmp()
            try:
                fsync_dir(self.path.parent)
            except OSError as e:  # the rename is done; only its durability is late
                log.warning("%s: fsync of the folder failed: %s", self.path, e)
            return drop

    @staticmethod
    def _copy(src: int, dst: int, start: int, end: int, dst_off: int) -> None:
        chunk = 1 << 20
        pos = start
        while pos < end:
            data = os.pread(src, min(chunk, end - pos), pos)
            if not data:
                raise OSError(errno.EIO, f"unexpected end of file at byte {pos}")
            view = memoryview(data)
            while len(view):
                n = os.pwrite(dst, view, dst_off + pos - start)
                view = view[n:]
                pos += n

    # ------------------------------------------------------------------ close / repair

    def close(self) -> None:
        """Stop the fsync thread, fsync once, close the file. Idempotent."""
        if self._closed:
            return
        if self._syncer is not None:
            self._stop.set()
            self._syncer.join()
        with self._lock:
            if self._closed:
                return
            try:
                os.fsync(self._fd)
            except OSError as e:
                log.error("%s: final fsync failed: %s", self.path, e)
            finally:
                os.close(self._fd)
                self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def repair(path: str | os.PathLike[str]) -> int:
        """Cut a corrupt log at its first bad record, keeping a copy of the original next to
        it (`<name>.corrupt-<unix time>`); returns the number of bytes cut. The records after
        the bad one are lost: use this only when starting with them lost is acceptable."""
        p = Path(path)
        data = p.read_bytes()
        wal = WriteAheadLog.__new__(WriteAheadLog)
        wal.path = p
        prev, _, pos = wal._read_header(data)
        while pos < len(data):
            try:
                payload, nxt = _frame_at(data, pos)
                rec = _decode_payload(payload)
            except _Bad:
                break
            if rec.lsn <= prev:
                break
            prev, pos = rec.lsn, nxt
        cut = len(data) - pos
        if cut:
            backup = p.with_name(f"{p.name}.corrupt-{int(time.time())}")
            shutil.copy2(p, backup)
            with open(p, "r+b") as f:
                f.truncate(pos)
                f.flush()
                os.fsync(f.fileno())
            log.warning("%s: cut %d bytes at byte %d; original kept in %s", p, cut, pos, backup)
        return cut


def describe(record: WalRecord) -> str:
    """A one-line description of a record, for logs and debugging."""
    if record.op == "write":
        assert record.slots is not None and record.codes is not None
        return f"lsn {record.lsn} write {tuple(record.codes.shape)} -> {record.slots.tolist()}"
    if record.op == "delete":
        return f"lsn {record.lsn} delete {record.slot}"
    return f"lsn {record.lsn} clear"
