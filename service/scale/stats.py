"""GET /stats of the Ray app: totals over the shards that answered, and one entry per shard
(answers.ShardInfo; its figures null while it is down). Each shard's own figures are those of
service/stats.engine_stats."""

from __future__ import annotations

from typing import Any

from model.idrp import IDRP
from model.state import DTYPES

__all__ = ["sharded_stats"]

SUMMED = ("used", "bank_bytes", "cache_bytes", "meta_bytes", "reads", "hits", "misses")
SUMMED_TOO = ("writes", "evictions")


def _shard_info(i: int, s: dict[str, Any] | None, capacity: int) -> dict[str, Any]:
    info: dict[str, Any] = {"shard": i, "ready": s is not None, "first_slot": i * capacity}
    info["capacity"] = capacity
    for key in ("used", *SUMMED[4:], *SUMMED_TOO):
        info[key] = None if s is None else s[key]
    info["last_snapshot"] = None if s is None else s["last_snapshot"]
    info["recovery"] = None if s is None else s["recovery"]
    return info


def sharded_stats(
    parts: list[dict[str, Any] | None],
    model: IDRP,
    capacity: int,
    *,
    uptime_s: float,
    rescore: int,
) -> dict[str, Any]:
    """The /stats answer from each shard's engine stats (None: the shard did not answer)."""
    up = [p for p in parts if p is not None]
    d, m = model.config.d, model.config.m
    dtype = up[0]["bank_dtype"] if up else "float32"
    used = sum(p["used"] for p in up)
    code_bytes = up[0]["code_bytes"] if up else m * DTYPES[dtype].itemsize  # every shard's
    count_sum = sum(p["counts"]["sum"] for p in up)
    counted = [p for p in up if p["used"]]
    batching = [p["batching"] for p in up]
    snapshots = [p["last_snapshot"] for p in up if p["last_snapshot"] is not None]
    return {
        "capacity": capacity * len(parts),
        "used": used,
        "d": d,
        "m": m,
        "compression_ratio": d / m,
        "bytes_ratio": d * 4 / code_bytes,
        "code_bytes": code_bytes,
        "device": up[0]["device"] if up else "unknown",
        "model": model.name,
        "fingerprint": model.fingerprint,
        "bank_dtype": dtype,
        "rescore": rescore,
        **{k: sum(p[k] for p in up) for k in (*SUMMED[1:], *SUMMED_TOO)},
        "counts": {
            "min": min((p["counts"]["min"] for p in counted), default=0),
            "mean": count_sum / used if used else 0.0,
            "max": max((p["counts"]["max"] for p in counted), default=0),
            "sum": count_sum,
        },
        "batching": {
            key: (max if key.startswith("largest") else sum)(b[key] for b in batching)
            if batching
            else 0
            for key in (
                "batches",
                "queries",
                "largest",
                "write_groups",
                "writes",
                "largest_write_group",
            )
        },
        "last_snapshot": max(snapshots, key=lambda s: s["time"]) if snapshots else None,
        "recovery": {
            "snapshot": next(
                (p["recovery"]["snapshot"] for p in up if p["recovery"]["snapshot"]), None
            ),
            "replayed": sum(p["recovery"]["replayed"] for p in up),
            "warnings": [
                f"shard {i}: {w}"
                for i, p in enumerate(parts)
                if p is not None
                for w in p["recovery"]["warnings"]
            ],
        },
        "uptime_s": uptime_s,
        "shards": [_shard_info(i, p, capacity) for i, p in enumerate(parts)],
    }
