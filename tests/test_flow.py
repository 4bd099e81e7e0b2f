import math

import pytest
import torch

from model.flow import AffineCoupling, FixedLinear, InvertibleNet, Permutation, SwiGLU
from model.testing import perturb_
from tests.helpers import assert_invertible


def perturbed_net(d: int, dtype: torch.dtype = torch.float32) -> InvertibleNet:
    net = InvertibleNet(d, n_layers=3, hidden=16, n_blocks=1, clamp=2.0, seed=1)
    perturb_(net, scale=0.2, seed=d)
    net = net.to(dtype)
    g = torch.Generator().manual_seed(d)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))
    net.linear.set(torch.rand(d, dtype=dtype), q * 1.7)  # non-identity map, log|det| != 0
    return net


@pytest.mark.parametrize("d", [2, 3, 7, 8, 64, 65])
def test_net_round_trip_float32(d: int) -> None:
    net = perturbed_net(d)
    x = torch.rand(32, d)
    y, _ = net(x)
    assert not torch.allclose(y[:, : d // 2], net.linear(x)[0][:, : d // 2]) or d == 2
    assert_invertible(net, x, atol=1e-5)


@pytest.mark.parametrize("d", [3, 8, 65])
def test_net_round_trip_float64(d: int) -> None:
    net = perturbed_net(d, torch.float64)
    assert_invertible(net, torch.rand(32, d, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("d", [5, 6])
def test_log_det_matches_autograd_jacobian(d: int) -> None:
    net = perturbed_net(d, torch.float64)
    x = torch.rand(4, d, dtype=torch.float64)
    _, log_det = net(x)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: net(v[None])[0][0], x[i])
        assert torch.allclose(log_det[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-10)


@pytest.mark.parametrize("d", [7, 8])
def test_coupling_pass_through_half_is_bit_identical(d: int) -> None:
    layer = perturb_(AffineCoupling(d, hidden=16, n_blocks=1, clamp=2.0), scale=0.5)
    x = torch.rand(16, d)
    y, _ = layer(x)
    assert torch.equal(y[:, : d // 2], x[:, : d // 2])
    assert not torch.allclose(y[:, d // 2 :], x[:, d // 2 :])
    x_back, _ = layer.inverse(y)
    assert torch.equal(x_back[:, : d // 2], x[:, : d // 2])


def test_coupling_scale_is_soft_clamped() -> None:
    layer = perturb_(AffineCoupling(4, hidden=8, n_blocks=1, clamp=0.5), scale=50.0)
    _, log_det = layer(torch.rand(64, 4) * 10)
    assert log_det.abs().max() <= 0.5 * 2  # d2 = 2 values, each |s| <= clamp (tanh saturates)


def test_untrained_coupling_is_identity() -> None:
    layer = AffineCoupling(9, hidden=8, n_blocks=2, clamp=2.0)
    x = torch.rand(4, 9)
    y, log_det = layer(x)
    assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(4))


def test_permutation_is_seeded_buffer_and_inverts() -> None:
    a, b, c = Permutation(10, seed=3), Permutation(10, seed=3), Permutation(10, seed=4)
    assert torch.equal(a.perm, b.perm) and not torch.equal(a.perm, c.perm)
    assert {"perm", "inv_perm"} <= set(a.state_dict())
    x = torch.rand(3, 10)
    assert torch.equal(a.inverse(a(x)[0])[0], x)


def test_permutation_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Permutation(50, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_fixed_linear_log_det() -> None:
    layer = FixedLinear(3)
    layer.set(torch.zeros(3), torch.diag(torch.tensor([2.0, 3.0, 0.5])))
    _, log_det = layer(torch.rand(2, 3))
    assert torch.allclose(log_det, torch.full((2,), float(torch.log(torch.tensor(3.0)))))


def test_swiglu_shapes() -> None:
    assert SwiGLU(5, 7, 3)(torch.rand(2, 5)).shape == (2, 3)


def silu(v: float) -> float:
    return v / (1 + math.exp(-v))


def test_swiglu_values_by_hand() -> None:
    # w_in's 4 outputs are [a1, a2, b1, b2]: the first half gates (silu), the second is linear.
    layer = SwiGLU(2, 2, 2).double()
    with torch.no_grad():
        layer.w_in.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [1.0, 1.0], [-1.0, 2.0]]))
        layer.w_in.bias.copy_(torch.tensor([0.5, 0.0, 0.25, -1.0]))
        layer.w_out.weight.copy_(torch.tensor([[2.0, 1.0], [0.0, -3.0]]))
        layer.w_out.bias.copy_(torch.tensor([0.125, 1.0]))
    x = torch.tensor([[1.0, 2.0], [-0.5, 0.0]], dtype=torch.float64)
    expected = []
    for x1, x2 in x.tolist():
        a1, a2 = x1 + 0.5, -x2
        b1, b2 = x1 + x2 + 0.25, -x1 + 2 * x2 - 1
        h1, h2 = silu(a1) * b1, silu(a2) * b2
        expected.append([2 * h1 + h2 + 0.125, -3 * h2 + 1])
    # row 0: a = (1.5, -2), b = (3.25, 2); row 1: a = (0, 0) so silu = 0 and only the biases stay
    assert expected[1] == [0.125, 1.0]
    out = layer(x).detach()
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    # and the two halves are not interchangeable: silu(b) * a gives another answer
    swapped = 2 * silu(3.25) * 1.5 + silu(2.0) * -2.0 + 0.125
    assert abs(float(out[0, 0]) - swapped) > 0.1


def test_output_order_tracks_permutations() -> None:
    net = InvertibleNet(6, n_layers=3, hidden=4, n_blocks=0, clamp=1.0, seed=0)
    u = torch.arange(6.0)[None]  # identity couplings: z = permuted u
    z, _ = net(u)
    assert torch.equal(z[0], u[0, net.output_order()])
