"""Queues that turn concurrent requests into batches for one worker thread.

A `BatchQueue` holds waiting requests. One worker coroutine takes what is queued (up to `limit`
rows, a single request over the limit still runs, alone), hands the batch to `handler` on the
executor it is given (the engine's one torch thread), and settles each request's future with
its own answer or error. The handler takes the requests' payloads in queue order and returns
one answer per payload: a value, or the exception that refused that request alone. An
exception raised by the handler itself fails every request of the batch.

Waiting for company. With `wait_s` > 0 the worker may wait before taking a batch, only when
requests come concurrently (the last batch ended with several requests in the queue: its own
and those queued while it ran, or several are queued now): a lone request runs at once. It
waits until as many requests are queued as the last batch ended with (at least two), or the
rows reach `limit`, or no request has come for `gap_s`, or `wait_s` has passed (the last two
within a millisecond), whichever comes first: under a steady load of c clients a batch starts
as soon as the c-th request arrives, not after the whole window (a fixed 1 ms sleep left the
event loop idle for it, bench/results/http.md). Counting the requests queued while a batch
ran, not only the batch's own, is what lets two cohorts merge: c = 16 clients split into
batches of 8 (one running, the other queued behind it) would otherwise stay split, each batch
paying the per-batch cost of the codec and the scan for half as many reads. Reads wait
(MT_BATCH_WAIT_MS, MT_BATCH_GAP_MS); writes do not (a group forms while the previous one runs).

Requests cancelled while they wait are dropped before the batch runs: never run, never
acknowledged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatchQueue", "BatchStats"]

P = TypeVar("P")  # a request's payload
A = TypeVar("A")  # its answer

Handler = Callable[[list[P]], Sequence[A | Exception]]
# uvloop runs a timer due in under a millisecond on the next loop pass (libuv counts whole
# milliseconds): the company wait never sets one nearer than this, or it would spin.
TIMER_RESOLUTION_S = 0.001
Run = Callable[[Callable[[], Sequence[A | Exception]]], Awaitable[Sequence[A | Exception]]]


@dataclass
class BatchStats:
    """Batches that answered at least one request, the requests and rows they answered, and
    the largest such batch in rows and in requests."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    largest_rows: int = 0
    largest_requests: int = 0


@dataclass
class _Job(Generic[P, A]):
    payload: P
    rows: int
    future: asyncio.Future[A]


class BatchQueue(Generic[P, A]):
    """See the module docstring. `run(fn)` runs fn() on the worker thread and awaits it."""

    def __init__(
        self,
        name: str,
        handler: Handler[P, A],
        run: Run[A],
        *,
        limit: int,
        wait_s: float = 0.0,
        gap_s: float | None = None,
    ) -> None:
        self.name = name
        self.stats = BatchStats()
        self._handler = handler
        self._run = run
        self._limit = limit
        self._wait_s = wait_s
        self._gap_s = wait_s if gap_s is None else min(gap_s, wait_s)
        self._last_arrival = 0.0  # loop time of the last submit
        self._jobs: deque[_Job[P, A]] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._last_requests = 0
        self._queued_rows = 0
        self._company: asyncio.Future[None] | None = None  # set while the worker waits
        self._company_size = 0
        self._worker = asyncio.create_task(self._loop(), name=name)

    async def submit(self, payload: P, rows: int) -> A:
        """Queue one request of `rows` rows and wait for its answer (or its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[A] = loop.create_future()
        self._last_arrival = loop.time()
        self._jobs.append(_Job(payload, rows, future))
        self._queued_rows += rows
        self._wakeup.set()
        if self._company is not None and self._has_company():
            self._end_wait()
        return await future

    async def close(self) -> None:
        """Answer every request queued so far, then stop the worker."""
        self._closing = True
        self._wakeup.set()
        await self._worker

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._jobs:
                if self._closing:
                    return
                continue
            concurrent = self._last_requests > 1 or len(self._jobs) > 1
            if self._wait_s > 0 and concurrent:
                await self._wait_for_company()
            jobs = self._take()
            await self._settle(jobs)
            self._last_requests = len(jobs) + len(self._jobs)  # in the queue as it ended
            if self._jobs:
                self._wakeup.set()

    async def _wait_for_company(self) -> None:
        """Wait until `_has_company`, or wait_s has passed, or no request has come for gap_s:
        one future per batch, resolved by `submit` or by the timer, which looks again at the
        last arrival each time it fires (no timer per request)."""
        self._company_size = max(self._last_requests, 2)
        if self._has_company():
            return
        loop = asyncio.get_running_loop()
        self._company = loop.create_future()
        deadline = loop.time() + self._wait_s
        timer: list[asyncio.TimerHandle] = []

        def check() -> None:
            due, now = min(deadline, self._last_arrival + self._gap_s), loop.time()
            if now >= due:
                self._end_wait()
            else:  # uvloop's timers count whole milliseconds: one due sooner fires at once
                timer[:] = [loop.call_at(max(due, now + TIMER_RESOLUTION_S), check)]

        timer.append(loop.call_at(min(deadline, loop.time() + self._gap_s), check))
        try:
            await self._company
        finally:
            timer[0].cancel()
            self._company = None

    def _has_company(self) -> bool:
        return len(self._jobs) >= self._company_size or self._queued_rows >= self._limit

    def _end_wait(self) -> None:
        if self._company is not None and not self._company.done():
            self._company.set_result(None)

    def _take(self) -> list[_Job[P, A]]:
        """The first queued job, then each next one while the batch stays within the limit."""
        jobs = [self._jobs.popleft()]
        size = jobs[0].rows
        while self._jobs and size + self._jobs[0].rows <= self._limit:
            jobs.append(self._jobs.popleft())
            size += jobs[-1].rows
        self._queued_rows -= size
        return jobs

    def _count(self, answered: list[_Job[P, A]]) -> None:
        """Stats count the requests a batch answered (not those it refused)."""
        if not answered:
            return
        rows, s = sum(j.rows for j in answered), self.stats
        s.batches += 1
        s.requests += len(answered)
        s.rows += rows
        s.largest_rows = max(s.largest_rows, rows)
        s.largest_requests = max(s.largest_requests, len(answered))

    async def _settle(self, jobs: list[_Job[P, A]]) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # cancelled while waiting
        if not jobs:
            return
        payloads = [j.payload for j in jobs]
        try:
            answers = await self._run(lambda: self._handler(payloads))
        except Exception as e:  # an engine fault: every request of the batch gets it
            answers = [e] * len(jobs)
        self._count([j for j, a in zip(jobs, answers, strict=True) if not isinstance(a, Exception)])
        for job, answer in zip(jobs, answers, strict=True):
            if job.future.done():
                continue
            if isinstance(answer, Exception):
                job.future.set_exception(answer)
            else:
                job.future.set_result(answer)
