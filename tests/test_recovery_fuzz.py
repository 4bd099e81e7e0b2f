"""Recovery fuzz (issue 10), as Chroma's restart tests do it: random sequences of writes,
deletes, snapshots, clean stops, crashes (kill -9: no clean-stop record, no final snapshot) and
file damage, then a start. The start either serves exactly the acknowledged memories (codes
and occupancy of every logged write and delete) or refuses; it never serves fewer, and a
refused start changes no file. After a refusal the damaged file is put back as it was and the
next start must serve everything.

Damage, one file at a time between two starts: truncate, flip a bit, delete, replace by
garbage; of a snapshot, wal.log or MANIFEST.json. One case no recovery can catch is left out on
purpose: damage to the last records of wal.log after a crash looks exactly like an append the
crash tore (a kill -9 during a write leaves a short last frame), so the WAL is damaged only
after a clean stop, whose manifest records where the log ended (docs/DURABILITY.md).

The in-process "crash" (Persistence.close(clean=False)) stands for kill -9: every append is a
pwrite into the page cache before it returns, so the files are the same; scripts/crash_test.py
kills real server processes.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from model.bank import MemoryBank
from model.errors import RecoveryError
from model.memory import IDRPMemory
from model.ops import Op
from service.manifest import MANIFEST_NAME
from service.persistence import Persistence
from tests.test_persistence import CAP, FP, IdentityCodec, M, files

DAMAGES = ("truncate", "bit flip", "delete", "garbage")
RUNS: dict[str, int] = {"sequences": 0, "starts": 0, "refused": 0, "damage": 0}


def damage(path: Path, kind: str, rng: random.Random) -> None:
    data = path.read_bytes()
    if kind == "delete":
        path.unlink()
    elif kind == "truncate":
        path.write_bytes(data[: rng.randrange(len(data))] if data else b"")
    elif kind == "bit flip":
        if not data:
            return
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(flipped))
    else:
        path.write_bytes(rng.randbytes(rng.randrange(1, 200)))


def kept_whole(folder: Path, name: str, damaged: bytes | None) -> bool:
    """The damaged file's bytes are still in the folder: in place, moved to quarantine, or
    (wal.log) with the torn tail recovery cut off saved in quarantine."""
    current = (folder / name).read_bytes() if (folder / name).exists() else None
    if not damaged or damaged == current:
        return True  # nothing there (deleted, or empty), or untouched
    quarantined = {f.name: f.read_bytes() for f in folder.glob("quarantine-*/*")}
    tail = quarantined.get("wal.log.torn-tail")
    return quarantined.get(name) == damaged or (
        name == "wal.log" and tail is not None and damaged.endswith(tail)
    )


class Restarts(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="mt-fuzz-"))
        self.acked = MemoryBank(CAP, M)  # every acknowledged write and delete, applied
        self.g = torch.Generator().manual_seed(0)
        self.p: Persistence | None = None
        self.memory: IDRPMemory | None = None
        self.clean = True  # how the last run stopped
        self.backup: tuple[Path, bytes] | None = None  # a damaged file as it was
        RUNS["sequences"] += 1
        self.start()

    def teardown(self) -> None:
        if self.p is not None:
            self.p.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _log(self, ops: Sequence[Op]) -> int:
        assert self.p is not None
        lsn = self.p.log(ops)
        for op in ops:  # logged = acknowledged once the loop applies it
            self.acked.apply(op)
        return lsn

    # ------------------------------------------------------------------ while running

    @precondition(lambda self: self.p is not None)
    @rule(n=st.integers(1, CAP // 2))
    def write(self, n: int) -> None:
        assert self.memory is not None
        self.memory.write(torch.randn(n, M, generator=self.g), mode="each")

    @precondition(lambda self: self.p is not None)
    @rule(pick=st.integers(0, CAP - 1))
    def delete(self, pick: int) -> None:
        assert self.memory is not None
        used = torch.nonzero(self.memory.bank.occupied).squeeze(1).tolist()
        if used:
            self.memory.delete(used[pick % len(used)])

    @precondition(lambda self: self.p is not None)
    @rule()
    def snapshot(self) -> None:
        assert self.memory is not None and self.p is not None
        self.p.snapshot(*self.memory.checkpoint())

    @precondition(lambda self: self.p is not None)
    @rule(clean=st.booleans())
    def stop(self, clean: bool) -> None:
        assert self.p is not None
        self.p.close(clean=clean)
        self.p = self.memory = None
        self.clean = clean

    # ------------------------------------------------------------------ while stopped

    @precondition(lambda self: self.p is None and self.backup is None)
    @rule(kind=st.sampled_from(DAMAGES), which=st.integers(0, 7), seed=st.integers(0, 2**32))
    def damage_a_file(self, kind: str, which: int, seed: int) -> None:
        names = sorted(p.name for p in self.folder.glob("snap-*.safetensors"))
        names += [MANIFEST_NAME] + (["wal.log"] if self.clean else [])
        path = self.folder / names[which % len(names)]
        if not path.exists():
            return
        self.backup = (path, path.read_bytes())
        damage(path, kind, random.Random(seed))
        RUNS["damage"] += 1

    @precondition(lambda self: self.p is None)
    @rule()
    def start(self) -> None:
        before = files(self.folder)
        p = Persistence(self.folder, keep=2, fsync="off")  # a crash here is a process crash
        RUNS["starts"] += 1
        try:
            rec = p.recover(lambda: MemoryBank(CAP, M), fingerprint=FP, capacity=CAP, m=M)
        except RecoveryError:
            RUNS["refused"] += 1
            assert files(self.folder) == before, "a refused start changed a file"
            assert self.backup is not None, "refused a start with no damaged file"
            path, data = self.backup
            path.write_bytes(data)  # the operator restores the file; the next start must work
            self.backup = None
            return self.start()
        # Served: exactly the acknowledged memories, and no damaged file lost.
        assert torch.equal(rec.bank.occupied, self.acked.occupied)
        assert torch.equal(rec.bank.codes, self.acked.codes)
        if self.backup is not None:
            path = self.backup[0]
            assert kept_whole(self.folder, path.name, before.get(path.name)), (
                f"recovery changed the damaged {path.name} without keeping it"
            )
            self.backup = None
        self.p = p
        self.memory = IDRPMemory(IdentityCodec(M), rec.bank, log=self._log, position=rec.last_lsn)

    @invariant()
    def lsns_only_grow(self) -> None:
        if self.p is not None and self.memory is not None:
            assert self.memory.position == self.p.last_lsn


Restarts.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRestarts = Restarts.TestCase


@pytest.mark.parametrize("kind", DAMAGES)
@pytest.mark.parametrize("target", ["snapshot", MANIFEST_NAME, "wal.log"])
def test_each_damage_of_each_file_once(kind: str, target: str) -> None:
    """Every damage of every file, on purpose, by the machine's own rules (the fuzz above
    reaches them by chance): writes, a snapshot, more writes, a clean stop, the damage, a
    start that serves everything or refuses, and a start after the file is put back."""
    machine = Restarts()
    try:
        machine.write(5)
        machine.delete(1)
        machine.snapshot()
        machine.write(3)
        machine.stop(clean=True)
        names = sorted(p.name for p in machine.folder.glob("snap-*.safetensors"))
        which = {"snapshot": 0, MANIFEST_NAME: len(names), "wal.log": len(names) + 1}[target]
        machine.damage_a_file(kind, which, seed=7)
        assert machine.backup is not None and machine.backup[0].name.startswith(target[:4])
        machine.start()  # asserts: the acknowledged memories exactly, or a refusal, no loss
        assert machine.p is not None and machine.backup is None
    finally:
        machine.teardown()
    print(f"recovery fuzz so far: {RUNS}")
