import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from model.config import IDRPConfig
from model.idrp import IDRP, compile_codec, tiny_idrp
from model.train import random_affine, random_shift


@pytest.mark.parametrize("d,m", [(64, 16), (9, 4), (10, 1)])
def test_encode_decode_shapes_and_dtype(d: int, m: int) -> None:
    model = tiny_idrp(d=d, m=m)
    x = torch.rand(5, d)
    z = model.encode(x)
    assert z.shape == (5, m) and z.dtype == torch.float32
    assert model.decode(z).shape == (5, d)


def test_images_of_any_shape_are_flattened() -> None:
    model = tiny_idrp(d=64, m=16)
    x = torch.rand(3, 8, 8)
    assert torch.equal(model.encode(x), model.encode(x.reshape(3, 64)))


def test_wrong_item_size_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected items of 64 values, got shape \(2, 63\)"):
        tiny_idrp().encode(torch.rand(2, 63))
    with pytest.raises(ValueError, match=r"expected codes of 16 values, got \(2, 15\)"):
        tiny_idrp().decode(torch.rand(2, 15))


def test_decode_uses_predictor_not_zeros() -> None:
    model = tiny_idrp(d=16, m=4)
    z = model.encode(torch.rand(3, 16))
    x_hat = model.decode(z)
    z_aux = model.predictor(z)
    expected, _ = model.flow.inverse(torch.cat([z, z_aux], dim=1))
    assert torch.equal(x_hat, expected)
    zeros, _ = model.flow.inverse(torch.cat([z, torch.zeros_like(z_aux)], dim=1))
    assert not torch.allclose(x_hat, zeros)


def test_untrained_pca_init_reproduces_pca_exactly() -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 12)) * np.arange(12, 0, -1) + 0.5).astype(
        np.float32
    )  # clear spectrum
    model = IDRP(IDRPConfig(d=12, m=5, n_layers=3, hidden=8, predictor_hidden=8))
    model.fit_pca(torch.from_numpy(x))
    pca = PCA(5).fit(x)
    expected = pca.inverse_transform(pca.transform(x))
    assert np.allclose(
        model.reconstruct(torch.from_numpy(x)).numpy(), expected, atol=1e-4 * np.abs(x).max()
    )


def test_loss_backpropagates_into_flow_and_predictor() -> None:
    model = tiny_idrp(d=16, m=4).train()
    loss, parts = model.loss(torch.rand(8, 16), aux_weight=0.5)
    loss.backward()
    assert parts["recon"] > 0 and parts["aux"] > 0
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert model.flow.layers[0].subnet[-1].weight.grad.abs().sum() > 0


def test_model_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    a = IDRP(IDRPConfig(d=8, m=2, seed=3))
    assert torch.equal(torch.rand(2), expected)
    b = IDRP(IDRPConfig(d=8, m=2, seed=3))
    assert all(
        torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_code_scales_cover_training_codes() -> None:
    model = tiny_idrp(d=16, m=4)
    x = torch.rand(50, 16)
    model.calibrate_code_scales(x)
    peak = model.encode(x).abs().amax(dim=0)
    assert torch.allclose(model.code_scales * 127, peak)


def test_augmentations_keep_shape_and_range() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 64)
    for out in (random_shift(x, (8, 8), 1, g), random_affine(x, (8, 8), 1.0, g)):
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(random_affine(x, (8, 8), 0.0, g), x)


def test_refined_codes_fit_better_and_batching_changes_nothing() -> None:
    model = tiny_idrp(d=16, m=4)
    x = torch.rand(6, 16)
    z0, z = model.encode(x), model.encode(x, refine_steps=20)
    err0 = ((model.decode(z0) - x) ** 2).sum(dim=1)
    err = ((model.decode(z) - x) ** 2).sum(dim=1)
    assert (err < err0).all()
    one_by_one = torch.cat([model.encode(x[i : i + 1], refine_steps=20) for i in range(6)])
    assert torch.allclose(one_by_one, z, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("d,m", [(64, 16), (9, 4), (10, 3)])
def test_compiled_codec_matches_eager(d: int, m: int) -> None:
    model = tiny_idrp(d=d, m=m)
    codec = compile_codec(model)
    assert codec.config == model.config and codec.fingerprint == model.fingerprint
    g = torch.Generator().manual_seed(1)
    for b in (1, 2, 5, 33):  # batch sizes other than the traced one (4)
        x = torch.rand(b, d, generator=g)
        z = model.encode(x)
        torch.testing.assert_close(codec.encode(x), z, atol=1e-6, rtol=0)
        torch.testing.assert_close(codec.decode(z), model.decode(z), atol=1e-6, rtol=0)
    images = torch.rand(3, d, generator=g).reshape(3, 1, d)  # (B, *shape) is flattened too
    torch.testing.assert_close(codec.encode(images), model.encode(images), atol=1e-6, rtol=0)
    # Refined codes need autograd: they run the eager model, the same steps.
    x = torch.rand(2, d, generator=g)
    assert torch.equal(codec.encode(x, refine_steps=3), model.encode(x, refine_steps=3))


def test_compiled_codec_checks_inputs_like_the_model() -> None:
    codec = compile_codec(tiny_idrp())
    with pytest.raises(ValueError, match=r"expected items of 64 values, got shape \(2, 63\)"):
        codec.encode(torch.rand(2, 63))
    with pytest.raises(ValueError, match=r"expected codes of 16 values, got \(2, 15\)"):
        codec.decode(torch.rand(2, 15))


def test_compiled_codec_is_checked_against_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_idrp(d=16, m=4)
    eager = model.reconstruct_from

    def shape_dependent(z: torch.Tensor) -> torch.Tensor:  # the tracer bakes in the branch
        return eager(z) + (1.0 if z.shape[0] == 4 else 0.0)

    monkeypatch.setattr(model, "reconstruct_from", shape_dependent)
    with (
        pytest.raises(RuntimeError, match=r"traced decode differs from the eager model by 1 "),
        pytest.warns(torch.jit.TracerWarning, match="Converting a tensor to a Python boolean"),
    ):
        compile_codec(model)
    with pytest.raises(ValueError, match="expected a model in eval mode"):
        compile_codec(tiny_idrp().train())
