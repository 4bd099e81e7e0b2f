"""The serving engine: lifecycle, queues and snapshot scheduling around model/'s memory loop.

    engine = Engine(settings)
    await engine.start()         # load weights strictly, recover the bank (snapshot + WAL)
    await engine.write(items, mode="mean", namespace="default", records=None, pinned=False)
    await engine.read(queries, top_k=1, min_score=None, reconstruct=True, namespace=None)
    await engine.remember(texts, payloads, namespace)   # text codecs (service/texts.py)
    await engine.recall(texts, top_k, min_score, namespace)
    await engine.search(codes, top_k) / engine.touch(slots, written, counted)   # a read's two
                                 # stages when it spans several banks (service/scale/)
    await engine.stop()          # drain the queues, snapshot on shutdown, close the WAL

A facade, as infinity's engine is: each public method checks the engine is ready and awaits a
queue (service/batching.py) or one call of the memory loop (model.memory.IDRPMemory), which
holds every rule of the paper's read and write, the checks of in-process input and the
plan -> log -> apply protocol. The engine knows nothing of HTTP.

Threads. Every piece of torch work runs on one dedicated thread ("mt-torch"), never on the
event loop, so the loop keeps answering /healthz and queueing requests while a batch runs.
Snapshot files are written on a second thread ("mt-snapshot") from a copy of the state, so a
slow disk does not hold up reads or writes.

Writes are grouped (group commit): concurrent requests wait in their queue; the worker takes
what is queued (up to MT_BATCH_MAX items) and runs ONE `write_group`: one encode, one plan,
ONE WAL append with ONE fsync, each request keeping the answer it would get alone. Reads are
micro-batched (waiting at most MT_BATCH_WAIT_MS for company when reads come concurrently) and
run ONE `read_batch`: one encode, bank reads in queue order, one decode. Floats can differ from
a lone request's in the last bits (CPU BLAS sums a one-row product in another order).

Encode and decode run the model's TorchScript graphs (model.idrp.compile_codec, checked
against the eager model at start; the eager model when that fails). Once loaded, the engine
freezes the garbage collector's view of every object alive (gc.freeze), so full collections no
longer walk the model, the bank and the libraries (stop unfreezes).

Errors are domain errors (model/errors.py): InvalidInput, SlotNotFound, PersistenceError /
DiskFullError, NotReady. service/errors.py turns them into HTTP answers.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import torch

from model.bank import MemoryBank, SlotView, WriteResult
from model.checkpoint import load_idrp
from model.codec_info import is_text_codec
from model.enums import DEFAULT_NAMESPACE
from model.errors import NotReady
from model.idrp import IDRP, CompiledCodec, compile_codec
from model.lfu import Plan
from model.memory import Hit, IDRPMemory, Read, Rows, Write
from model.ops import Op
from model.ratecode import shipped_rate_code
from service import texts
from service.batching import BatchQueue
from service.persistence import Persistence, Recovery, SnapshotInfo
from service.settings import Settings
from service.stats import engine_stats

log = logging.getLogger("service.engine")

T = TypeVar("T")
State = Literal["created", "starting", "ready", "stopping", "stopped", "failed"]


def _rows(x: Rows) -> int:
    try:
        return len(x)
    except TypeError:  # not rows at all: the memory loop refuses it
        return 1


class Engine:
    """Owns the memory loop, the persistence and the queues; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: State = "created"
        self.error: str | None = None
        self.model: IDRP | None = None
        self.memory: IDRPMemory | None = None
        self.persistence: Persistence | None = None
        self.recovery: Recovery | None = None
        self.device = "cpu"
        self.bank_dtype = "float32"  # MT_BANK_DTYPE, "auto" resolved, once the weights load
        self.rescore = 0  # MT_RESCORE, "auto" resolved, once the weights load
        self.texts: texts.TextMemory | None = None
        self._embedder_obj: Any = None
        self.started_at = time.time()
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt-torch")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt-snapshot")
        self._reads: BatchQueue[Read, list[list[Hit]]] | None = None
        self._writes: BatchQueue[Write, WriteResult] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._snapshot_lock: asyncio.Lock | None = None
        self._changes_since_snapshot = 0  # logged mutations not yet in a snapshot
        self._tick_at_snapshot = -1  # bank tick in the last snapshot (-1: none this run)

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def bank(self) -> MemoryBank | None:
        """The memory loop's bank, for inspection (None before start)."""
        return self.memory.bank if self.memory is not None else None

    @property
    def codec(self) -> Any:
        """What encodes and decodes: the TorchScript codec, else the eager model."""
        return self.memory.model if self.memory is not None else None

    @property
    def d(self) -> int:
        return self._memory().d

    @property
    def m(self) -> int:
        return self._memory().bank.m

    async def start(self) -> None:
        """Load the weights and recover the bank (on the torch thread), then serve."""
        if self.state != "created":
            raise RuntimeError(f"expected a new engine, got state {self.state!r}")
        self.state = "starting"
        self._snapshot_lock = asyncio.Lock()
        try:
            await self._run(self._load)
        except BaseException as e:
            self.state, self.error = "failed", str(e) or type(e).__name__
            self._shutdown_threads()
            raise
        memory, s = self._memory(), self.settings
        self._reads = BatchQueue(
            "mt-read-batcher",
            lambda reads: [
                a if isinstance(a, Exception) else a.hits() for a in memory.read_batch(reads)
            ],
            self._run,
            limit=s.batch_max,
            wait_s=s.batch_wait_ms / 1000,
            gap_s=s.batch_gap_ms / 1000,
        )
        self._writes = BatchQueue(
            "mt-write-grouper", memory.write_group, self._run, limit=s.batch_max
        )
        if self._embedder_obj is not None:
            self.texts = texts.TextMemory(self._embedder_obj, s.batch_max)
        if s.snapshot_every_s > 0:
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
        dtype = self.bank_dtype = s.resolved_bank_dtype(model.info)
        scales = model.code_scales.detach().clone() if dtype == "int8" else None
        rate = None
        if dtype == "rate":  # a budget the file does not ship: the start fails, saying so
            rate = shipped_rate_code(model.info, s.rate_bytes or None)
        self._embedder_obj = self._load_embedder(model.info, device)

        def make_bank() -> MemoryBank:
            return MemoryBank(
                s.capacity,
                model.config.m,
                device=device,
                dtype=dtype,
                scales=scales,
                initial_count=s.initial_count,
                namespace_quota=s.namespace_quota,
                rate=rate,
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
        bank.decay_ticks = s.lfu_decay_ticks  # policies, not state: always from the settings
        bank.namespace_quota = s.namespace_quota
        self._warn_kept(recovery)
        codec = self._compile(model)
        bank.warm()  # the scan kernel's first-use load or compile, not a read's
        self.memory = IDRPMemory(
            codec, bank, log=self._log, position=recovery.last_lsn, refine_steps=s.refine_steps
        )
        self.model, self.persistence, self.recovery = model, persistence, recovery
        self.rescore = s.resolved_rescore(model.info)  # a read's default candidates
        self.device = str(device)
        # Replayed WAL records are not in any snapshot yet: mark the bank dirty so the next
        # periodic or shutdown snapshot saves them and the WAL stops growing across restarts.
        replayed = recovery.replayed
        self._tick_at_snapshot = bank.tick if recovery.snapshot is not None and not replayed else -1
        self._changes_since_snapshot = replayed

    @staticmethod
    def _load_embedder(info: dict[str, Any], device: str) -> Any:
        """A text codec's embedder (its weights' info names it), loaded now; None for other
        codecs. EmbedderError (the start fails, saying why) when it is not installed or is
        not the one the weights were trained for."""
        if not isinstance(info, dict) or not is_text_codec(info):
            return None
        from model.embed import EMBEDDERS, Embedder, EmbedderError, check_embedder

        name = info["embedder"].get("name")
        if name not in EMBEDDERS:
            raise EmbedderError(f"the weights name an unknown embedder {name!r}")
        check_embedder(info, EMBEDDERS[name])
        embedder = Embedder(EMBEDDERS[name], device=device)
        embedder.load()
        return embedder

    def _warn_kept(self, recovery: Recovery) -> None:
        """The snapshot's dtype and initial_count win over the settings: say so."""
        s, bank = self.settings, recovery.bank
        if bank.dtype != self.bank_dtype:
            recovery.warnings.append(
                f"the snapshot's bank stores {bank.dtype} codes, MT_BANK_DTYPE={s.bank_dtype} "
                f"({self.bank_dtype}): kept {bank.dtype} (change the dtype with a fresh "
                "snapshot folder)"
            )
        if bank.initial_count != s.initial_count:
            recovery.warnings.append(
                f"the snapshot's bank has initial_count={bank.initial_count}, "
                f"MT_INITIAL_COUNT={s.initial_count}: kept {bank.initial_count}"
            )

    @staticmethod
    def _compile(model: IDRP) -> IDRP | CompiledCodec:
        """The TorchScript codec (model.compile_codec), or the eager model when it cannot be
        built or does not match the model within 1e-6 (both answer alike, eager is slower)."""
        try:
            return compile_codec(model)
        except Exception as e:  # a tracer limitation on this build or device: serve eager
            log.warning("encode / decode run eager: the compiled codec failed its check: %s", e)
            return model

    def _log(self, ops: Sequence[Op]) -> int:
        """The memory loop's durability callback: the WAL, then count what a snapshot owes."""
        lsn = self._persistence().log(ops)
        self._changes_since_snapshot += len(ops)
        return lsn

    async def stop(self) -> None:
        """Finish queued reads and writes, snapshot (MT_SNAPSHOT_ON_SHUTDOWN), close."""
        if self.state != "ready":
            if self.state in ("created", "failed"):
                self._shutdown_threads()
            return
        self.state = "stopping"
        assert self._reads is not None and self._writes is not None
        if self.texts is not None:
            await self.texts.close()  # embeds what is queued; its writes join the queue below
        await self._reads.close()  # each answers what is queued, then exits
        await self._writes.close()
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

    def _memory(self) -> IDRPMemory:
        if self.memory is None:
            raise NotReady("service is starting: the model is not loaded yet")
        return self.memory

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

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ memory

    async def write(
        self,
        items: Rows,
        mode: str = "mean",
        namespace: str = DEFAULT_NAMESPACE,
        records: Sequence[bytes | None] | None = None,
        pinned: bool = False,
    ) -> WriteResult:
        """Encode items (B, d) and store them: "mean" -> one slot with the mean code, "each" ->
        one slot per item; in a namespace, pinned or not, with one record per stored slot.
        Logged to the WAL before the bank changes."""
        self._check_ready()
        assert self._writes is not None
        write = Write(items, mode, namespace, records, pinned)
        result = await self._writes.submit(write, _rows(items))
        self._after_change()
        return result

    async def read(
        self,
        queries: Rows,
        top_k: int = 1,
        min_score: float | None = None,
        reconstruct: bool = True,
        namespace: str | None = None,
        rescore: int | None = None,
    ) -> list[list[Hit]]:
        """For each query (B, d): the top_k slots (of one namespace, or all) by cosine of codes,
        rescored on their reconstructions (rescore candidates; None: MT_RESCORE; 0: off),
        best first, each with its count after this read; a miss (nothing, or best score <
        min_score) is []."""
        self._check_ready()
        assert self._reads is not None
        r = self.rescore if rescore is None else rescore
        return await self._reads.submit(
            Read(queries, top_k, min_score, reconstruct, namespace, r), _rows(queries)
        )

    async def search(
        self,
        codes: torch.Tensor,
        top_k: int,
        min_score: float | None = None,
        namespace: str | None = None,
        items: torch.Tensor | None = None,
        rescore: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage one of a read over several banks: IDRPMemory.search (nothing counted)."""
        self._check_ready()
        return await self._run(
            self._memory().search, codes, top_k, min_score, namespace, items, rescore
        )

    async def touch(
        self, slots: torch.Tensor, written: torch.Tensor, counted: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[bytes | None]] | None]:
        """Stage two: IDRPMemory.touch (count the hits the merge kept)."""
        self._check_ready()
        return await self._run(self._memory().touch, slots, written, counted)

    async def remember(
        self,
        sentences: list[str],
        payloads: list[dict[str, Any]] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        pinned: bool = False,
        dedup: float | None = None,
    ) -> tuple[WriteResult, list[int]]:
        """Embed the texts and store one slot per text, with its text and payload; the
        result, and the texts merged into a slot they duplicate (their slot is in the result).

        dedup: a text whose best match in the namespace scores at least this cosine is not
        stored again: that slot counts the access (a recall hit) and stands for the text."""
        rows = torch.from_numpy(await self._texts().embed(sentences))
        kept = texts.records(len(sentences), sentences, payloads)
        twins: list[int | None] = [None] * len(sentences)
        if dedup is not None:
            found = await self.read(rows, 1, dedup, False, namespace)
            twins = [hits[0].slot if hits else None for hits in found]
        new = [i for i, twin in enumerate(twins) if twin is None]
        if len(new) == len(sentences):
            return await self.write(rows, "each", namespace, kept, pinned), []
        if new:
            records = None if kept is None else [kept[i] for i in new]
            out = await self.write(rows[new], "each", namespace, records, pinned)
        else:
            out = WriteResult(slots=[], evicted=[], used=self.used)
        stored = iter(out.slots)
        slots = [next(stored) if twin is None else twin for twin in twins]
        merged = [i for i, twin in enumerate(twins) if twin is not None]
        return WriteResult(slots=slots, evicted=out.evicted, used=out.used), merged

    async def recall(
        self,
        sentences: list[str],
        top_k: int = 1,
        min_score: float | None = None,
        namespace: str | None = None,
        rescore: int | None = None,
    ) -> list[list[Hit]]:
        """For each text, the top_k slots whose codes are closest to its embedding's (rescored
        on the reconstructed embeddings as reads are)."""
        rows = torch.from_numpy(await self._texts().embed(sentences))
        return await self.read(rows, top_k, min_score, False, namespace, rescore)

    def _texts(self) -> texts.TextMemory:
        self._check_ready()
        if self.texts is None:
            assert self.model is not None
            raise texts.NotATextCodec(
                f"the loaded model {self.model.name!r} is not a text codec: /remember and "
                "/recall need weights trained on sentence embeddings (their info names an "
                "embedder); store items with /write and read them with /read"
            )
        return self.texts

    async def forget(self, namespace: str) -> list[int]:
        """Free every slot of a namespace (logged first); the slots freed."""
        self._check_ready()
        slots = await self._run(self._memory().forget, namespace)
        self._after_change()
        return slots

    async def pin(self, slot: int, pinned: bool) -> SlotView:
        """Pin (never evicted) or unpin an occupied slot (logged first)."""
        self._check_ready()
        view = await self._run(self._memory().pin, slot, pinned)
        self._after_change()
        return view

    async def namespaces(self) -> dict[str, dict[str, int]]:
        """Per namespace holding a slot: used, pinned, count_sum."""
        self._check_ready()
        stats: dict[str, Any] = await self._run(self._memory().stats)
        return stats["namespaces"]

    @property
    def used(self) -> int:
        return self._memory().bank.used

    async def preview(self, n: int, namespace: str = DEFAULT_NAMESPACE) -> Plan:
        """The slots the next write of n rows into `namespace` would take and evict."""
        self._check_ready()
        return await self._run(self._memory().preview, n, namespace)

    async def get_slot(self, slot: int) -> SlotView:
        """One occupied slot's counters, code and reconstruction (not counted as an access)."""
        self._check_ready()
        return await self._run(self._memory().get, slot)

    async def delete_slot(self, slot: int) -> int:
        """Free an occupied slot (logged first); returns the number of occupied slots left."""
        self._check_ready()
        used = await self._run(self._memory().delete, slot)
        self._after_change()
        return used

    # ------------------------------------------------------------------ snapshots

    async def snapshot(self) -> SnapshotInfo:
        """Save a snapshot now (state copied on the torch thread, written outside it)."""
        self._check_ready()
        return await self._snapshot()

    async def _snapshot(self) -> SnapshotInfo:
        assert self._snapshot_lock is not None
        async with self._snapshot_lock:
            state, lsn, tick, changes = await self._run(self._checkpoint)
            loop = asyncio.get_running_loop()
            info = await loop.run_in_executor(self._io, self._persistence().snapshot, state, lsn)
            self._tick_at_snapshot = tick
            self._changes_since_snapshot -= changes
            return info

    def _checkpoint(self) -> tuple[dict[str, torch.Tensor], int, int, int]:
        # On the torch thread, where every mutation runs: nothing changes in between.
        memory = self._memory()
        state, lsn = memory.checkpoint()
        return state, lsn, memory.tick, self._changes_since_snapshot

    def _changed_since_snapshot(self) -> bool:
        """Any write, delete or read (reads move counts) since the last snapshot?"""
        tick = self.memory.tick if self.memory is not None else 0
        return tick != self._tick_at_snapshot and tick > 0

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
        """Everything /stats reports (see answers.StatsResponse)."""
        self._check_ready()
        bank = await self._run(self._memory().stats)
        assert self.model is not None and self._reads is not None and self._writes is not None
        return engine_stats(
            bank,
            self.model,
            device=self.device,
            reads=self._reads.stats,
            writes=self._writes.stats,
            persistence=self._persistence(),
            recovery=self.recovery,
            uptime_s=time.time() - self.started_at,
            rescore=self.rescore,
        )

    def _summary(self) -> str:
        rec, bank = self.recovery, self._memory().bank
        assert rec is not None and self.model is not None
        source = rec.snapshot.path.name if rec.snapshot else "empty bank"
        return (
            f"model {self.model.name} (d={self.d}, m={self.m}) on {self.device}, bank "
            f"{bank.capacity} x {bank.dtype}, used {bank.used}, from {source} + "
            f"{rec.replayed} WAL records, {len(rec.warnings)} warning(s), "
            f"started {datetime.now(UTC).isoformat(timespec='seconds')}"
        )

    # ------------------------------------------------------------------ inspection

    async def inspect(self, look: Callable[[MemoryBank], T]) -> T:
        """look(bank) on the torch thread, between batches, for read-only views (the slot
        listing and the next eviction of GET /slots and /evictions/next): `look` must not
        change the bank; it counts no access and logs nothing."""
        self._check_ready()
        return await self._run(look, self._memory().bank)
