"""service/batching.py's BatchQueue on its own: which requests form a batch, and when a batch
that waits for company starts. Counted, not timed: the windows are long enough that a batch
which waited them out would fail the test's elapsed-time check by a wide margin."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import uvloop

from service.batching import BatchQueue

pytestmark = pytest.mark.anyio


class Worker:
    """A BatchQueue over one worker thread whose handler records each batch's payloads and
    can be held (a running batch that the test releases)."""

    def __init__(self, *, wait_s: float, gap_s: float | None = None) -> None:
        self.batches: list[list[int]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.running = threading.Event()
        self._pool = ThreadPoolExecutor(1)
        self.queue: BatchQueue[int, int] = BatchQueue(
            "test-batcher", self._handle, self._run, limit=64, wait_s=wait_s, gap_s=gap_s
        )

    def _handle(self, payloads: list[int]) -> Sequence[int | Exception]:
        self.running.set()
        self.hold.wait(30)
        self.batches.append(list(payloads))
        return [p * 10 for p in payloads]

    async def _run(self, fn: Callable[[], Sequence[int | Exception]]) -> Sequence[Any]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def submit(self, payload: int) -> asyncio.Future[int]:
        return asyncio.ensure_future(self.queue.submit(payload, 1))

    async def close(self) -> None:
        self.hold.set()
        await self.queue.close()
        self._pool.shutdown()


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in 30 s")


async def test_requests_queued_behind_a_running_batch_wait_for_its_clients() -> None:
    # A lone request runs while 8 more queue behind it: the batch ended with 9 in the queue,
    # so the 8 wait for a 9th rather than run as a batch of 8 (two cohorts that would stay
    # split, each paying a batch's fixed cost for half the reads).
    w = Worker(wait_s=60.0)
    try:
        w.hold.clear()
        first = w.submit(0)
        await until(w.running.is_set)
        queued = [w.submit(i) for i in range(1, 9)]
        await until(lambda: len(w.queue._jobs) == 8)
        w.hold.set()
        assert await first == 0
        await until(lambda: w.queue._company is not None)  # waiting, not running
        assert w.batches == [[0]]
        t0 = asyncio.get_running_loop().time()
        last = w.submit(9)
        assert await asyncio.gather(*queued, last) == [10 * i for i in range(1, 10)]
        assert w.batches == [[0], list(range(1, 10))]
        assert asyncio.get_running_loop().time() - t0 < 20.0
    finally:
        await w.close()


async def test_a_waiting_batch_starts_once_requests_stop_coming() -> None:
    # After a batch of 3 the next one expects 3, but only two come, 50 ms apart: it starts
    # one gap (0.5 s) after the second, long before the 60 s window ends.
    w = Worker(wait_s=60.0, gap_s=0.5)
    try:
        assert await asyncio.gather(*(w.submit(i) for i in range(3))) == [0, 10, 20]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        a = w.submit(3)
        await asyncio.sleep(0.05)
        b = w.submit(4)
        assert await asyncio.gather(a, b) == [30, 40]
        elapsed = loop.time() - t0
        assert w.batches == [[0, 1, 2], [3, 4]]
        assert 0.5 <= elapsed < 20.0
    finally:
        await w.close()


async def test_requests_that_keep_coming_extend_the_wait_up_to_its_window() -> None:
    # Gap 0.3 s, window 60 s: five requests 0.1 s apart (each within the gap of the one
    # before) all join the batch that expects 6, which starts one gap after the last.
    w = Worker(wait_s=60.0, gap_s=0.3)
    try:
        await asyncio.gather(*(w.submit(i) for i in range(6)))
        futures = []
        for i in range(5):
            futures.append(w.submit(10 + i))
            await asyncio.sleep(0.1)
        await asyncio.gather(*futures)
        assert w.batches == [list(range(6)), list(range(10, 15))]
    finally:
        await w.close()


def test_a_wait_on_uvloop_sets_a_few_timers_not_one_per_loop_pass() -> None:
    # uvloop counts whole milliseconds: a timer due in under one runs on the next loop pass, so
    # a wait that rescheduled its check for the exact due time spun there (~20 timers a wait).
    # 50 waits that end by the gap, each with a request 0.7 ms into it.
    async def scenario() -> float:
        w = Worker(wait_s=0.004, gap_s=0.001)
        loop = asyncio.get_running_loop()
        timers, call_at = [0], loop.call_at

        def counting(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
            timers[0] += 1
            return call_at(when, callback, *args)

        loop.call_at = counting  # type: ignore[method-assign]
        try:
            for _ in range(50):
                await asyncio.gather(*(w.submit(i) for i in range(8)))  # the next expects 8
                waiting = [w.submit(8), w.submit(9)]
                await asyncio.sleep(0.0007)
                await asyncio.gather(*waiting, w.submit(10))
            return timers[0] / 50
        finally:
            loop.call_at = call_at  # type: ignore[method-assign]
            await w.close()

    assert uvloop.run(scenario()) <= 3


def test_the_gap_is_at_most_the_window() -> None:
    async def make() -> tuple[float, float]:
        w = Worker(wait_s=0.002, gap_s=0.5)
        try:
            return w.queue._wait_s, w.queue._gap_s
        finally:
            await w.close()

    assert asyncio.run(make()) == (0.002, 0.002)
