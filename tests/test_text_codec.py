"""The shipped text codecs on a few hundred held-out Bible verses, embedded here (no cache):
each names its embedder, and its codes keep the embeddings and the paraphrase search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.retrieval import ranked, rec_cos
from bench.text import as_int8, text_weights
from model import embed, text_data
from model.checkpoint import load_idrp
from model.codec_info import is_text_codec
from model.idrp import decode_batched, encode_batched
from model.ratecode import RateCode

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
N = 200  # bank verses (KJV) and their paraphrase queries (WEB), all held out from training
# (file, storage) -> the least rec cos and code-ranked R@1 (among the N verses) the codec must
# keep; measured 0.739 / 0.935, 0.846 / 0.985, 0.912 / 0.995, 0.836 / 0.990, 0.823 / 0.990,
# 0.939 / 0.995, 0.930 / 0.990 (exact R@1 0.995).
FLOORS = {
    ("minilm-bible-m16", "int8"): (0.72, 0.90),
    ("minilm-bible-m48", "int8"): (0.83, 0.96),
    ("minilm-bible-m96-rate", "int8"): (0.90, 0.98),
    ("minilm-bible-m96-rate", "rate 16B"): (0.82, 0.95),
    ("minilm-bible-m192-rate", "rate 16B"): (0.81, 0.95),
    ("minilm-bible-m192-rate", "rate 48B"): (0.92, 0.98),
    ("minilm-text-m192-rate", "rate 48B"): (0.91, 0.97),
}


@pytest.fixture(scope="module")
def verses() -> tuple[np.ndarray, np.ndarray]:
    task = text_data.bible_task()
    e = embed.Embedder(embed.MINILM)
    return e.embed(task.bank_texts[:N]), e.embed(task.query_texts[:N])


def test_the_text_codecs_are_found_and_name_their_embedder() -> None:
    found = text_weights(WEIGHTS, embed.MINILM)
    assert sorted(p.stem for p in found) == sorted({name for name, _ in FLOORS})
    for path in found:
        info = load_idrp(path).info
        assert is_text_codec(info) and info["embedder"] == embed.MINILM.info()
        assert info["data"] in ("bible-minilm", "text-minilm") and info["test_items_used"] == 0
        other = embed.EmbedderSpec(**{**embed.MINILM.info(), "model_id": "other/model"})
        with pytest.raises(embed.EmbedderError, match="model_id"):
            embed.check_embedder(info, other)


@pytest.mark.parametrize(("name", "storage"), sorted(FLOORS))
def test_codes_keep_embeddings_and_paraphrase_search(
    name: str, storage: str, verses: tuple[np.ndarray, np.ndarray]
) -> None:
    bank, query = verses
    model = load_idrp(WEIGHTS / f"{name}.safetensors")
    z = encode_batched(model, bank).numpy()
    if storage == "int8":
        zs = as_int8(z, model.code_scales)
    else:
        budget = storage.split()[1]  # "48B"
        rc = RateCode.from_dict(model.info["rate_codes"][budget])  # type: ignore[index]
        size = int(budget.rstrip("B"))
        assert rc.code_bytes == size and rc.pack(rc.encode(z)).shape == (N, size)
        zs = rc.quantise(z)
    x_hat = decode_batched(model, zs).numpy()
    min_cos, min_r1 = FLOORS[(name, storage)]
    assert rec_cos(bank, x_hat) >= min_cos
    zq = encode_batched(model, query).numpy()
    r1 = float((ranked(zq, zs, k=1)[:, 0] == np.arange(N)).mean())
    exact = float((ranked(query, bank, k=1)[:, 0] == np.arange(N)).mean())
    assert r1 >= min_r1 and exact >= 0.97
