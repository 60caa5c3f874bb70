"""Likelihood evaluation: exact KL against independent sums, importance sampling against exact
marginals, and the bars data against its generative process."""
import itertools
import math

import numpy as np
import pytest
import torch

from dynets.data import bars, bars_distribution
from dynets.likelihood import Likelihood, binary_states, factorised_kl_bits, importance_log_prob, kl_bits


class OneCause(torch.nn.Module):
    """h ~ Bernoulli(π); each pixel x_i | h ~ Bernoulli(θ_{h,i}). Its proposal q(h | x) is
    Bernoulli(r), the exact posterior when ``exact_proposal``."""

    def __init__(self, n: int = 5, exact_proposal: bool = False, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.theta = torch.nn.Parameter(torch.rand(2, n, generator=g, dtype=torch.float64) * 0.8 + 0.1)
        self.prior = 0.3
        self.exact_proposal = exact_proposal

    @property
    def dtype(self):
        return torch.float64

    def _log_px_given(self, x, h):   # x (batch, n), h (k, batch, 1) → (k, batch)
        theta = torch.where(h > 0.5, self.theta[1], self.theta[0])
        return (x * theta.log() + (1 - x) * (1 - theta).log()).sum(-1)

    def log_joint(self, x, hidden):
        (h,) = hidden
        prior = h[..., 0] * math.log(self.prior) + (1 - h[..., 0]) * math.log(1 - self.prior)
        return prior + self._log_px_given(x, h)

    def log_prob(self, x):
        both = torch.stack([self.log_joint(x, (torch.full((1, len(x), 1), v, dtype=x.dtype),))[0] for v in (0.0, 1.0)])
        return torch.logsumexp(both, 0)

    def proposal(self, x, k, generator):
        if self.exact_proposal:
            one = self.log_joint(x, (torch.ones(1, len(x), 1, dtype=x.dtype),))[0]
            r = torch.exp(one - self.log_prob(x))
        else:
            r = torch.full((len(x),), 0.5, dtype=x.dtype)
        h = (torch.rand(k, len(x), 1, generator=generator, dtype=x.dtype) < r[None, :, None]).to(x.dtype)
        log_q = torch.where(h[..., 0] > 0.5, r.log(), (1 - r).log())
        return (h,), log_q


def test_binary_states_are_every_vector_once():
    states = binary_states(5)
    assert states.shape == (32, 5) and len(torch.unique(states, dim=0)) == 32
    assert set(states.flatten().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="importance"):
        binary_states(40)


def test_kl_is_zero_for_the_data_distribution_and_matches_a_direct_sum():
    images, probs = bars_distribution()

    class Exact(torch.nn.Module):
        dtype = torch.float64

        def log_prob(self, x):
            table = {tuple(im.tolist()): math.log(p) for im, p in zip(images, probs)}
            return torch.tensor([table[tuple(r.tolist())] for r in x.float()], dtype=torch.float64)

    assert abs(kl_bits(Exact(), (images, probs))) < 1e-12
    model = OneCause(16)
    direct = sum(p * (math.log2(p) - model.log_prob(im[None].double()).item() / math.log(2))
                 for im, p in zip(images, probs.tolist()))
    assert kl_bits(model, (images, probs)) == pytest.approx(direct, rel=1e-10)


def test_the_independent_pixel_baseline_on_bars():
    images, probs = bars_distribution()
    x, p = images.numpy().astype(float), probs.numpy()
    marginal = (p[:, None] * x).sum(0)
    # The same KL by a loop over images and pixels (the issue quotes 8.1 bits for it).
    kl = sum(pi * (np.log2(pi) - sum(np.log2(m if xi else 1 - m) for xi, m in zip(row, marginal)))
             for row, pi in zip(x, p))
    assert factorised_kl_bits((images, probs)) == pytest.approx(kl, rel=1e-9)
    assert 8.0 < kl < 8.2


def test_the_likelihood_of_a_small_model_sums_to_one():
    model = OneCause(6)
    assert torch.logsumexp(model.log_prob(binary_states(6, torch.float64)), 0).exp().item() == pytest.approx(1, abs=1e-12)


def test_importance_sampling_is_exact_with_the_posterior_and_converges_with_k():
    x = binary_states(5, torch.float64)
    g = torch.Generator().manual_seed(0)
    exact = OneCause(5).log_prob(x)
    assert torch.allclose(importance_log_prob(OneCause(5, exact_proposal=True), x, 1, g), exact, atol=1e-12)
    errors = [(importance_log_prob(OneCause(5), x, k, g) - exact).abs().mean().item() for k in (1, 100, 10000)]
    assert errors[0] > 5 * errors[1] > 25 * errors[2]   # error ∝ 1/√k: 10x per 100x samples
    assert errors[2] < 0.01


def test_the_likelihood_evaluation():
    data = bars(n_train=10, n_val=500, n_test=10)
    model = OneCause(16)
    exact = Likelihood(data.distribution)(model, data.val)
    assert exact["nll_bits"] == pytest.approx(-model.log_prob(data.val.x.double()).mean().item() / math.log(2))
    assert exact["kl_bits"] == pytest.approx(kl_bits(model, data.distribution))
    sampled = Likelihood(k=2000, seed=3)(model, data.val)
    assert sampled == Likelihood(k=2000, seed=3)(model, data.val)       # the same draws every call
    assert sampled["nll_bits"] == pytest.approx(exact["nll_bits"], abs=0.01)
    with pytest.raises(ValueError, match="k >= 1"):
        importance_log_prob(model, data.val.x.double(), 0, torch.Generator())


def test_bars_samples_follow_the_generative_process():
    data = bars(n_train=40000, n_val=10, n_test=10, seed=1)
    images, probs = data.distribution
    x, y = data.train.x, data.train.y
    grid = x.reshape(-1, 4, 4)
    vertical = (grid == grid[:, :1, :]).all(2).all(1)      # every row the same: columns are the bars
    horizontal = (grid == grid[:, :, :1]).all(2).all(1)
    assert (vertical | horizontal).all() and (vertical[y == 0]).all() and (horizontal[y == 1]).all()
    # Frequencies of the 30 images vs their probabilities: a bar is on with p = 0.2, vertical 2/3.
    match = (x[:, None, :] == images[None]).all(2).double()
    assert torch.allclose(match.mean(0), probs, atol=0.01)
    by_hand = {}
    for orient, bits in itertools.product((0, 1), itertools.product((0, 1), repeat=4)):
        image = np.zeros((4, 4))
        for i, b in enumerate(bits):
            if b:
                image[(slice(None), i) if orient == 0 else (i, slice(None))] = 1
        p = (2 / 3 if orient == 0 else 1 / 3) * np.prod([0.2 if b else 0.8 for b in bits])
        by_hand[tuple(image.ravel())] = by_hand.get(tuple(image.ravel()), 0) + p
    assert {tuple(im.tolist()): pytest.approx(p) for im, p in zip(images, probs.tolist())} == by_hand
    with pytest.raises(ValueError, match="p_bar"):
        bars_distribution(p_bar=1.0)
