"""The bank's operations (model/ops.py) as write-ahead log records, and back. Little-endian:

    op u8       body
    1 write     n u32 | m u32 | slots int64 (n) | codes float32 (n, m), row-major
    2 delete    slot int64
    3 clear     (empty)
    4 write+    the body of 1, then flags u8 (1: pinned, 2: records) | ns_len u16 | namespace
                utf-8 | with records, per slot: len u32 (0xFFFFFFFF: none) | bytes
    5 forget    n u32 | slots int64 (n)
    6 pin       pinned u8 | n u32 | slots int64 (n)

A write into the default namespace, unpinned and without records, is record 1, as before
namespaces existed: older logs replay as they are.

A record is the data of one WAL frame (service/frames.py): the log keeps the bytes, this
module gives them their meaning. Codes are the float32 values the bank is given, so replaying
an int8 or float16 bank quantises them the same way again.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from model.enums import DEFAULT_NAMESPACE
from model.ops import Assign, Clear, Forget, Free, Op, Pin

__all__ = ["CLEAR", "DELETE", "FORGET", "PIN", "WRITE", "WRITE_PLUS", "decode", "encode", "kind"]

WRITE, DELETE, CLEAR, WRITE_PLUS, FORGET, PIN = 1, 2, 3, 4, 5, 6
_KINDS = {Assign: "write", Free: "delete", Clear: "clear", Forget: "forget", Pin: "pin"}
_OP = struct.Struct("<B")
_WRITE_HEAD = struct.Struct("<II")  # n, m
_SLOT = struct.Struct("<q")
_U32 = struct.Struct("<I")
_PLUS = struct.Struct("<BH")  # flags, namespace length
_NO_RECORD = 0xFFFFFFFF


def kind(op: Op) -> str:
    """ "write", "delete" or "clear": the record's name for the operation."""
    return _KINDS[type(op)]


def encode(op: Op) -> bytes:
    """The record of one operation; ValueError naming the problem when it cannot be one."""
    if isinstance(op, Assign):
        return _encode_assign(op)
    if isinstance(op, Free):
        slot = op.slot
        if isinstance(slot, bool) or not isinstance(slot, int | np.integer):
            raise ValueError(f"expected an int slot to delete, got {slot!r}")
        return _OP.pack(DELETE) + _SLOT.pack(int(slot))
    if isinstance(op, Clear):
        return _OP.pack(CLEAR)
    if isinstance(op, Forget):
        return _OP.pack(FORGET) + _slots(op.slots)
    if isinstance(op, Pin):
        return _OP.pack(PIN) + bytes([bool(op.pinned)]) + _slots(op.slots)
    raise ValueError(f"expected an Assign, Free, Forget, Pin or Clear operation, got {op!r}")


def _slots(slots: list[int]) -> bytes:
    a = np.asarray(slots)
    if a.ndim != 1 or a.size < 1 or a.dtype.kind not in "iu":
        raise ValueError(f"expected a non-empty 1-d sequence of int slots, got {slots!r}")
    return _U32.pack(a.size) + a.astype("<i8", copy=False).tobytes()


def _read_slots(body: memoryview, what: str) -> list[int]:
    if len(body) < _U32.size:
        raise ValueError(f"{what} record of {len(body)} body bytes lacks n")
    (n,) = _U32.unpack_from(body)
    if n < 1 or len(body) != _U32.size + 8 * n:
        raise ValueError(f"{what} record with n={n} has a {len(body)}-byte body")
    return np.frombuffer(body, dtype="<i8", count=n, offset=_U32.size).astype(np.int64).tolist()


def _encode_assign(op: Assign) -> bytes:
    slots = np.asarray(op.slots)
    if slots.ndim != 1 or slots.size < 1 or slots.dtype.kind not in "iu":
        raise ValueError(
            f"expected slots as a non-empty 1-d sequence of ints, got {slots.dtype} {slots.shape}"
        )
    codes = op.codes
    n = slots.size
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.float32:
        what = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"expected codes as a float32 tensor, got {what}")
    if codes.dim() != 2 or codes.shape[0] != n or codes.shape[1] < 1:
        raise ValueError(f"expected codes of shape ({n}, m >= 1), got {tuple(codes.shape)}")
    z = codes.detach().to("cpu").contiguous().numpy()
    if not np.isfinite(z).all():
        raise ValueError("expected finite codes, got NaN or inf")
    plain = op.namespace == DEFAULT_NAMESPACE and op.records is None and not op.pinned
    head = _OP.pack(WRITE if plain else WRITE_PLUS) + _WRITE_HEAD.pack(n, z.shape[1])
    body = head + slots.astype("<i8", copy=False).tobytes() + z.astype("<f4", copy=False).tobytes()
    if plain:
        return body
    ns = op.namespace.encode()
    flags = (1 if op.pinned else 0) | (2 if op.records is not None else 0)
    parts = [body, _PLUS.pack(flags, len(ns)), ns]
    if op.records is not None:
        if len(op.records) != n:
            raise ValueError(f"expected one record per slot ({n}), got {len(op.records)}")
        for r in op.records:
            parts += [_U32.pack(_NO_RECORD)] if r is None else [_U32.pack(len(r)), bytes(r)]
    return b"".join(parts)


def decode(data: bytes | bytearray | memoryview) -> Op:
    """The operation a record holds; ValueError naming the problem when it is malformed."""
    if len(data) < _OP.size:
        raise ValueError("empty record (no op byte)")
    (op,) = _OP.unpack_from(data)
    body = memoryview(data)[_OP.size :]
    if op in (WRITE, WRITE_PLUS):
        return _decode_write(body, plus=op == WRITE_PLUS)
    if op == FORGET:
        return Forget(_read_slots(body, "forget"))
    if op == PIN:
        if len(body) < 1 or body[0] > 1:
            raise ValueError("pin record lacks its pinned byte (0 or 1)")
        return Pin(_read_slots(body[1:], "pin"), bool(body[0]))
    if op == DELETE:
        if len(body) != _SLOT.size:
            raise ValueError(f"delete record has a {len(body)}-byte body, expected {_SLOT.size}")
        return Free(slot=int(_SLOT.unpack_from(body)[0]))
    if op == CLEAR:
        if len(body):
            raise ValueError(f"clear record has a {len(body)}-byte body, expected none")
        return Clear()
    raise ValueError(f"unknown op {op}")


def _decode_write(body: memoryview, plus: bool) -> Assign:
    if len(body) < _WRITE_HEAD.size:
        raise ValueError(f"write record of {len(body)} body bytes lacks n and m")
    n, m = _WRITE_HEAD.unpack_from(body)
    end = _WRITE_HEAD.size + 8 * n + 4 * n * m
    if n < 1 or m < 1 or len(body) < end or (not plus and len(body) != end):
        raise ValueError(f"write record with n={n}, m={m} has a {len(body)}-byte body")
    off = _WRITE_HEAD.size
    slots = np.frombuffer(body, dtype="<i8", count=n, offset=off)
    codes = np.frombuffer(body, dtype="<f4", count=n * m, offset=off + 8 * n)
    # astype copies: the op owns its memory, not the record's buffer
    z = torch.from_numpy(codes.astype(np.float32).reshape(n, m))
    ids = slots.astype(np.int64).tolist()
    if not plus:
        return Assign(slots=ids, codes=z)
    rest = body[end:]
    if len(rest) < _PLUS.size:
        raise ValueError("write+ record lacks its flags and namespace")
    flags, ns_len = _PLUS.unpack_from(rest)
    pos = _PLUS.size + ns_len
    if flags > 3 or len(rest) < pos:
        raise ValueError(f"write+ record has flags {flags} or a short namespace")
    try:
        namespace = bytes(rest[_PLUS.size : pos]).decode()
    except UnicodeDecodeError:
        raise ValueError("write+ record namespace is not utf-8") from None
    records: list[bytes | None] | None = None
    if flags & 2:
        records = []
        for _ in range(n):
            if len(rest) < pos + _U32.size:
                raise ValueError("write+ record ends inside its records")
            (size,) = _U32.unpack_from(rest, pos)
            pos += _U32.size
            if size == _NO_RECORD:
                records.append(None)
                continue
            if len(rest) < pos + size:
                raise ValueError("write+ record ends inside its records")
            records.append(bytes(rest[pos : pos + size]))
            pos += size
    if pos != len(rest):
        raise ValueError(f"write+ record has {len(rest) - pos} bytes after its records")
    return Assign(ids, z, namespace, None if records is None else tuple(records), bool(flags & 1))
