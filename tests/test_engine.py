"""The engine without HTTP: micro-batched reads answer like one-at-a-time reads, recovery after a
restart, snapshot triggers, readiness and failures."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from model.bank import WriteResult
from model.errors import CheckpointError, DiskFullError, InvalidInput, NotReady, SlotNotFound
from model.idrp import CompiledCodec
from model.memory import Hit
from service.batching import BatchQueue
from service.engine import Engine
from service.settings import Settings

pytestmark = pytest.mark.anyio  # async tests on asyncio (anyio's pytest plugin)
Items = Callable[..., list[list[float]]]
# Encode/decode of a row can differ in the last bits between a one-row and a many-row matrix
# product (CPU BLAS); slots and counts must match exactly, floats to this tolerance (a few
# float32 ulps of values near 1: on an AMD EPYC a 16-row decode differed from the one-row
# decode by 1.3e-6, past the 1e-6 this had while it only ran on Intel Xeons).
ATOL = 1e-5


async def started(settings: Settings) -> Engine:
    engine = Engine(settings)
    await engine.start()
    return engine


def assert_same_answers(got: list[list[Hit]], want: list[list[Hit]]) -> None:
    assert [[(h.slot, h.count) for h in q] for q in got] == [
        [(h.slot, h.count) for h in q] for q in want
    ]
    for q_got, q_want in zip(got, want, strict=True):
        for a, b in zip(q_got, q_want, strict=True):
            assert a.score == pytest.approx(b.score, abs=ATOL)
            assert (a.reconstruction is None) == (b.reconstruction is None)
            if a.reconstruction is not None and b.reconstruction is not None:
                torch.testing.assert_close(
                    torch.from_numpy(a.reconstruction),
                    torch.from_numpy(b.reconstruction),
                    atol=ATOL,
                    rtol=0,
                )


async def test_concurrent_reads_are_batched_and_answer_like_sequential_ones(
    make_settings: Callable[..., Settings], tmp_path: Path, items: Items
) -> None:
    stored = items(12, seed=1)
    # Queries: stored rows (hits that count up, several on the same slot) and fresh rows.
    queries = [[stored[i % 5]] for i in range(16)] + [[q] for q in items(8, seed=2)]
    batched = await started(make_settings(batch_wait_ms=50, snapshot_dir=tmp_path / "a"))
    one_by_one = await started(make_settings(batch_wait_ms=0, snapshot_dir=tmp_path / "b"))
    try:
        for engine in (batched, one_by_one):
            await engine.write(stored, mode="each")
        got = await asyncio.gather(*(batched.read(q, top_k=3) for q in queries))
        want = [await one_by_one.read(q, top_k=3) for q in queries]
        assert_same_answers([g[0] for g in got], [w[0] for w in want])
        b_stats, s_stats = await batched.stats(), await one_by_one.stats()
        assert b_stats["batching"]["batches"] < len(queries) // 2  # really coalesced
        assert b_stats["batching"]["largest"] > 1
        assert s_stats["batching"] == {
            "batches": len(queries),
            "queries": len(queries),
            "largest": 1,
            "write_groups": 1,
            "writes": 1,
            "largest_write_group": 1,
        }
        for key in ("reads", "hits", "misses", "counts"):
            assert b_stats[key] == s_stats[key]
        for slot in range(12):
            a, b = await batched.get_slot(slot), await one_by_one.get_slot(slot)
            assert (a.count, a.last_access) == (b.count, b.last_access)
    finally:
        await batched.stop()
        await one_by_one.stop()


async def test_batched_multi_query_requests_and_mixed_options(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    engine = await started(make_settings(batch_wait_ms=50))
    try:
        stored = items(4)
        await engine.write(stored, mode="each")
        fresh = items(1, seed=9)
        answers = await asyncio.gather(
            engine.read(stored[:2], top_k=1),
            engine.read(fresh, min_score=1.0),  # its own group: a miss that counts nothing
            engine.read(stored[1:3], reconstruct=False),
        )
        assert [[(h.slot, h.count) for h in q] for q in answers[0]] == [[(0, 1)], [(1, 1)]]
        assert answers[1] == [[]]
        assert [[(h.slot, h.count) for h in q] for q in answers[2]] == [[(1, 2)], [(2, 1)]]
        assert all(h.reconstruction is None for q in answers[2] for h in q)
        stats = await engine.stats()
        assert (stats["reads"], stats["misses"]) == (5, 1)
        assert stats["batching"]["batches"] == 1
    finally:
        await engine.stop()


async def test_a_bad_request_fails_alone_in_its_batch(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    engine = await started(make_settings(batch_wait_ms=50))
    try:
        await engine.write(items(1))
        bad = items(1)
        bad[0][3] = float("nan")
        good, failed = await asyncio.gather(
            engine.read(items(1)), engine.read(bad), return_exceptions=True
        )
        assert isinstance(failed, InvalidInput)
        assert str(failed) == "query 0 contains NaN or infinity"
        assert isinstance(good, list) and good[0][0].slot == 0 and good[0][0].count == 1
    finally:
        await engine.stop()


async def test_a_lone_read_does_not_wait_for_company(
    make_settings: Callable[..., Settings], items: Items, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counted, not timed: a recording wrapper around the batch loop's real wait tells which
    # reads waited, however slow the machine.
    waits: list[int] = []
    real_wait = BatchQueue._wait_for_company

    async def recording_wait(self: BatchQueue[Any, Any]) -> None:
        waits.append(len(self._jobs))
        await real_wait(self)

    monkeypatch.setattr(BatchQueue, "_wait_for_company", recording_wait)
    engine = await started(make_settings(batch_wait_ms=250))
    try:
        await engine.write(items(1))

        async def waits_of_a_lone_read() -> int:
            before = len(waits)
            await engine.read(items(1))
            return len(waits) - before

        assert await waits_of_a_lone_read() == 0  # alone, after no batch: runs at once
        await asyncio.gather(*(engine.read(items(1)) for _ in range(3)))  # one batch of 3
        assert (await engine.stats())["batching"]["largest"] == 3
        assert await waits_of_a_lone_read() == 1  # reads came concurrently just before: it waits
        assert await waits_of_a_lone_read() == 0  # the last batch held one request: no wait
    finally:
        await engine.stop()


async def test_a_batch_starts_when_its_expected_company_has_come(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    # After a batch of 3, three reads that arrive 20 ms apart form the next batch, which
    # starts once the third is queued: the window and the gap are 60 s, so a batch that waited
    # them out would fail the elapsed-time check and pass the test's timeout.
    engine = await started(make_settings(batch_wait_ms=1000, batch_gap_ms=1000))
    # over the settings' bound, to make a missed wake-up obvious
    engine._reads._wait_s = engine._reads._gap_s = 60.0
    try:
        await engine.write(items(1))
        await asyncio.gather(*(engine.read(items(1, seed=i)) for i in range(3)))  # queued at once
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        reads = []
        for i in range(3):
            reads.append(asyncio.ensure_future(engine.read(items(1, seed=10 + i))))
            await asyncio.sleep(0.02)
        answers = await asyncio.gather(*reads)
        assert loop.time() - t0 < 30.0
        assert [len(a) for a in answers] == [1, 1, 1]
        stats = (await engine.stats())["batching"]
        assert (stats["batches"], stats["queries"], stats["largest"]) == (2, 6, 3)
    finally:
        await engine.stop()


async def test_codec_is_compiled_else_eager_with_a_log_line(
    make_settings: Callable[..., Settings],
    items: Items,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = await started(make_settings())
    try:
        assert isinstance(engine.codec, CompiledCodec)
        assert gc.get_freeze_count() > 0  # start froze what it loaded
    finally:
        await engine.stop()
    assert gc.get_freeze_count() == 0  # and stop gave it back to the collector

    def broken(model: object) -> None:
        raise RuntimeError("traced encode differs from the eager model by 0.5")

    monkeypatch.setattr("service.engine.compile_codec", broken)
    caplog.set_level(logging.WARNING, logger="service.engine")
    engine = await started(make_settings(snapshot_dir=make_settings().snapshot_dir / "eager"))
    try:
        assert engine.codec is engine.model
        assert "encode / decode run eager: the compiled codec failed its check: traced encode" in (
            caplog.text
        )
        x = items(1)
        await engine.write(x)
        [[hit]] = await engine.read(x)
        assert (hit.slot, hit.count) == (0, 1) and hit.score == pytest.approx(1.0, abs=1e-5)
    finally:
        await engine.stop()


def assert_same_bank(a: Engine, b: Engine) -> None:
    """Same slots, counters and ticks; codes equal to ATOL (a group is encoded in one batch)."""
    assert a.bank is not None and b.bank is not None
    sa, sb = a.bank.state_dict(), b.bank.state_dict()
    for key in sa:
        if key == "codes":
            torch.testing.assert_close(sa[key], sb[key], atol=ATOL, rtol=0)
        else:
            assert torch.equal(sa[key], sb[key]), key


async def test_concurrent_writes_are_grouped_and_store_like_sequential_ones(
    make_settings: Callable[..., Settings], tmp_path: Path, items: Items
) -> None:
    grouped = await started(
        make_settings(capacity=8, snapshot_on_shutdown=False, snapshot_dir=tmp_path / "a")
    )
    one_by_one = await started(make_settings(capacity=8, snapshot_dir=tmp_path / "b"))
    stored = items(8, seed=1)
    # Mixed modes and sizes, a bad request among them; the bank is full and every slot was
    # read once, so each fresh slot (count 0) is the next write's LFU victim, as in the paper.
    requests: list[tuple[list[list[float]], str]] = [
        (
            items(1, seed=10 + i) if i % 3 else items(2 + i % 2, seed=10 + i),
            "each" if i % 2 else "mean",
        )
        for i in range(10)
    ]
    bad = items(1, seed=99)
    bad[0][5] = float("nan")
    try:
        for engine in (grouped, one_by_one):
            await engine.write(stored, mode="each")
            for q in stored:
                await engine.read([q])
        got = await asyncio.gather(
            *(grouped.write(x, mode) for x, mode in requests[:5]),
            grouped.write(bad),
            *(grouped.write(x, mode) for x, mode in requests[5:]),
            return_exceptions=True,
        )
        want = [await one_by_one.write(x, mode) for x, mode in requests]
        assert isinstance(got[5], InvalidInput)
        assert str(got[5]) == "item 0 contains NaN or infinity"  # it failed alone
        assert got[:5] + got[6:] == want
        assert all(isinstance(w, WriteResult) for w in want)
        assert any(w.slots == v.slots for w, v in itertools.pairwise(want))  # a slot reused
        assert_same_bank(grouped, one_by_one)
        batching = (await grouped.stats())["batching"]
        assert batching["write_groups"] == 2 and batching["largest_write_group"] == 10
    finally:
        await grouped.stop()
        await one_by_one.stop()
    replayed = await started(  # the log holds the group's records: a restart rebuilds it all
        make_settings(capacity=8, snapshot_dir=tmp_path / "a")
    )
    one_by_one = await started(make_settings(capacity=8, snapshot_dir=tmp_path / "b"))
    try:
        assert (await replayed.stats())["recovery"]["replayed"] == 11
        assert replayed.bank is not None and one_by_one.bank is not None
        codes = replayed.bank.state_dict()["codes"]
        torch.testing.assert_close(codes, one_by_one.bank.state_dict()["codes"], atol=ATOL, rtol=0)
        assert torch.equal(replayed.bank.occupied, one_by_one.bank.occupied)
    finally:
        await replayed.stop()
        await one_by_one.stop()


async def test_a_failed_group_append_fails_every_request_and_changes_nothing(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    """A real short write: RLIMIT_FSIZE lets the group's first record in, then EFBIG."""
    settings = make_settings(wal_fsync="always")
    engine = await started(settings)
    try:
        await engine.write(items(2), mode="each")
        assert engine.bank is not None
        before = engine.bank.state_dict()
        wal = settings.snapshot_dir / "wal.log"
        size = wal.stat().st_size
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 150, hard))
            results = await asyncio.gather(
                *(engine.write(items(1, seed=10 + i)) for i in range(6)), return_exceptions=True
            )
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, old_handler)
        assert all(isinstance(r, DiskFullError) for r in results), results
        assert wal.stat().st_size == size  # the partly written group was cut back off
        after = engine.bank.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert (await engine.stats())["batching"]["write_groups"] == 1  # the failed one: not run
        out = await engine.write(items(1, seed=20))  # room again: works
        assert (out.slots, out.used) == ([2], 3)
    finally:
        await engine.stop()


async def test_restart_recovers_bank_and_counts_from_the_shutdown_snapshot(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    settings = make_settings()
    x = items(3)
    engine = await started(settings)
    await engine.write(x, mode="each")
    await engine.read(x[1:2])
    await engine.read(x[1:2])
    await engine.delete_slot(2)
    before = await engine.get_slot(1)
    await engine.stop()  # snapshot on shutdown

    engine = await started(settings)
    try:
        after = await engine.get_slot(1)
        assert after.count == before.count == 2
        assert after.code.tolist() == before.code.tolist()
        with pytest.raises(SlotNotFound, match="slot 2 is not occupied"):
            await engine.get_slot(2)
        [[hit]] = await engine.read(x[1:2])
        assert (hit.slot, hit.count) == (1, 3)  # the count continues
        stats = await engine.stats()
        assert stats["recovery"]["snapshot"] == str(
            settings.snapshot_dir / "snap-0000000000000002.safetensors"
        )
        assert stats["recovery"]["replayed"] == 0
        assert (stats["used"], stats["writes"]) == (2, 3)
    finally:
        await engine.stop()


async def test_restart_without_a_snapshot_replays_the_wal(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    settings = make_settings(snapshot_on_shutdown=False)
    x = items(3)
    engine = await started(settings)
    await engine.write(x[:2], mode="each")
    await engine.write(x[2:])
    await engine.delete_slot(0)
    codes = [(await engine.get_slot(i)).code.tolist() for i in (1, 2)]
    await engine.read(x[1:2])
    await engine.stop()
    assert not list(settings.snapshot_dir.glob("snap-*"))

    engine = await started(settings)
    try:
        stats = await engine.stats()
        assert stats["recovery"] == {"snapshot": None, "replayed": 3, "warnings": []}
        assert stats["used"] == 2
        assert [(await engine.get_slot(i)).code.tolist() for i in (1, 2)] == codes  # exact
        assert (await engine.get_slot(1)).count == 0  # reads are not logged
    finally:
        await engine.stop()


async def test_snapshot_every_n_writes(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    settings = make_settings(snapshot_every_writes=2)
    engine = await started(settings)
    try:
        await engine.write(items(1))
        assert not list(settings.snapshot_dir.glob("snap-*"))
        await engine.write(items(1, seed=1))
        for _ in range(500):
            if list(settings.snapshot_dir.glob("snap-*")):
                break
            await asyncio.sleep(0.01)
        assert [p.name for p in settings.snapshot_dir.glob("snap-*")] == [
            "snap-0000000000000002.safetensors"
        ]
    finally:
        await engine.stop()


async def test_periodic_snapshot_only_when_changed(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    settings = make_settings(snapshot_every_s=0.05, snapshot_on_shutdown=False)
    engine = await started(settings)
    try:
        await asyncio.sleep(0.2)
        assert not list(settings.snapshot_dir.glob("snap-*"))  # nothing happened yet
        await engine.write(items(1))
        for _ in range(500):
            if (await engine.stats())["last_snapshot"] is not None:
                break
            await asyncio.sleep(0.01)
        assert (await engine.stats())["last_snapshot"]["lsn"] == 1
        assert [p.name for p in settings.snapshot_dir.glob("snap-*")] == [
            "snap-0000000000000001.safetensors"
        ]
    finally:
        await engine.stop()


async def test_engine_input_checks(make_settings: Callable[..., Settings], items: Items) -> None:
    engine = await started(make_settings(capacity=2))
    try:
        with pytest.raises(InvalidInput, match=r"^item 1: expected 64 values per item, got 3$"):
            await engine.write([items(1)[0], [0.1, 0.2, 0.3]])
        with pytest.raises(InvalidInput, match=r"^expected at least one item, got none$"):
            await engine.write([])
        with pytest.raises(InvalidInput, match=r"^expected mode 'mean' or 'each', got 'sum'$"):
            await engine.write(items(1), mode="sum")
        with pytest.raises(InvalidInput, match="more than the capacity 2"):
            await engine.write(items(3), mode="each")
        with pytest.raises(InvalidInput, match=r"^item 0 contains NaN or infinity$"):
            await engine.write([[float("inf")] * 64])
        with pytest.raises(InvalidInput) as refused:
            await engine.read(items(1), top_k=0)
        assert str(refused.value) == "expected top_k to be an int >= 1, got 0"
        with pytest.raises(InvalidInput, match=r"^expected querys? of shape"):
            await engine.read(torch.zeros(2, 5))
        out = await engine.write(torch.rand(2, 64), mode="each")  # tensors are fine too
        assert (out.slots, out.used) == ([0, 1], 2)
        assert (await engine.stats())["writes"] == 2
    finally:
        await engine.stop()


async def test_not_ready_before_start_and_after_stop(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    engine = Engine(make_settings())
    with pytest.raises(NotReady, match="service is starting"):
        await engine.read(items(1))
    await engine.start()
    assert engine.ready
    await engine.stop()
    with pytest.raises(NotReady, match=r"service is not available \(stopped\)"):
        await engine.write(items(1))


async def test_start_fails_loudly_on_missing_weights(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    engine = Engine(make_settings(weights=tmp_path / "nope.safetensors"))
    with pytest.raises(CheckpointError, match="does not exist"):
        await engine.start()
    assert engine.state == "failed" and engine.error is not None
    await engine.stop()  # harmless


async def test_a_second_engine_may_not_share_the_folder(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    first = await started(settings)
    try:
        second = Engine(settings)
        with pytest.raises(Exception, match="another process is using the snapshot folder"):
            await second.start()
        assert second.state == "failed"
    finally:
        await first.stop()


async def test_refined_codes_are_stored_and_found(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    plain = await started(make_settings())
    refined = await started(
        make_settings(
            refine_steps=3, snapshot_dir=make_settings().snapshot_dir.with_name("refined")
        )
    )
    try:
        x = items(1)
        for engine in (plain, refined):
            await engine.write(x)
        code_plain, code_refined = (await plain.get_slot(0)).code, (await refined.get_slot(0)).code
        assert code_plain.tolist() != code_refined.tolist()  # the refinement moved the code
        [[hit]] = await refined.read(x)
        assert (hit.slot, hit.count) == (0, 1)
        assert hit.score == pytest.approx(1.0, abs=1e-4)  # the query is refined the same way
    finally:
        await plain.stop()
        await refined.stop()


async def test_lfu_decay_setting_reaches_the_bank_also_after_recovery(
    make_settings: Callable[..., Settings], items: Items
) -> None:
    settings = make_settings(lfu_decay_ticks=7, initial_count=5)
    engine = await started(settings)
    try:
        assert engine.bank is not None and engine.bank.decay_ticks == 7
        await engine.write(items(2), mode="each")
    finally:
        await engine.stop()
    engine = await started(make_settings(lfu_decay_ticks=3, initial_count=5))
    try:
        assert engine.bank is not None and engine.bank.decay_ticks == 3  # policy: from settings
        assert engine.bank.used == 2
    finally:
        await engine.stop()


async def test_start_loads_the_scan_kernel_before_the_first_read(
    make_settings: Callable[..., Settings], items: Items, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An int8 bank's single-query kernel (model/scan.py, about a second to load or compile)
    is made ready by start, not by the first read."""
    from model import scan
    from model.quant import Quantiser

    warmed: list[str] = []
    real = Quantiser.warm

    def counted(self: Quantiser) -> None:
        warmed.append(self.dtype)
        real(self)

    monkeypatch.setattr(Quantiser, "warm", counted)
    engine = await started(make_settings(bank_dtype="int8"))
    try:
        assert warmed == ["int8"]
        assert scan._int8_dot.signatures  # compiled (or loaded from its cache) for int8 codes
        x = items(1)
        await engine.write(x)
        [[hit]] = await engine.read(x)
        assert (hit.slot, hit.count) == (0, 1)
    finally:
        await engine.stop()
