"""A LangChain `VectorStore` over the MemoryTransit HTTP API (`pip install .[langchain]`).

    from service.langchain import MemoryTransitVectorStore
    store = MemoryTransitVectorStore("http://127.0.0.1:8000", namespace="notes")
    ids = store.add_texts(["Alice drinks green tea."], [{"turn": 3}])
    store.similarity_search_with_score("What does Alice drink?", k=1)   # [(Document, cosine)]

How MemoryTransit's semantics map onto LangChain's (docs/API.md, "LangChain"):
- One document, one slot: the adapter always writes with mode "each" (never the paper's mean
  write) into the store's namespace, with the document's text and the payload
  {"id": <LangChain id>, "metadata": {...}}. The server has no id field: ids live in the payloads
  (so they survive restarts with the bank), and the store keeps an id -> slot index that it
  checks against the slot's own payload before it trusts it.
- Embeddings: with `embedding=None` (the default) the server embeds (/remember, /recall; a text
  codec). A caller's `Embeddings` is used with /write and /read on raw vectors, and only when its
  dimension is the codec's d (else ValueError, before anything is stored).
- Scores are cosines of the stored codes (the server's score, in [-1, 1]); relevance scores are
  (1 + cosine) / 2. A search counts an access of every slot it returns (LFU); get_by_ids does not.
- LFU eviction at capacity (or the namespace quota): adding a document to a full bank may
  evict another one, of this store or another; an evicted document is gone: get_by_ids leaves it
  out and searches no longer find it (never a wrong document: the index is checked). Pin what
  must stay with `store.client.pin_slot(slot)`.
- delete(ids) frees their slots; delete() with no ids forgets the whole namespace.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, Self, TypeVar

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from model.enums import check_namespace
from service.client import (
    _MODELS,
    APIError,
    AsyncMemoryTransitClient,
    Hit,
    MemoryTransitClient,
    SlotResponse,
    _body,
    _check,
    _rows,
)

__all__ = ["MemoryTransitVectorStore"]

T = TypeVar("T")
# An operation: a generator that yields (name, args) calls of the client (or of the embeddings:
# "embed_documents", "embed_query") and gets their results back; run by _sync or _async.
Op = Generator[tuple[str, tuple[Any, ...]], Any, T]
PAGE = 1000  # slots per GET /slots page when the index is rebuilt


def _write_each(
    items: Any, texts: list[str], payloads: list[dict[str, Any]], namespace: str
) -> dict[str, Any]:
    fields = {"items": _rows(items), "mode": "each", "texts": texts, "payloads": payloads}
    return _body(_MODELS.write, **fields, namespace=namespace)


def _read_in(queries: Any, top_k: int, namespace: str) -> dict[str, Any]:
    fields = {"queries": _rows(queries), "top_k": top_k, "reconstruct": False}
    return _body(_MODELS.read, **fields, namespace=namespace)


def _hits(answer: Any) -> list[list[Hit]]:
    return [[Hit.model_validate(h) for h in hits] for hits in answer.json()["results"]]


def _page(offset: int) -> dict[str, Any]:
    return {"params": {"offset": offset, "limit": PAGE}}


class _Client(MemoryTransitClient):
    """The requests the client has no method for: /write and /read with a namespace, texts and
    payloads, and a page of GET /slots (with the client's own checks and errors)."""

    def write_each(self, *args: Any) -> dict[str, Any]:
        return _check(self._http.post("/write", **_write_each(*args))).json()

    def read_in(self, *args: Any) -> list[list[Hit]]:
        return _hits(_check(self._http.post("/read", **_read_in(*args))))

    def slot_page(self, offset: int) -> list[dict[str, Any]]:
        return _check(self._http.get("/slots", **_page(offset))).json()["slots"]


class _AsyncClient(AsyncMemoryTransitClient):
    async def write_each(self, *args: Any) -> dict[str, Any]:
        return _check(await self._http.post("/write", **_write_each(*args))).json()

    async def read_in(self, *args: Any) -> list[list[Hit]]:
        return _hits(_check(await self._http.post("/read", **_read_in(*args))))

    async def slot_page(self, offset: int) -> list[dict[str, Any]]:
        return _check(await self._http.get("/slots", **_page(offset))).json()["slots"]


def _doc_id(payload: dict[str, Any] | None) -> str | None:
    """The LangChain id a payload of this adapter keeps (None for a slot written otherwise)."""
    value = payload.get("id") if payload else None
    return value if isinstance(value, str) else None


def _document(text: str | None, payload: dict[str, Any] | None) -> Document:
    """A slot as a Document: its text, and the metadata of the adapter's payload (a payload
    written otherwise is the metadata itself)."""
    doc_id = _doc_id(payload)
    meta = payload.get("metadata") if payload and doc_id is not None else payload
    return Document(id=doc_id, page_content=text or "", metadata=dict(meta or {}))


def _mmr_pick(
    scores: list[float], codes: list[list[float]], k: int, lambda_mult: float
) -> list[int]:
    """Maximal marginal relevance over the hits: relevance is the server's cosine to the query,
    redundancy the cosine between the stored codes; the best hit first."""
    if not scores:
        return []
    c = np.asarray(codes, dtype=np.float64)
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    sim = c @ c.T
    picked = [0]
    while len(picked) < min(k, len(scores)):
        rest = [i for i in range(len(scores)) if i not in picked]
        value = [lambda_mult * scores[i] - (1 - lambda_mult) * sim[i, picked].max() for i in rest]
        picked.append(rest[int(np.argmax(value))])
    return picked


def _advance(op: Op[Any], result: Any, error: Exception | None) -> tuple[bool, Any]:
    """Give the operation its last call's result (or raise that call's error in it): (False,
    its next call) or (True, its value)."""
    try:
        return False, op.throw(error) if error else op.send(result)
    except StopIteration as stop:
        return True, stop.value


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, Exception | None]:
    try:
        return fn(*args), None
    except Exception as e:
        return None, e


async def _acall(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, Exception | None]:
    try:
        return await fn(*args), None
    except Exception as e:
        return None, e


class MemoryTransitVectorStore(VectorStore):
    """Documents as slots of one namespace of a MemoryTransit server (see the module's doc)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        namespace: str = "langchain",
        embedding: Embeddings | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url, self.namespace = url, check_namespace(namespace)
        self._embedding = embedding
        self._api_key, self._timeout = api_key, timeout
        self.client = _Client(url, api_key, timeout=timeout)
        self._index: dict[str, int] = {}  # id -> slot, checked against the slot before use
        self._indexed = False  # the namespace's ids read from the server yet
        self._d: int | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    # ------------------------------------------------------------- running operations

    def _method(self, client: Any, name: str, prefix: str) -> Callable[..., Any]:
        if name.startswith("embed_"):
            return getattr(self._embedding, prefix + name)
        return getattr(client, name)

    def _sync(self, op: Op[T]) -> T:
        done, value = _advance(op, None, None)
        while not done:
            name, args = value
            done, value = _advance(op, *_call(self._method(self.client, name, ""), args))
        return value

    async def _async(self, op: Op[T]) -> T:
        async with _AsyncClient(self.url, self._api_key, timeout=self._timeout) as client:
            done, value = _advance(op, None, None)
            while not done:
                name, args = value
                done, value = _advance(op, *(await _acall(self._method(client, name, "a"), args)))
            return value

    # ------------------------------------------------------------- operations

    def _check_dim(self, rows: Sequence[Sequence[float]]) -> Op[None]:
        if self._d is None:
            self._d = (yield ("stats", ())).d
        if rows and len(rows[0]) != self._d:
            raise ValueError(
                f"the embeddings are {len(rows[0])}-dimensional but the server's codec takes "
                f"d={self._d}: pass embedding=None to let the server embed the texts, or "
                f"Embeddings of dimension {self._d}"
            )

    def _free(self, slot: int) -> Op[None]:
        try:
            yield ("delete_slot", (slot,))
        except APIError as e:
            if e.status != 404:
                raise

    def _owner(self, slot: int, doc_id: str) -> Op[SlotResponse | None]:
        """The slot while it still holds doc_id in this namespace (not evicted, not reused)."""
        try:
            view = yield ("get_slot", (slot,))
        except APIError as e:
            if e.status == 404:
                return None
            raise
        ours = view.namespace == self.namespace and _doc_id(view.payload) == doc_id
        return view if ours else None

    def _reindex(self) -> Op[None]:
        """Once per store: the ids the namespace already holds (a store opened on an existing
        namespace; one GET /slots/{i} per occupied slot of the bank)."""
        spaces = yield ("namespaces", ())
        offset = 0
        while self.namespace in spaces:
            page = yield ("slot_page", (offset,))
            for s in page:
                try:
                    view = yield ("get_slot", (s["slot"],))
                except APIError as e:
                    if e.status == 404:
                        continue
                    raise
                doc_id = _doc_id(view.payload)
                if view.namespace == self.namespace and doc_id is not None:
                    self._index.setdefault(doc_id, view.slot)
            if len(page) < PAGE:
                break
            offset += PAGE
        self._indexed = True

    def _lookup(self, ids: Iterable[str]) -> Op[dict[str, SlotResponse]]:
        """The slots that hold these ids now, in the order given (missing ones left out)."""
        if not self._indexed:
            yield from self._reindex()
        found: dict[str, SlotResponse] = {}
        for doc_id in dict.fromkeys(ids):
            slot = self._index.get(doc_id)
            view = None if slot is None else (yield from self._owner(slot, doc_id))
            if view is None:
                self._index.pop(doc_id, None)  # evicted, or deleted by someone else
            else:
                found[doc_id] = view
        return found

    def _add(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None,
        ids: Sequence[str | None] | None,
    ) -> Op[list[str]]:
        texts = list(texts)
        n = len(texts)
        if metadatas is not None and len(metadatas) != n:
            raise ValueError(f"got {len(metadatas)} metadatas for {n} texts")
        if ids is not None and len(ids) != n:
            raise ValueError(f"got {len(ids)} ids for {n} texts")
        given = list(ids) if ids is not None else [None] * n
        out = [str(i) if i is not None else uuid.uuid4().hex for i in given]
        last = {doc_id: k for k, doc_id in enumerate(out)}  # an id given twice: the last wins
        keep = sorted(last.values())
        if not keep:
            return out
        kept = [texts[k] for k in keep]
        payloads = [
            {"id": out[k], "metadata": dict(metadatas[k]) if metadatas else {}} for k in keep
        ]
        old = yield from self._lookup(out[k] for k in keep)
        if self._embedding is None:
            written = yield ("remember", (kept, payloads, self.namespace))
            slots, evicted = written.slots, written.evicted
        else:
            rows = yield ("embed_documents", (kept,))
            yield from self._check_dim(rows)
            written = yield ("write_each", (rows, kept, payloads, self.namespace))
            slots, evicted = written["slots"], written["evicted"]
        gone = set(evicted)
        self._index = {i: s for i, s in self._index.items() if s not in gone}
        for view in old.values():  # the earlier versions of overwritten ids
            if view.slot not in slots:
                yield from self._free(view.slot)
        self._index.update((out[k], slot) for k, slot in zip(keep, slots, strict=True))
        return out

    def _delete(self, ids: list[str] | None) -> Op[bool]:
        if ids is None:
            self._index.clear()
            self._indexed = True
            try:
                yield ("forget_namespace", (self.namespace,))
            except APIError as e:
                if e.status != 404:
                    raise
            return True
        found = yield from self._lookup(ids)
        for doc_id, view in found.items():
            yield from self._free(view.slot)
            self._index.pop(doc_id, None)
        return True

    def _get(self, ids: Sequence[str]) -> Op[list[Document]]:
        found = yield from self._lookup(ids)
        return [_document(view.text, view.payload) for view in found.values()]

    def _search(
        self, query: str | None, vector: list[float] | None, k: int
    ) -> Op[list[tuple[Document, float, int]]]:
        """The k closest documents with their cosine and slot, best first."""
        if vector is None and self._embedding is None:
            [hits] = yield ("recall", ([query], k, None, self.namespace))
        else:
            if vector is None:
                vector = yield ("embed_query", (query,))
            yield from self._check_dim([vector])
            [hits] = yield ("read_in", ([vector], k, self.namespace))
        found = []
        for hit in hits:
            doc = _document(hit.text, hit.payload)
            if doc.id is not None:
                self._index[doc.id] = hit.slot
            found.append((doc, hit.score, hit.slot))
        return found

    def _scored(self, query: str | None, vector: list[float] | None, k: int) -> Op[Any]:
        found = yield from self._search(query, vector, k)
        return [(doc, score) for doc, score, _ in found]

    def _docs(self, query: str | None, vector: list[float] | None, k: int) -> Op[Any]:
        found = yield from self._search(query, vector, k)
        return [doc for doc, _, _ in found]

    def _mmr(
        self, query: str | None, vector: list[float] | None, k: int, fetch_k: int, lam: float
    ) -> Op[list[Document]]:
        found = yield from self._search(query, vector, max(k, fetch_k))
        kept, codes = [], []
        for hit in found:
            try:
                codes.append((yield ("get_slot", (hit[2],))).code)
                kept.append(hit)
            except APIError as e:  # evicted since the search
                if e.status != 404:
                    raise
        picked = _mmr_pick([score for _, score, _ in kept], codes, k, lam)
        return [kept[i][0] for i in picked]

    # ------------------------------------------------------------- LangChain's API

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        return self._sync(self._add(texts, metadatas, ids))

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        return await self._async(self._add(texts, metadatas, ids))

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Free the slots of these ids (missing ones are no error); no ids: the namespace."""
        return self._sync(self._delete(ids))

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        return await self._async(self._delete(ids))

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return self._sync(self._get(ids))

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return await self._async(self._get(ids))

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return self._sync(self._docs(query, None, k))

    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return await self._async(self._docs(query, None, k))

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The k closest documents and the cosine of their codes to the query's, best first."""
        return self._sync(self._scored(query, None, k))

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return await self._async(self._scored(query, None, k))

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        """By a raw vector of the codec's d values (an embedding from the server's embedder or
        from the store's Embeddings)."""
        return self._sync(self._docs(None, embedding, k))

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        return await self._async(self._docs(None, embedding, k))

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        """MMR over the fetch_k closest documents, with the cosines of their stored codes."""
        return self._sync(self._mmr(query, None, k, fetch_k, lambda_mult))

    async def amax_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        return await self._async(self._mmr(query, None, k, fetch_k, lambda_mult))

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda cosine: (1.0 + cosine) / 2.0

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> MemoryTransitVectorStore:
        """A store (kwargs: url, namespace, api_key, timeout) holding these texts."""
        store = cls(embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store
