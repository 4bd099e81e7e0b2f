"""One bank shard: a Ray Serve deployment around the single-process engine (service/engine.py),
with its own bank of capacity MT_CAPACITY, its own snapshot folder MT_SNAPSHOT_DIR/shard-<i>
(claimed for shard i of N: service/scale/layout.py) and its own write-ahead log
(service/persistence.py, unchanged). Its constructor starts the
engine, which recovers the bank from the newest valid snapshot + the WAL, so a replica Ray
restarts after a crash serves nothing before it holds every acknowledged write again.

Slots here are the shard's own (local); the ingress (service/scale/engine.py) maps them to
global ids. Methods that change occupancy answer the shard's routing figures too (merge.Route).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ray import serve

from model.bank import MemoryBank, SlotView, WriteResult
from model.errors import BankFull, NamespaceNotFound, NotReady
from model.lfu import Plan
from model.memory import Rows
from service.engine import Engine
from service.persistence import SnapshotInfo
from service.scale.layout import claim
from service.scale.merge import Route, Searched, Touched
from service.settings import Settings


def shard_settings(settings: Settings, index: int) -> Settings:
    """The settings of shard `index`: its own snapshot folder under MT_SNAPSHOT_DIR."""
    folder = Path(settings.snapshot_dir) / f"shard-{index}"
    return settings.model_copy(update={"snapshot_dir": folder})


def _route(bank: MemoryBank) -> Route:
    free = bank.capacity - bank.used
    if free:
        return Route(free)
    try:
        plan = bank.choose_slots(1)
    except BankFull:  # every slot pinned: nothing to evict
        return Route(0)
    return Route(0, int(bank.counts[plan.evicted[0]]))


def _counters(bank: MemoryBank) -> dict[str, Any]:
    """What the read-only views (GET /slots, /evictions/next) read of a bank."""
    ticks = getattr(bank, "ticks", None)  # absolute ticks where the bank stores them relative
    if ticks is not None:
        last_write, last_access = ticks(torch.arange(bank.capacity, device=bank.device))
    else:
        last_write, last_access = bank.last_write, bank.last_access
    return {
        "occupied": bank.occupied.cpu().clone(),
        "counts": bank.counts.cpu().clone(),
        "last_write": last_write.cpu().clone(),
        "last_access": last_access.cpu().clone(),
        "tick": bank.tick,
    }


@serve.deployment(ray_actor_options={"num_cpus": 0}, health_check_period_s=1)
class Shard:
    """Engine(shard settings) as a deployment; one replica per shard (it owns the bank)."""

    async def __init__(self, settings: Settings, index: int, shards: int) -> None:  # type: ignore[misc]
        self.index = index
        mine = shard_settings(settings, index)
        claim(Path(mine.snapshot_dir), index, shards)  # before recovery reads anything
        self.engine = Engine(mine)
        await self.engine.start()  # recovers snapshot + WAL before the replica serves

    async def check_health(self) -> None:
        if not self.engine.ready:
            raise NotReady(f"shard {self.index} is {self.engine.state}")

    async def __del__(self) -> None:
        if hasattr(self, "engine"):  # not when the constructor refused the folder
            await self.engine.stop()  # drains the queues, snapshots, closes the WAL

    async def route(self) -> Route:
        return await self.engine.inspect(_route)

    async def write(
        self,
        items: Rows,
        mode: str,
        namespace: str,
        records: list[bytes | None] | None,
        pinned: bool,
    ) -> tuple[WriteResult, Route]:
        out = await self.engine.write(items, mode, namespace, records, pinned)
        return out, await self.route()

    async def search(
        self,
        codes: torch.Tensor,
        top_k: int,
        min_score: float | None,
        namespace: str | None,
        items: torch.Tensor | None,
        rescore: int,
    ) -> Searched:
        return await self.engine.search(codes, top_k, min_score, namespace, items, rescore)

    async def touch(
        self, slots: torch.Tensor, written: torch.Tensor, counted: torch.Tensor
    ) -> Touched:
        return await self.engine.touch(slots, written, counted)

    async def get_slot(self, slot: int) -> SlotView:
        return await self.engine.get_slot(slot)

    async def delete_slot(self, slot: int) -> Route:
        await self.engine.delete_slot(slot)
        return await self.route()

    async def pin(self, slot: int, pinned: bool) -> SlotView:
        return await self.engine.pin(slot, pinned)

    async def forget(self, namespace: str) -> tuple[list[int], Route]:
        """The slots freed ([] when the namespace holds none here)."""
        try:
            slots = await self.engine.forget(namespace)
        except NamespaceNotFound:
            slots = []
        return slots, await self.route()

    async def namespaces(self) -> dict[str, dict[str, int]]:
        return await self.engine.namespaces()

    async def preview(self, n: int, namespace: str) -> Plan:
        return await self.engine.preview(n, namespace)

    async def snapshot(self) -> SnapshotInfo:
        return await self.engine.snapshot()

    async def stats(self) -> dict[str, Any]:
        return await self.engine.stats()

    async def counters(self) -> dict[str, Any]:
        return await self.engine.inspect(_counters)
