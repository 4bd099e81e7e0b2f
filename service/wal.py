"""Write-ahead log: an append-only file of framed, checksummed, opaque records, in the style of
qdrant/wal. It knows frames, LSNs, fsync and truncation; what a record means is the caller's
(service/records.py encodes the bank's operations; service/persistence.py replays them).

Its file: a header (base_lsn, tag) and then one frame per record (lsn, data, CRC); the table
of every byte is in service/frames.py. `base_lsn` keeps LSNs increasing across truncations
(`truncate_through` drops the records a snapshot holds). `tag` is checked at open: records
written for one model are never replayed into a bank read by another. The header is only ever
written whole (temp file, fsync, rename, fsync the folder).

Opening checks the tag and every frame. A torn last frame (short, or zeros / no frame header)
with no CRC-valid frame after it is what a crash during an append leaves: it is dropped with a
warning and the file cut back (at once, or with cut_torn=False when the caller calls
`cut_torn_tail`, after it has kept the bytes in `torn_tail`). Anything else is damage, not a
crash: a whole frame whose CRC fails (a killed append is short, never complete and wrong), a
bad frame with a CRC-valid frame after it, a CRC-valid frame without an LSN or whose LSN does
not increase. `WalCorruptError` names the byte offset and the last good LSN, and nothing is
dropped (see `repair`).

`fsync`: "always" fdatasyncs before `append` returns; "everysec" from a thread once a second
(a power loss can lose about a second; an fsync failure refuses later appends); "off" never
while running. A process crash loses nothing in any mode: an append is in the page cache before
it returns. `close()` fsyncs in every mode. docs/DURABILITY.md has what each policy can lose.

`append` writes a group of records with consecutive LSNs in ONE write call and, under "always",
ONE fsync (group commit). All or nothing: a failed write or fsync cuts the file back to where it
was and raises DiskFullError / PersistenceError, so the log never holds a record the caller was
told failed. A crash during it can leave a prefix of the group, none of it acknowledged yet.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

from model.durable import atomic_write, fsync_dir, write_bytes
from model.enums import FSYNC_POLICIES, FsyncPolicy
from model.errors import PersistenceError, WalCorruptError, WalFingerprintError, os_error
from service import frames

__all__ = ["WriteAheadLog"]

log = logging.getLogger(__name__)


class WriteAheadLog:
    """An append-only log of opaque records in one file; see the module docstring.

    Thread-safe: appends, `truncate_through`, `records` and the everysec fsync thread share one
    lock (a truncation copies the bulk of the kept records without holding it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = "always",
        tag: str = "",
        cut_torn: bool = True,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"expected fsync in {list(FSYNC_POLICIES)}, got {fsync!r}")
        self.path = Path(path)
        self.fsync_policy = fsync
        self.tag = tag
        self.warnings: list[str] = []  # what opening found and repaired (torn tail)
        self.created = False  # True when this call made a new, empty log
        # cut_torn=False: a torn tail is found but left on disk until `cut_torn_tail` (the
        # caller first decides whether to start at all, and keeps the bytes it cuts)
        self._cut_torn = cut_torn
        self.torn_tail: bytes | None = None
        self._lock = threading.RLock()
        self._truncate_lock = threading.Lock()
        self._failed: str | None = None  # set when the file may not hold what it should
        self._dirty = False
        self._closed = False
        self._remove_stale_tmp()
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._create()
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

    def _remove_stale_tmp(self) -> None:
        """Temp files a crash during a create or a truncation left (`.<name>.<random>.tmp`)."""
        for tmp in self.path.parent.glob(f".{self.path.name}.*tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _create(self) -> None:
        """Write a log holding only the header (base_lsn 0), atomically."""
        try:
            atomic_write(self.path, write_bytes(frames.encode_header(0, self.tag)))
        except OSError as e:
            raise os_error(f"cannot create the write-ahead log {self.path}", e) from e
        self.created = True

    def _open_existing(self) -> None:
        with open(self._fd, "rb", closefd=False) as f:
            data = memoryview(f.read())
        base, tag, pos = frames.read_header(self.path.name, data)
        if tag != self.tag:
            raise WalFingerprintError(
                f"{self.path.name} was written for model {tag or '(none)'}, "
                f"expected model {self.tag or '(none)'}: its codes cannot be replayed"
            )
        self._base = base
        self._lsns: list[int] = []
        self._offsets: list[int] = []
        self._end = len(data)
        self._tail_cut = False
        try:
            for off, lsn, _ in frames.scan(data, pos, base):
                self._lsns.append(lsn)
                self._offsets.append(off)
        except frames.ScanStop as stop:
            if not stop.torn:
                raise self._corrupt(stop.off, stop.prev, stop.reason) from None
            self._drop_torn_tail(data, stop.off, stop.prev, stop.reason)
        self._next = (self._lsns[-1] if self._lsns else base) + 1

    def _corrupt(self, off: int, prev: int, reason: str) -> WalCorruptError:
        return WalCorruptError(
            f"{self.path.name}: bad record at byte {off} (after lsn {prev}): {reason}"
        )

    def _drop_torn_tail(self, data: memoryview, off: int, prev: int, reason: str) -> None:
        after = frames.valid_frame_after(data, off)
        if after is not None:
            raise self._corrupt(off, prev, f"{reason}; a valid record follows at byte {after}")
        msg = (
            f"{self.path.name}: dropped a torn last record at byte {off} (after lsn {prev}): "
            f"{reason}; {len(data) - off} bytes cut"
        )
        self.warnings.append(msg)
        self.torn_tail = bytes(data[off:])
        self._end = off
        if self._cut_torn:
            self.cut_torn_tail()

    def cut_torn_tail(self) -> None:
        """Cut the torn tail found at open (`torn_tail` holds its bytes) off the file: appends
        are refused until then. Nothing to do when there is none or it is already cut."""
        if self.torn_tail is None or self._tail_cut:
            return
        try:
            os.ftruncate(self._fd, self._end)
            os.fsync(self._fd)
        except OSError as e:
            raise os_error(f"cannot cut the torn tail of {self.path}", e) from e
        self._tail_cut = True
        log.warning("%s", self.warnings[-1])

    @property
    def last_lsn(self) -> int:
        """The LSN of the newest record (or the base LSN when the log holds none)."""
        return self._next - 1

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def base_lsn(self) -> int:
        """The LSN this file starts after: records <= base_lsn were dropped (in a snapshot)."""
        return self._base

    @property
    def size_bytes(self) -> int:
        return self._end

    def __len__(self) -> int:
        return len(self._lsns)

    def append(self, payloads: Sequence[bytes | bytearray | memoryview]) -> list[int]:
        """Log these records with consecutive LSNs, in ONE write call and, with fsync "always",
        ONE fsync; returns their LSNs. All or nothing: on failure the file is cut back to where
        it was and DiskFullError / PersistenceError is raised."""
        for data in payloads:
            if len(data) > frames.MAX_DATA:
                raise ValueError(f"expected records of at most 1 GiB, got {len(data)} bytes")
        if not payloads:
            return []
        with self._lock:
            self._check_open()
            lsns = list(range(self._next, self._next + len(payloads)))
            parts = [p for lsn, d in zip(lsns, payloads, strict=True) for p in frames.frame(lsn, d)]
            sizes = [frames.frame_size(len(d)) for d in payloads]
            start = self._end
            try:
                self._write_at(b"".join(parts), start)
                if self.fsync_policy == "always":
                    os.fdatasync(self._fd)
            except OSError as e:
                self._undo(start)
                raise os_error(f"cannot append to the write-ahead log {self.path}", e) from e
            for lsn, size in zip(lsns, sizes, strict=True):
                self._lsns.append(lsn)
                self._offsets.append(self._end)
                self._end += size
            self._next = lsns[-1] + 1
            self._dirty = self.fsync_policy != "always"
            return lsns

    def _write_at(self, data: bytes, offset: int) -> None:
        view, done = memoryview(data), 0
        while done < len(data):  # one call, unless the kernel writes less
            n = os.pwrite(self._fd, view[done:], offset + done)
            if n == 0:
                raise OSError(errno.ENOSPC, "no progress writing the record")
            done += n

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
        if self.torn_tail is not None and not self._tail_cut:
            raise PersistenceError(
                f"the write-ahead log {self.path} has a torn tail not cut yet (cut_torn_tail)"
            )
        if self._failed is not None:
            raise PersistenceError(
                f"the write-ahead log {self.path} refuses writes until restart: {self._failed}"
            )

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

    def records(self, after_lsn: int = 0) -> Iterator[tuple[int, bytes]]:
        """(lsn, data) of the records with lsn > after_lsn, oldest first (CRC-checked again
        while read)."""
        with self._lock:
            if self._closed:
                raise PersistenceError(f"the write-ahead log {self.path} is closed")
            i = bisect.bisect_right(self._lsns, after_lsn)
            start = self._offsets[i] if i < len(self._offsets) else self._end
            end = self._end
            fd = os.dup(self._fd)  # keeps this file's contents even if truncate swaps it
        try:
            data = memoryview(os.pread(fd, end - start, start) if end > start else b"")
        finally:
            os.close(fd)
        try:
            for _, lsn, payload in frames.scan(data, 0, after_lsn):
                yield lsn, bytes(payload)
        except frames.ScanStop as stop:
            raise self._corrupt(start + stop.off, stop.prev, stop.reason) from None

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
            header = frames.encode_header(lsn, self.tag)
            out: int | None = None
            tmp = ""
            try:
                out, tmp = tempfile.mkstemp(
                    prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
                )
                os.write(out, header)
                self._copy(src, out, start, bulk_end)
                os.fsync(out)
                with self._lock:
                    self._check_open()
                    end = self._end
                    self._copy(src, out, bulk_end, end)
                    os.fsync(out)
                    os.replace(tmp, self.path)
                    # Committed: from here on nothing can fail.
                    old, self._fd, out = self._fd, out, None
                    os.close(old)
                    shift = len(header) - start
                    self._lsns = self._lsns[drop:]
                    self._offsets = [o + shift for o in self._offsets[drop:]]
                    self._end = end + shift
                    self._base = lsn
                    self._next = max(self._next, lsn + 1)
                    self._dirty = False
            except OSError as e:
                raise os_error(f"cannot truncate the write-ahead log {self.path}", e) from e
            finally:
                os.close(src)
                if out is not None:  # not committed
                    os.close(out)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
            try:
                fsync_dir(self.path.parent)
            except OSError as e:  # the rename is done; only its durability is late
                log.warning("%s: fsync of the folder failed: %s", self.path, e)
            return drop

    @staticmethod
    def _copy(src: int, dst: int, start: int, end: int) -> None:
        """Append bytes [start, end) of src to dst at dst's file position."""
        while start < end:
            n = os.sendfile(dst, src, start, end - start)
            if n == 0:
                raise OSError(errno.EIO, f"unexpected end of file at byte {start}")
            start += n

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
        """Cut a corrupt log at its first bad frame, keeping a copy of the original next to
        it (`<name>.corrupt-<unix time>`); returns the number of bytes cut. The records after
        the bad one are lost: use this only when starting with them lost is acceptable."""
        p = Path(path)
        data = memoryview(p.read_bytes())
        base, _, pos = frames.read_header(p.name, data)
        with contextlib.suppress(frames.ScanStop):
            for off, _, payload in frames.scan(data, pos, base):
                pos = off + frames.frame_size(len(payload))
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
