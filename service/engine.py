"""The serving engine: IDRP codec + MemoryBank + lock + persistence, with no HTTP in sight.

    engine = Engine(settings)
    await engine.start()         # load weights strictly, recover the bank (snapshot + WAL)
    await engine.write(items, mode="mean")
    await engine.read(queries, top_k=1, min_score=None, reconstruct=True)
    await engine.stop()          # drain reads, snapshot on shutdown, close the WAL

Threads. Every piece of torch work runs on one dedicated thread ("mt-torch"), never on the
event loop, so the loop keeps answering /healthz and queueing requests while a batch runs.
Snapshot files are written on a second thread ("mt-snapshot") from a copy of the state, so a
slow disk does not hold up reads or writes. The bank lock (a threading.Lock) guards the bank and
the WAL; encoding and decoding happen outside it.

Writes are grouped (group commit): concurrent requests wait in their own queue; one worker
takes what is queued (up to MT_BATCH_MAX items, no waiting: a group forms while the previous one
runs) and runs ONE encode outside the lock, then under it ONE bank.plan_writes (the slots and
evictions of the requests one after another, in queue order: each request's answer is exactly
what it would get alone, "mean" still takes one slot per request), ONE WAL append of a record
per request with ONE fsync, then bank.assign per request in order. A failed WAL append fails
every request of the group (PersistenceError / DiskFullError, 507) and leaves the bank as it
was; a request with bad input fails alone. Stored codes can differ from a lone request's in the
last float32 bits, as batched reads can (the WAL holds the exact codes the bank holds).

Reads are micro-batched: concurrent requests wait in a queue; one worker takes what is queued
(up to MT_BATCH_MAX queries, waiting at most MT_BATCH_WAIT_MS for more when reads come
concurrently: the last batch held several requests or several are queued; a lone read does not
wait) and answers all of it with ONE encode, one bank.read per distinct (top_k, min_score)
(usually one) and ONE decode. The bank counts accesses sequentially within a batch, in queue
order, so the slots and counts are exactly those of the same requests made one at a time in that
order. Floats can differ in the last bits: CPU BLAS sums a one-row matrix product in another
order than a many-row one (about 1e-6 relative on the test model); scores are recomputed per
(query, slot) pair by the bank and do not depend on the batch.

Encode and decode run the model's TorchScript graphs (model.idrp.compile_codec, checked
against the eager model at start; the eager model when that fails, or for refined codes).
Once loaded, the engine freezes the garbage collector's view of every object alive (gc.freeze),
so full collections no longer walk the model, the bank and the libraries (stop unfreezes).

Errors are domain errors: InvalidInput (a ValueError) for bad input, SlotNotFound,
PersistenceError / DiskFullError, NotReady. service/errors.py turns them into HTTP answers.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from model.checkpoint import load_idrp
from model.errors import MemoryTransitError
from model.idrp import IDRP, CompiledCodec, compile_codec
from model.memory import MemoryBank
from service.persistence import Persistence, Recovery, SnapshotInfo
from service.settings import Settings

log = logging.getLogger("service.engine")

T = TypeVar("T")
J = TypeVar("J")
Rows = Sequence[Sequence[float]] | Tensor
State = Literal["created", "starting", "ready", "stopping", "stopped", "failed"]
FLOAT16_MAX = 65504.0


class NotReady(MemoryTransitError):
    """The engine is starting, stopping or failed to start: try again later."""


class InvalidInput(MemoryTransitError, ValueError):
    """Input the engine refuses; the message names the item and the problem."""


@dataclass(frozen=True)
class WriteOutcome:
    slots: list[int]
    evicted: list[int]
    used: int


@dataclass(frozen=True)
class Hit:
    """One slot found by a read. reconstruction is a float32 array (d,) (orjson writes it as a
    JSON list in float32's shortest form), None when the read asked for no reconstruction."""

    slot: int
    score: float
    count: int
    reconstruction: NDArray[np.float32] | None


@dataclass(frozen=True)
class SlotInfo:
    """One occupied slot: counters, its code (m,) and the code decoded (d,), float32 arrays."""

    slot: int
    count: int
    last_write: int
    last_access: int
    code: NDArray[np.float32]
    reconstruction: NDArray[np.float32]


@dataclass
class _WriteJob:
    items: Rows
    mode: str
    future: asyncio.Future[WriteOutcome]
    error: Exception | None = None
    answer: WriteOutcome | None = None  # set on the torch thread when error is None


@dataclass
class _ReadJob:
    queries: Rows
    top_k: int
    min_score: float | None
    reconstruct: bool
    future: asyncio.Future[list[list[Hit]]]
    x: Tensor | None = None  # filled on the torch thread
    error: Exception | None = None
    answer: list[list[Hit]] = field(default_factory=list)


def _take_group(queue: deque[J], limit: int, rows: Callable[[J], int]) -> list[J]:
    """Pop the first queued job, then each next one while the group's rows stay <= limit (a
    single job over the limit still runs, alone)."""
    jobs = [queue.popleft()]
    size = rows(jobs[0])
    while queue and size + rows(queue[0]) <= limit:
        jobs.append(queue.popleft())
        size += rows(jobs[-1])
    return jobs


class Engine:
    """Owns the model, the bank, their lock and the persistence; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: State = "created"
        self.error: str | None = None
        self.model: IDRP | None = None
        self.codec: IDRP | CompiledCodec | None = None  # encode / decode: compiled, else the model
        self.bank: MemoryBank | None = None
        self.persistence: Persistence | None = None
        self.recovery: Recovery | None = None
        self.device = "cpu"
        self.started_at = time.time()
        self._lock = threading.Lock()
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt-torch")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt-snapshot")
        self._pending: deque[_ReadJob] = deque()
        self._wakeup: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._batcher: asyncio.Task[None] | None = None
        self._snapshot_lock: asyncio.Lock | None = None
        self._changes_since_snapshot = 0  # logged mutations not yet in a snapshot
        self._tick_at_snapshot = -1  # bank tick in the last snapshot (-1: none this run)
        self._batches = self._batched_queries = self._largest_batch = 0
        self._writes: deque[_WriteJob] = deque()
        self._write_wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._write_groups = self._grouped_writes = self._largest_group = 0
        self._last_batch_jobs = 0  # requests in the last read batch

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def d(self) -> int:
        return self._model().config.d

    @property
    def m(self) -> int:
        return self._model().config.m

    async def start(self) -> None:
        """Load the weights and recover the bank (on the torch thread), then serve."""
        if self.state != "created":
            raise RuntimeError(f"expected a new engine, got state {self.state!r}")
        self.state = "starting"
        self._wakeup = asyncio.Event()
        self._write_wakeup = asyncio.Event()
        self._snapshot_lock = asyncio.Lock()
        try:
            await self._run(self._load)
        except BaseException as e:
            self.state, self.error = "failed", str(e) or type(e).__name__
            self._shutdown_threads()
            raise
        self._batcher = asyncio.create_task(self._batch_loop(), name="mt-read-batcher")
        self._writer = asyncio.create_task(self._write_loop(), name="mt-write-grouper")
        if self.settings.snapshot_every_s > 0:
            self._spawn(self._periodic_snapshots())
        self.started_at = time.time()
        self.state = "ready"
        # The model, the bank and the imported libraries are a few hundred thousand objects
        # that live as long as the process; left in the collector's oldest generation, every
        # full collection walks them all (70-80 ms here, which set /read's p99). Collect the
        # start-up garbage, then move every object alive now out of the collector's sight.
        gc.collect()
        gc.freeze()
        log.info("engine ready: %s", self._summary())

    def _load(self) -> None:
        s = self.settings
        device = s.resolved_device()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"MT_DEVICE={s.device} but torch sees no CUDA device")
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        model = load_idrp(s.weights, device=device)
        codec = self._compile(model)
        scales = model.code_scales.detach().clone() if s.bank_dtype == "int8" else None

        def make_bank() -> MemoryBank:
            return MemoryBank(
                s.capacity,
                model.config.m,
                device=device,
                dtype=s.bank_dtype,
                scales=scales,
                initial_count=s.initial_count,
            )

        persistence = Persistence(
            s.snapshot_dir, fsync=s.wal_fsync, keep=s.snapshot_keep, allow_fresh=s.allow_fresh
        )
        recovery = persistence.recover(
            make_bank,
            fingerprint=model.fingerprint,
            capacity=s.capacity,
            m=model.config.m,
            device=device,
        )
        bank = recovery.bank
        bank.decay_ticks = s.lfu_decay_ticks  # a policy, not state: always from the settings
        if bank.dtype != s.bank_dtype:
            recovery.warnings.append(
                f"the snapshot's bank stores {bank.dtype} codes, MT_BANK_DTYPE={s.bank_dtype}: "
                f"kept {bank.dtype} (change the dtype with a fresh snapshot folder)"
            )
        if bank.initial_count != s.initial_count:
            recovery.warnings.append(
                f"the snapshot's bank has initial_count={bank.initial_count}, "
                f"MT_INITIAL_COUNT={s.initial_count}: kept {bank.initial_count}"
            )
        self.model, self.bank, self.persistence, self.recovery = model, bank, persistence, recovery
        self.codec = codec
        self.device = str(device)
        # Replayed WAL records are not in any snapshot yet: mark the bank dirty so the next
        # periodic or shutdown snapshot saves them and the WAL stops growing across restarts.
        self._tick_at_snapshot = (
            bank.tick if recovery.snapshot is not None and not recovery.replayed else -1
        )
        self._changes_since_snapshot = recovery.replayed

    @staticmethod
    def _compile(model: IDRP) -> IDRP | CompiledCodec:
        """The TorchScript codec (model.compile_codec), or the eager model when it cannot be
        built or does not match the model within 1e-6 (both answer alike, eager is slower)."""
        try:
            return compile_codec(model)
        except Exception as e:  # a tracer limitation on this build or device: serve eager
            log.warning("encode / decode run eager: the compiled codec failed its check: %s", e)
            return model

    async def stop(self) -> None:
        """Finish queued reads and running writes, snapshot (MT_SNAPSHOT_ON_SHUTDOWN), close."""
        if self.state != "ready":
            if self.state in ("created", "failed"):
                self._shutdown_threads()
            return
        self.state = "stopping"
        assert self._wakeup is not None and self._batcher is not None
        assert self._write_wakeup is not None and self._writer is not None
        self._wakeup.set()
        self._write_wakeup.set()
        await self._batcher  # each exits once its queue is empty
        await self._writer
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._run(lambda: None)  # every write already handed to the torch thread is done
        if self.settings.snapshot_on_shutdown and self._changed_since_snapshot():
            try:
                info = await self._snapshot()
                log.info("shutdown snapshot %s (%d bytes)", info.path, info.bytes)
            except Exception:
                log.exception("shutdown snapshot failed; the WAL still holds every write")
        if self.persistence is not None:
            await self._run(self.persistence.close)
        self._shutdown_threads()
        self.state = "stopped"
        gc.unfreeze()  # what start froze becomes collectable again (matters in a test run)
        log.info("engine stopped")

    def _shutdown_threads(self) -> None:
        self._torch.shutdown(wait=True)
        self._io.shutdown(wait=True)

    # ------------------------------------------------------------------ helpers

    def _model(self) -> IDRP:
        if self.model is None:
            raise NotReady("service is starting: the model is not loaded yet")
        return self.model

    def _codec(self) -> IDRP | CompiledCodec:
        if self.codec is None:
            raise NotReady("service is starting: the model is not loaded yet")
        return self.codec

    def _bank(self) -> MemoryBank:
        if self.bank is None:
            raise NotReady("service is starting: the bank is not loaded yet")
        return self.bank

    def _persistence(self) -> Persistence:
        if self.persistence is None:
            raise NotReady("service is starting: persistence is not open yet")
        return self.persistence

    def _check_ready(self) -> None:
        if self.state != "ready":
            raise NotReady(
                "service is starting"
                if self.state in ("created", "starting")
                else f"service is not available ({self.state})"
            )

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._torch, functools.partial(fn, *args))

    async def _settle(self, fn: Callable[[list[Any]], None], jobs: list[Any]) -> None:
        """Run fn(jobs) on the torch thread, then settle each job's future with its own error,
        the group's error (an engine fault: every request of the group gets it) or its answer.
        Jobs already cancelled are dropped first: never run, never acknowledged."""
        jobs = [j for j in jobs if not j.future.done()]
        if not jobs:
            return
        try:
            await self._run(fn, jobs)
        except Exception as e:
            for j in jobs:
                j.error = e
        for j in jobs:
            if j.future.done():
                continue
            if j.error is not None:
                j.future.set_exception(j.error)
            else:
                j.future.set_result(j.answer)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check_rows(self, rows: Rows, noun: str) -> None:
        """Shapes only (cheap, on the caller's thread): B >= 1 rows of d values."""
        d = self.d
        if isinstance(rows, Tensor):
            if rows.dim() != 2 or rows.shape[1] != d or rows.shape[0] < 1:
                raise InvalidInput(
                    f"expected {noun}s of shape (B >= 1, {d}), got {tuple(rows.shape)}"
                )
            return
        if len(rows) == 0:
            raise InvalidInput(f"expected at least one {noun}, got none")
        for i, row in enumerate(rows):
            if len(row) != d:
                raise InvalidInput(f"{noun} {i}: expected {d} values per {noun}, got {len(row)}")

    @staticmethod
    def _tensor(rows: Rows, noun: str) -> Tensor:
        """float32 (B, d) on the CPU; NaN / infinity (or beyond float32) -> InvalidInput."""
        if isinstance(rows, Tensor):
            x = rows.detach().to(device="cpu", dtype=torch.float32)
        else:
            try:  # numpy parses nested lists of floats ~10x faster than torch.tensor
                x = torch.from_numpy(np.asarray(rows, dtype=np.float32))
            except (TypeError, ValueError):
                raise InvalidInput(f"{noun}s must be lists of numbers") from None
            if x.dim() != 2:
                raise InvalidInput(f"{noun}s must be lists of numbers")
        bad = ~torch.isfinite(x).all(dim=1)
        if bool(bad.any()):
            raise InvalidInput(f"{noun} {int(bad.nonzero()[0])} contains NaN or infinity")
        return x

    @staticmethod
    def _first_bad(z: Tensor) -> int | None:
        bad = ~torch.isfinite(z).all(dim=1)
        return int(bad.nonzero()[0]) if bool(bad.any()) else None

    # ------------------------------------------------------------------ write

    async def write(self, items: Rows, mode: str = "mean") -> WriteOutcome:
        """Encode items (B, d) and store them: "mean" -> one slot with the mean code, "each" ->
        one slot per item. Logged to the WAL before the bank changes."""
        self._check_ready()
        if mode not in ("mean", "each"):
            raise InvalidInput(f"expected mode 'mean' or 'each', got {mode!r}")
        self._check_rows(items, "item")
        capacity = self._bank().capacity
        if mode == "each" and len(items) > capacity:
            raise InvalidInput(
                f"mode 'each' needs {len(items)} slots, more than the capacity {capacity}"
            )
        future: asyncio.Future[WriteOutcome] = asyncio.get_running_loop().create_future()
        self._writes.append(_WriteJob(items, mode, future))
        assert self._write_wakeup is not None
        self._write_wakeup.set()
        outcome = await future
        self._after_change()
        return outcome

    async def _write_loop(self) -> None:
        assert self._write_wakeup is not None
        limit = self.settings.batch_max
        while True:
            await self._write_wakeup.wait()
            self._write_wakeup.clear()
            if not self._writes:
                if self.state != "ready":
                    return
                continue
            jobs = _take_group(self._writes, limit, lambda j: len(j.items))
            await self._settle(self._write_group, jobs)
            if self._writes:
                self._write_wakeup.set()

    def _write_group(self, jobs: list[_WriteJob]) -> None:
        """One encode, one plan, one WAL append (one fsync), then an assign per request, in
        queue order; fills each job's answer or error (see the module docstring)."""
        codec, bank, persistence = self._codec(), self._bank(), self._persistence()
        xs: list[tuple[_WriteJob, Tensor]] = []
        for j in jobs:
            try:
                xs.append((j, self._tensor(j.items, "item")))
            except InvalidInput as e:
                j.error = e
        if not xs:
            return
        x = torch.cat([xj for _, xj in xs])  # (B, d): every item of the group
        z_all = codec.encode(x, refine_steps=self.settings.refine_steps).float()  # (B, m)
        group: list[tuple[_WriteJob, Tensor]] = []
        start = 0
        for j, xj in xs:
            z = z_all[start : start + xj.shape[0]]
            start += xj.shape[0]
            bad = self._first_bad(z)
            if bad is not None:
                j.error = InvalidInput(
                    f"item {bad} cannot be stored: its code is not finite (values far outside "
                    "the range the codec was trained on)"
                )
                continue
            if j.mode == "mean":
                z = z.mean(dim=0, keepdim=True)  # (1, m), as MemoryBank.write does
            if bank.dtype == "float16" and float(z.abs().max()) > FLOAT16_MAX:
                j.error = InvalidInput("the items' code is too large for the float16 bank")
                continue
            group.append((j, z))
        if not group:
            return
        with self._lock:
            plans = bank.plan_writes([z.shape[0] for _, z in group])
            try:  # all or nothing; raises before the bank changes
                records = [(slots, z) for (slots, _), (_, z) in zip(plans, group, strict=True)]
                persistence.log_writes(records)
            except Exception as e:
                for j, _ in group:
                    j.error = e
                return
            used = bank.used
            for (j, z), (slots, evicted) in zip(group, plans, strict=True):
                bank.assign(slots, z)
                used += len(slots) - len(evicted)  # the slots that were free
                j.answer = WriteOutcome(slots=slots, evicted=evicted, used=used)
            self._changes_since_snapshot += len(group)
            self._write_groups += 1
            self._grouped_writes += len(group)
            self._largest_group = max(self._largest_group, len(group))

    # ------------------------------------------------------------------ read (micro-batched)

    async def read(
        self,
        queries: Rows,
        top_k: int = 1,
        min_score: float | None = None,
        reconstruct: bool = True,
    ) -> list[list[Hit]]:
        """For each query (B, d): the top_k slots by cosine of codes, best first, each with its
        count after this read; a miss (nothing, or best score < min_score) is []."""
        self._check_ready()
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidInput(f"expected top_k to be an int >= 1, got {top_k!r}")
        if min_score is not None and not math.isfinite(min_score):
            raise InvalidInput(f"expected a finite min_score, got {min_score}")
        self._check_rows(queries, "query")
        future: asyncio.Future[list[list[Hit]]] = asyncio.get_running_loop().create_future()
        self._pending.append(_ReadJob(queries, top_k, min_score, reconstruct, future))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    async def _batch_loop(self) -> None:
        assert self._wakeup is not None
        wait_s = self.settings.batch_wait_ms / 1000
        limit = self.settings.batch_max
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                if self.state != "ready":
                    return
                continue
            # Wait for company only when reads come concurrently (the last batch held several
            # requests, or several are queued now): a lone read runs at once.
            concurrent = self._last_batch_jobs > 1 or len(self._pending) > 1
            if wait_s > 0 and concurrent and sum(len(j.queries) for j in self._pending) < limit:
                await asyncio.sleep(wait_s)  # let concurrent requests join this batch
            jobs = _take_group(self._pending, limit, lambda j: len(j.queries))
            self._last_batch_jobs = len(jobs)
            await self._settle(self._read_batch, jobs)
            if self._pending:
                self._wakeup.set()

    def _read_batch(self, jobs: list[_ReadJob]) -> None:
        """One encode, one bank.read per (top_k, min_score) group, one decode; fills each job's
        result or error (a bad request fails alone, not its batch)."""
        codec, bank = self._codec(), self._bank()
        for j in jobs:
            try:
                j.x = self._tensor(j.queries, "query")
            except InvalidInput as e:
                j.error = e
        ok = [j for j in jobs if j.error is None]
        if not ok:
            return
        assert all(j.x is not None for j in ok)
        x = torch.cat([j.x for j in ok if j.x is not None])  # (B, d): every query of the batch
        z = codec.encode(x, refine_steps=self.settings.refine_steps).float()  # (B, m)
        spans, start = [], 0
        for j in ok:
            n = len(j.queries)
            bad = self._first_bad(z[start : start + n])
            if bad is not None:
                j.error = InvalidInput(
                    f"query {bad} cannot be read: its code is not finite (values far outside "
                    "the range the codec was trained on)"
                )
            spans.append((j, start, start + n))
            start += n
        spans = [s for s in spans if s[0].error is None]
        groups: dict[tuple[int, float | None], list[tuple[_ReadJob, int, int]]] = {}
        for span in spans:  # dicts keep first-seen order: requests keep their queue order
            groups.setdefault((span[0].top_k, span[0].min_score), []).append(span)
        answers: list[tuple[_ReadJob, Tensor, Tensor, Tensor]] = []
        with self._lock:
            for (top_k, min_score), members in groups.items():
                q = torch.cat([z[a:b] for _, a, b in members])
                r = bank.read(q, top_k=top_k, min_score=min_score)
                offset = 0
                for j, a, b in members:
                    n = b - a
                    sl = slice(offset, offset + n)
                    answers.append((j, r.slots[sl], r.scores[sl], r.counts[sl]))
                    offset += n
            wanted = [s[s >= 0] for j, s, _, _ in answers if j.reconstruct]
            hit_slots = torch.cat(wanted) if wanted else torch.empty(0, dtype=torch.int64)
            codes = bank.codes_at(hit_slots) if hit_slots.numel() else None
        decoded = codec.decode(codes).to(torch.float32).cpu().numpy() if codes is not None else None
        position = 0
        self._batches += 1
        self._batched_queries += z.shape[0]
        self._largest_batch = max(self._largest_batch, z.shape[0])
        for j, slots, scores, counts in answers:
            result: list[list[Hit]] = []
            for row_slots, row_scores, row_counts in zip(
                slots.tolist(), scores.tolist(), counts.tolist(), strict=True
            ):
                hits = []
                for slot, score, count in zip(row_slots, row_scores, row_counts, strict=True):
                    if slot < 0:
                        continue
                    recon = None
                    if j.reconstruct:
                        assert decoded is not None
                        recon = decoded[position]
                        position += 1
                    hits.append(Hit(slot=slot, score=score, count=count, reconstruction=recon))
                result.append(hits)
            j.answer = result

    # ------------------------------------------------------------------ slots

    async def get_slot(self, slot: int) -> SlotInfo:
        """One occupied slot's counters, code and reconstruction (not counted as an access)."""
        self._check_ready()
        return await self._run(self._get_slot, slot)

    def _get_slot(self, slot: int) -> SlotInfo:
        with self._lock:
            view = self._bank().get(slot)  # SlotNotFound when free or out of range
        recon = self._codec().decode(view.code.unsqueeze(0))[0]
        return SlotInfo(
            slot=view.slot,
            count=view.count,
            last_write=view.last_write,
            last_access=view.last_access,
            code=view.code.float().cpu().numpy(),
            reconstruction=recon.float().cpu().numpy(),
        )

    async def delete_slot(self, slot: int) -> int:
        """Free an occupied slot (logged first); returns the number of occupied slots left."""
        self._check_ready()
        used = await self._run(self._delete_slot, slot)
        self._after_change()
        return used

    def _delete_slot(self, slot: int) -> int:
        bank, persistence = self._bank(), self._persistence()
        with self._lock:
            bank.get(slot)  # SlotNotFound before anything is logged
            persistence.log_delete(slot)
            bank.delete(slot)
            self._changes_since_snapshot += 1
            return bank.used

    # ------------------------------------------------------------------ snapshots

    async def snapshot(self) -> SnapshotInfo:
        """Save a snapshot now (copy under the lock, write outside it); returns its facts."""
        self._check_ready()
        return await self._snapshot()

    async def _snapshot(self) -> SnapshotInfo:
        assert self._snapshot_lock is not None
        async with self._snapshot_lock:
            state, lsn, tick, changes = await self._run(self._copy_state)
            loop = asyncio.get_running_loop()
            info = await loop.run_in_executor(self._io, self._persistence().snapshot, state, lsn)
            await self._run(self._snapshot_done, tick, changes)
            return info

    def _copy_state(self) -> tuple[dict[str, Tensor], int, int, int]:
        bank, persistence = self._bank(), self._persistence()
        with self._lock:
            return bank.state_dict(), persistence.last_lsn, bank.tick, self._changes_since_snapshot

    def _snapshot_done(self, tick: int, changes: int) -> None:
        with self._lock:
            self._tick_at_snapshot = tick
            self._changes_since_snapshot -= changes

    def _changed_since_snapshot(self) -> bool:
        """Any write, delete or read (reads move counts) since the last snapshot?"""
        bank = self.bank
        return bank is not None and bank.tick != self._tick_at_snapshot and bank.tick > 0

    def _after_change(self) -> None:
        every = self.settings.snapshot_every_writes
        if every and self._changes_since_snapshot >= every:
            assert self._snapshot_lock is not None
            if not self._snapshot_lock.locked():
                self._spawn(self._background_snapshot("write count"))

    async def _background_snapshot(self, reason: str) -> None:
        try:
            info = await self._snapshot()
            log.info(
                "snapshot (%s) %s: %d bytes in %.3f s",
                reason,
                info.path.name,
                info.bytes,
                info.seconds,
            )
        except Exception:
            log.exception("snapshot (%s) failed; the WAL still holds every write", reason)

    async def _periodic_snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.settings.snapshot_every_s)
            if self.state == "ready" and self._changed_since_snapshot():
                await self._background_snapshot("periodic")

    # ------------------------------------------------------------------ stats

    async def stats(self) -> dict[str, Any]:
        """Everything /stats reports (see schemas.StatsResponse)."""
        self._check_ready()
        return await self._run(self._stats)

    def _stats(self) -> dict[str, Any]:
        model, bank = self._model(), self._bank()
        with self._lock:
            b = bank.stats()
        d, m = model.config.d, model.config.m
        code_bytes = m * bank.codes.element_size()
        last = self._persistence().last_snapshot
        rec = self.recovery
        return {
            "capacity": b["capacity"],
            "used": b["used"],
            "d": d,
            "m": m,
            "compression_ratio": d / m,
            "bytes_ratio": d * 4 / code_bytes,
            "device": self.device,
            "model": model.name,
            "fingerprint": model.fingerprint,
            "bank_dtype": b["dtype"],
            "bank_bytes": b["bytes"],
            "cache_bytes": b["cache_bytes"],
            "reads": b["reads"],
            "hits": b["hits"],
            "misses": b["misses"],
            "writes": b["writes"],
            "evictions": b["evictions"],
            "counts": {
                "min": b["count_min"],
                "mean": b["count_mean"],
                "max": b["count_max"],
                "sum": b["count_sum"],
            },
            "batching": {
                "batches": self._batches,
                "queries": self._batched_queries,
                "largest": self._largest_batch,
                "write_groups": self._write_groups,
                "writes": self._grouped_writes,
                "largest_write_group": self._largest_group,
            },
            "last_snapshot": None
            if last is None
            else {
                "time": last.created_at,
                "path": str(last.path),
                "bytes": last.bytes,
                "lsn": last.lsn,
            },
            "recovery": {
                "snapshot": str(rec.snapshot.path) if rec and rec.snapshot else None,
                "replayed": rec.replayed if rec else 0,
                "warnings": list(rec.warnings) if rec else [],
            },
            "uptime_s": time.time() - self.started_at,
        }

    def _summary(self) -> str:
        rec = self.recovery
        assert rec is not None and self.model is not None and self.bank is not None
        source = rec.snapshot.path.name if rec.snapshot else "empty bank"
        return (
            f"model {self.model.name} (d={self.d}, m={self.m}) on {self.device}, bank "
            f"{self.bank.capacity} x {self.bank.dtype}, used {self.bank.used}, from {source} + "
            f"{rec.replayed} WAL records, {len(rec.warnings)} warning(s), "
            f"started {datetime.now(UTC).isoformat(timespec='seconds')}"
        )
