"""Evaluation of generative models by likelihood, not accuracy.

Exact, where the hidden states of a small machine can be enumerated: ``model.log_prob(x)``
gives log p(x) in nats (a model computes it by enumeration or in closed form, e.g. with
:func:`binary_states`), and :func:`kl_bits` the divergence KL(data‖model) from a known data
distribution (:func:`dynets.data.bars`). Estimated, for larger machines: :func:`importance_log_prob`
with the model's recognition pathway as the proposal (a Helmholtz machine's).

What a model provides for the importance-sampled estimate:

- ``proposal(x, k, generator) -> (hidden, log_q)``: k samples of the hidden layers given ``x``
  ``(batch, n)``, each layer ``(k, batch, units)``, and their log-probability ``(k, batch)``
  under the proposal q(h | x);
- ``log_joint(x, hidden) -> (k, batch)``: log p(x, h) under the generative model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .data import Split

LOG2 = math.log(2.0)
MAX_ENUMERATED = 24   # 2^24 states of 24 units: ~0.4 GB as float32; beyond that, estimate


def binary_states(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """All ``2^n`` binary vectors ``(2^n, n)`` in {0, 1}; raises beyond :data:`MAX_ENUMERATED` units."""
    if not 0 <= n <= MAX_ENUMERATED:
        raise ValueError(f"cannot enumerate the 2^{n} states of {n} binary units (at most {MAX_ENUMERATED}): "
                         "use an importance-sampled estimate (importance_log_prob) for a machine this large")
    if n == 0:
        return torch.zeros(1, 0, dtype=dtype, device=device)
    bits = torch.arange(2 ** n, device=device)[:, None] >> torch.arange(n - 1, -1, -1, device=device)
    return (bits & 1).to(dtype)


def kl_bits(model, distribution: tuple[torch.Tensor, torch.Tensor]) -> float:
    """KL(data‖model) = Σ_x p(x) log₂[p(x) / q(x)] in bits, q(x) = exp(model.log_prob(x)), over the
    support of the exact data distribution ``(images, probs)``."""
    images, probs = distribution
    with torch.no_grad():
        log_q = model.log_prob(images.to(model.dtype)).double()
    return float((probs * (probs.log() - log_q)).sum() / LOG2)


def factorised_kl_bits(distribution: tuple[torch.Tensor, torch.Tensor]) -> float:
    """KL(data‖q) in bits of the best independent-pixel model q (each pixel on with its
    marginal probability under the data): the baseline a model with hidden causes must beat."""
    images, probs = distribution
    x = images.double()
    on = (probs[:, None] * x).sum(0).clamp(1e-12, 1 - 1e-12)
    log_q = (x * on.log() + (1 - x) * (1 - on).log()).sum(1)
    return float((probs * (probs.log() - log_q)).sum() / LOG2)


@torch.no_grad()
def importance_log_prob(model, x: torch.Tensor, k: int, generator: torch.Generator, chunk: int = 256) -> torch.Tensor:
    """``(batch,)`` log p̂(x) = log (1/k) Σ_i p(x, h_i) / q(h_i | x), h_i ~ q(· | x), in nats.

    An unbiased estimate of p(x) (not of log p(x): its log is biased low, by less as k grows;
    Burda, Grosse & Salakhutdinov 2016). The k samples are drawn ``chunk`` at a time from
    ``generator`` and combined by a running log-sum-exp, so memory does not grow with k.
    """
    if k < 1:
        raise ValueError(f"need k >= 1 importance samples, got {k}")
    total = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    for start in range(0, k, chunk):
        hidden, log_q = model.proposal(x, min(chunk, k - start), generator)
        log_w = (model.log_joint(x, hidden) - log_q).double()
        total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
    return total - math.log(k)


@dataclass
class Likelihood:
    """An evaluation (``fit(..., evaluate=Likelihood(...))``): metrics of a generative model on a split.

    ``nll_bits``: the mean −log₂ p(x) over the split, exact (``model.log_prob``) when ``k`` is
    ``None``, else importance-sampled with ``k`` samples from a generator seeded with ``seed`` at
    every call (the same draws each epoch; the training streams are untouched). ``kl_bits``:
    KL(data‖model) when the exact ``distribution`` is given: a property of the model and the
    data distribution, the same whatever the split, so :func:`dynets.app.fit.fit` reports it once
    as ``kl_bits`` (it is in ``model_metrics``). Select the best epoch with ``select="kl_bits"``
    (or ``val_nll_bits``) and ``goal="minimize"``.
    """

    model_metrics: ClassVar[tuple[str, ...]] = ("kl_bits",)
    distribution: tuple[torch.Tensor, torch.Tensor] | None = None
    k: int | None = None
    seed: int = 0

    def __call__(self, model, split: Split) -> dict[str, float]:
        x = split.x.to(model.dtype)
        if self.k is None:
            with torch.no_grad():
                log_p = model.log_prob(x)
        else:
            log_p = importance_log_prob(model, x, self.k, torch.Generator(x.device).manual_seed(self.seed))
        metrics = {"nll_bits": float(-log_p.double().mean() / LOG2)}
        if self.distribution is not None:
            metrics["kl_bits"] = kl_bits(model, self.distribution)
        return metrics
