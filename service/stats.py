"""What GET /stats reports, assembled from the parts that know each figure (the bank, the model,
the queues, the persistence, what recovery found). Field meanings: answers.StatsResponse."""

from __future__ import annotations

from typing import Any

from model.idrp import IDRP
from service.batching import BatchStats
from service.persistence import Persistence, Recovery

__all__ = ["engine_stats"]


def engine_stats(
    bank: dict[str, Any],
    model: IDRP,
    *,
    device: str,
    reads: BatchStats,
    writes: BatchStats,
    persistence: Persistence,
    recovery: Recovery | None,
    uptime_s: float,
    rescore: int,
) -> dict[str, Any]:
    """The /stats answer from `MemoryBank.stats()` (`bank`) and the engine's parts."""
    d, m = model.config.d, model.config.m
    code_bytes = bank["code_bytes"]
    last = persistence.last_snapshot
    return {
        "capacity": bank["capacity"],
        "used": bank["used"],
        "d": d,
        "m": m,
        "compression_ratio": d / m,
        "bytes_ratio": d * 4 / code_bytes,
        "code_bytes": code_bytes,
        "device": device,
        "model": model.name,
        "fingerprint": model.fingerprint,
        "bank_dtype": bank["dtype"],
        "rescore": rescore,
        "bank_bytes": bank["bytes"],
        "cache_bytes": bank["cache_bytes"],
        "meta_bytes": bank["meta_bytes"],
        **{k: bank[k] for k in ("reads", "hits", "misses", "writes", "evictions")},
        "counts": {k: bank[f"count_{k}"] for k in ("min", "mean", "max", "sum")},
        "batching": {
            "batches": reads.batches,
            "queries": reads.rows,
            "largest": reads.largest_rows,
            "write_groups": writes.batches,
            "writes": writes.requests,
            "largest_write_group": writes.largest_requests,
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
            "snapshot": str(recovery.snapshot.path) if recovery and recovery.snapshot else None,
            "replayed": recovery.replayed if recovery else 0,
            "warnings": list(recovery.warnings) if recovery else [],
        },
        "uptime_s": uptime_s,
    }
