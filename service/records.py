"""The bank's operations (model/ops.py) as write-ahead log records, and back. Little-endian:

    op u8       body
    1 write     n u32 | m u32 | slots int64 (n) | codes float32 (n, m), row-major
    2 delete    slot int64
    3 clear     (empty)

A record is the data of one WAL frame (service/frames.py): the log keeps the bytes, this
module gives them their meaning. Codes are the float32 values the bank is given, so replaying
an int8 or float16 bank quantises them the same way again.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from model.ops import Assign, Clear, Free, Op

__all__ = ["CLEAR", "DELETE", "WRITE", "decode", "encode", "kind"]

WRITE, DELETE, CLEAR = 1, 2, 3
_KINDS = {Assign: "write", Free: "delete", Clear: "clear"}
_OP = struct.Struct("<B")
_WRITE_HEAD = struct.Struct("<II")  # n, m
_SLOT = struct.Struct("<q")


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
    raise ValueError(f"expected an Assign, Free or Clear operation, got {op!r}")


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
    head = _OP.pack(WRITE) + _WRITE_HEAD.pack(n, z.shape[1])
    return head + slots.astype("<i8", copy=False).tobytes() + z.astype("<f4", copy=False).tobytes()


def decode(data: bytes | bytearray | memoryview) -> Op:
    """The operation a record holds; ValueError naming the problem when it is malformed."""
    if len(data) < _OP.size:
        raise ValueError("empty record (no op byte)")
    (op,) = _OP.unpack_from(data)
    body = memoryview(data)[_OP.size :]
    if op == WRITE:
        if len(body) < _WRITE_HEAD.size:
            raise ValueError(f"write record of {len(body)} body bytes lacks n and m")
        n, m = _WRITE_HEAD.unpack_from(body)
        want = _WRITE_HEAD.size + 8 * n + 4 * n * m
        if n < 1 or m < 1 or len(body) != want:
            raise ValueError(f"write record with n={n}, m={m} has a {len(body)}-byte body")
        off = _WRITE_HEAD.size
        slots = np.frombuffer(body, dtype="<i8", count=n, offset=off)
        codes = np.frombuffer(body, dtype="<f4", count=n * m, offset=off + 8 * n)
        # astype copies: the op owns its memory, not the record's buffer
        z = torch.from_numpy(codes.astype(np.float32).reshape(n, m))
        return Assign(slots=slots.astype(np.int64).tolist(), codes=z)
    if op == DELETE:
        if len(body) != _SLOT.size:
            raise ValueError(f"delete record has a {len(body)}-byte body, expected {_SLOT.size}")
        return Free(slot=int(_SLOT.unpack_from(body)[0]))
    if op == CLEAR:
        if len(body):
            raise ValueError(f"clear record has a {len(body)}-byte body, expected none")
        return Clear()
    raise ValueError(f"unknown op {op}")
