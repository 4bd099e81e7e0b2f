"""ShardedEngine: the Engine facade (service/engine.py) over N bank shards and a codec, as Ray
Serve deployment handles, so that the routes of the single-process app (service/routes/) serve
the Ray app unchanged: create_app(settings, engine_factory=...) (service/scale/app.py).

    read   encode the queries once (codec) -> every shard's stage one (search, nothing counted)
           -> merge.merge (global top k by score) -> stage two (touch) on the shards holding a
           kept hit -> decode the kept hits once (codec) -> the same Hit lists as Engine.read
    write  merge.route picks ONE shard (namespace hash, else most free, else lowest LFU
           victim); the shard encodes, logs and stores; slots come back as global ids
    slot   /slots/{i}: shard i // C, local slot i % C
    others forget, namespaces, stats: every shard; preview: the shard a write would go to

A shard that fails (its actor died, or it does not answer within --shard-timeout) is marked
down and probed until Ray's restarted replica answers (after it has recovered from its
snapshot + WAL). While it is down, reads and the read-only views answer from the other shards
and name the missing ones (`missing()`, the header X-MT-Missing-Shards); writes and slot
operations routed to it, forget and snapshot fail with 503 (NotReady), never go elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from model.bank import SlotView, WriteResult
from model.checkpoint import load_idrp
from model.enums import DEFAULT_NAMESPACE, stored_slots
from model.errors import MemoryTransitError, NamespaceNotFound, NotReady, SlotNotFound
from model.idrp import IDRP
from model.lfu import Plan
from model.memory import Hit, IDRPReadResult, Rows, as_rows
from service import texts
from service.engine import Engine
from service.scale.merge import Route, Searched, Touched, assemble, for_shard, merge, route
from service.scale.stats import sharded_stats
from service.settings import Settings

log = logging.getLogger("service.scale")

T = TypeVar("T")
State = Literal["created", "starting", "ready", "stopping", "stopped", "failed"]
_MISSING: ContextVar[list[int] | None] = ContextVar("mt_missing_shards", default=None)
PROBE_EVERY_S = 0.25


@contextmanager
def collecting_missing() -> Iterator[list[int]]:
    """Within this block, the shards a read answered without are appended to the list."""
    missing: list[int] = []
    token = _MISSING.set(missing)
    try:
        yield missing
    finally:
        _MISSING.reset(token)


@dataclass(frozen=True)
class ShardOptions:
    """How the ingress talks to its shards."""

    shards: int
    timeout_s: float = 5.0  # a shard that does not answer in this time is marked down
    watch_every_s: float = 1.0  # how often Serve's view of the shards' health is read


@dataclass(frozen=True)
class ShardedSnapshot:
    """POST /snapshot of every shard: the folder, totals, and each shard's SnapshotInfo."""

    path: Path
    bytes: int
    seconds: float
    lsn: int
    sha256: str
    created_at: str
    shards: list[dict[str, Any]]


class _View:
    """The bank as GET /slots and /evictions/next read it (service/routes/ops.py), over all
    shards: per-slot tensors of N * C global slots (a missing shard's slots read as free);
    `choose_slots` is the next write's shard's own plan (asked synchronously: `look` runs on
    a worker thread)."""

    def __init__(self, parts: list[dict[str, Any] | None], capacity: int, plan: Any) -> None:
        def column(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.cat(
                [
                    p[name].to(dtype) if p is not None else torch.zeros(capacity, dtype=dtype)
                    for p in parts
                ]
            )

        self.occupied = column("occupied", torch.bool)
        self.counts = column("counts", torch.int64)
        self.last_write = column("last_write", torch.int64)
        self.last_access = column("last_access", torch.int64)
        self.tick = max((p["tick"] for p in parts if p is not None), default=0)
        self.capacity = capacity * len(parts)
        self._plan = plan

    def ticks(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last_write, last_access) of these slots, as MemoryBank.ticks."""
        return self.last_write[slots], self.last_access[slots]

    def choose_slots(self, n: int) -> Plan:
        plan: Plan = self._plan(n)
        return plan


def _rows(x: Rows) -> int:
    try:
        return len(x)
    except TypeError:
        return 1


class ShardedEngine:
    """Engine's public surface over shard and codec deployment handles (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        codec: DeploymentHandle,
        shards: list[DeploymentHandle],
        options: ShardOptions,
        healthy: Callable[[], dict[int, bool]] | None = None,
    ) -> None:
        self.settings = settings
        self.healthy = healthy  # Serve's view: shard -> its deployment is HEALTHY
        self.state: State = "created"
        self.error: str | None = None
        self.model: IDRP | None = None
        self.texts: texts.TextMemory | None = None
        self.device = "cpu"
        self.rescore = 0  # MT_RESCORE, "auto" resolved, once the model loads
        self.codec = codec
        self.shards = shards
        self.options = options
        self.capacity = settings.capacity  # C, per shard
        n = len(shards)
        self.routes = [Route(self.capacity)] * n
        self.pending = [0] * n
        self.used_by = [0] * n
        self.down: set[int] = set()
        self.started_at = time.time()
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def d(self) -> int:
        assert self.model is not None
        return self.model.config.d

    @property
    def m(self) -> int:
        assert self.model is not None
        return self.model.config.m

    @property
    def used(self) -> int:
        return sum(self.used_by)

    async def start(self) -> None:
        """The model's description (for /codec, the request checks and text embedding),
        then every shard's routing figures (each shard's replica has recovered its bank)."""
        self.state = "starting"
        try:
            self.model = await asyncio.to_thread(load_idrp, self.settings.weights)
            self.rescore = self.settings.resolved_rescore(self.model.info)
            embedder = await asyncio.to_thread(
                Engine._load_embedder, self.model.info, self.settings.resolved_device()
            )
            if embedder is not None:
                self.texts = texts.TextMemory(embedder, self.settings.batch_max)
            routes = await asyncio.gather(*(s.route.remote() for s in self.shards))
        except BaseException as e:
            self.state, self.error = "failed", str(e) or type(e).__name__
            raise
        for i, r in enumerate(routes):
            self._routed(i, r)
        self.started_at = time.time()
        self.state = "ready"
        if self.healthy is not None:
            self._spawn(self._watch())
        log.info("sharded engine ready: %d shards of %d slots", len(self.shards), self.capacity)

    async def stop(self) -> None:
        self.state = "stopping"
        if self.texts is not None:
            await self.texts.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.state = "stopped"

    def _check_ready(self) -> None:
        if self.state != "ready":
            raise NotReady(
                "service is starting"
                if self.state in ("created", "starting")
                else f"service is not available ({self.state})"
            )

    # ------------------------------------------------------------------ calling shards

    def _routed(self, shard: int, r: Route) -> None:
        self.routes[shard] = r
        self.used_by[shard] = self.capacity - r.free

    async def _call(self, shard: int, method: str, *args: Any) -> Any:
        """One call of a shard's method; its domain errors as they were raised there;
        NotReady (503) naming the shard when it is down or fails to answer (then marked down)."""
        if shard in self.down:
            raise NotReady(f"shard {shard} is down or recovering; try again shortly")
        response = getattr(self.shards[shard], method).remote(*args)
        try:
            return await asyncio.wait_for(_awaited(response), self.options.timeout_s)
        except RayTaskError as e:
            cause = e.cause
            if isinstance(cause, NotReady):
                self._mark_down(shard)
                raise NotReady(f"shard {shard} is down or recovering; try again shortly") from None
            if isinstance(cause, MemoryTransitError | ValueError):
                raise cause from None
            raise
        except (RayActorError, DeploymentUnavailableError, TimeoutError) as e:
            log.warning("shard %d failed (%s): marked down", shard, type(e).__name__)
            self._mark_down(shard)
            raise NotReady(f"shard {shard} is down or recovering; try again shortly") from None

    async def _try(self, shard: int, method: str, *args: Any) -> Any:
        """_call, or None (the shard noted as missing) when the shard is down."""
        try:
            return await self._call(shard, method, *args)
        except NotReady:
            missing = _MISSING.get()
            if missing is not None and shard not in missing:
                missing.append(shard)
            return None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _mark_down(self, shard: int) -> None:
        if shard not in self.down:
            log.warning("shard %d is down", shard)
            self.down.add(shard)
            self._spawn(self._probe(shard))

    async def _health(self) -> dict[int, bool]:
        assert self.healthy is not None
        return await asyncio.to_thread(self.healthy)

    async def _watch(self) -> None:
        """Mark a shard down as soon as Serve sees its replica die (a request queued for a
        replica that is restarting would otherwise wait, not fail)."""
        while True:
            await asyncio.sleep(self.options.watch_every_s)
            try:
                health = await self._health()
            except Exception as e:  # the controller is busy or restarting: look again
                log.debug("shard health unknown: %s", e)
                continue
            for shard, ok in health.items():
                if not ok:
                    self._mark_down(shard)

    async def _probe(self, shard: int) -> None:
        """Wait until Serve sees the shard healthy again and it answers (its new replica has
        recovered its bank from snapshot + WAL), then serve it again."""
        while True:
            try:
                if self.healthy is not None and not (await self._health()).get(shard, True):
                    await asyncio.sleep(PROBE_EVERY_S)
                    continue
                r = await asyncio.wait_for(
                    _awaited(self.shards[shard].route.remote()), self.options.timeout_s
                )
                break
            except Exception:
                await asyncio.sleep(PROBE_EVERY_S)
        self._routed(shard, r)
        self.down.discard(shard)
        log.info("shard %d is back", shard)

    def _locate(self, slot: int) -> tuple[int, int]:
        total = self.capacity * len(self.shards)
        if not 0 <= slot < total:
            raise SlotNotFound(f"slot {slot} is out of range [0, {total})")
        shard, local = divmod(slot, self.capacity)
        return shard, local

    async def _on_slot(self, slot: int, method: str, *args: Any) -> tuple[int, Any]:
        shard, local = self._locate(slot)
        try:
            return shard, await self._call(shard, method, local, *args)
        except SlotNotFound:
            raise SlotNotFound(f"slot {slot} is not occupied") from None

    def _global_view(self, shard: int, view: SlotView) -> SlotView:
        return dataclasses.replace(view, slot=shard * self.capacity + view.slot)

    # ------------------------------------------------------------------ memory

    async def write(
        self,
        items: Rows,
        mode: str = "mean",
        namespace: str = DEFAULT_NAMESPACE,
        records: list[bytes | None] | None = None,
        pinned: bool = False,
    ) -> WriteResult:
        """Store the items on the one shard merge.route picks (503 when it is down)."""
        self._check_ready()
        x = as_rows(items, "item", self.d)
        n = stored_slots(_rows(x), mode) if mode in ("mean", "each") else 1
        shard = route(namespace, self.routes, self.pending, n)
        self.pending[shard] += n
        try:
            out, r = await self._call(shard, "write", x, mode, namespace, records, pinned)
        finally:
            self.pending[shard] -= n
        self._routed(shard, r)
        self.used_by[shard] = out.used
        base = shard * self.capacity
        return WriteResult(
            slots=[base + s for s in out.slots],
            evicted=[base + s for s in out.evicted],
            used=self.used,
        )

    async def read(
        self,
        queries: Rows,
        top_k: int = 1,
        min_score: float | None = None,
        reconstruct: bool = True,
        namespace: str | None = None,
        rescore: int | None = None,
    ) -> list[list[Hit]]:
        """Engine.read over every shard that answers (see the module docstring)."""
        self._check_ready()
        x = as_rows(queries, "query", self.d)
        r = self.rescore if rescore is None else rescore
        z = await _awaited(self.codec.encode.remote(x))
        if isinstance(z, Exception):
            raise z
        found: list[Searched | None] = list(
            await asyncio.gather(
                *(
                    self._try(s, "search", z, top_k, min_score, namespace, x if r else None, r)
                    for s in range(len(self.shards))
                )
            )
        )
        if all(f is None for f in found):
            raise NotReady("no bank shard is available; try again shortly")
        merged = merge(found, top_k, r, min_score)
        plans = [
            (s, t)
            for s in range(len(self.shards))
            if found[s] is not None and (t := for_shard(merged, s)) is not None
        ]
        answers: list[Touched | None] = list(
            await asyncio.gather(
                *(self._try(s, "touch", t.slots, t.written, t.counted) for s, t in plans)
            )
        )
        done = [(s, t, a) for (s, t), a in zip(plans, answers, strict=True) if a is not None]
        out = assemble(merged, done, self.capacity, self.m)
        recon = None
        if reconstruct:
            recon = torch.zeros(*out.slots.shape, self.d)
            if out.codes.shape[0]:
                recon[out.slots >= 0] = await _awaited(self.codec.decode.remote(out.codes))
        return IDRPReadResult(
            out.slots, out.scores, out.counts, recon, out.records, out.code_scores if r else None
        ).hits()

    # The text routes: Engine's own code (embed, then read / write as above).
    remember = Engine.remember
    recall = Engine.recall
    _texts = Engine._texts

    async def get_slot(self, slot: int) -> SlotView:
        self._check_ready()
        shard, view = await self._on_slot(slot, "get_slot")
        return self._global_view(shard, view)

    async def delete_slot(self, slot: int) -> int:
        self._check_ready()
        shard, r = await self._on_slot(slot, "delete_slot")
        self._routed(shard, r)
        return self.used

    async def pin(self, slot: int, pinned: bool) -> SlotView:
        self._check_ready()
        shard, view = await self._on_slot(slot, "pin", pinned)
        return self._global_view(shard, view)

    def _all_up(self) -> None:
        if self.down:
            names = ", ".join(str(s) for s in sorted(self.down))
            raise NotReady(f"shard {names} is down or recovering; try again shortly")

    async def forget(self, namespace: str) -> list[int]:
        """Free the namespace on every shard (all must be up: a forget is not partial)."""
        self._check_ready()
        self._all_up()
        answers = await asyncio.gather(
            *(self._call(s, "forget", namespace) for s in range(len(self.shards)))
        )
        slots: list[int] = []
        for s, (freed, r) in enumerate(answers):
            self._routed(s, r)
            slots += [s * self.capacity + i for i in freed]
        if not slots:
            raise NamespaceNotFound(f"namespace {namespace!r} holds no slot")
        return slots

    async def namespaces(self) -> dict[str, dict[str, int]]:
        self._check_ready()
        parts = await asyncio.gather(*(self._try(s, "namespaces") for s in range(len(self.shards))))
        merged: dict[str, dict[str, int]] = {}
        for part in parts:
            for name, figures in (part or {}).items():
                total = merged.setdefault(name, dict.fromkeys(figures, 0))
                for key, value in figures.items():
                    total[key] = total.get(key, 0) + value
        return dict(sorted(merged.items()))

    async def preview(self, n: int, namespace: str = DEFAULT_NAMESPACE) -> Plan:
        """The plan of the shard that a write of n rows into `namespace` would go to."""
        self._check_ready()
        shard = route(namespace, self.routes, self.pending, n)
        plan = await self._call(shard, "preview", n, namespace)
        base = shard * self.capacity
        return Plan([base + s for s in plan.slots], [base + s for s in plan.evicted])

    # ------------------------------------------------------------------ snapshots and stats

    async def snapshot(self) -> ShardedSnapshot:
        """A snapshot of every shard (all must be up)."""
        self._check_ready()
        self._all_up()
        infos = await asyncio.gather(*(self._call(s, "snapshot") for s in range(len(self.shards))))
        digest = hashlib.sha256("".join(i.sha256 for i in infos).encode()).hexdigest()
        return ShardedSnapshot(
            path=Path(self.settings.snapshot_dir),
            bytes=sum(i.bytes for i in infos),
            seconds=max(i.seconds for i in infos),
            lsn=sum(i.lsn for i in infos),
            sha256=digest,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            shards=[
                {
                    "shard": s,
                    "path": str(i.path),
                    "bytes": i.bytes,
                    "seconds": i.seconds,
                    "lsn": i.lsn,
                    "sha256": i.sha256,
                    "created_at": i.created_at,
                }
                for s, i in enumerate(infos)
            ],
        )

    async def stats(self) -> dict[str, Any]:
        """Totals over the shards that answer, and every shard's figures (answers.ShardInfo)."""
        self._check_ready()
        parts = await asyncio.gather(*(self._try(s, "stats") for s in range(len(self.shards))))
        assert self.model is not None
        return sharded_stats(
            list(parts),
            self.model,
            self.capacity,
            uptime_s=time.time() - self.started_at,
            rescore=self.rescore,
        )

    async def inspect(self, look: Callable[[Any], T]) -> T:
        """look(view) on a worker thread: the view spans every shard that answers (_View)."""
        self._check_ready()
        parts = await asyncio.gather(*(self._try(s, "counters") for s in range(len(self.shards))))
        loop = asyncio.get_running_loop()

        def plan(n: int) -> Plan:
            future = asyncio.run_coroutine_threadsafe(self.preview(n), loop)
            return future.result(self.options.timeout_s * 2)

        return await asyncio.to_thread(look, _View(list(parts), self.capacity, plan))


async def _awaited(response: Any) -> Any:
    return await response
