"""The pure helpers of bench/text.py and bench/retrieval.py: ranking, the agreement and recall
columns, PCA maps, int8 storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import retrieval as bt
from bench.quality import int8_scales
from bench.text import as_int8


def test_top_k_is_best_first_with_ties_to_the_lowest_index() -> None:
    s = np.array([[0.1, 0.9, 0.5, 0.9, 0.0, 0.3, 0.2, 0.8, 0.4, 0.6, 0.7, 0.05]])
    assert bt.top_k(s, 4).tolist() == [[1, 3, 7, 10]]


def test_scores_of() -> None:
    exact = np.tile(np.arange(10), (2, 1))
    top = np.array([list(range(10)), [5, *range(10, 19)]])
    r = bt.scores_of(top, exact, target=np.array([0, 7]))
    assert r == {"r1": 0.5, "r10": 0.5, "agree1": 0.5, "agree10": pytest.approx(0.55)}


def test_ranked_is_cosine_and_rec_cos() -> None:
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((50, 8)).astype(np.float32)
    q = bank[:5] * 3.0  # scaled copies: cosine still finds them first
    assert bt.ranked(q, bank)[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert bt.rec_cos(bank, 2 * bank) == pytest.approx(1.0, abs=1e-6)


def test_pca_map_round_trips_at_full_rank_and_int8() -> None:
    x = np.random.default_rng(1).standard_normal((200, 6)).astype(np.float32)
    p = bt.PCAMap(x)
    np.testing.assert_allclose(p.decode(p.codes(x, 6)), x, atol=1e-5)
    c = p.codes(x, 3)
    q = as_int8(c, int8_scales(torch.from_numpy(c)))
    assert np.abs(q - c).max() <= np.abs(c).max(axis=0).max() / 127
