"""LangChain's own standard tests (langchain-tests' VectorStoreIntegrationTests, sync and async)
on service/langchain.py against a real server, twice: the server embedding the texts, and a
caller's own Embeddings (/write and /read on raw vectors: the codec's embedder, all-MiniLM-L6-v2,
run in the test process; the suite's 6-d fake embeddings are refused, as they must be). Then what
the standard tests do not cover: a wrong dimension, a store reopened on its namespace, paraphrases,
LFU eviction at the namespace quota, MMR and relevance scores."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from model.embed import Embedder
from service.client import MemoryTransitClient
from service.langchain import MemoryTransitVectorStore
from tests.text_server import text_server

pytestmark = pytest.mark.anyio  # the standard tests' async half, on asyncio
QUOTA = 8  # slots per namespace: the standard tests hold at most 3 documents


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("langchain")
    with text_server(tmp, capacity="512", namespace_quota=str(QUOTA)) as url:
        yield url


def fresh(url: str, **kwargs: object) -> MemoryTransitVectorStore:
    return MemoryTransitVectorStore(url, namespace=f"lc-{uuid.uuid4().hex[:12]}", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def store(url: str) -> Iterator[MemoryTransitVectorStore]:
    with fresh(url) as s:
        yield s
        s.delete()


class MiniLM(Embeddings):
    """A caller who embeds with the model the codec was trained for."""

    def __init__(self) -> None:
        self.embedder = Embedder()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed(texts).tolist()  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


@pytest.fixture(scope="module")
def minilm() -> MiniLM:
    return MiniLM()


class TestServerEmbeds(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, store: MemoryTransitVectorStore) -> MemoryTransitVectorStore:
        return store


class TestCallerEmbeddings(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, url: str, minilm: MiniLM) -> Iterator[MemoryTransitVectorStore]:
        with fresh(url, embedding=minilm) as s:
            yield s
            s.delete()


def test_embeddings_of_another_dimension_are_refused(url: str) -> None:
    with fresh(url, embedding=DeterministicFakeEmbedding(size=6)) as s:
        with pytest.raises(ValueError, match="6-dimensional but the server's codec takes d=384"):
            s.add_texts(["foo"])
        with pytest.raises(ValueError, match="d=384"):
            s.similarity_search("foo")
        with MemoryTransitClient(url) as mt:
            assert s.namespace not in mt.namespaces()  # nothing was stored


def test_reopened_store_finds_its_ids_and_recalls_a_paraphrase(
    store: MemoryTransitVectorStore,
) -> None:
    texts = ["Alice prefers green tea to coffee.", "Bob cycles to work every day."]
    store.add_texts(texts, [{"turn": 1}, {"turn": 2}], ids=["tea", "bike"])
    with MemoryTransitVectorStore(store.url, namespace=store.namespace) as again:
        assert again.get_by_ids(["bike", "nope", "tea"]) == [
            Document(id="bike", page_content=texts[1], metadata={"turn": 2}),
            Document(id="tea", page_content=texts[0], metadata={"turn": 1}),
        ]
        [(doc, score)] = again.similarity_search_with_score("What does Alice drink?", k=1)
        assert doc.id == "tea" and 0 < score <= 1
        again.delete(["tea"])
    assert store.get_by_ids(["tea", "bike"]) == [
        Document(id="bike", page_content=texts[1], metadata={"turn": 2})
    ]


def test_lfu_eviction_at_the_quota_drops_a_document_never_mixes_them(
    store: MemoryTransitVectorStore,
) -> None:
    ids = [f"d{i}" for i in range(QUOTA)]
    texts = [f"Note {i}: the {w} is on the shelf." for i, w in enumerate("abcdefgh")]
    store.add_texts(texts, ids=ids)
    for text in texts[1:]:  # every document but d0 is found once: d0 is the least used
        assert store.similarity_search(text, k=1)[0].page_content == text
    store.add_texts(["A new note about the garden."], ids=["new"])
    kept = store.get_by_ids([*ids, "new"])
    assert [d.id for d in kept] == [*ids[1:], "new"]
    assert all(d.page_content == texts[int(d.id[1:])] for d in kept[:-1] if d.id)
    assert "d0" not in {d.id for d in store.similarity_search("Note 0", k=QUOTA)}


async def test_mmr_and_relevance_scores(store: MemoryTransitVectorStore) -> None:
    texts = [
        "Alice drinks green tea.",
        "Alice drinks green tea in the morning.",
        "The ferry leaves the harbour at noon.",
    ]
    await store.aadd_texts(texts, ids=["a", "b", "c"])
    best = await store.asimilarity_search("Alice drinks green tea.", k=1)
    picked = await store.amax_marginal_relevance_search(
        "Alice drinks green tea.", k=2, fetch_k=3, lambda_mult=0.5
    )
    assert picked[0] == best[0] and len({d.id for d in picked}) == 2
    for _, relevance in store.similarity_search_with_relevance_scores("tea", k=3):
        assert 0.0 <= relevance <= 1.0
