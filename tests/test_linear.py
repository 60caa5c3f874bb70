"""The layout-chosen products of dynets.models._linear give F.linear's value and gradients."""
import pytest
import torch
import torch.nn.functional as F

from dynets.models._linear import NARROW, bottom_up, linear


@pytest.mark.parametrize("n_out", [3, NARROW, NARROW + 1, 64])
@pytest.mark.parametrize("batch_bias", [False, True])
def test_products_equal_functional_linear(n_out, batch_bias):
    g = torch.Generator().manual_seed(n_out)
    s = torch.randn(7, 33, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n_out, 33, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(*((7,) if batch_bias else ()), n_out, generator=g, dtype=torch.float64, requires_grad=True)
    products = [lambda: bottom_up(w)(b, s)] + ([] if batch_bias else [lambda: linear(s, w, b)])
    for product in products:
        want, got = s @ w.T + b, product()   # the definition, differentiated by autograd below
        assert got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
        upstream = torch.randn(want.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad(got, (s, w, b), upstream)
        expected = torch.autograd.grad(want, (s, w, b), upstream)
        for a, e in zip(grads, expected):
            torch.testing.assert_close(a, e, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(linear(s, w, b[0] if batch_bias else b), F.linear(s, w, b[0] if batch_bias else b))
