"""Layered Hopfield network of Scellier & Bengio (2017), in the primitive-function form
of Laborieux et al. (2021)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..types import Condition, LayerMap, State, VectorField
from .base import EnergyModel


@dataclass(frozen=True)
class Activation:
    """ρ and G with G' = ρ⁻¹, so that s = ρ(u) is the stationary point of G(s) − u·s;
    ``rho_`` is ρ in place (a settle step applies ρ to fresh drives: one allocation less)."""

    rho: Callable[[torch.Tensor], torch.Tensor]
    G: Callable[[torch.Tensor], torch.Tensor]
    rho_: Callable[[torch.Tensor], torch.Tensor]


def _entropy(s: torch.Tensor) -> torch.Tensor:
    return torch.xlogy(s, s) + torch.xlogy(1 - s, 1 - s)


ACTIVATIONS = {
    # G = ½s² on the box [0, 1]: the fixed point clip(u) is the box-constrained minimum.
    "hard_sigmoid": Activation(lambda u: u.clamp(0.0, 1.0), lambda s: 0.5 * s * s, lambda u: u.clamp_(0.0, 1.0)),
    "sigmoid": Activation(torch.sigmoid, _entropy, torch.sigmoid_),
    "tanh": Activation(torch.tanh, lambda s: 0.5 * (torch.xlogy(1 + s, 1 + s) + torch.xlogy(1 - s, 1 - s)),
                       torch.tanh_),
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

    def drives(self, state: State, condition: Condition) -> list[torch.Tensor]:
        """u_l = ∂Φ_β/∂s_l for each free layer (what ρ is applied to)."""
        return self._drive_fn(condition)(state, range(len(state)))

    def _drive_fn(self, condition: Condition) -> Callable[[State, range], list[torch.Tensor]]:
        """``u(s, layers)``: the drives of ``layers`` with everything constant during a
        settle computed once: the input drive W₀x + b₀ (the one large matmul), β·y folded
        into the top bias, and transposed weights made contiguous (a transposed view makes
        the bottom-up matmul 2x slower on CPU). Plain tensor ops: on small layers, op
        overhead is the cost of a step."""
        self.check_input(condition.x)
        weights = [layer.weight for layer in self.layers]
        up = [weights[0].t()] + [w.t().contiguous() for w in weights[1:]]   # W₀ is used once
        biases = [layer.bias for layer in self.layers]
        beta, top = condition.beta, len(weights) - 1
        if beta != 0.0:
            biases[top] = biases[top] + beta * condition.target   # Φ_β = Φ − β·½‖s_L − y‖²
        w0, b0 = weights[0], biases[0]
        key = (id(self), w0._version, b0._version, torch.is_autocast_enabled(condition.x.device.type))
        first = condition.cached(key, lambda: torch.addmm(b0, condition.x, up[0]))

        def u(state: State, layers: range) -> list[torch.Tensor]:
            """Fresh tensors (never ``first`` itself), so that callers may work in place."""
            out = []
            for l in layers:
                ul = first if l == 0 else torch.addmm(biases[l], state[l - 1], up[l])
                if l < top:
                    ul = torch.addmm(ul, state[l + 1], weights[l + 1])   # top-down, same W: symmetric
                elif beta != 0.0:
                    ul = ul.add(state[l], alpha=-beta)
                elif l == 0:
                    ul = ul.clone()   # a one-layer net
                out.append(ul)
            return out

        return u

    def dynamics(self, condition: Condition) -> VectorField:
        u, rho_ = self._drive_fn(condition), self.act.rho_

        def f(t: torch.Tensor, state: State) -> State:
            return tuple(rho_(ul) - s for ul, s in zip(u(state, range(len(state))), state))

        return f

    def parity_maps(self, condition: Condition) -> tuple[LayerMap, LayerMap]:
        """g = ρ(∂Φ_β/∂s) (ds/dt = g(s) − s) of the even layers (``state[0::2]``) and of
        the odd ones (``state[1::2]``): layer l couples only to l ± 1, so each parity's g
        reads only the other parity (and, at the top, the β self-term). Used by
        ``settle(method="gauss_seidel")``."""
        u, rho_ = self._drive_fn(condition), self.act.rho_

        def parity(first: int) -> LayerMap:
            return lambda state: [rho_(ul) for ul in u(state, range(first, len(state), 2))]

        return parity(0), parity(1)

    def param_grad_difference(self, a: State, b: State, condition: Condition,
                              scale: float = 1.0) -> tuple[torch.Tensor, ...]:
        """scale·[∂F/∂θ(a) − ∂F/∂θ(b)] for two states under the same input: the first
        layer's term −⟨(a₁ − b₁) xᵀ⟩ is one matmul instead of two, and the scale is folded
        into the small factors, not applied to the weight-sized results (a pass over W₀
        costs as much as a small matmul on CPU)."""
        x, scale = condition.x, -scale / condition.x.shape[0]
        d0 = (a[0] - b[0]).mul_(scale)
        grads = [d0.T @ x, d0.sum(0)]
        for l in range(1, len(a)):
            hebb = torch.addmm(b[l].T @ b[l - 1], a[l].T, a[l - 1], beta=-scale, alpha=scale)
            grads += [hebb, (a[l] - b[l]).sum(0).mul_(scale)]
        return tuple(grads)

    def param_grads(self, state: State, condition: Condition) -> tuple[torch.Tensor, ...]:
        """∂F/∂θ, batch mean, in closed form: ∂F/∂W_l = −⟨s_{l+1} s_lᵀ⟩, ∂F/∂b_l = −⟨s_{l+1}⟩
        (the Hebbian terms of EP). C does not depend on θ."""
        below = (condition.x,) + tuple(state[:-1])
        scale = -1.0 / condition.x.shape[0]
        # In-place scaling: on a 512x784 weight a separate div and neg cost more than the matmul.
        return tuple(g for s, b in zip(state, below) for g in ((s.T @ b).mul_(scale), s.sum(0).mul_(scale)))

    def primitive(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch,)`` Φ(s; x) = Σ_l s_{l+1}ᵀ (W_l s_l + b_l)."""
        below = (condition.x,) + tuple(state[:-1])
        return sum((s * layer(b)).sum(1) for s, layer, b in zip(state, self.layers, below))

    def energy(self, state: State, condition: Condition) -> torch.Tensor:
        return sum(self.act.G(s).sum(1) for s in state) - self.primitive(state, condition)
