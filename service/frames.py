"""The write-ahead log's file format, as bytes: the file header and the frames (no files, no
locks: service/wal.py keeps the file). The whole format, all integers little-endian:

    part         field       type          meaning
    file header  magic       8 bytes       b"MTWALv1\\0"
                 base_lsn    u64           the LSN the file starts after
                 tag_len     u16           length of tag in bytes
                 tag         utf-8         whose records these are (the codec's fingerprint)
                 crc32       u32           of every header byte before it
    frame        magic       u8            0xA7
                 version     u8            1
                 length      u32           payload length (at most 2^30)
                 crc32       u32           crc32(the length field's 4 bytes + payload)
                 payload     length bytes  lsn u64 | data (the caller's bytes, opaque here)

The frame CRC covers the length field too, so a damaged length is caught. A frame is "valid"
when its magic, version, length and CRC check out; what its data means is the caller's
(service/records.py for the bank's operations).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from model.errors import WalCorruptError

__all__ = [
    "BadFrame",
    "ScanStop",
    "encode_header",
    "frame",
    "frame_at",
    "frame_size",
    "read_header",
    "scan",
    "valid_frame_after",
]

FILE_MAGIC = b"MTWALv1\x00"
FRAME_MAGIC = 0xA7
FRAME_VERSION = 1
MAX_PAYLOAD = 1 << 30  # a length above this is damage, not a frame
_FILE_HEAD = struct.Struct("<8sQH")  # magic, base_lsn, tag length
_U32 = struct.Struct("<I")  # the header's crc32; a frame's length field as the CRC covers it
_FRAME_HEAD = struct.Struct("<BBII")  # magic, version, payload length, crc32(length + payload)
_LSN = struct.Struct("<Q")
MAX_DATA = MAX_PAYLOAD - _LSN.size


class BadFrame(Exception):
    """The bytes at an offset are not a valid frame (the reason in args[0]). complete: every
    byte its length field names is there and the CRC fails, which a crash during an append
    cannot leave (a killed append is short): damage, not a torn tail."""

    def __init__(self, reason: str, complete: bool = False) -> None:
        super().__init__(reason)
        self.complete = complete


class ScanStop(Exception):
    """A scan stopped at byte `off` after lsn `prev`. torn: the frame is short or its header
    is not a frame's (what a crash leaves, when no valid frame follows); else damage: a whole
    frame whose CRC fails, or a valid frame with a bad LSN."""

    def __init__(self, off: int, prev: int, reason: str, torn: bool) -> None:
        super().__init__(reason)
        self.off, self.prev, self.reason, self.torn = off, prev, reason, torn


def encode_header(base_lsn: int, tag: str) -> bytes:
    raw = tag.encode()
    head = _FILE_HEAD.pack(FILE_MAGIC, base_lsn, len(raw)) + raw
    return head + _U32.pack(zlib.crc32(head))


def read_header(name: str, data: memoryview) -> tuple[int, str, int]:
    """(base_lsn, tag, header length) of a log's bytes; WalCorruptError when it is bad."""
    if len(data) < _FILE_HEAD.size or bytes(data[:8]) != FILE_MAGIC:
        raise WalCorruptError(f"{name}: not a MemoryTransit write-ahead log (bad file header)")
    _, base, tag_len = _FILE_HEAD.unpack_from(data)
    end = _FILE_HEAD.size + tag_len
    if len(data) < end + _U32.size:
        raise WalCorruptError(f"{name}: truncated file header")
    (crc,) = _U32.unpack_from(data, end)
    if zlib.crc32(data[:end]) != crc:
        raise WalCorruptError(f"{name}: file header CRC mismatch")
    try:
        tag = bytes(data[_FILE_HEAD.size : end]).decode()
    except UnicodeDecodeError:
        raise WalCorruptError(f"{name}: file header fingerprint is not utf-8") from None
    return int(base), tag, end + _U32.size


def frame_size(data_len: int) -> int:
    """Bytes of the frame of a record of data_len bytes."""
    return _FRAME_HEAD.size + _LSN.size + data_len


def frame(lsn: int, data: bytes | bytearray | memoryview) -> list[bytes | bytearray | memoryview]:
    """The frame of one record, as parts to join (the caller's bytes are not copied here)."""
    lsn_bytes = _LSN.pack(lsn)
    length = _LSN.size + len(data)
    crc = zlib.crc32(data, zlib.crc32(lsn_bytes, zlib.crc32(_U32.pack(length))))
    return [_FRAME_HEAD.pack(FRAME_MAGIC, FRAME_VERSION, length, crc), lsn_bytes, data]


def frame_at(data: memoryview, off: int) -> tuple[memoryview, int]:
    """The CRC-checked payload of the frame at data[off:] and the offset after it; BadFrame
    otherwise."""
    end = len(data)
    if end - off < _FRAME_HEAD.size:
        raise BadFrame(f"short record header ({end - off} of {_FRAME_HEAD.size} bytes)")
    magic, version, length, crc = _FRAME_HEAD.unpack_from(data, off)
    if magic != FRAME_MAGIC or version != FRAME_VERSION:
        raise BadFrame(f"bad record magic/version {magic:#04x}/{version}")
    if length > MAX_PAYLOAD:
        raise BadFrame(f"record length {length} is implausible")
    start = off + _FRAME_HEAD.size
    if end - start < length:
        raise BadFrame(f"short payload ({end - start} of {length} bytes)")
    payload = data[start : start + length]
    if zlib.crc32(payload, zlib.crc32(_U32.pack(length))) != crc:
        raise BadFrame("CRC mismatch", complete=True)
    return payload, start + length


def scan(data: memoryview, pos: int, prev: int) -> Iterator[tuple[int, int, memoryview]]:
    """(offset, lsn, data) of each frame from byte `pos` on, its LSN checked to increase from
    `prev`; raises ScanStop at the first bad frame."""
    while pos < len(data):
        try:
            payload, nxt = frame_at(data, pos)
        except BadFrame as bad:
            raise ScanStop(pos, prev, str(bad), torn=not bad.complete) from None
        if len(payload) < _LSN.size:
            raise ScanStop(pos, prev, f"payload of {len(payload)} bytes lacks an lsn", torn=False)
        (lsn,) = _LSN.unpack_from(payload)
        if lsn <= prev:
            raise ScanStop(pos, prev, f"lsn {lsn} does not increase", torn=False)
        yield pos, lsn, payload[_LSN.size :]
        prev, pos = lsn, nxt


def valid_frame_after(data: memoryview, off: int) -> int | None:
    """Offset of the first valid frame starting after `off`, else None (whatever its LSN: a
    CRC-valid frame after a bad one means damage, not a torn append)."""
    tail = bytes(data[off + 1 :])  # only read when opening finds a bad frame
    magic = bytes([FRAME_MAGIC, FRAME_VERSION])
    pos = tail.find(magic)
    while pos != -1:
        try:
            frame_at(data, off + 1 + pos)
            return off + 1 + pos
        except BadFrame:
            pos = tail.find(magic, pos + 1)
    return None
