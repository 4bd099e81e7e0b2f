"""The bank-operation record codec: exact bytes, bit-exact round trips, and every refusal."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
import torch

from model.ops import Assign, Clear, Forget, Free, Op, Pin
from service import records


def test_bytes_are_the_documented_layout() -> None:
    z = torch.tensor([[1.0, -2.0], [0.5, 3.0], [0.0, 1e-45]])
    assert records.encode(Assign([7, 0, 9], z)) == (
        b"\x01" + struct.pack("<II", 3, 2) + struct.pack("<3q", 7, 0, 9) + z.numpy().tobytes()
    )
    assert records.encode(Free(9)) == b"\x02" + struct.pack("<q", 9)
    assert records.encode(Clear()) == b"\x03"


def test_round_trip_is_bit_exact() -> None:
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    z[0, 0] = -0.0  # signed zero and extremes survive: raw float32 bytes, not text
    z[1, 1] = 3.4e38
    z[2, 2] = 1e-45
    op = records.decode(records.encode(Assign([7, 0, 9], z)))
    assert isinstance(op, Assign)
    assert op.slots == [7, 0, 9] and all(type(s) is int for s in op.slots)
    assert op.codes.dtype == torch.float32 and op.codes.shape == (3, 4)
    assert torch.equal(op.codes.view(torch.int32), z.view(torch.int32))
    assert records.decode(records.encode(Free(5))) == Free(5)
    assert records.decode(records.encode(Clear())) == Clear()


def test_decoded_codes_own_their_memory() -> None:
    data = bytearray(records.encode(Assign([1], torch.ones(1, 2))))
    op = records.decode(data)
    data[-4:] = b"\0\0\0\0"
    assert isinstance(op, Assign) and op.codes.tolist() == [[1.0, 1.0]]


def test_encode_accepts_tensor_and_numpy_slots() -> None:
    z = torch.ones(2, 3)
    want = records.encode(Assign([4, 2], z))
    assert records.encode(Assign(torch.tensor([4, 2]), z)) == want  # type: ignore[arg-type]
    slots32 = np.array([4, 2], dtype=np.int32)
    assert records.encode(Assign(slots32, z)) == want  # type: ignore[arg-type]
    assert records.encode(Free(np.int64(3))) == records.encode(Free(3))  # type: ignore[arg-type]


class Untyped:
    """The operations' constructors without their types: what a typed caller cannot build."""

    Assign: Any = Assign
    Free: Any = Free


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (Assign([0], torch.tensor([[1.0, float("nan")]])), "expected finite codes, got NaN or inf"),
        (Assign([0], torch.tensor([[float("inf")]])), "expected finite codes, got NaN or inf"),
        (Assign([0, 1], torch.zeros(3, 4)), r"expected codes of shape \(2, m >= 1\), got \(3, 4\)"),
        (Assign([0], torch.zeros(1, 0)), r"expected codes of shape \(1, m >= 1\), got \(1, 0\)"),
        (Assign([0], torch.zeros(4)), r"expected codes of shape \(1, m >= 1\), got \(4,\)"),
        (Assign([], torch.zeros(0, 4)), "expected slots as a non-empty 1-d sequence of ints"),
        (
            Untyped.Assign([[0]], torch.zeros(1, 4)),
            "non-empty 1-d sequence of ints, got int64 \\(1, 1\\)",
        ),
        (Untyped.Assign([0.5], torch.zeros(1, 4)), "non-empty 1-d sequence of ints, got float64"),
        (Assign([True], torch.zeros(1, 4)), "non-empty 1-d sequence of ints, got bool"),
        (Assign([0], torch.zeros(1, 4, dtype=torch.float64)), "float32 tensor, got torch.float64"),
        (Untyped.Assign([0], [[0.0, 1.0]]), "expected codes as a float32 tensor, got list"),
        (Untyped.Free(1.5), "expected an int slot to delete, got 1.5"),
        (Free(True), "expected an int slot to delete, got True"),
        ("clear", "expected an Assign, Free, Forget, Pin or Clear operation, got 'clear'"),
    ],
)
def test_encode_refuses_what_cannot_be_a_record(op: Op, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        records.encode(op)


def write_record(n: int, m: int, body_bytes: int) -> bytes:
    return b"\x01" + struct.pack("<II", n, m) + b"\0" * body_bytes


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"empty record \(no op byte\)"),
        (b"\x09", "unknown op 9"),
        (b"\x00abc", "unknown op 0"),
        (b"\x01\x01\x00", "write record of 2 body bytes lacks n and m"),
        (
            write_record(2, 3, 2 * 8 + 2 * 3 * 4 - 1),
            "write record with n=2, m=3 has a 47-byte body",
        ),
        (
            write_record(2, 3, 2 * 8 + 2 * 3 * 4 + 1),
            "write record with n=2, m=3 has a 49-byte body",
        ),
        (write_record(0, 3, 0), "write record with n=0, m=3 has a 8-byte body"),
        (write_record(1, 0, 8), "write record with n=1, m=0 has a 16-byte body"),
        (b"\x02" + b"\0" * 7, "delete record has a 7-byte body, expected 8"),
        (b"\x02" + b"\0" * 9, "delete record has a 9-byte body, expected 8"),
        (b"\x03\x00", "clear record has a 1-byte body, expected none"),
    ],
)
def test_decode_refuses_malformed_records(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        records.decode(data)


def test_kind_names_each_operation() -> None:
    ops = (Assign([0], torch.ones(1, 1)), Free(0), Clear())
    assert [records.kind(op) for op in ops] == ["write", "delete", "clear"]


def test_namespaced_writes_forget_and_pin_round_trip_in_their_documented_bytes() -> None:
    z = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    op = Assign([4, 1], z, "user:7", (b'{"text":"a"}', None), True)
    data = records.encode(op)
    body = struct.pack("<II", 2, 2) + struct.pack("<2q", 4, 1) + z.numpy().tobytes()
    assert data == (
        b"\x04"
        + body
        + struct.pack("<BH", 3, 6)
        + b"user:7"
        + struct.pack("<I", 12)
        + b'{"text":"a"}'
        + struct.pack("<I", 0xFFFFFFFF)
    )
    back = records.decode(data)
    assert isinstance(back, Assign) and back.slots == [4, 1]
    assert (back.namespace, back.records, back.pinned) == ("user:7", (b'{"text":"a"}', None), True)
    assert torch.equal(back.codes, z)
    # the default namespace without records or pin is the old record 1, byte for byte
    assert records.encode(Assign([4, 1], z, "default")) == b"\x01" + body
    assert records.encode(Forget([3, 9])) == b"\x05" + struct.pack("<I2q", 2, 3, 9)
    assert records.decode(records.encode(Forget([3, 9]))) == Forget([3, 9])
    assert records.encode(Pin([2], False)) == b"\x06\x00" + struct.pack("<Iq", 1, 2)
    assert records.decode(records.encode(Pin([2], True))) == Pin([2], True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b"\x04" + struct.pack("<II", 1, 1) + struct.pack("<q", 0) + b"\0\0\x80?",
            "lacks its flags",
        ),
        (
            b"\x04"
            + struct.pack("<II", 1, 1)
            + struct.pack("<q", 0)
            + b"\0\0\x80?"
            + struct.pack("<BH", 2, 1)
            + b"a"
            + struct.pack("<I", 9)
            + b"abc",
            "ends inside its records",
        ),
        (
            b"\x04"
            + struct.pack("<II", 1, 1)
            + struct.pack("<q", 0)
            + b"\0\0\x80?"
            + struct.pack("<BH", 0, 1)
            + b"a"
            + b"junk",
            "4 bytes after its records",
        ),
        (b"\x05" + struct.pack("<I", 2) + struct.pack("<q", 1), "forget record with n=2"),
        (b"\x06\x02" + struct.pack("<Iq", 1, 2), "lacks its pinned byte"),
    ],
)
def test_malformed_new_records_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        records.decode(data)
