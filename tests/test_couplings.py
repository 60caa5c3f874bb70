"""Couplings: each adjoint is autograd's vector–Jacobian product of its forward map; the
poolings' adjoints are those of their definitions; bad shapes are named."""
import pytest
import torch
from torch import nn

from dynets.couplings import Conv, Dense, Module, check_chain



def autograd_vjp(coupling, s, e):
    s = s.detach().requires_grad_()
    return torch.autograd.grad(coupling(s), s, e)[0]


COUPLINGS = [
    lambda: Dense((3,), 4),
    lambda: Dense((2, 4, 4), 5),
    lambda: Conv((2, 6, 6), 3, 3),
    lambda: Conv((2, 6, 6), 3, 3, padding=1, pool="max"),
    lambda: Conv((2, 7, 7), 3, 3, stride=2, padding=1),        # output_padding 0
    lambda: Conv((2, 8, 8), 3, 3, stride=2, padding=1, pool="avg"),   # output_padding 1
    lambda: Conv((1, 9, 9), 2, 2, stride=2, pool="max"),      # stride skips the last row
    lambda: Module(nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(48, 4)), (2, 6, 6)),
]


@pytest.mark.parametrize("make", COUPLINGS)
def test_adjoint_is_autograds_vjp(make):
    torch.manual_seed(0)
    coupling = make().double()
    s = torch.randn(3, *coupling.in_shape, dtype=torch.float64)
    e = torch.randn(3, *coupling.out_shape, dtype=torch.float64)
    assert coupling(s).shape == (3, *coupling.out_shape)
    expected = autograd_vjp(coupling, s, e)
    with torch.no_grad():
        assert torch.allclose(coupling.adjoint(s, e), expected, atol=1e-12)
        out, vjp = coupling.linearize(s)
        assert torch.allclose(out, coupling(s), atol=1e-12)
        assert torch.allclose(vjp(e), expected, atol=1e-12)


@pytest.mark.parametrize("make", COUPLINGS)
def test_tangent_is_autograds_jvp(make):
    """(∂g/∂s at s)·u against the Jacobian–vector product of the forward map by double backward
    (reverse mode twice: independent of the leaves' closed forms and of torch.func.jvp)."""
    torch.manual_seed(0)
    coupling = make().double()
    s = torch.randn(3, *coupling.in_shape, dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, *coupling.in_shape, dtype=torch.float64)
    e = torch.zeros(3, *coupling.out_shape, dtype=torch.float64, requires_grad=True)
    vjp = torch.autograd.grad(coupling(s), s, e, create_graph=True)[0]
    expected = torch.autograd.grad(vjp, e, u)[0]
    with torch.no_grad():
        assert torch.allclose(coupling.tangent(s.detach())(u), expected, atol=1e-12)


@pytest.mark.parametrize("make", COUPLINGS)
def test_param_vjp_is_autograds(make):
    """∂⟨g(s), e⟩/∂θ in closed form (Dense, Conv) against autograd, parameter by parameter."""
    torch.manual_seed(0)
    coupling = make().double()
    s = torch.randn(3, *coupling.in_shape, dtype=torch.float64)
    e = torch.randn(3, *coupling.out_shape, dtype=torch.float64)
    expected = torch.autograd.grad((coupling(s) * e).sum(), list(coupling.parameters()))
    with torch.no_grad():
        got = coupling.param_vjp(s, e)
    for g, want in zip(got, expected, strict=True):
        torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-12)


def identity_conv(pool):
    """A 1x1 convolution with weight 1 and no bias: g = pool(s), so the adjoint is the pooling's."""
    c = Conv((1, 4, 4), 1, 1, pool=pool).double()
    with torch.no_grad():
        c.conv.weight.fill_(1.0)
        c.conv.bias.zero_()
    return c


def test_max_pool_adjoint_routes_to_the_argmax():
    torch.manual_seed(1)
    s = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    e = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    got = identity_conv("max").adjoint(s, e)
    expected = torch.zeros_like(s)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                window = s[b, 0, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                r, c = divmod(int(window.argmax()), 2)
                expected[b, 0, 2 * i + r, 2 * j + c] = e[b, 0, i, j]
    assert torch.equal(got, expected)


def test_avg_pool_adjoint_spreads_a_quarter():
    torch.manual_seed(2)
    s = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    e = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    got = identity_conv("avg").adjoint(s, e)
    for i in range(4):
        for j in range(4):
            assert torch.allclose(got[:, 0, i, j], e[:, 0, i // 2, j // 2] / 4)


def test_pooling_that_does_not_divide_the_map_names_the_sizes():
    with pytest.raises(ValueError, match="does not divide the 5x5 map.*7x7 input"):
        Conv((1, 7, 7), 2, 3, pool="max")


def test_kernel_larger_than_the_map():
    with pytest.raises(ValueError, match="5x5 kernel.*does not fit the 3x3"):
        Conv((1, 3, 3), 2, 5)


def test_chain_names_both_shapes():
    with pytest.raises(ValueError, match=r"coupling 0 \(Conv\) outputs \(3, 2, 2\).*coupling 1 \(Dense\) takes \(3, 3, 3\)"):
        check_chain([Conv((1, 6, 6), 3, 3, pool="max"), Dense((3, 3, 3), 2)])
    check_chain([Conv((1, 6, 6), 3, 3, pool="max"), Dense((3, 2, 2), 2)])


def test_unknown_pool():
    with pytest.raises(ValueError, match="unknown pool 'min'; valid: none, max, avg"):
        Conv((1, 6, 6), 2, 3, pool="min")
