"""Response models of the HTTP API: what each route answers, for the OpenAPI document, the schema
tests and the typed client (service/client.py). The request models and their checks are
service/schemas.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import _ITEM


class WriteResponse(BaseModel):
    slots: list[int] = Field(description="Slots written, in the order of the rows stored.")
    evicted: list[int] = Field(description="Those of `slots` that held another code before.")
    used: int = Field(description="Occupied slots after the write.")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"slots": [0], "evicted": [], "used": 1}]}
    )


class RememberResponse(WriteResponse):
    merged: list[int] = Field(
        default=[],
        description="Indices of the texts merged into a memory they duplicate (dedup): their "
        "slot in `slots` is that memory's, and nothing was stored for them.",
    )


class Hit(BaseModel):
    slot: int
    score: float = Field(
        description="Cosine of the query item and the slot's reconstruction when the read was "
        "rescored, else of the query's code and the slot's code; min_score applies to it."
    )
    code_score: float = Field(description="Cosine of the query's code and the slot's code.")
    count: int = Field(description="The slot's access count right after this read.")
    reconstruction: list[float] | None = Field(
        description="The slot's code decoded back to d values; null when reconstruct=false."
    )
    text: str | None = Field(
        default=None, description="The slot's text: present only when the slot keeps one."
    )
    payload: dict[str, Any] | None = Field(
        default=None, description="The slot's payload: present only when the slot keeps one."
    )


class Memory(BaseModel):
    slot: int
    score: float = Field(
        description="Cosine of the text's embedding and the slot's reconstructed embedding "
        "when rescored, else of their codes; min_score applies to it."
    )
    code_score: float = Field(description="Cosine of the text's code and the slot's code.")
    count: int = Field(description="The slot's access count right after this recall.")
    text: str | None = Field(description="The remembered text (null if the slot has none).")
    payload: dict[str, Any] | None = Field(description="Its payload (null if none).")


class RecallResponse(BaseModel):
    results: list[list[Memory]] = Field(
        description="One list per text, best first; a miss is an empty list."
    )


class NamespaceInfo(BaseModel):
    used: int
    pinned: int
    count_sum: int = Field(description="Total access count of the namespace's slots.")


class NamespacesResponse(BaseModel):
    namespaces: dict[str, NamespaceInfo] = Field(description="Every namespace that holds a slot.")


class ForgetResponse(BaseModel):
    namespace: str
    forgotten: list[int] = Field(description="The slots freed.")
    used: int = Field(description="Occupied slots after the delete.")


class PreviewResponse(BaseModel):
    slots: list[int] = Field(description="The slots the write would take, in row order.")
    evicted: list[int] = Field(description="Those of them whose memory it would replace.")


class ReadResponse(BaseModel):
    results: list[list[Hit]] = Field(
        description="One list per query, best first; a miss is an empty list."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"results": [[{"slot": 0, "score": 0.998, "count": 1, "reconstruction": _ITEM}]]}
            ]
        }
    )


class SlotResponse(BaseModel):
    slot: int
    count: int
    last_write: int = Field(description="Bank tick of the slot's last write.")
    last_access: int = Field(description="Bank tick of the slot's last read hit (0 = never).")
    code: list[float] = Field(description="The stored code (m values, dequantised).")
    reconstruction: list[float] = Field(description="The code decoded back to d values.")
    namespace: str
    pinned: bool
    text: str | None = Field(description="The slot's text (null if none).")
    payload: dict[str, Any] | None = Field(description="The slot's payload (null if none).")


class DeleteResponse(BaseModel):
    slot: int
    used: int = Field(description="Occupied slots after the delete.")


def _absent(value: object) -> bool:
    return value is None


class ShardSnapshot(BaseModel):
    shard: int
    path: str
    bytes: int
    seconds: float
    lsn: int
    sha256: str
    created_at: str


class SnapshotResponse(BaseModel):
    path: str
    bytes: int
    seconds: float
    lsn: int = Field(description="Last write-ahead-log record the snapshot contains.")
    sha256: str
    created_at: str
    shards: list[ShardSnapshot] | None = Field(
        default=None,
        exclude_if=_absent,
        description="The Ray app only (python -m service.ray): each bank shard's snapshot; "
        "then path is the snapshot folder, bytes and lsn their sums, seconds the longest, "
        "sha256 the sha256 of the shards' sha256 in shard order (absent from one process).",
    )


class CountSummary(BaseModel):
    min: int
    mean: float
    max: int
    sum: int = Field(description="Total access count of occupied slots.")


class LastSnapshot(BaseModel):
    time: str
    path: str
    bytes: int
    lsn: int


class RecoveryInfo(BaseModel):
    snapshot: str | None = Field(description="Snapshot loaded at start (null: started empty).")
    replayed: int = Field(description="Write-ahead-log records replayed on top of it.")
    warnings: list[str] = Field(description="Fallbacks taken, e.g. a bad newest snapshot skipped.")


class BatchingInfo(BaseModel):
    batches: int = Field(description="Read batches run (each: one encode, read, decode).")
    queries: int = Field(description="Queries answered by those batches.")
    largest: int = Field(description="Most queries in one batch so far.")
    write_groups: int = Field(
        description="Write groups run (each: one encode, one WAL append and fsync)."
    )
    writes: int = Field(description="Write requests stored by those groups.")
    largest_write_group: int = Field(description="Most write requests in one group so far.")


class ShardInfo(BaseModel):
    """One bank shard of the Ray app (service/scale/); its figures are null while it is down."""

    shard: int
    ready: bool = Field(
        description="False while the shard is down or recovering: reads answer without it "
        "(header X-MT-Missing-Shards), writes and slot operations routed to it are 503."
    )
    first_slot: int = Field(description="Global id of the shard's slot 0 (shard * capacity).")
    capacity: int
    used: int | None
    reads: int | None
    hits: int | None
    misses: int | None
    writes: int | None
    evictions: int | None
    last_snapshot: LastSnapshot | None
    recovery: RecoveryInfo | None


class StatsResponse(BaseModel):
    capacity: int
    used: int
    d: int
    m: int
    compression_ratio: float = Field(description="d / m: values per item over values per code.")
    bytes_ratio: float = Field(description="float32 item bytes (d * 4) over stored code bytes.")
    code_bytes: int | None = Field(
        default=None,
        description="Bytes per item of the stored code: m x 4 (float32), m x 2 (float16), m "
        "(int8), or a rate code's packed budget (rate). None where an answer does not report "
        "it (a sharded app's merged stats, until they do).",
    )
    device: str
    model: str
    fingerprint: str
    bank_dtype: str
    rescore: int | None = Field(
        default=None,
        description="Candidates a read rescores on their reconstructions when it does not say "
        "(MT_RESCORE, auto resolved for the loaded codec; 0 = off).",
    )
    bank_bytes: int = Field(description="Bytes of the bank's state tensors (a snapshot's content).")
    cache_bytes: int = Field(
        description="Bytes of the bank's read cache on top of bank_bytes: one float32 inverse "
        "norm per slot (4 bytes whatever the dtype), plus the block buffer of blocked reads."
    )
    meta_bytes: int = Field(
        description="Bytes of the slots' namespaces, pins and records (texts and payloads as "
        "JSON), in process, each part allocated when first used: 4 per slot once a namespace "
        "is used, 1 once a slot is pinned, 8 once a record is stored, + 33 + the JSON per record."
    )
    reads: int
    hits: int
    misses: int
    writes: int
    evictions: int
    counts: CountSummary
    batching: BatchingInfo
    last_snapshot: LastSnapshot | None
    recovery: RecoveryInfo
    uptime_s: float
    shards: list[ShardInfo] | None = Field(
        default=None,
        exclude_if=_absent,
        description="The Ray app only (python -m service.ray): every bank shard; the fields "
        "above are then totals over the shards that answered (absent from one process).",
    )


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"


class ErrorResponse(BaseModel):
    """Every error answer: one human-readable sentence, never internals."""

    detail: str

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "item 0: expected 64 values per item, got 63"}]}
    )


# ---------------------------------------------------------------- read-only views (GET /ui)

SlotOrder = Literal["slot", "count", "recent"]


class SlotSummary(BaseModel):
    slot: int
    count: int
    last_write: int = Field(description="Bank tick of the slot's last write.")
    last_access: int = Field(description="Bank tick of the slot's last read hit (0 = never).")


class SlotListResponse(BaseModel):
    total: int = Field(description="Occupied slots in the bank (every page's total).")
    offset: int
    limit: int
    order: SlotOrder = Field(
        description="slot: ascending slot; count: most accessed first; recent: most recently "
        "touched (max of last_write, last_access) first; ties by ascending slot."
    )
    tick: int = Field(description="The bank's tick when the page was taken.")
    slots: list[SlotSummary]


class EvictionResponse(BaseModel):
    n: int = Field(description="Rows of the write this plan is for.")
    slots: list[int] = Field(description="The slots a write of n rows would take, in row order.")
    evicted: list[int] = Field(description="Which of those hold a code now (would be evicted).")
    next: SlotSummary | None = Field(
        description="The first slot of `evicted` with its counters (null: no eviction, the "
        "write takes free slots)."
    )


CodecKind = Literal["image", "text", "vector"]


class CodecResponse(BaseModel):
    model: str
    fingerprint: str
    d: int
    m: int
    shape: list[int] = Field(description="One item's shape (product d), e.g. [8, 8].")
    kind: CodecKind = Field(
        description="image: 2-D items drawn as grey images (values in [0, 1]); text: sentence "
        "embeddings of a text codec; vector: anything else."
    )
