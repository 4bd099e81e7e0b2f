import dataclasses
import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from torch import nn

from model.config import IDRPConfig
from model.flow import AffineCoupling
from model.idrp import IDRP, compile_codec, decode_batched, encode_batched, similarity_loss
from model.testing import tiny_idrp
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


def first_linear(model: IDRP) -> nn.Linear:
    """The first coupling's first layer (d // 2 -> hidden)."""
    coupling = model.flow.layers[0]
    assert isinstance(coupling, AffineCoupling) and isinstance(coupling.subnet[0], nn.Linear)
    return coupling.subnet[0]


def state_dicts_equal(a: IDRP, b: IDRP) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_model_init_is_seeded_and_leaves_global_rng_alone() -> None:
    config = IDRPConfig(d=8, m=2, n_layers=2, hidden=8, n_blocks=1, predictor_hidden=8, seed=3)
    torch.manual_seed(7)
    torch.rand(5)  # somewhere in the stream, not at a fresh seed
    before = torch.random.get_rng_state().clone()
    cuda_before = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    a = IDRP(config)
    assert torch.equal(torch.random.get_rng_state(), before)  # byte for byte: no draw, no reseed
    if torch.cuda.is_available():
        assert all(map(torch.equal, torch.cuda.get_rng_state_all(), cuda_before))
    torch.manual_seed(12345)  # the global RNG's state makes no difference to the weights
    b = IDRP(config)
    assert state_dicts_equal(a, b)
    c = IDRP(dataclasses.replace(config, seed=4))
    assert not state_dicts_equal(a, c)
    assert not torch.equal(first_linear(a).weight, first_linear(c).weight)
    assert not torch.equal(
        a.predictor.state_dict()["0.weight"], c.predictor.state_dict()["0.weight"]
    )


def test_model_init_neither_seeds_nor_restores_the_global_rng(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Seeding the global RNG and restoring it afterwards would leave the CPU state as it was,
    # but it reseeds CUDA's and races with any other thread drawing meanwhile: not allowed.
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("IDRP.__init__ touched the global RNG")

    for module, name in [
        (torch, "manual_seed"),
        (torch, "seed"),
        (torch, "set_rng_state"),
        (torch.random, "manual_seed"),
        (torch.random, "seed"),
        (torch.random, "set_rng_state"),
        (torch.random, "fork_rng"),
    ]:
        monkeypatch.setattr(module, name, refuse)
    before = torch.random.get_rng_state().clone()
    IDRP(IDRPConfig(d=8, m=2, n_layers=2, hidden=8, n_blocks=1, predictor_hidden=8))
    assert torch.equal(torch.random.get_rng_state(), before)


def test_model_init_draws_torch_default_init_and_keeps_the_zero_layers() -> None:
    config = IDRPConfig(d=9, m=4, n_layers=2, hidden=6, n_blocks=1, predictor_hidden=5, seed=11)
    model = IDRP(config)
    with torch.random.fork_rng(devices=[]):  # what nn.Linear would hold after seeding the RNG
        torch.manual_seed(config.seed)
        first = nn.Linear(4, 6)  # the first coupling's first layer: d // 2 = 4 -> hidden
    assert torch.equal(first_linear(model).weight, first.weight)
    assert torch.equal(first_linear(model).bias, first.bias)
    zero = [layer.subnet[-1] for layer in model.flow.layers if isinstance(layer, AffineCoupling)]
    zero.append(model.predictor.get_submodule("1.w_out"))
    assert len(zero) == 3
    for name, layer in model.named_modules():
        if not isinstance(layer, nn.Linear):
            continue
        if any(layer is z for z in zero):  # couplings start as the identity, g at zero
            assert not layer.weight.any() and not layer.bias.any(), name
        else:  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as nn.Linear
            bound = 1 / math.sqrt(layer.in_features)
            for p in (layer.weight, layer.bias):
                assert 0 < p.abs().max() <= bound, name


def test_code_scales_cover_training_codes() -> None:
    model = tiny_idrp(d=16, m=4)
    x = torch.rand(50, 16)
    model.calibrate_code_scales(x)
    peak = model.encode(x).abs().amax(dim=0)
    assert torch.allclose(model.code_scales * 127, peak)


def translate(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """image (h, w) moved dy rows down, dx columns right, zero fill: out[i, j] = in[i-dy, j-dx]."""
    h, w = image.shape
    out = torch.zeros_like(image)
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[i, j] = image[i - dy, j - dx]
    return out


def test_random_shift_moves_each_item_by_whole_pixels_with_zero_fill() -> None:
    image = torch.arange(1.0, 37.0).reshape(6, 6) / 36  # every pixel distinct and > 0
    assert torch.equal(translate(image, 1, -2)[1, :4], image[0, 2:])  # the helper, by hand
    assert translate(image, 1, -2)[0].sum() == 0 and translate(image, 1, -2)[:, 4:].sum() == 0
    n, p = 200, 2
    out = random_shift(
        image.reshape(1, 36).repeat(n, 1), (6, 6), p, torch.Generator().manual_seed(0)
    )
    assert out.shape == (n, 36)
    offsets = []
    for item in out.reshape(n, 6, 6):
        found = [
            (dy, dx)
            for dy in range(-p, p + 1)
            for dx in range(-p, p + 1)
            if torch.equal(item, translate(image, dy, dx))
        ]
        assert len(found) == 1  # exactly the input moved by whole pixels, |shift| <= max_shift
        offsets.append(found[0])
    assert set(offsets) == {(dy, dx) for dy in range(-p, p + 1) for dx in range(-p, p + 1)}
    # seeded: the same generator seed moves the same items the same way
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x = torch.rand(8, 36)
    assert torch.equal(random_shift(x, (6, 6), 1, g1), random_shift(x, (6, 6), 1, g2))
    # no shift, or items that are not 2-D images: unchanged
    assert torch.equal(random_shift(x, (6, 6), 0, g1), x)
    assert torch.equal(random_shift(x, (36,), 2, g1), x)


def test_random_affine_resamples_at_the_rotated_scaled_shifted_position() -> None:
    # A linear ramp: bilinear resampling reproduces it exactly wherever all four neighbours
    # are inside the image, so the output there is the ramp at the source position.
    h = w = 8

    def ramp(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return (4 + j + 2 * i) / 32

    i, j = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    image = ramp(i, j).to(torch.float32)  # in [0.125, 0.78]
    n, strength = 16, 1.0
    out = random_affine(
        image.reshape(1, -1).repeat(n, 1), (h, w), strength, torch.Generator().manual_seed(0)
    )
    # random_affine's draw: u (n, 4) in [-strength, strength] = angle, scale, x shift, y shift
    u = ((torch.rand(n, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1) * strength).double()
    angle = u[:, 0] * math.pi / 18  # up to 10 degrees
    scale = 1 + 0.1 * u[:, 1]  # up to 10 %
    c = (h - 1) / 2  # the image centre, in pixels
    interior = (slice(2, 6), slice(2, 6))
    moved = 0
    for k in range(n):
        cos, sin = torch.cos(angle[k]) / scale[k], torch.sin(angle[k]) / scale[k]
        # output pixel (i, j) samples the input at centre + R(angle) (p - centre) / scale + shift,
        # the shift being u / 2 pixels: half a pixel at strength 1
        j_src = c + cos * (j - c) - sin * (i - c) + u[k, 2] / 2
        i_src = c + sin * (j - c) + cos * (i - c) + u[k, 3] / 2
        expected = ramp(i_src, j_src)
        got = out[k].reshape(h, w).double()
        torch.testing.assert_close(got[interior], expected[interior], atol=1e-5, rtol=0)
        moved += int((got[interior] - image[interior].double()).abs().max() > 1e-3)
    assert moved == n  # every item actually moved
    assert out.min() >= 0 and out.max() <= 1
    x = torch.rand(3, 64)
    assert torch.equal(random_affine(x, (8, 8), 0.0, torch.Generator()), x)
    assert torch.equal(random_affine(x, (64,), 1.0, torch.Generator()), x)


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


@pytest.mark.parametrize("temp", [0.0, 0.05])
def test_similarity_loss_is_zero_for_the_same_cosines_and_grows_with_distortion(
    temp: float,
) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 12, generator=g)
    assert float(similarity_loss(x, 3 * x, temp)) == pytest.approx(0.0, abs=1e-6)
    near = similarity_loss(x, x + 0.1 * torch.randn(32, 12, generator=g), temp)
    far = similarity_loss(x, torch.randn(32, 12, generator=g), temp)
    assert 0 < float(near) < float(far)


def test_batched_encode_and_decode_match_one_call() -> None:
    model = IDRP(IDRPConfig(d=10, m=4, n_layers=2, hidden=8, n_blocks=1, predictor_hidden=8))
    x = torch.rand(7, 10)
    z = encode_batched(model, x.numpy(), batch_size=3)
    torch.testing.assert_close(z, model.encode(x))
    torch.testing.assert_close(decode_batched(model, z, batch_size=2), model.decode(z))
    assert encode_batched(model, x[:0]).shape == (0, 4)
