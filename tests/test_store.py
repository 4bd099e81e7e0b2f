"""Snapshot generations: keep K, fall back past a damaged newest file, refuse when none is
valid, leave old snapshots alone when a save fails."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from model.bank import MemoryBank
from model.errors import DiskFullError, SnapshotError
from service.store import LoadResult, SnapshotStore, snapshot_name
from tests.test_wal import fill, tiny_disk

FP = "model-fingerprint-a"
CAP, M = 16, 4


def bank_with(n_writes: int, seed: int = 0, dtype: str = "float32") -> MemoryBank:
    g = torch.Generator().manual_seed(seed)
    scales = torch.full((M,), 0.05) if dtype == "int8" else None
    bank = MemoryBank(CAP, M, dtype=dtype, scales=scales, initial_count=2)
    for _ in range(n_writes):
        bank.write(torch.randn(2, M, generator=g), mode="each")
    bank.read(torch.randn(3, M, generator=g), top_k=2)
    return bank


def assert_same_state(a: MemoryBank, b: MemoryBank) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert (a.dtype, a.initial_count) == (b.dtype, b.initial_count)


def load(store: SnapshotStore) -> LoadResult | None:
    return store.load_latest(fingerprint=FP, capacity=CAP, m=M)


def test_save_and_load_latest(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    assert load(store) is None  # no snapshot at all: nothing to refuse
    bank = bank_with(3)
    info = store.save(bank, fingerprint=FP, lsn=7)
    assert (
        info.path == tmp_path / "snap-0000000000000007.safetensors" == tmp_path / snapshot_name(7)
    )
    assert info.lsn == 7 and info.bytes == info.path.stat().st_size
    assert info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()
    assert info.created_at.startswith("20") and info.seconds >= 0
    result = load(store)
    assert result is not None and result.lsn == 7 and result.skipped == []
    assert result.info.sha256 == info.sha256 and result.metadata["lsn"] == "7"
    assert_same_state(result.bank, bank)


def test_the_file_is_read_once_and_never_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real_read = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        reads.append(self.name)
        return real_read(self)

    def no_file_digest(*args: object, **kw: object) -> None:
        raise AssertionError("a snapshot file was hashed again")

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(hashlib, "file_digest", no_file_digest)
    store = SnapshotStore(tmp_path)
    info = store.save(bank_with(2), fingerprint=FP, lsn=3)
    assert reads == []  # size and sha256 come from the save itself
    result = load(store)
    assert reads == [snapshot_name(3)]  # one read gives the bank, the size and the sha256
    assert result is not None
    assert (result.info.bytes, result.info.sha256) == (info.bytes, info.sha256)
    monkeypatch.undo()
    assert info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_save_from_a_state_dict_copy(tmp_path: Path, dtype: str) -> None:
    store = SnapshotStore(tmp_path)
    bank = bank_with(4, dtype=dtype)
    store.save(bank.state_dict(), fingerprint=FP, lsn=4, initial_count=bank.initial_count)
    result = load(store)
    assert result is not None
    assert_same_state(result.bank, bank)


def test_keeps_the_newest_k_generations(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=3)
    for lsn in (1, 5, 9, 12, 30):
        store.save(bank_with(lsn % 4), fingerprint=FP, lsn=lsn)
    assert store.lsns() == [30, 12, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == [snapshot_name(x) for x in (9, 12, 30)]


def test_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(bank_with(1), fingerprint=FP, lsn=1)
    (tmp_path / f".{snapshot_name(2)}.abc123.tmp").write_bytes(b"half a snapshot")
    result = load(store)
    assert result is not None and result.lsn == 1
    assert [p.name for p in tmp_path.iterdir()] == [snapshot_name(1)]


def damaged_versions(data: bytes) -> list[tuple[str, bytes]]:
    """Truncations and single-bit flips at offsets spread over the whole file."""
    n = len(data)
    cuts = sorted({0, 1, 7, 8, 9, n // 3, n // 2, n - 1, *range(0, n, max(1, n // 40))})
    out = [(f"cut at {c}", data[:c]) for c in cuts if c < n]
    for pos in range(0, n, max(1, n // 120)):
        bad = bytearray(data)
        bad[pos] ^= 1 << (pos % 8)
        out.append((f"bit flip at {pos}", bytes(bad)))
    return out


def test_damaged_newest_falls_back_to_the_previous(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    old, new = bank_with(2, seed=1), bank_with(5, seed=2)
    store.save(old, fingerprint=FP, lsn=10)
    info = store.save(new, fingerprint=FP, lsn=20)
    data = info.path.read_bytes()
    harmless = 0
    for what, bad in damaged_versions(data):
        info.path.write_bytes(bad)
        result = load(store)
        assert result is not None
        if result.lsn == 20:
            # A flip the checks cannot see (e.g. a digit of created_at) changes no state.
            assert_same_state(result.bank, new)
            harmless += 1
            continue
        assert result.lsn == 10, what
        assert_same_state(result.bank, old)
        assert [p for p, _ in result.skipped] == [info.path], what
        assert result.skipped[0][1].startswith(f"snapshot {info.path}"), what
    assert harmless < len(damaged_versions(data)) // 4


def test_all_bad_is_refused_listing_each_file_and_reason(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    a = store.save(bank_with(1), fingerprint=FP, lsn=1).path
    b = store.save(bank_with(2), fingerprint=FP, lsn=2).path
    c = store.save(bank_with(3), fingerprint="another-model", lsn=3).path
    a.write_bytes(a.read_bytes()[:100])
    data = bytearray(b.read_bytes())
    data[-3] ^= 0x01
    b.write_bytes(bytes(data))
    with pytest.raises(SnapshotError) as err:
        load(store)
    msg = str(err.value)
    assert msg.startswith(f"none of the 3 snapshot(s) in {tmp_path} is valid: ")
    assert f"{c.name}: snapshot {c} was made by model another-model, expected {FP}" in msg
    assert f"{b.name}: snapshot {b}: content checksum mismatch" in msg
    assert f"{a.name}: snapshot {a} is truncated or not a safetensors file" in msg


def test_shape_mismatch_and_renamed_file_are_refused(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(bank_with(1), fingerprint=FP, lsn=1)
    with pytest.raises(SnapshotError, match="capacity=16, expected capacity=32"):
        store.load_latest(fingerprint=FP, capacity=32, m=M)
    (tmp_path / snapshot_name(1)).rename(tmp_path / snapshot_name(5))
    with pytest.raises(SnapshotError, match=r"metadata lsn '1' does not match its file name"):
        load(store)


def test_full_disk_during_save_keeps_the_previous_snapshots(tmp_path: Path) -> None:
    with tiny_disk(tmp_path, size="256k") as disk:
        store = SnapshotStore(disk)
        small = bank_with(2)
        first = store.save(small, fingerprint=FP, lsn=1)
        before = first.path.read_bytes()
        big = MemoryBank(4096, M)  # ~200 kB of state: more than the disk has left
        big.write(torch.randn(4096, M), mode="each")
        filler = fill(disk)
        with pytest.raises(DiskFullError, match=r"cannot save the snapshot .*\(disk full\)"):
            store.save(big, fingerprint=FP, lsn=2)
        assert sorted(p.name for p in disk.iterdir()) == ["filler", snapshot_name(1)]
        assert first.path.read_bytes() == before
        filler.unlink()
        result = load(store)
        assert result is not None and result.lsn == 1
        assert_same_state(result.bank, small)


def test_keep_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep to be an int >= 1"):
        SnapshotStore(tmp_path, keep=0)
