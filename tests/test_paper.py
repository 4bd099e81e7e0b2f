"""model/paper.py: the paper's images, synthetic data, scores and training set-up (no long runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from model import paper


def test_four_images_cut_into_patches() -> None:
    images = paper.flower_images()
    assert [im.shape for im in images] == [(208, 320)] * 4
    patches = paper.to_patches(images[0])
    assert patches.shape == (26 * 40, 64) and patches.dtype == np.float32
    assert np.array_equal(patches[1], images[0][:8, 8:16].reshape(-1).astype(np.float32))
    assert float(patches.min()) >= 0.0 and float(patches.max()) <= 1.0


@pytest.mark.parametrize("kind", paper.SYNTHETIC)
def test_synthetic_patches_are_seeded_and_in_range(kind: str) -> None:
    a, b = paper.synthetic(kind, 500, seed=0), paper.synthetic(kind, 500, seed=0)
    assert a.shape == (500, 64) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, paper.synthetic(kind, 500, seed=1))
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    with pytest.raises(ValueError, match="synthetic kind"):
        paper.synthetic("noise", 10, seed=0)


def test_fields_are_smooth() -> None:
    """1/f^2 fields: neighbouring pixels correlate far more than white noise's (0)."""
    x = paper.field_patches(2000, seed=0).reshape(-1, 8, 8)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    corr = (x[:, :, 1:] * x[:, :, :-1]).mean() / (x**2).mean()
    assert corr > 0.4


def test_image_scores_by_hand() -> None:
    x = np.zeros((4, 4), dtype=np.float32)
    s = paper.image_scores(x, x + 0.1)
    assert s["mse"] == pytest.approx(0.01) and s["mae"] == pytest.approx(0.1)
    assert s["psnr"] == pytest.approx(20.0)
    assert paper.image_scores(x, x - 0.5)["mse"] == 0.0  # clipped to [0, 1] first


def test_untrained_idrp_is_pca_on_its_training_items() -> None:
    """No pre-training and no joint steps: the PCA start reproduces PCA fitted on the same items."""
    x = paper.to_patches(paper.flower_images()[1])
    model = paper.train_idrp(x, paper.TrainSpec(pretrain_steps=0, steps=0))
    assert (model.config.n_layers, model.config.hidden, model.config.m) == (6, 256, 8)
    with torch.no_grad():
        idrp = model.decode(model.encode(torch.from_numpy(x))).numpy()
    pca = PCA(n_components=8).fit(x)
    ours, theirs = (
        paper.image_scores(x, idrp),
        paper.image_scores(x, pca.inverse_transform(pca.transform(x))),
    )
    assert ours["psnr"] == pytest.approx(theirs["psnr"], abs=1e-3)


def test_the_paper_identity_start_keeps_m_pixels() -> None:
    """pca_init=False: f is the identity and its fixed permutations, and g predicts 0, so the
    code is 8 of the patch's pixels, which decode exactly, and the other 56 decode as 0."""
    x = paper.to_patches(paper.flower_images()[1])
    model = paper.train_idrp(x, paper.TrainSpec(pretrain_steps=0, steps=0, pca_init=False))
    assert not model.config.pca_init
    with torch.no_grad():
        x_hat = model.decode(model.encode(torch.from_numpy(x))).numpy()
    kept = [k for k in range(64) if np.array_equal(x_hat[:, k], x[:, k])]
    assert len(kept) == 8
    assert not np.delete(x_hat, kept, axis=1).any()
