"""Layered Hopfield network of Scellier & Bengio (2017), in the primitive-function form
of Laborieux et al. (2021)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..settle import VectorField
from ..types import Condition, State
from .base import EnergyModel


@dataclass(frozen=True)
class Activation:
    """ρ and G with G' = ρ⁻¹, so that s = ρ(u) is the stationary point of G(s) − u·s."""

    rho: Callable[[torch.Tensor], torch.Tensor]
    G: Callable[[torch.Tensor], torch.Tensor]


def _entropy(s: torch.Tensor) -> torch.Tensor:
    return torch.xlogy(s, s) + torch.xlogy(1 - s, 1 - s)


ACTIVATIONS = {
    # G = ½s² on the box [0, 1]: the fixed point clip(u) is the box-constrained minimum.
    "hard_sigmoid": Activation(lambda u: u.clamp(0.0, 1.0), lambda s: 0.5 * s * s),
    "sigmoid": Activation(torch.sigmoid, _entropy),
    "tanh": Activation(torch.tanh, lambda s: 0.5 * (torch.xlogy(1 + s, 1 + s) + torch.xlogy(1 - s, 1 - s))),
}


class LayeredHopfield(EnergyModel):
    r"""Layered network with symmetric connections, settling to a minimum of

        E(s) = Σ_l Σ_i G(s_{l,i}) − Φ(s),   Φ(s) = Σ_l s_{l+1}ᵀ (W_l s_l + b_l),  s_0 = x,

    with the cost C = ½‖s_L − y‖² and the nudged total F = E + β·C. The dynamics are

        ds/dt = −s + ρ(∂Φ_β/∂s),   Φ_β = Φ − β·C,

    the continuous-time form of the fixed-point iteration s ← ρ(∂Φ/∂s) (Laborieux et al.
    2021, "Scaling EP to deep ConvNets"). We use this form rather than the gradient flow
    ds/dt = −∂F/∂s of Scellier & Bengio (2017) because with a clipping ρ the gradient flow
    chatters at the clip, while here a clipped unit sits exactly at its bound: the fixed
    point s = clip(u) is the KKT point of E on the box [0, 1]. For any increasing ρ the
    energy is non-increasing along trajectories (Hopfield 1984): dE/dt = Σ (ρ⁻¹(s) − u)(ρ(u) − s) ≤ 0.

    Args:
        sizes: ``[in_features, hidden..., out_features]``; the first layer is clamped to x.
        activation: one of ``hard_sigmoid`` (ρ = clip(·, 0, 1)), ``sigmoid``, ``tanh``.

    The state is ``(s_1, ..., s_L)``; the symmetric coupling is one matrix ``W_l`` used
    in both directions, so weights are symmetric by construction.
    """

    def __init__(self, sizes: list[int], activation: str = "hard_sigmoid") -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
            raise ValueError(f"sizes must list >= 2 positive layer sizes, got {list(sizes)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        self.sizes = [int(n) for n in sizes]
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.in_features, self.out_features = self.sizes[0], self.sizes[-1]
        # W_l maps layer l to l+1; its bias is b_{l+1}. nn.Linear's init (U(±1/√fan_in)).
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.sizes, self.sizes[1:]))

    def init_state(self, condition: Condition) -> State:
        x = condition.x
        return tuple(x.new_zeros(x.shape[0], n) for n in self.sizes[1:])

    def drives(self, state: State, condition: Condition, first: torch.Tensor | None = None) -> list[torch.Tensor]:
        """u_l = ∂Φ_β/∂s_l for each free layer; ``first`` is W₀x + b₀ if precomputed."""
        below = (condition.x,) + tuple(state[:-1])
        u = []
        for l, layer in enumerate(self.layers):
            ul = first if (l == 0 and first is not None) else layer(below[l])
            if l + 1 < len(self.layers):
                ul = ul + state[l + 1] @ self.layers[l + 1].weight
            u.append(ul)
        if condition.beta != 0.0:
            u[-1] = u[-1] + condition.beta * (condition.target - state[-1])
        return u

    def dynamics(self, condition: Condition) -> VectorField:
        self.check_input(condition.x)
        # The input drive W₀x + b₀ is constant during a settle: compute it once.
        first = self.layers[0](condition.x)
        rho = self.act.rho

        def f(t: torch.Tensor, state: State) -> State:
            return tuple(rho(u) - s for u, s in zip(self.drives(state, condition, first), state))

        return f

    def primitive(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch,)`` Φ(s; x) = Σ_l s_{l+1}ᵀ (W_l s_l + b_l)."""
        below = (condition.x,) + tuple(state[:-1])
        return sum((s * layer(b)).sum(1) for s, layer, b in zip(state, self.layers, below))

    def energy(self, state: State, condition: Condition) -> torch.Tensor:
        return sum(self.act.G(s).sum(1) for s in state) - self.primitive(state, condition)
