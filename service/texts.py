"""Text memory: sentences in, the IDRP codes of their embeddings stored with the text and a JSON
payload; recalled by the embedding of another sentence.

    texts = TextMemory(embedder, max_batch)          # when the weights are a text codec
    rows = await texts.embed(["a sentence", ...])    # unit rows (n, dim), batched across calls
    record(text, payload) -> bytes | None            # what a slot keeps (model/slots.py)
    fields(record) -> {"text": ..., "payload": ...}  # and back, for an answer

A slot's record is the compact JSON of {"text": t, "payload": p} (either may be absent): the bank
and the WAL keep it as opaque bytes; only an answer parses it again. The embedder
(model/embed.py) runs on its own thread ("mt-embed"), so a long embedding does not hold up the
bank's reads and writes on the torch thread; concurrent /remember and /recall requests are
embedded together (a BatchQueue, as reads are).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import orjson

from model.errors import MemoryTransitError
from service.batching import BatchQueue

__all__ = ["NotATextCodec", "TextMemory", "fields", "record", "records"]

T = TypeVar("T")


def record(text: str | None, payload: dict[str, Any] | None) -> bytes | None:
    """The bytes a slot keeps for a text and a payload; None when there is neither."""
    if text is None and payload is None:
        return None
    body: dict[str, Any] = {}
    if text is not None:
        body["text"] = text
    if payload is not None:
        body["payload"] = payload
    return orjson.dumps(body)  # the bank keeps an exact-size copy (model/slots.py)


def records(
    n: int, texts: Sequence[str] | None, payloads: Sequence[dict[str, Any]] | None
) -> list[bytes | None] | None:
    """One record per stored slot (n), None when the request gave neither texts nor payloads."""
    if texts is None and payloads is None:
        return None
    return [
        record(None if texts is None else texts[i], None if payloads is None else payloads[i])
        for i in range(n)
    ]


def fields(data: bytes | None) -> dict[str, Any]:
    """{"text": ..., "payload": ...} of a record (null where absent)."""
    body = orjson.loads(data) if data is not None else {}
    return {"text": body.get("text"), "payload": body.get("payload")}


class NotATextCodec(MemoryTransitError):
    """A text endpoint (/remember, /recall) on weights that are not a text codec: 409."""


class TextMemory:
    """The embedder of a text codec (model.embed.Embedder, imported only for text codecs),
    behind a batching queue on its own thread."""

    def __init__(self, embedder: Any, max_batch: int) -> None:
        self.embedder = embedder
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt-embed")
        self._queue: BatchQueue[list[str], np.ndarray] = BatchQueue(
            "mt-embed-batcher", self._embed_batch, self._run, limit=max_batch
        )

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn))

    def _embed_batch(self, jobs: list[list[str]]) -> list[np.ndarray]:
        rows = self.embedder.embed([t for texts in jobs for t in texts])
        out, pos = [], 0
        for texts in jobs:
            out.append(rows[pos : pos + len(texts)])
            pos += len(texts)
        return out

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit embeddings (n, dim) float32 of these texts, in order."""
        return await self._queue.submit(texts, len(texts))

    async def close(self) -> None:
        await self._queue.close()
        self._pool.shutdown(wait=True)
