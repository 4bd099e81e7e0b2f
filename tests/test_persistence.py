"""Recovery = newest valid snapshot + WAL replay gives the live bank's state back; refusals
when that would lose data; allow_fresh moves the files aside."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from model.bank import MemoryBank
from model.errors import DiskFullError, RecoveryError
from model.memory import IDRPMemory
from model.ops import Assign, Clear, Free, Op
from service import frames
from service.persistence import Persistence, Recovery
from service.store import snapshot_name
from service.wal import WriteAheadLog
from tests.test_memory import rate_code

FP = "model-fingerprint-a"
CAP, M = 32, 8


def make_bank(dtype: str = "float32", capacity: int = CAP) -> Callable[[], MemoryBank]:
    scales = torch.full((M,), 0.03) if dtype == "int8" else None
    rate = rate_code(M) if dtype == "rate" else None  # 6 bits per dimension: 6 bytes
    return lambda: MemoryBank(capacity, M, dtype=dtype, scales=scales, rate=rate, initial_count=1)


def open_(folder: Path, dtype: str = "float32", **kw: object) -> tuple[Persistence, Recovery]:
    p = Persistence(folder, **kw)  # type: ignore[arg-type]
    return p, p.recover(make_bank(dtype), fingerprint=FP, capacity=CAP, m=M)


class IdentityCodec:
    """d = m and encode = decode = identity: a write stores the item itself as its code."""

    def __init__(self, m: int) -> None:
        self.config = SimpleNamespace(d=m, m=m)

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode(self, z: Tensor) -> Tensor:
        return z


def copy_of(state: dict[str, Tensor], initial_count: int) -> MemoryBank:
    return MemoryBank.from_state(
        {k: v.clone() for k, v in state.items()}, initial_count=initial_count
    )


class Service:
    """Production's protocol (service/engine.py): the memory loop, `IDRPMemory`, logs every
    group of operations through `persistence.log` before applying them, and a snapshot is
    `memory.checkpoint()` handed to `persistence.snapshot`. `shadow` applies only the logged
    operations since the last checkpoint: the state recovery must give back."""

    def __init__(self, p: Persistence, rec: Recovery, seed: int = 0) -> None:
        self.p, self.bank = p, rec.bank
        self.memory = IDRPMemory(IdentityCodec(M), rec.bank, log=self._log, position=rec.last_lsn)
        self.g = torch.Generator().manual_seed(seed)
        self.shadow = copy_of(rec.bank.state_dict(), rec.bank.initial_count)

    def _log(self, ops: Sequence[Op]) -> int:
        lsn = self.p.log(ops)  # raises, and the memory loop applies nothing
        for op in ops:
            self.shadow.apply(op)
        return lsn

    def write(self, n: int) -> None:
        self.memory.write(torch.randn(n, M, generator=self.g), mode="each")

    def read(self) -> None:
        self.memory.read(torch.randn(3, M, generator=self.g), top_k=2)  # not logged

    def delete_one(self) -> None:
        used = torch.nonzero(self.bank.occupied).squeeze(1).tolist()
        if used:
            self.memory.delete(used[len(used) // 2])

    def clear(self) -> None:
        self.memory.clear()

    def capture(self) -> tuple[dict[str, Tensor], int]:
        state, lsn = self.memory.checkpoint()
        self.shadow = copy_of(state, self.bank.initial_count)
        return state, lsn

    def snapshot(self) -> int:
        state, lsn = self.capture()
        self.p.snapshot(state, lsn)
        return lsn

    def workload(self, steps: int) -> None:
        for i in range(steps):
            k = i % 7
            if k in (0, 2, 4):
                self.write(1 + i % 3)
            elif k in (1, 5):
                self.read()
            elif k == 3:
                self.delete_one()
            elif i % 50 == 6:
                self.clear()
            else:
                self.write(CAP // 3)  # enough to evict


def state(bank: MemoryBank) -> dict[str, torch.Tensor]:
    return bank.state_dict()


def assert_same_memories(bank: MemoryBank, live: MemoryBank) -> None:
    """Codes and occupancy exactly the live bank's (its counters may be ahead)."""
    got, want = state(bank), state(live)
    assert torch.equal(got["codes"], want["codes"])
    assert torch.equal(got["occupied"], want["occupied"])


def assert_recovered(rec: Recovery, eng: Service) -> None:
    """Codes and occupancy exactly the live bank's; every tensor exactly the shadow's (the
    live bank's counters may be ahead by the reads since the last snapshot)."""
    assert_same_memories(rec.bank, eng.bank)
    got, shadow = state(rec.bank), state(eng.shadow)
    for key in shadow:
        assert torch.equal(got[key], shadow[key]), key
    assert rec.last_lsn == eng.p.last_lsn


def crash(p: Persistence) -> None:
    """Let go of the folder as kill -9 would: no final snapshot, no clean-stop record (the
    WAL is already in the page cache)."""
    p.close(clean=False)


def test_fresh_folder_starts_empty(tmp_path: Path) -> None:
    p, rec = open_(tmp_path / "data")
    assert rec.snapshot is None and rec.replayed == 0 and rec.warnings == []
    assert rec.bank.used == 0 and rec.bank.initial_count == 1 and p.last_lsn == 0
    p.close()


@pytest.mark.parametrize("dtype", ["float32", "int8", "rate"])
@pytest.mark.parametrize("fsync", ["always", "everysec", "off"])
def test_recovery_gives_back_the_live_state(tmp_path: Path, dtype: str, fsync: str) -> None:
    p, rec = open_(tmp_path, dtype, fsync=fsync)
    eng = Service(p, rec)
    eng.workload(40)
    eng.snapshot()
    eng.workload(40)
    eng.snapshot()
    eng.workload(33)  # after the last snapshot: only in the WAL
    crash(p)
    p2, rec2 = open_(tmp_path, dtype, fsync=fsync)
    assert rec2.snapshot is not None and rec2.replayed > 0 and rec2.warnings == []
    assert rec2.replayed == p.last_lsn - rec2.snapshot.lsn
    assert rec2.bank.dtype == dtype
    assert_recovered(rec2, eng)
    # ...and it goes on: new LSNs continue, and a second recovery agrees again.
    eng2 = Service(p2, rec2, seed=1)
    eng2.shadow = eng.shadow
    eng2.workload(20)
    crash(p2)
    _, rec3 = open_(tmp_path, dtype)
    assert_recovered(rec3, eng2)


def test_recovery_without_any_snapshot_replays_the_whole_log(tmp_path: Path) -> None:
    p, rec = open_(tmp_path)
    eng = Service(p, rec)
    eng.workload(30)
    crash(p)
    _, rec2 = open_(tmp_path)
    assert rec2.snapshot is None and rec2.replayed == p.last_lsn
    assert_recovered(rec2, eng)


def test_snapshot_in_a_thread_while_writes_go_on(tmp_path: Path) -> None:
    p, rec = open_(tmp_path, keep=2)
    eng = Service(p, rec)
    for _ in range(5):
        eng.workload(10)
        snap_state, lsn = eng.capture()
        t = threading.Thread(target=p.snapshot, args=(snap_state, lsn))
        t.start()
        eng.workload(15)  # concurrent with the save and the WAL truncation
        t.join()
    crash(p)
    _, rec2 = open_(tmp_path, keep=2)
    assert rec2.snapshot is not None and rec2.snapshot.lsn == lsn
    assert_recovered(rec2, eng)


def test_wal_keeps_what_the_kept_snapshots_need(tmp_path: Path) -> None:
    p, rec = open_(tmp_path, keep=2)
    eng = Service(p, rec)
    eng.workload(10)
    first = eng.snapshot()
    assert p.stats()["wal_records"] == p.last_lsn  # one snapshot < keep: nothing dropped
    eng.workload(10)
    second = eng.snapshot()
    assert p.stats()["wal_records"] == p.last_lsn - first  # all after the oldest kept one
    eng.workload(10)
    third = eng.snapshot()
    assert p.stats()["wal_records"] == p.last_lsn - second
    kept = sorted(x.name for x in tmp_path.glob("snap-*.safetensors"))
    assert kept == [snapshot_name(second), snapshot_name(third)]
    p.close()


def test_damaged_newest_snapshot_falls_back_without_loss(tmp_path: Path) -> None:
    p, rec = open_(tmp_path)
    eng = Service(p, rec)
    for _ in range(3):
        eng.workload(15)
        newest = eng.snapshot()
    eng.workload(10)
    crash(p)
    path = tmp_path / snapshot_name(newest)
    path.write_bytes(path.read_bytes()[:-10])
    _, rec2 = open_(tmp_path)
    assert rec2.snapshot is not None and rec2.snapshot.lsn < newest
    assert any(w.startswith(f"skipped snapshot {path.name}: ") for w in rec2.warnings)
    # Counters: the fallback replays from an older state, so compare codes and occupancy.
    assert_same_memories(rec2.bank, eng.bank)


def test_all_snapshots_bad_with_a_trimmed_wal_is_refused_then_allow_fresh(tmp_path: Path) -> None:
    p, rec = open_(tmp_path, keep=2)
    eng = Service(p, rec)
    for _ in range(3):
        eng.workload(10)
        eng.snapshot()
    crash(p)
    names = sorted(x.name for x in tmp_path.glob("snap-*"))
    for name in names:
        f = tmp_path / name
        f.write_bytes(f.read_bytes()[:50])
    before = {x.name: x.read_bytes() for x in tmp_path.iterdir()}
    with pytest.raises(RecoveryError) as err:
        open_(tmp_path, keep=2)
    msg = str(err.value)
    assert msg.startswith(f"cannot recover the bank from {tmp_path} without losing data: ")
    for name in names:
        assert f"{name}: snapshot {tmp_path / name} is truncated" in msg
    assert msg.endswith(
        "set MT_ALLOW_FRESH=1 (allow_fresh=True) to move them aside and start empty."
    )
    assert {x.name: x.read_bytes() for x in tmp_path.iterdir()} == before  # nothing touched

    p3, rec3 = open_(tmp_path, keep=2, allow_fresh=True)
    assert rec3.bank.used == 0 and rec3.snapshot is None
    assert "started with an empty bank (allow_fresh)" in rec3.warnings[0]
    (quarantine,) = tmp_path.glob("quarantine-*")
    moved = {x.name: x.read_bytes() for x in quarantine.iterdir()}
    assert moved == {k: v for k, v in before.items() if k != "LOCK"}
    assert p3.log([Clear()]) == 1
    p3.close()


def test_all_snapshots_bad_but_the_wal_is_whole_rebuilds_from_it(tmp_path: Path) -> None:
    p, rec = open_(tmp_path, keep=3)
    eng = Service(p, rec)
    eng.workload(20)
    lsn = eng.snapshot()  # one generation < keep: the WAL still starts at lsn 0
    eng.workload(20)
    crash(p)
    (tmp_path / snapshot_name(lsn)).write_bytes(b"garbage")
    _, rec2 = open_(tmp_path, keep=3)
    assert rec2.snapshot is None and rec2.replayed == p.last_lsn
    assert "rebuilt the bank from the whole wal.log" in rec2.warnings[0]
    assert_same_memories(rec2.bank, eng.bank)


def test_missing_snapshots_behind_a_trimmed_wal_are_refused(tmp_path: Path) -> None:
    p, rec = open_(tmp_path, keep=1)
    eng = Service(p, rec)
    eng.workload(10)
    lsn = eng.snapshot()
    eng.workload(5)
    crash(p)
    (tmp_path / snapshot_name(lsn)).unlink()
    with pytest.raises(RecoveryError, match=rf"mutations 1..{lsn} are in no readable file"):
        open_(tmp_path, keep=1)


def test_crash_between_snapshot_and_wal_truncation_does_not_apply_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, rec = open_(tmp_path, keep=1)
    eng = Service(p, rec)
    eng.workload(20)
    eng.snapshot()
    eng.workload(20)

    def crash_before_truncating(self: WriteAheadLog, lsn: int) -> int:
        raise SystemExit("killed after the snapshot's rename")

    monkeypatch.setattr(WriteAheadLog, "truncate_through", crash_before_truncating)
    with pytest.raises(SystemExit):
        eng.snapshot()
    monkeypatch.undo()
    eng.workload(9)
    crash(p)
    _, rec2 = open_(tmp_path, keep=1)
    assert rec2.snapshot is not None
    assert rec2.replayed == p.last_lsn - rec2.snapshot.lsn  # older records skipped by LSN
    assert_recovered(rec2, eng)  # counters (writes, evictions, tick) exact: nothing twice


def test_wal_of_another_model_is_refused(tmp_path: Path) -> None:
    p, rec = open_(tmp_path)
    Service(p, rec).workload(5)
    p.close()
    other = Persistence(tmp_path)
    with pytest.raises(RecoveryError, match=r"wal\.log was written for model model-fingerprint-a"):
        other.recover(make_bank(), fingerprint="model-b", capacity=CAP, m=M)
    fresh = Persistence(tmp_path, allow_fresh=True)
    rec2 = fresh.recover(make_bank(), fingerprint="model-b", capacity=CAP, m=M)
    assert rec2.bank.used == 0 and len(list(tmp_path.glob("quarantine-*/wal.log"))) == 1
    fresh.close()


def test_corrupt_middle_of_the_wal_is_refused_naming_the_offset(tmp_path: Path) -> None:
    p, rec = open_(tmp_path)
    svc = Service(p, rec)
    svc.write(1)
    svc.write(2)
    off = p.stats()["wal_bytes"]  # where the third record starts
    svc.workload(6)
    p.close()
    wal = tmp_path / "wal.log"
    data = bytearray(wal.read_bytes())
    data[off + 20] ^= 0x01
    wal.write_bytes(bytes(data))
    with pytest.raises(RecoveryError, match=rf"wal.log: bad record at byte {off} \(after lsn 2\)"):
        open_(tmp_path)


def test_torn_wal_tail_is_reported(tmp_path: Path) -> None:
    p, rec = open_(tmp_path)
    eng = Service(p, rec)
    eng.workload(6)
    crash(p)
    with open(tmp_path / "wal.log", "ab") as f:
        f.write(b"\xa7\x01\x40\x00")  # the start of a record the crash interrupted
    _, rec2 = open_(tmp_path)
    assert any("dropped a torn last record" in w for w in rec2.warnings)
    assert_recovered(rec2, eng)


def files(folder: Path) -> dict[str, bytes]:
    """Every file under the folder (quarantine included), by relative path, but LOCK."""
    return {
        str(f.relative_to(folder)): f.read_bytes()
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name != "LOCK"
    }


def test_missing_wal_after_a_clean_stop_at_the_snapshot_loses_nothing(tmp_path: Path) -> None:
    p, rec = open_(tmp_path)
    eng = Service(p, rec)
    eng.workload(10)
    lsn = eng.snapshot()
    p.close()  # clean stop: MANIFEST.json records clean_stop_lsn == the snapshot's lsn
    (tmp_path / "wal.log").unlink()
    p2, rec2 = open_(tmp_path)
    assert any(
        f"wal.log was missing; the last run stopped cleanly at lsn {lsn}" in w
        for w in rec2.warnings
    )
    assert_same_memories(rec2.bank, eng.bank)
    assert p2.last_lsn == lsn and p2.log([Clear()]) == lsn + 1  # LSNs never go back
    p2.close()


@pytest.mark.parametrize("stop", ["crash", "clean stop after more writes"])
def test_missing_wal_that_may_have_held_writes_is_refused(tmp_path: Path, stop: str) -> None:
    p, rec = open_(tmp_path)
    eng = Service(p, rec)
    eng.workload(10)
    lsn = eng.snapshot()
    eng.workload(5)  # acknowledged, only in the WAL
    if stop == "crash":
        crash(p)
    else:
        p.close()
    (tmp_path / "wal.log").unlink()
    before = files(tmp_path)
    with pytest.raises(RecoveryError) as err:
        open_(tmp_path)
    clean = "no clean stop" if stop == "crash" else f"a clean stop at lsn {p.last_lsn}"
    assert (
        f"wal.log is missing and nothing proves that snapshot lsn {lsn} holds every "
        f"acknowledged mutation (MANIFEST.json records {clean})"
    ) in str(err.value)
    assert files(tmp_path) == before  # nothing created, moved or changed


def test_b1_damaged_snapshot_without_its_wal_is_refused_never_overwritten(
    tmp_path: Path,
) -> None:
    # The probe's steps: write 5 items, stop cleanly, delete wal.log, flip one byte of the
    # snapshot, start. It used to serve an empty bank and then overwrite the snapshot.
    p, rec = open_(tmp_path)
    eng = Service(p, rec)
    for _ in range(5):
        eng.write(1)
    lsn = eng.snapshot()
    p.close()
    (tmp_path / "wal.log").unlink()
    snap = tmp_path / snapshot_name(lsn)
    data = bytearray(snap.read_bytes())
    data[-3] ^= 0x01  # in the codes
    snap.write_bytes(bytes(data))
    before = files(tmp_path)
    for _ in range(2):  # and again: a refused start changes nothing
        with pytest.raises(RecoveryError) as err:
            open_(tmp_path)
        assert (
            f"none of the 1 snapshot(s) in {tmp_path} is valid: {snap.name}: snapshot {snap}: "
            "content checksum mismatch, and wal.log is missing"
        ) in str(err.value)
        assert files(tmp_path) == before


def test_garbage_named_like_a_snapshot_without_a_wal_is_refused(tmp_path: Path) -> None:
    (tmp_path / snapshot_name(7)).write_bytes(b"not a snapshot at all")
    before = files(tmp_path)
    with pytest.raises(RecoveryError, match="is truncated or not a safetensors file, and wal"):
        open_(tmp_path)
    assert files(tmp_path) == before


def test_skipped_snapshots_and_torn_tails_are_kept_in_quarantine(tmp_path: Path) -> None:
    p, rec = open_(tmp_path, keep=2)
    eng = Service(p, rec)
    eng.workload(10)
    older = eng.snapshot()
    eng.workload(10)
    newest = eng.snapshot()
    eng.workload(5)
    crash(p)
    damaged = tmp_path / snapshot_name(newest)
    damaged.write_bytes(damaged.read_bytes()[:-10])
    bad_snapshot = damaged.read_bytes()
    tail = b"\xa7\x01\x40\x00\x00"  # the start of a record a crash interrupted
    with open(tmp_path / "wal.log", "ab") as f:
        f.write(tail)
    p2, rec2 = open_(tmp_path, keep=2)
    assert rec2.snapshot is not None and rec2.snapshot.lsn == older
    assert_same_memories(rec2.bank, eng.bank)
    (quarantine,) = tmp_path.glob("quarantine-*")
    assert (quarantine / damaged.name).read_bytes() == bad_snapshot
    assert (quarantine / "wal.log.torn-tail").read_bytes() == tail
    assert not damaged.exists()
    assert any(f"moved what recovery did not use to {quarantine}" in w for w in rec2.warnings)
    # Later snapshots (even one at the damaged file's lsn) never touch the quarantined copy.
    Service(p2, rec2).snapshot()
    p2.close()
    assert (quarantine / damaged.name).read_bytes() == bad_snapshot


def test_wal_cut_short_after_a_clean_stop_is_refused(tmp_path: Path) -> None:
    p, rec = open_(tmp_path)
    eng = Service(p, rec)
    eng.workload(12)
    last = p.last_lsn
    p.close()
    wal = tmp_path / "wal.log"
    data = memoryview(wal.read_bytes())
    _, _, pos = frames.read_header("wal.log", data)
    offsets = [off for off, _, _ in frames.scan(data, pos, 0)]
    wal.write_bytes(data[: offsets[-2]])  # drop the last two records, whole frames
    before = files(tmp_path)
    with pytest.raises(RecoveryError) as err:
        open_(tmp_path)
    assert (
        f"the last run stopped cleanly at lsn {last} (MANIFEST.json) but the files hold "
        f"mutations up to lsn {last - 2}: {last - 1}..{last} are missing"
    ) in str(err.value)
    assert files(tmp_path) == before


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (b"{not json", "MANIFEST.json is damaged"),
        (b'{"format": 1}', "MANIFEST.json is damaged (checksum mismatch)"),
    ],
)
def test_damaged_manifest_is_refused(tmp_path: Path, damage: bytes, message: str) -> None:
    p, rec = open_(tmp_path)
    Service(p, rec).workload(5)
    p.close()
    (tmp_path / "MANIFEST.json").write_bytes(damage)
    before = files(tmp_path)
    with pytest.raises(RecoveryError, match=re.escape(message)):
        open_(tmp_path)
    assert files(tmp_path) == before


def test_another_model_or_m_against_the_folder_names_both_values(tmp_path: Path) -> None:
    p, rec = open_(tmp_path)
    Service(p, rec).workload(5)
    p.close()
    with pytest.raises(RecoveryError) as err:
        Persistence(tmp_path).recover(make_bank(), fingerprint="model-b", capacity=CAP, m=M)
    assert f"the folder holds a bank of model {FP}, the server loads model model-b" in str(
        err.value
    )
    wide = lambda: MemoryBank(CAP, M + 1)  # noqa: E731
    with pytest.raises(RecoveryError, match=f"the folder holds codes of m={M}, the model's m is 9"):
        Persistence(tmp_path).recover(wide, fingerprint=FP, capacity=CAP, m=M + 1)


def test_capacity_mismatch_without_a_manifest_is_refused_not_rebuilt(tmp_path: Path) -> None:
    # The probe's second case: a smaller MT_CAPACITY skipped the snapshot and rebuilt from a
    # WAL that goes back to lsn 0. An intact snapshot of another capacity is a setting to fix.
    p, rec = open_(tmp_path, keep=3)
    eng = Service(p, rec)
    eng.workload(10)
    eng.snapshot()  # one generation < keep: the WAL still starts at lsn 0
    p.close()
    (tmp_path / "MANIFEST.json").unlink()
    before = files(tmp_path)
    with pytest.raises(RecoveryError) as err:
        Persistence(tmp_path).recover(make_bank(capacity=64), fingerprint=FP, capacity=64, m=M)
    assert f"has capacity={CAP}, expected capacity=64" in str(err.value)
    assert "(a setting that does not match the saved bank)" in str(err.value)
    assert files(tmp_path) == before


def test_one_process_per_folder(tmp_path: Path) -> None:
    p, _ = open_(tmp_path)
    with pytest.raises(Exception, match="another process is using the snapshot folder"):
        open_(tmp_path)
    (tmp_path / "LOCK").unlink()  # by hand: the lock is the folder's, not the file's
    with pytest.raises(Exception, match="another process is using the snapshot folder"):
        open_(tmp_path)
    p.close()
    p2, _ = open_(tmp_path)  # released by close
    assert (tmp_path / "LOCK").exists()
    p2.close()


def test_failed_log_write_leaves_the_bank_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, rec = open_(tmp_path)
    eng = Service(p, rec)
    eng.workload(5)
    before = state(eng.bank)

    def full(*args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.pwrite", full)
    with pytest.raises(DiskFullError):
        eng.write(2)  # the memory loop logs first, then applies
    monkeypatch.undo()
    after = state(eng.bank)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert eng.memory.position == p.last_lsn  # nothing was logged either
    p.close()


def test_snapshot_lsn_is_checked(tmp_path: Path) -> None:
    p, rec = open_(tmp_path)
    eng = Service(p, rec)
    eng.workload(5)
    with pytest.raises(ValueError, match=r"expected lsn in \[0, \d+\]"):
        p.snapshot(rec.bank.state_dict(), p.last_lsn + 1)
    eng.snapshot()
    with pytest.raises(ValueError, match="the last snapshot's"):
        p.snapshot(rec.bank.state_dict(), 1)
    p.close()


def test_log_appends_a_group_at_once_and_returns_its_last_lsn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, _ = open_(tmp_path)
    syncs: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    group: list[Op] = [Assign([0, 1], torch.randn(2, M)), Free(1), Clear()]
    assert p.log(group) == 3 and p.last_lsn == 3
    assert len(syncs) == 1  # one append, one fsync for the whole group
    assert p.log([]) == 3  # nothing to log: the last LSN
    monkeypatch.undo()
    # An operation that cannot be a record refuses the whole group: nothing is logged.
    with pytest.raises(ValueError, match="finite"):
        p.log([Clear(), Assign([2], torch.tensor([[float("nan")] * M]))])
    assert p.last_lsn == 3 and p.stats()["wal_records"] == 3
    p.close()


def write_raw_records(folder: Path, *data: bytes) -> None:
    """A wal.log holding these records (CRC-valid frames), LSN 1, 2, ..."""
    body = b"".join(b"".join(frames.frame(lsn, d)) for lsn, d in enumerate(data, start=1))
    folder.mkdir(exist_ok=True)
    (folder / "wal.log").write_bytes(frames.encode_header(0, FP) + body)


def test_malformed_record_is_refused_naming_its_lsn_then_allow_fresh(tmp_path: Path) -> None:
    write_raw_records(tmp_path, b"\x03", b"\x09garbage")  # a clear, then an unknown op
    with pytest.raises(RecoveryError) as err:
        open_(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"cannot recover the bank from {tmp_path} without losing data: ")
    assert "wal.log: record lsn 2 is malformed: unknown op 9" in msg
    p, rec = open_(tmp_path, allow_fresh=True)
    assert rec.bank.used == 0 and rec.replayed == 0
    assert "started with an empty bank (allow_fresh)" in rec.warnings[-1]
    assert len(list(tmp_path.glob("quarantine-*/wal.log"))) == 1
    p.close()


def test_record_the_bank_cannot_take_is_refused_naming_its_lsn(tmp_path: Path) -> None:
    p, _ = open_(tmp_path)
    p.log([Assign([CAP - 1], torch.ones(1, M))])
    p.close()
    small = Persistence(tmp_path)
    with pytest.raises(RecoveryError) as err:
        small.recover(make_bank(capacity=16), fingerprint=FP, capacity=16, m=M)
    assert (
        f"the folder holds a bank of capacity {CAP}, the server is set to capacity 16 (MT_CAPACITY)"
    ) in str(err.value)
    # Without the manifest, the record itself is what cannot be replayed.
    (tmp_path / "MANIFEST.json").unlink()
    with pytest.raises(RecoveryError) as err:
        small.recover(make_bank(capacity=16), fingerprint=FP, capacity=16, m=M)
    assert (
        "wal.log: record lsn 1 (write) cannot be replayed into a bank of capacity 16, m 8: "
        "expected slots in [0, 16), got [31]"
    ) in str(err.value)


def test_delete_of_a_free_slot_is_replayed_as_a_no_op(tmp_path: Path) -> None:
    p, _ = open_(tmp_path)
    p.log([Assign([3], torch.ones(1, M)), Free(5), Free(3)])
    p.close()
    p2, rec = open_(tmp_path)
    assert rec.replayed == 3 and rec.bank.used == 0
    assert rec.warnings == ["wal.log: 1 delete(s) of free slots replayed as no-ops (lsn [2])"]
    p2.close()
