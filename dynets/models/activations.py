"""The activations of the layered models, two kinds that are not interchangeable.

:class:`EnergyActivation` (LayeredHopfield, Asymmetric, ReadBackHopfield): ρ with its primitive
G (G' = ρ⁻¹), which enters the energy, and the prox of the nudged top layer's exact update.
:class:`PredictionActivation` (PredictiveCoding): f with its derivative and its largest slope,
which enter the predictions μ_l = W_l f(v) + b_l and bound a Gauss–Seidel step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class EnergyActivation:
    """ρ and G with G' = ρ⁻¹, so that s = ρ(u) is the stationary point of G(s) − u·s;
    ``rho_`` is ρ in place (a settle step applies ρ to fresh drives: one allocation less);
    ``prox(c, k)`` is argmin_s G(s) + ½k·s² − c·s, the nudged top layer's exact update."""

    rho: Callable[[torch.Tensor], torch.Tensor]
    G: Callable[[torch.Tensor], torch.Tensor]
    rho_: Callable[[torch.Tensor], torch.Tensor]
    prox: Callable[[torch.Tensor, float], torch.Tensor]


def _entropy(s: torch.Tensor) -> torch.Tensor:
    return torch.xlogy(s, s) + torch.xlogy(1 - s, 1 - s)


def _box_prox(c: torch.Tensor, k: float, a: float = 1.0) -> torch.Tensor:
    """argmin over [0, 1] of ½(a + k)s² − c·s (G = ½a·s² on the box): clip(c/(a + k)) where it
    is convex; for a + k ≤ 0 it is concave and the minimum is at the end where it is lower."""
    if a + k > 0.0:
        return (c / (a + k)).clamp_(0.0, 1.0)
    return (c > 0.5 * (a + k)).to(c.dtype)


def _newton_prox(rho: Callable, drho: Callable, slope: float) -> Callable:
    """prox of a smooth ρ with max ρ' = ``slope``: ρ(u) where u + k·ρ(u) = c, by Newton in u.
    The map is increasing when 1 + k·slope > 0, and a Newton step then cuts the error by
    a factor ≤ |k|·slope/(1 + min(k, 0)·slope) at worst, quadratically near the root;
    ``steps`` steps from u = c. Where the block is not convex (1 + k·slope ≤ 0) it returns
    ``None``: the caller keeps the plain update ρ(c − k·s)."""
    def prox(c: torch.Tensor, k: float, steps: int = 12) -> torch.Tensor | None:
        if 1.0 + k * slope <= 0.0:
            return None
        u = c.clone()
        for _ in range(steps):
            r = rho(u)
            u = u - (u + k * r - c) / (1.0 + k * drho(r))
        return rho(u)
    return prox


ACTIVATIONS = {
    # G = ½s² on the box [0, 1]: the fixed point clip(u) is the box-constrained minimum.
    "hard_sigmoid": EnergyActivation(lambda u: u.clamp(0.0, 1.0), lambda s: 0.5 * s * s,
                                     lambda u: u.clamp_(0.0, 1.0), _box_prox),
    # The published convolutional EP code's my_hard_sig, (1 + hardtanh(u − 1))/2 = clip(u/2, 0, 1)
    # (Laborieux et al. 2021): slope ½ on [0, 2]. ρ⁻¹(s) = 2s, so G = s² on the box [0, 1].
    "hard_sigmoid_half_slope": EnergyActivation(lambda u: (0.5 * u).clamp(0.0, 1.0), lambda s: s * s,
                                                lambda u: u.mul_(0.5).clamp_(0.0, 1.0),
                                                lambda c, k: _box_prox(c, k, 2.0)),
    "sigmoid": EnergyActivation(torch.sigmoid, _entropy, torch.sigmoid_,
                                _newton_prox(torch.sigmoid, lambda r: r * (1 - r), 0.25)),
    "tanh": EnergyActivation(torch.tanh, lambda s: 0.5 * (torch.xlogy(1 + s, 1 + s) + torch.xlogy(1 - s, 1 - s)),
                             torch.tanh_, _newton_prox(torch.tanh, lambda r: 1 - r * r, 1.0)),
}


@dataclass(frozen=True)
class PredictionActivation:
    """f, its derivative ``df(s, f(s))`` (given f(s) too, so tanh and sigmoid reuse it), and
    ``slope`` = sup |f'| (it bounds a layer's curvature for Gauss–Seidel steps)."""

    f: Callable[[torch.Tensor], torch.Tensor]
    df: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    slope: float


PC_ACTIVATIONS = {
    "tanh": PredictionActivation(torch.tanh, lambda s, fs: 1 - fs * fs, 1.0),
    "sigmoid": PredictionActivation(torch.sigmoid, lambda s, fs: fs * (1 - fs), 0.25),
    "relu": PredictionActivation(torch.relu, lambda s, fs: (s > 0).to(s.dtype), 1.0),
    # clip(s, 0, 1): the energy models' hard sigmoid, so that backprop can train the net EP trains.
    "hard_sigmoid": PredictionActivation(lambda s: s.clamp(0.0, 1.0), lambda s, fs: ((s > 0) & (s < 1)).to(s.dtype), 1.0),
    # GELU, f(s) = s·Φ(s): relu-like but smooth, so the gradient flow does not chatter at a kink.
    # f' = Φ(s) + s·φ(s) peaks at s = √2: Φ(√2) + √2·φ(√2) = 1.1289.
    "gelu": PredictionActivation(torch.nn.functional.gelu,
                                 lambda s, fs: 0.5 * (1 + torch.erf(s * 0.5 ** 0.5))
                                 + s * torch.exp(-0.5 * s * s) * (2 * math.pi) ** -0.5,
                                 1.129),
    "linear": PredictionActivation(lambda s: s, lambda s, fs: torch.ones_like(s), 1.0),
}
