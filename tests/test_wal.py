"""The write-ahead log: round trip, torn tails, corruption, fsync policies, group commit, full
disks, truncation under concurrent appends. Real files in tmp_path; a real full disk on a tiny
tmpfs when the tests run as root. The records are the bank's operations (service/records.py),
as the service logs them; the log itself keeps opaque bytes."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model.errors import DiskFullError, PersistenceError, WalCorruptError, WalFingerprintError
from model.ops import Assign, Clear, Free, Op
from service import frames, records
from service.wal import WriteAheadLog

FP = "model-fingerprint-a"


@contextlib.contextmanager
def tiny_disk(where: Path, size: str = "64k") -> Iterator[Path]:
    """A real tmpfs of `size` mounted at where/disk (root only; the test is skipped otherwise)."""
    mount = where / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system of folder up to the last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return filler


def codes(n: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, generator=g)


def log(w: WriteAheadLog, *ops: Op) -> list[int]:
    """Append the operations' records as one group; returns their LSNs."""
    return w.append([records.encode(op) for op in ops])


def write(w: WriteAheadLog, slots: list[int], z: torch.Tensor) -> int:
    return log(w, Assign(slots, z))[0]


def clear(w: WriteAheadLog) -> int:
    return log(w, Clear())[0]


def populate(path: Path, **kw: object) -> list[tuple[int, int]]:
    """Write, delete, write, clear, write; returns (lsn, byte offset) of each record."""
    ops: list[Op] = [
        Assign([0, 1, 2], codes(3, 4, 0)),
        Free(1),
        Assign([5], codes(1, 4, 1)),
        Clear(),
        Assign([3, 4], codes(2, 4, 2)),
    ]
    index = []
    with WriteAheadLog(path, tag=FP, **kw) as w:  # type: ignore[arg-type]
        for op in ops:
            offset = w.size_bytes  # where the next frame starts
            index.append((log(w, op)[0], offset))
    return index


def lsns(path: Path) -> list[int]:
    with WriteAheadLog(path, tag=FP) as w:
        return [lsn for lsn, _ in w.records()]


def test_round_trip_keeps_every_field_bit_exact(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    c0 = codes(3, 4, 0)
    c0[0, 0] = -0.0  # signed zero and extremes survive: raw float32 bytes, not text
    c0[1, 1] = 3.4e38
    c0[2, 2] = 1e-45
    with WriteAheadLog(path, tag=FP) as w:
        assert w.created and w.last_lsn == 0 and len(w) == 0
        assert write(w, [7, 0, 9], c0) == 1
        assert log(w, Free(9)) == [2]
        assert clear(w) == 3
        assert w.append([b"", b"\xa7\x01 any bytes"]) == [4, 5]  # opaque to the log
    with WriteAheadLog(path, tag=FP) as w:
        assert not w.created and w.last_lsn == 5 and w.warnings == []
        recs = list(w.records())
        assert write(w, [1], codes(1, 4, 5)) == 6
    assert [lsn for lsn, _ in recs] == [1, 2, 3, 4, 5]
    assert [data for _, data in recs[3:]] == [b"", b"\xa7\x01 any bytes"]
    ops = [records.decode(data) for _, data in recs[:3]]
    assert isinstance(ops[0], Assign) and isinstance(ops[1], Free) and isinstance(ops[2], Clear)
    assert ops[0].slots == [7, 0, 9]
    assert ops[0].codes.dtype == torch.float32
    assert torch.equal(ops[0].codes.view(torch.int32), c0.view(torch.int32))
    assert ops[1].slot == 9
    assert lsns(path) == [1, 2, 3, 4, 5, 6]


# A wal.log written by the version before the log became a byte log (fingerprint "fp"):
# write [3, 0] codes [[1, -2], [0.5, 0.25]], delete 3, clear. Its bytes must stay readable.
OLD_LOG = bytes.fromhex(
    "4d5457414c763100000000000000000002006670659436c6a701310000009ca2c1240100000000000000"
    "010200000002000000030000000000000000000000000000000000803f000000c00000003f0000803ea7"
    "01110000005beb7fe10200000000000000020300000000000000a7010900000015216528030000000000"
    "000003"
)


def test_a_log_written_by_the_previous_version_replays_and_is_written_the_same(
    tmp_path: Path,
) -> None:
    (tmp_path / "old.log").write_bytes(OLD_LOG)
    with WriteAheadLog(tmp_path / "old.log", tag="fp") as w:
        assert w.warnings == [] and w.last_lsn == 3
        ops = [(lsn, records.decode(data)) for lsn, data in w.records()]
    assert [lsn for lsn, _ in ops] == [1, 2, 3]
    first = ops[0][1]
    assert isinstance(first, Assign) and first.slots == [3, 0]
    assert first.codes.tolist() == [[1.0, -2.0], [0.5, 0.25]]
    assert ops[1][1] == Free(3) and ops[2][1] == Clear()
    with WriteAheadLog(tmp_path / "new.log", tag="fp") as w:
        log(w, first, Free(3), Clear())
    assert (tmp_path / "new.log").read_bytes() == OLD_LOG


def test_records_after_lsn(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    populate(path)
    with WriteAheadLog(path, tag=FP) as w:
        assert [lsn for lsn, _ in w.records(after_lsn=0)] == [1, 2, 3, 4, 5]
        assert [lsn for lsn, _ in w.records(after_lsn=3)] == [4, 5]
        assert [lsn for lsn, _ in w.records(after_lsn=5)] == []
        assert [lsn for lsn, _ in w.records(after_lsn=99)] == []


def test_oversized_record_is_refused_and_nothing_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frames, "MAX_DATA", 16)  # a frame's limit, made small to test it
    with WriteAheadLog(tmp_path / "wal.log", tag=FP) as w:
        with pytest.raises(ValueError, match="at most 1 GiB, got 17 bytes"):
            w.append([b"fits", b"x" * 17])  # all or nothing: the first is not logged either
        assert w.last_lsn == 0 and len(w) == 0
        assert w.append([b"x" * 16]) == [1]
        assert w.append([]) == []  # an empty group logs nothing


def test_torn_last_record_is_dropped_at_every_byte_offset(tmp_path: Path) -> None:
    src = tmp_path / "src.log"
    index = populate(src)
    data = src.read_bytes()
    last_off = index[-1][1]
    path = tmp_path / "wal.log"
    for cut in range(last_off, len(data)):
        path.write_bytes(data[:cut])
        with WriteAheadLog(path, tag=FP) as w:
            assert [lsn for lsn, _ in w.records()] == [1, 2, 3, 4], cut
            assert path.stat().st_size == last_off, cut
            assert len(w.warnings) == (cut > last_off), cut
            if cut > last_off:
                assert f"torn last record at byte {last_off} (after lsn 4)" in w.warnings[0]
            assert clear(w) == 5  # the log goes on after the cut
        assert lsns(path) == [1, 2, 3, 4, 5]


def test_zero_filled_tail_is_dropped(tmp_path: Path) -> None:
    # What a crash can leave when the file size reached the disk before the data did.
    path = tmp_path / "wal.log"
    populate(path)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0" * 5000)
    assert lsns(path) == [1, 2, 3, 4, 5]
    assert path.stat().st_size == size


def test_bit_flip_in_a_middle_record_is_corruption_naming_the_offset(tmp_path: Path) -> None:
    src = tmp_path / "src.log"
    index = populate(src)
    data = src.read_bytes()
    path = tmp_path / "wal.log"
    # Every byte of records 2..4 (each followed by a valid record), one bit each (rotating).
    for k in (1, 2, 3):
        off, end = index[k][1], index[k + 1][1]
        prev_lsn = index[k - 1][0]
        for pos in range(off, end):
            bad = bytearray(data)
            bad[pos] ^= 1 << (pos % 8)
            path.write_bytes(bytes(bad))
            with pytest.raises(WalCorruptError) as err:
                WriteAheadLog(path, tag=FP)
            assert f"wal.log: bad record at byte {off} (after lsn {prev_lsn})" in str(err.value)
            assert path.read_bytes() == bytes(bad)  # nothing dropped


def test_bit_flip_in_the_last_record_is_corruption_unless_it_looks_torn(tmp_path: Path) -> None:
    # A killed append leaves a SHORT frame: a whole frame whose CRC fails is damage, refused.
    # Only a flip that makes the frame look short (length grown) or not a frame (magic,
    # version) is indistinguishable from a torn append: dropped, with a warning.
    src = tmp_path / "src.log"
    index = populate(src)
    data = src.read_bytes()
    path = tmp_path / "wal.log"
    last_off, head = index[-1][1], 10  # magic u8, version u8, length u32, crc u32
    for pos in range(last_off, len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        path.write_bytes(bytes(bad))
        if last_off + 2 <= pos < last_off + 6 and bad[pos] < data[pos]:  # length shrunk
            looks_torn = False
        else:
            looks_torn = pos < last_off + 6  # magic, version, or a longer length
        if looks_torn:
            with WriteAheadLog(path, tag=FP) as w:
                assert [lsn for lsn, _ in w.records()] == [1, 2, 3, 4], pos
                assert len(w.warnings) == 1, pos
        else:
            with pytest.raises(WalCorruptError, match=f"bad record at byte {last_off}") as err:
                WriteAheadLog(path, tag=FP)
            if pos >= last_off + head:
                assert str(err.value).endswith("CRC mismatch"), pos
            assert path.read_bytes() == bytes(bad), pos  # nothing dropped


def test_damaged_file_header_is_corruption(tmp_path: Path) -> None:
    src = tmp_path / "src.log"
    index = populate(src)
    data = src.read_bytes()
    path = tmp_path / "wal.log"
    for pos in range(index[0][1]):
        bad = bytearray(data)
        bad[pos] ^= 0x04
        path.write_bytes(bytes(bad))
        with pytest.raises(WalCorruptError, match=r"header|not a MemoryTransit"):
            WriteAheadLog(path, tag=FP)


def test_lsn_that_does_not_increase_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    head = frames.encode_header(0, FP)

    def rec(lsn: int) -> bytes:
        return b"".join(frames.frame(lsn, records.encode(Clear())))

    path.write_bytes(head + rec(1) + rec(2) + rec(2))
    with pytest.raises(WalCorruptError, match=r"after lsn 2\): lsn 2 does not increase"):
        WriteAheadLog(path, tag=FP)
    path.write_bytes(head + rec(3) + rec(1))
    with pytest.raises(WalCorruptError, match="lsn 1 does not increase"):
        WriteAheadLog(path, tag=FP)
    # The file header's base LSN counts too: a record at or below it is corruption.
    path.write_bytes(frames.encode_header(10, FP) + rec(10))
    with pytest.raises(WalCorruptError, match="after lsn 10"):
        WriteAheadLog(path, tag=FP)
    # A CRC-valid frame too short to hold an LSN is corruption too, not a torn append.
    short = b"\x01\x02"
    length = len(short).to_bytes(4, "little")
    crc = zlib.crc32(short, zlib.crc32(length)).to_bytes(4, "little")
    path.write_bytes(head + rec(1) + b"\xa7\x01" + length + crc + short)
    with pytest.raises(WalCorruptError, match="after lsn 1\\): payload of 2 bytes lacks an lsn"):
        WriteAheadLog(path, tag=FP)


def test_fingerprint_mismatch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    populate(path)
    with pytest.raises(WalFingerprintError, match="written for model model-fingerprint-a"):
        WriteAheadLog(path, tag="model-fingerprint-b")


@pytest.mark.parametrize("policy", ["always", "everysec", "off"])
def test_fsync_policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    path = tmp_path / "wal.log"
    w = WriteAheadLog(path, fsync=policy, tag=FP)  # type: ignore[arg-type]
    for i in range(5):
        write(w, [i], codes(1, 4, i))
    if policy == "always":
        assert len(calls) == 5  # one per append, before it returned
    elif policy == "off":
        assert calls == []
    else:
        assert len(calls) <= 1
        deadline = time.monotonic() + 3.0
        while not calls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(calls) >= 1  # the background thread synced within about a second
    w.close()
    assert lsns(path) == [1, 2, 3, 4, 5]


def test_group_append_is_one_write_and_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        calls.append("write")
        return real_pwrite(fd, data, offset)

    def fdatasync(fd: int) -> None:
        calls.append("fsync")
        real_fdatasync(fd)

    w = WriteAheadLog(tmp_path / "wal.log", tag=FP)
    clear(w)
    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    group: list[Op] = [
        Assign([0, 1], codes(2, 4, 0)),
        Free(1),
        Clear(),
        Assign([2], codes(1, 4, 1)),
    ]
    assert log(w, *group) == [2, 3, 4, 5]
    assert calls == ["write", "fsync"]
    monkeypatch.undo()
    w.close()
    assert lsns(tmp_path / "wal.log") == [1, 2, 3, 4, 5]


def test_failed_append_on_a_full_disk_leaves_the_log_unchanged(tmp_path: Path) -> None:
    with tiny_disk(tmp_path) as disk:
        path = disk / "wal.log"
        w = WriteAheadLog(path, tag=FP)
        write(w, [0], codes(1, 16, 0))
        before = path.read_bytes()
        filler = fill(disk)
        big = codes(100, 16, 1)  # 6.4 kB: needs pages the disk no longer has
        for _ in range(3):
            with pytest.raises(DiskFullError, match="disk full"):
                write(w, list(range(100)), big)
            assert path.read_bytes() == before
            assert w.last_lsn == 1
        filler.unlink()
        assert write(w, list(range(100)), big) == 2
        w.close()
        with WriteAheadLog(path, tag=FP) as again:
            assert [lsn for lsn, _ in again.records()] == [1, 2] and again.warnings == []


def test_failed_write_or_fsync_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Faults a tmpfs cannot produce: a short write followed by ENOSPC, and an fsync EIO.
    path = tmp_path / "wal.log"
    w = WriteAheadLog(path, tag=FP)
    clear(w)
    before = path.read_bytes()
    real_pwrite = os.pwrite
    state = {"calls": 0}

    def short_then_full(fd: int, data: bytes, offset: int) -> int:
        state["calls"] += 1
        if state["calls"] == 1:
            return real_pwrite(fd, bytes(data)[:7], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", short_then_full)
    with pytest.raises(DiskFullError):
        write(w, [0, 1], codes(2, 4, 0))
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert path.read_bytes() == before and w.last_lsn == 1

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", eio)
    with pytest.raises(PersistenceError, match="Input/output error") as err:
        clear(w)
    assert not isinstance(err.value, DiskFullError)
    monkeypatch.undo()
    assert path.read_bytes() == before and w.last_lsn == 1
    assert clear(w) == 2
    w.close()
    assert lsns(path) == [1, 2]


def test_everysec_fsync_failure_refuses_later_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = WriteAheadLog(tmp_path / "wal.log", fsync="everysec", tag=FP)
    clear(w)

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", eio)
    w.sync()
    with pytest.raises(PersistenceError, match="refuses writes until restart: fsync failed"):
        clear(w)
    w.close()


def test_truncate_through_keeps_later_records_and_the_lsn_sequence(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    populate(path)
    with WriteAheadLog(path, tag=FP) as w:
        assert w.truncate_through(3) == 3
        assert w.base_lsn == 3 and [lsn for lsn, _ in w.records()] == [4, 5]
        assert w.truncate_through(2) == 0  # already dropped
        assert w.truncate_through(5) == 2
        assert len(w) == 0 and w.last_lsn == 5
    with WriteAheadLog(path, tag=FP) as w:  # the base survives an empty log
        assert w.base_lsn == 5 and w.last_lsn == 5
        assert clear(w) == 6
        assert w.truncate_through(9) == 1  # beyond the last: later LSNs start above it
        assert clear(w) == 10
    assert lsns(path) == [10]
    assert list(tmp_path.glob(".wal.log*tmp")) == []


def test_truncate_during_concurrent_appends_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    w = WriteAheadLog(path, fsync="off", tag=FP)
    stop = threading.Event()
    done: list[int] = []

    def writer() -> None:
        i = 0
        while not stop.is_set() or i < 200:
            done.append(write(w, [i % 50], codes(1, 8, i)))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    cuts = []
    for _ in range(20):
        time.sleep(0.002)
        cut = w.last_lsn
        w.truncate_through(cut)
        cuts.append(cut)
    stop.set()
    t.join()
    assert [lsn for lsn, _ in w.records()] == [x for x in done if x > cuts[-1]]
    w.close()
    assert lsns(path) == [x for x in done if x > cuts[-1]]
    assert done == list(range(1, len(done) + 1))


def test_truncate_failure_leaves_the_log(tmp_path: Path) -> None:
    with tiny_disk(tmp_path) as disk:
        path = disk / "wal.log"
        w = WriteAheadLog(path, tag=FP)
        for i in range(3):
            write(w, list(range(100)), codes(100, 16, i))  # 3 x 6.4 kB
        before = path.read_bytes()
        filler = fill(disk)
        with pytest.raises(DiskFullError):
            w.truncate_through(1)  # the copy of records 2..3 does not fit
        assert path.read_bytes() == before and w.base_lsn == 0
        assert list(disk.glob(".wal.log*tmp")) == []
        filler.unlink()
        assert clear(w) == 4
        w.close()
        assert lsns(path) == [1, 2, 3, 4]


def test_repair_cuts_at_the_first_bad_record_and_keeps_a_copy(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    index = populate(path)
    bad = bytearray(path.read_bytes())
    bad[index[2][1] + 12] ^= 0xFF
    path.write_bytes(bytes(bad))
    with pytest.raises(WalCorruptError):
        WriteAheadLog(path, tag=FP)
    assert WriteAheadLog.repair(path) == len(bad) - index[2][1]
    assert lsns(path) == [1, 2]
    (backup,) = tmp_path.glob("wal.log.corrupt-*")
    assert backup.read_bytes() == bytes(bad)


def test_stale_temp_files_are_removed_at_open(tmp_path: Path) -> None:
    populate(tmp_path / "wal.log")
    for name in (".wal.log.tmp", ".wal.log.k3j2h1.tmp"):  # a crashed truncation's (old, new)
        (tmp_path / name).write_bytes(b"half a log")
    assert lsns(tmp_path / "wal.log") == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal.log"]


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    w = WriteAheadLog(tmp_path / "wal.log", tag=FP)
    w.close()
    w.close()  # idempotent
    with pytest.raises(PersistenceError, match="closed"):
        clear(w)
    with pytest.raises(PersistenceError, match="closed"):
        list(w.records())
