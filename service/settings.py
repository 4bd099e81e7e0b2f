"""Service settings: one typed, validated object read from MT_* environment variables.

Nothing is built at import: `get_settings()` builds (and caches) the object on first use, and
`create_app(settings)` / `Engine(settings)` take one explicitly, so tests pass their own.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.codec_info import RESCORE_IMAGE, RESCORE_MAX, default_rescore
from model.enums import BankDtype, FsyncPolicy

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class Settings(BaseSettings):
    """Every setting of the service; each is read from the environment as MT_<NAME>."""

    model_config = SettingsConfigDict(
        env_prefix="MT_",
        case_sensitive=False,
        env_ignore_empty=True,  # MT_API_KEY= (empty) means unset, as compose passes it through
        extra="ignore",
        validate_default=True,
        hide_input_in_errors=True,  # a refused MT_API_KEY is never printed, even in a traceback
    )

    # --- server
    host: str = Field(
        default="127.0.0.1", description="Interface to bind; 0.0.0.0 to listen on all."
    )
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: LogLevel = "info"
    access_log: bool = Field(
        default=False,
        description="uvicorn's access log, one line per request (off: /metrics counts requests "
        "by route and status, and the line costs about a tenth of a /read's server CPU).",
    )

    # --- model and bank
    weights: Path = Field(
        default=Path("weights/digits-m16.safetensors"),
        description="IDRP weights; a relative path not found in the working directory is "
        "taken relative to the repository root.",
    )
    device: str = Field(
        default="auto", description="auto (cuda when available), cpu, cuda or cuda:N."
    )
    capacity: int = Field(default=10_000, ge=1, le=100_000_000, description="Slots in the bank.")
    bank_dtype: BankDtype | Literal["auto"] = Field(
        default="auto",
        description="Storage of codes: float32, float16, int8 (the model's code_scales), rate "
        "(one of the rate codes the weights ship, MT_RATE_BYTES per item); auto = rate when "
        "the weights name a default rate code (info rate_default: the storage their card "
        "scores), else float32.",
    )
    rate_bytes: int = Field(
        default=0,
        ge=0,
        le=65_536,
        description="Bytes per item of a rate bank: one of the weights' rate codes (0 = the "
        "file's default). Only read when the bank stores rate codes.",
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="torch.set_num_threads for the process (0 = torch's default: all cores). "
        "On a shared or small machine 1 can be faster: idle torch threads spin.",
    )
    refine_steps: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Adam steps that refine each code at encode time (IDRP.encode refine_steps; "
        "0 = the one-pass code). Costs about one decode + backward per step.",
    )
    initial_count: int = Field(
        default=0,
        ge=0,
        description="Access count a freshly written slot starts with (0 = the paper's reset).",
    )
    lfu_decay_ticks: int = Field(
        default=0,
        ge=0,
        description="Halve a slot's count for eviction per this many bank ticks it sat idle "
        "(Redis-style LFU aging; makes MT_INITIAL_COUNT protect fresh slots). 0 = off (paper).",
    )
    rescore: Annotated[int, Field(ge=0, le=RESCORE_MAX)] | Literal["auto"] = Field(
        default="auto",
        description="Reads rank the top max(R, top_k) slots by code cosine, decode them and "
        "return the best by cosine with the query item (0 = off: code cosine only); a read's "
        "`rescore` overrides it. auto = the weights' own rescore_default when they name one, "
        f"else {RESCORE_IMAGE} for image codecs (digits-m16: held-out recall@1 0.70 -> 0.80 for "
        "0.86-0.90x the req/s of a read without it) and 0 for text codecs (their "
        "reconstructions blur near-duplicate texts: no gain in recall). Bench notes in "
        "docs/API.md.",
    )
    namespace_quota: int = Field(
        default=0,
        ge=0,
        description="Most slots one namespace may hold; a write beyond it replaces the "
        "namespace's own least frequently used slots. 0 = no quota.",
    )

    # --- persistence
    snapshot_dir: Path = Field(
        default=Path("./snapshots"), description="Snapshots and the write-ahead log."
    )
    snapshot_every_s: float = Field(
        default=300.0,
        ge=0,
        description="Snapshot every this many seconds if the bank changed (writes, deletes or "
        "reads, which move counts); 0 = off.",
    )
    snapshot_every_writes: int = Field(
        default=0,
        ge=0,
        description="Snapshot after this many logged changes (writes and deletes); 0 = off.",
    )
    snapshot_on_shutdown: bool = True
    snapshot_keep: int = Field(default=3, ge=1, description="Snapshot generations kept on disk.")
    wal_fsync: FsyncPolicy = "always"
    allow_fresh: bool = Field(
        default=False,
        description="Start with an empty bank when snapshots exist "
        "but none is valid (otherwise refuse to start).",
    )

    # --- auth
    api_key: SecretStr | None = Field(default=None, description="Full-access key; unset = no auth.")
    read_api_key: SecretStr | None = Field(
        default=None, description="Read-only key (needs api_key)."
    )

    # --- request limits and batching
    max_items: int = Field(
        default=1024, ge=1, description="Items (write) or queries (read) per request."
    )
    max_body_bytes: int = Field(
        default=8 * MIB, ge=1024, description="Largest request body, in bytes."
    )
    max_top_k: int = Field(default=100, ge=1)
    max_text_chars: int = Field(
        default=8192, ge=1, description="Longest text a slot may keep (characters)."
    )
    max_payload_bytes: int = Field(
        default=16 * 1024,
        ge=2,
        description="Largest JSON payload a slot may keep (bytes of its compact JSON).",
    )
    max_response_bytes: int = Field(
        default=32 * MIB,
        ge=1024,
        description="Largest read answer, in bytes, as bounded before the read from its queries, "
        "top_k and d (413 above; nothing is read or counted).",
    )
    batch_max: int = Field(
        default=256,
        ge=1,
        description="Most queries one read batch coalesces, and most items one write group does.",
    )
    batch_wait_ms: float = Field(
        default=4.0,
        ge=0,
        le=1000,
        description="The longest a read batch waits for more requests when reads come "
        "concurrently (the previous batch ended with several requests queued, its own "
        "included, or several are queued); it starts as soon as as many are queued as the last "
        "batch ended with, or when none has come for MT_BATCH_GAP_MS; a lone read runs at once.",
    )
    batch_gap_ms: float = Field(
        default=1.0,
        ge=0,
        le=1000,
        description="A read batch that waits for company starts once no read has come for this "
        "long (capped by MT_BATCH_WAIT_MS): the wait lasts while requests keep arriving, and "
        "ends soon after they stop.",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        v = value.strip().lower()
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")

    @field_validator("weights")
    @classmethod
    def _resolve_weights(cls, value: Path) -> Path:
        if value.is_absolute() or value.exists():
            return value
        in_repo = REPO_ROOT / value
        return in_repo if in_repo.exists() else value

    @field_validator("api_key", "read_api_key")
    @classmethod
    def _check_key(cls, key: SecretStr | None) -> SecretStr | None:
        """A key that a client can present: HTTP strips the whitespace around a header value and
        carries ASCII only. The message never holds the key."""
        if key is None:
            return None
        value = key.get_secret_value()
        if not value.strip():
            raise ValueError("the key is empty or only whitespace")
        if value != value.strip():
            raise ValueError("the key starts or ends with whitespace")
        if not (value.isascii() and value.isprintable()):
            raise ValueError("the key must be printable ASCII (no control or non-ASCII characters)")
        return key

    @model_validator(mode="after")
    def _check_keys(self) -> Self:
        if self.read_api_key is not None:
            if self.api_key is None:
                raise ValueError(
                    "MT_READ_API_KEY is set but MT_API_KEY is not: set both or neither"
                )
            if self.read_api_key.get_secret_value() == self.api_key.get_secret_value():
                raise ValueError("MT_READ_API_KEY must differ from MT_API_KEY")
        return self

    @property
    def auth_enabled(self) -> bool:
        return self.api_key is not None

    def resolved_bank_dtype(self, info: dict[str, Any]) -> str:
        """MT_BANK_DTYPE with "auto" resolved against the weights' info."""
        if self.bank_dtype != "auto":
            return self.bank_dtype
        return "rate" if isinstance(info.get("rate_default"), str) else "float32"

    def resolved_rescore(self, info: dict[str, Any]) -> int:
        """MT_RESCORE with "auto" resolved against the weights' info (model.codec_info's
        default_rescore: the file's rescore_default, else by the kind of codec)."""
        if self.rescore != "auto":
            return self.rescore
        return default_rescore(info)

    def resolved_device(self) -> str:
        """The torch device to use: "auto" becomes cuda when available, else cpu."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
