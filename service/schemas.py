"""Request and response models of the HTTP API.

Requests carry their limits (item counts, top_k range, finite float32 numbers, no unknown fields,
no strings or booleans posing as numbers), so bad input is a 422 before any model code runs.
Limits that come from the settings (MT_MAX_ITEMS, MT_MAX_TOP_K) and from the weights file (the
item length d, read from its header) are built into the classes by `request_models(...)`, so the
OpenAPI document states them too. The engine checks d again for in-process callers.

The wording of refusals lives here too, so that the server (service/errors.py, service/deps.py)
and the Python client (service/client.py) say the same thing: `validation_detail` flattens
pydantic errors into one sentence, `slot_id` reads a slot id, `clip` bounds what a client sent
when a message echoes it, and `ReadRequest.answer_bytes` bounds the size of a read's answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, field_validator, model_validator
from pydantic.json_schema import JsonDict
from pydantic_core import PydanticCustomError

from model.codec_info import RESCORE_MAX
from model.enums import NAMESPACE_PATTERN, WriteMode, check_namespace, stored_slots
from model.errors import InvalidInput

FLOAT32_MAX = 3.4028234663852886e38
ECHO_LIMIT = 64  # characters of a name or value a client sent that a message repeats
MAX_LISTED_ERRORS = 3
# Error types our own validators raise: their message already names the item / query.
_SELF_DESCRIBING = {
    "row_length",
    "not_finite",
    "float32_range",
    "text_empty",
    "text_long",
    "payload_large",
    "length_mismatch",
}
# Upper bounds of a read answer's JSON (service/responses.FastJSON): one hit without its
# reconstruction ({"slot":..,"score":..,"code_score":..,"count":..,"reconstruction":null},), one
# float32 in its shortest form with its comma (-1.2345678e-38,), and the brackets of one query's
# list. A slot's text and payload are not in the bound (MT_MAX_TEXT_CHARS, MT_MAX_PAYLOAD_BYTES
# bound them per hit).
HIT_BYTES = 128
VALUE_BYTES = 16
QUERY_BYTES = 4

# A finite float32 value (the row validator gives the error its message; this documents it).
Number = Annotated[
    StrictFloat, Field(json_schema_extra={"minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX})
]
Vector = Annotated[list[Number], Field(min_length=1)]

_ITEM: Any = [
    0.0,
    0.25,
    0.5,
    1.0,
]  # shortened example rows: real ones have d values (64 for digits)


def check_rows(rows: list[list[float]], noun: str, d: int | None) -> list[list[float]]:
    """Refuse rows of the wrong length, NaN, +-Infinity (Python's json reads those literals) and
    values that float32 cannot hold; the message names the row."""
    for i, row in enumerate(rows):
        if d is not None and len(row) != d:
            raise PydanticCustomError(
                "row_length",
                "{noun} {index}: expected {d} values per {noun}, got {n}",
                {"noun": noun, "index": i, "d": d, "n": len(row)},
            )
        if not all(map(math.isfinite, row)):
            raise PydanticCustomError(
                "not_finite", "{noun} {index} contains NaN or infinity", {"noun": noun, "index": i}
            )
        if max(map(abs, row)) > FLOAT32_MAX:
            raise PydanticCustomError(
                "float32_range",
                "{noun} {index} contains a value outside the float32 range (|x| > 3.4e38)",
                {"noun": noun, "index": i},
            )
    return rows


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """text, cut to `limit` characters with "..." when longer: what a message echoes of a
    request stays bounded (a 200 kB field name is not sent back whole)."""
    return text if len(text) <= limit else text[:limit] + "..."


_SLOT_ID = re.compile(r"0|[1-9][0-9]{0,17}")  # re's [0-9] is ASCII only


def slot_id(text: str) -> int:
    """A slot id as written in a path: plain decimal digits only. int() would also read "+1",
    " 1", "00001", "1_0" (= 10) and non-ASCII digits; those are refused, naming the value."""
    if _SLOT_ID.fullmatch(text) is None:
        raise InvalidInput(
            "path parameter i: expected plain decimal digits (no sign, spaces, underscores or "
            f"leading zeros; at most 18), got {clip(text)!r}"
        )
    return int(text)


def _where(loc: Sequence[int | str]) -> str:
    """("body", "items", 0, 3) -> "items[0][3]"; ("path", "i") -> "path parameter i". Names a
    client sent are clipped."""
    if loc and loc[0] in ("path", "query", "header"):
        return f"{loc[0]} parameter {'.'.join(clip(str(p)) for p in loc[1:])}"
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{clip(p)}" if text else clip(p))
    return text


def validation_detail(errors: Sequence[Any]) -> str:
    """Flatten pydantic / FastAPI validation errors into one readable sentence."""
    messages: list[str] = []
    for e in errors:
        kind, loc, msg = e.get("type", ""), tuple(e.get("loc", ())), str(e.get("msg", "invalid"))
        if loc in (("body",), ()) and kind in ("model_type", "model_attributes_type", "dict_type"):
            return "request body must be a JSON object (Content-Type: application/json)"
        if kind in _SELF_DESCRIBING:
            messages.append(msg)
        elif kind == "missing":
            messages.append(f"{_where(loc)}: field required")
        elif kind == "extra_forbidden":
            messages.append(f"{_where(loc)}: unknown field")
        else:
            messages.append(f"{_where(loc)}: {msg}" if _where(loc) else msg)
    if not messages:
        return "invalid request"
    extra = len(messages) - MAX_LISTED_ERRORS
    text = "; ".join(messages[:MAX_LISTED_ERRORS])
    return f"{text}; and {extra} more" if extra > 0 else text


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    d: ClassVar[int | None] = None  # values per row, when known (set by request_models)
    max_text_chars: ClassVar[int] = 8192  # MT_MAX_TEXT_CHARS (set by request_models)
    max_payload_bytes: ClassVar[int] = 16384  # MT_MAX_PAYLOAD_BYTES (set by request_models)

    @field_validator("namespace", check_fields=False)
    @classmethod
    def _namespace(cls, name: str | None) -> str | None:
        if name is None:
            return None
        try:
            return check_namespace(name)
        except ValueError as e:
            raise PydanticCustomError("namespace", "{message}", {"message": str(e)}) from None

    @field_validator("texts", check_fields=False)
    @classmethod
    def _texts(cls, texts: list[str] | None) -> list[str] | None:
        return None if texts is None else check_texts(texts, cls.max_text_chars)

    @field_validator("payloads", check_fields=False)
    @classmethod
    def _payloads(cls, payloads: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        return None if payloads is None else check_payloads(payloads, cls.max_payload_bytes)


def check_texts(texts: list[str], limit: int) -> list[str]:
    """Texts a slot may keep: not empty or only whitespace, at most `limit` characters."""
    for i, text in enumerate(texts):
        if not text.strip():
            raise PydanticCustomError(
                "text_empty", "texts[{index}] is empty or only whitespace", {"index": i}
            )
        if len(text) > limit:
            raise PydanticCustomError(
                "text_long",
                "texts[{index}] has {n} characters, over the limit of {limit} (MT_MAX_TEXT_CHARS)",
                {"index": i, "n": len(text), "limit": limit},
            )
    return texts


def check_payloads(payloads: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Payloads a slot may keep: JSON objects of at most `limit` bytes as compact JSON."""
    for i, payload in enumerate(payloads):
        try:
            size = len(orjson.dumps(payload))
        except TypeError:  # orjson writes integers of at most 64 bits, as most JSON readers
            raise PydanticCustomError(
                "payload_large",
                "payloads[{index}] holds an integer beyond 64 bits, which it cannot keep",
                {"index": i},
            ) from None
        if size > limit:
            raise PydanticCustomError(
                "payload_large",
                "payloads[{index}] is {n} bytes as JSON, over the limit of {limit} "
                "(MT_MAX_PAYLOAD_BYTES)",
                {"index": i, "n": size, "limit": limit},
            )
    return payloads


Namespace = Annotated[
    str,
    Field(
        description="A namespace (user, agent, session...): 1-64 characters, letters, digits "
        "and . _ : @ - (not first).",
        json_schema_extra={"pattern": f"^{NAMESPACE_PATTERN}$"},
    ),
]
Texts = Annotated[list[str], Field(min_length=1, max_length=1024)]
Rescore = Annotated[
    int | None,
    Field(
        ge=0,
        le=RESCORE_MAX,
        description="Candidates to rescore on their reconstructions (the top max(R, top_k) by "
        "code cosine, ranked by cosine with the query item); 0 = off; null = the server's "
        "MT_RESCORE.",
    ),
]
Payloads = Annotated[
    list[dict[str, Any]],
    Field(description="One JSON object per text, kept with it and returned by reads."),
]


def _same_length(what: str, values: list[Any] | None, n: int, per: str) -> None:
    if values is not None and len(values) != n:
        raise PydanticCustomError(
            "length_mismatch",
            "{what}: expected one per {per} ({n}), got {got}",
            {"what": what, "per": per, "n": n, "got": len(values)},
        )


class WriteRequest(Request):
    """Items to encode and store: "mean" stores their mean code in one slot (the paper's write),
    "each" stores one slot per item."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_ITEM, _ITEM], "mode": "mean"}]}
    )

    items: Annotated[list[Vector], Field(min_length=1, max_length=1024)]
    mode: WriteMode = "mean"
    namespace: Namespace = "default"
    texts: Texts | None = Field(
        default=None, description="A text per stored slot (mode each: per item; mean: one)."
    )
    payloads: Payloads | None = None
    pinned: bool = Field(default=False, description="Pinned slots are never evicted.")

    @field_validator("items")
    @classmethod
    def _finite(cls, rows: list[list[float]]) -> list[list[float]]:
        return check_rows(rows, "item", cls.d)

    @model_validator(mode="after")
    def _one_per_slot(self) -> WriteRequest:
        stored = stored_slots(len(self.items), self.mode)
        per = "item" if self.mode == "each" else "mean write (one slot)"
        _same_length("texts", self.texts, stored, per)
        _same_length("payloads", self.payloads, stored, per)
        return self


class ReadRequest(Request):
    """Queries to look up: the top_k slots by cosine similarity of codes, best first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"queries": [_ITEM], "top_k": 1, "min_score": 0.5, "reconstruct": True}]
        }
    )

    queries: Annotated[list[Vector], Field(min_length=1, max_length=1024)]
    top_k: Annotated[int, Field(ge=1, le=100)] = 1
    min_score: Annotated[float | None, Field(ge=-1.0, le=1.0, allow_inf_nan=False)] = None
    reconstruct: bool = True
    namespace: Namespace | None = Field(
        default=None, description="Search this namespace only (default: every namespace)."
    )
    rescore: Rescore = None

    @field_validator("queries")
    @classmethod
    def _finite(cls, rows: list[list[float]]) -> list[list[float]]:
        return check_rows(rows, "query", cls.d)

    def answer_bytes(self, capacity: int) -> tuple[int, int]:
        """(hits per query, an upper bound of the answer's bytes): known before any work, from
        the queries, top_k (at most the capacity), and d when reconstructions are asked for."""
        hits = min(self.top_k, capacity)
        per_hit = HIT_BYTES + (VALUE_BYTES * (self.d or 0) if self.reconstruct else 0)
        return hits, 16 + len(self.queries) * (QUERY_BYTES + hits * per_hit)


class RememberRequest(Request):
    """Texts to embed and store, one slot each, with their payloads, in a namespace."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "texts": ["Alice prefers tea to coffee."],
                    "payloads": [{"source": "chat", "turn": 3}],
                    "namespace": "user-alice",
                }
            ]
        }
    )

    texts: Texts
    payloads: Payloads | None = None
    namespace: Namespace = "default"
    pinned: bool = Field(default=False, description="Pinned slots are never evicted.")
    dedup: Annotated[float | None, Field(ge=-1.0, le=1.0, allow_inf_nan=False)] = Field(
        default=None,
        description="A text whose best match in the namespace has at least this cosine is "
        "merged into that memory (its slot counts the access) instead of stored again.",
    )

    @model_validator(mode="after")
    def _one_per_text(self) -> RememberRequest:
        _same_length("payloads", self.payloads, len(self.texts), "text")
        return self


class RecallRequest(Request):
    """Texts to look up: per text, the top_k stored memories closest to its embedding."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"texts": ["What does Alice drink?"], "top_k": 3, "namespace": "user-alice"}
            ]
        }
    )

    texts: Texts
    top_k: Annotated[int, Field(ge=1, le=100)] = 1
    min_score: Annotated[float | None, Field(ge=-1.0, le=1.0, allow_inf_nan=False)] = None
    namespace: Namespace | None = Field(
        default=None, description="Search this namespace only (default: every namespace)."
    )
    rescore: Rescore = None


class PreviewRequest(Request):
    """A write to look ahead at: n rows into a namespace."""

    n: Annotated[int, Field(ge=1)] = 1
    namespace: Namespace = "default"


class PinRequest(Request):
    pinned: bool = True


class RequestModels(NamedTuple):
    write: type[WriteRequest]
    read: type[ReadRequest]
    remember: type[RememberRequest]
    recall: type[RecallRequest]


def request_models(
    max_items: int = 1024,
    max_top_k: int = 100,
    d: int | None = None,
    max_text_chars: int = 8192,
    max_payload_bytes: int = 16384,
) -> RequestModels:
    """The request models with these limits in their validation and their schema."""
    length: JsonDict | None = None if d is None else {"minItems": d, "maxItems": d}
    vector: Any = Annotated[list[Number], Field(min_length=1, json_schema_extra=length)]
    rows: Any = Annotated[list[vector], Field(min_length=1, max_length=max_items)]
    top_k: Any = Annotated[int, Field(ge=1, le=max_top_k)]
    examples: dict[str, Any] = {}
    if d is not None:  # examples a client can send as they are
        row = [round(i / (d - 1), 4) for i in range(d)]
        examples = {
            "items": {"examples": [{"items": [row], "mode": "mean"}]},
            "queries": {
                "examples": [{"queries": [row], "top_k": 1, "min_score": 0.5, "reconstruct": True}]
            },
        }

    def subclass(base: type[Request], field: str, annotations: dict[str, Any]) -> Any:
        namespace: dict[str, Any] = {
            "__module__": __name__,
            "__qualname__": base.__name__,
            "__doc__": base.__doc__,
            "__annotations__": annotations,
            "d": d,
            "max_text_chars": max_text_chars,
            "max_payload_bytes": max_payload_bytes,
        }
        if field in examples:
            namespace["model_config"] = ConfigDict(json_schema_extra=examples[field])
        if "top_k" in annotations:
            namespace["top_k"] = 1
        return type(base.__name__, (base,), namespace)

    texts: Any = Annotated[list[str], Field(min_length=1, max_length=max_items)]
    write = subclass(WriteRequest, "items", {"items": rows})
    read = subclass(ReadRequest, "queries", {"queries": rows, "top_k": top_k})
    remember = subclass(RememberRequest, "", {"texts": texts})
    recall = subclass(RecallRequest, "", {"texts": texts, "top_k": top_k})
    return RequestModels(write=write, read=read, remember=remember, recall=recall)
