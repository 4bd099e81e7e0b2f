"""Queues that turn concurrent requests into batches for one worker thread.

A `BatchQueue` holds waiting requests. One worker coroutine takes what is queued (up to `limit`
rows, a single request over the limit still runs, alone), hands the batch to `handler` on the
executor it is given (the engine's one torch thread), and settles each request's future with
its own answer or error. The handler takes the requests' payloads in queue order and returns
one answer per payload: a value, or the exception that refused that request alone. An
exception raised by the handler itself fails every request of the batch.

Waiting for company. With `wait_s` > 0 the worker waits that long before taking a batch, but
only when requests come concurrently (the last batch held several requests, or several are
queued now): a lone request runs at once. Reads wait (MT_BATCH_WAIT_MS); writes do not (a
group forms while the previous one runs).

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
    ) -> None:
        self.name = name
        self.stats = BatchStats()
        self._handler = handler
        self._run = run
        self._limit = limit
        self._wait_s = wait_s
        self._jobs: deque[_Job[P, A]] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._last_requests = 0
        self._worker = asyncio.create_task(self._loop(), name=name)

    async def submit(self, payload: P, rows: int) -> A:
        """Queue one request of `rows` rows and wait for its answer (or its error)."""
        future: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(payload, rows, future))
        self._wakeup.set()
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
            if self._wait_s > 0 and concurrent and sum(j.rows for j in self._jobs) < self._limit:
                await asyncio.sleep(self._wait_s)  # let concurrent requests join this batch
            jobs = self._take()
            self._last_requests = len(jobs)
            await self._settle(jobs)
            if self._jobs:
                self._wakeup.set()

    def _take(self) -> list[_Job[P, A]]:
        """The first queued job, then each next one while the batch stays within the limit."""
        jobs = [self._jobs.popleft()]
        size = jobs[0].rows
        while self._jobs and size + self._jobs[0].rows <= self._limit:
            jobs.append(self._jobs.popleft())
            size += jobs[-1].rows
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
