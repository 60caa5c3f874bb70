"""Layered Hopfield network of Scellier & Bengio (2017), in the primitive-function form
of Laborieux et al. (2021)."""
from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from ..costs import SquaredError
from ..phases import Block, Condition, State, VectorField, by_layer
from .activations import ACTIVATIONS, EnergyActivation
from .base import DynamicalModel, EnergyModel
from .fused import LayeredSweeps


class Layered(DynamicalModel):
    r"""A layered leaky network ds_l/dt = ρ(u_l) − s_l with the drive

        u_l = W_{l−1} s_{l−1} + b_l + D_l s_{l+1},   s_0 = x,   u_L: no term from above, nudged by −β·∂C/∂s_L,

    whose top-down matrices D_l a leaf gives by :meth:`top_down` (:class:`LayeredHopfield`:
    D_l = W_lᵀ, symmetric; ``Asymmetric``: a feedback pathway of its own). The flow, the
    Gauss–Seidel blocks and the shared input drive are this class's; a leaf sets ``sizes``,
    ``layers`` (``nn.Linear`` W_l, b_{l+1}) and ``act`` (an :class:`~dynets.models.activations.EnergyActivation`).
    """

    sizes: list[int]
    act: EnergyActivation

    @abstractmethod
    def top_down(self) -> list[torch.Tensor]:
        """[D_1ᵀ, ..., D_{L−1}ᵀ]: the matrix (n_{l+1}, n_l) that right-multiplies s_{l+1} in u_l."""

    def init_state(self, condition: Condition) -> State:
        x = condition.x
        return tuple(x.new_zeros(x.shape[0], n) for n in self.sizes[1:])

    def unit_bounds(self) -> tuple[float, float]:
        """(ρ(−∞), ρ(+∞)), the bounds of every unit (capability
        :class:`~dynets.capabilities.Saturating`)."""
        low, high = self.act.rho(torch.tensor([-math.inf, math.inf], dtype=torch.float64)).tolist()
        return low, high

    def prepare(self, condition: Condition) -> Condition:
        """``condition`` with the input drive W₀x (the one large matmul of a step, and
        constant during a settle) computed once, for every phase of this batch."""
        self.check_condition(condition)
        with torch.no_grad():
            return replace(condition, constants=condition.x @ self.layers[0].weight.t())

    def drives(self, state: State, condition: Condition) -> list[torch.Tensor]:
        """u_l (+ noise) for each free layer, what ρ is applied to (LayeredHopfield: ∂Φ_β/∂s_l)."""
        return self._drive_fn(condition)(state, range(len(state)))

    def _drive_fn(self, condition: Condition) -> Callable[..., list[torch.Tensor]]:
        """``u(s, layers, self_term=True)``: the drives of ``layers``, with what is constant
        during a settle computed once: the input drive W₀x (from ``prepare``, outside
        autograd), the biases with the phase's noise and, for the squared error, β·y
        folded in, and transposed weights made contiguous (a transposed view makes the
        bottom-up matmul 2x slower on CPU). ``self_term=False`` leaves out the top layer's
        −β·s_L, for its exact update. Plain tensor ops: on small layers, op overhead is
        the cost of a step."""
        self.check_condition(condition)
        weights = [layer.weight for layer in self.layers]
        up = [None] + [w.t().contiguous() for w in weights[1:]]
        down = self.top_down()
        biases = [layer.bias for layer in self.layers]
        if condition.noise:   # the rest state only gives the layers' shapes
            for l, xi in by_layer(condition.noise, self.init_state(condition), "noise").items():
                biases[l] = biases[l] + xi
        beta, top, cost, y = condition.beta, len(weights) - 1, condition.cost, condition.target
        square = isinstance(cost, SquaredError)
        if beta != 0.0 and square:
            biases[top] = biases[top] + beta * y   # Φ_β = Φ − β·½‖s_L − y‖²
        shared = condition.constants is not None and not torch.is_grad_enabled()
        first = (condition.constants if shared else condition.x @ weights[0].t()) + biases[0]

        def u(state: State, layers: range, self_term: bool = True) -> list[torch.Tensor]:
            """Fresh tensors (never ``first`` itself), so that callers may work in place."""
            out = []
            for l in layers:
                ul = first if l == 0 else torch.addmm(biases[l], state[l - 1], up[l])
                if l < top:
                    ul = torch.addmm(ul, state[l + 1], down[l])
                elif beta != 0.0 and self_term:
                    ul = ul.add(state[l], alpha=-beta) if square else ul - beta * cost.grad(state[l], y)
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

    def blocks(self, condition: Condition) -> list[Block]:
        """Gauss–Seidel blocks: the even layers (``state[0::2]``), then the odd ones. Layer l
        couples only to l ± 1, so each block's g reads only the other block. Same fixed points
        as the flow. For LayeredHopfield g is the exact minimiser of F over the block given the rest: ρ(∂Φ/∂s_l) for a hidden layer and,
        for a top layer nudged with the squared error, the minimiser of G(s) + ½β·s² − c·s
        (c its drive without the −β·s self term; hard sigmoid: clip(c/(1 + β))), which the
        plain update ρ(c − β·s) reaches only at rate β per sweep, and for β ≥ 1 not at all."""
        u, act, top, beta = self._drive_fn(condition), self.act, len(self.layers) - 1, condition.beta
        exact = beta != 0.0 and isinstance(condition.cost, SquaredError)

        def block(first: int) -> Block:
            layers = range(first, len(self.layers), 2)

            def g(state: State) -> list[torch.Tensor]:
                drives = u(state, layers, self_term=not exact)
                if not (exact and top in layers):
                    return [act.rho_(ul) for ul in drives]
                c = drives.pop()   # the top layer comes last
                solved = act.prox(c, beta)   # None where the block is not convex (smooth ρ)
                return [act.rho_(ul) for ul in drives] + [act.rho_(c.add_(state[top], alpha=-beta)) if solved is None else solved]

            return tuple(layers), g

        return [block(0), block(1)]

    def sweeps(self, condition: Condition) -> LayeredSweeps | None:
        """The sweeps of :meth:`blocks`, bit for bit, with no evaluation at a residual check
        (capability :class:`~dynets.capabilities.Sweeps`; :class:`~dynets.models.fused.LayeredSweeps`);
        ``None`` for a subclass with blocks of its own."""
        return LayeredSweeps(self, condition) if type(self).blocks is Layered.blocks else None


class SymmetricLayered(Layered, EnergyModel):
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
        activation: one of ``hard_sigmoid`` (ρ = clip(·, 0, 1)), ``hard_sigmoid_half_slope`` (ρ = clip(·/2, 0, 1)),
            ``sigmoid``, ``tanh``.
        init_gain: the initial weights are ``init_gain`` × nn.Linear's U(±1/√fan_in) (biases
            unchanged). A layer multiplies the spread of its input by about gain·ρ'/√3 at
            initialisation, so with the sigmoid (ρ' ≤ 1/4) and gain 1 the input is lost
            after two hidden layers and nothing learns; gain 4 = 1/ρ'(0) gives the sigmoid
            the linear gain of the hard sigmoid and tanh (Glorot & Bengio 2010).

    The state is ``(s_1, ..., s_L)``; the symmetric coupling is one matrix ``W_l`` used
    in both directions, so weights are symmetric by construction. A leaf says what the top
    layer reads out (:meth:`target`): :class:`LayeredHopfield` a label,
    :class:`~dynets.models.ReadBackHopfield` the input.
    """

    def __init__(self, sizes: list[int], activation: str = "hard_sigmoid", init_gain: float = 1.0) -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
            raise ValueError(f"sizes must list >= 2 positive layer sizes, got {list(sizes)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if not init_gain > 0:
            raise ValueError(f"init_gain must be > 0, got {init_gain}")
        self.sizes = [int(n) for n in sizes]
        self.activation, self.init_gain = activation, init_gain
        self.act = ACTIVATIONS[activation]
        self.in_features, self.out_features = self.sizes[0], self.sizes[-1]
        # W_l maps layer l to l+1; its bias is b_{l+1}. nn.Linear's init (U(±1/√fan_in)), scaled.
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.sizes, self.sizes[1:]))
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.mul_(init_gain)

    @abstractmethod
    def target(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """The top layer's target for the labels ``y`` (``None``: the leaf's :meth:`prepare` sets one)."""

    def top_down(self) -> list[torch.Tensor]:
        """W_{l}, l ≥ 1: the same matrix carries layer l+1 down to l (symmetric couplings)."""
        return [layer.weight for layer in self.layers[1:]]

    def param_grad_difference(self, a: State, b: State, condition: Condition,
                              scale: float = 1.0) -> dict[str, torch.Tensor]:
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
        return self.named_grads(grads)

    def param_grads(self, state: State, condition: Condition) -> dict[str, torch.Tensor]:
        """∂F/∂θ, batch mean, in closed form: ∂F/∂W_l = −⟨s_{l+1} s_lᵀ⟩, ∂F/∂b_l = −⟨s_{l+1}⟩
        (the Hebbian terms of EP). C does not depend on θ."""
        below = (condition.x,) + tuple(state[:-1])
        scale = -1.0 / condition.x.shape[0]
        # In-place scaling: on a 512x784 weight a separate div and neg cost more than the matmul.
        return self.named_grads([g for s, b in zip(state, below) for g in ((s.T @ b).mul_(scale), s.sum(0).mul_(scale))])

    def primitive(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch,)`` Φ(s; x) = Σ_l s_{l+1}ᵀ (W_l s_l + b_l)."""
        below = (condition.x,) + tuple(state[:-1])
        return sum((s * layer(b)).sum(1) for s, layer, b in zip(state, self.layers, below))

    def energy(self, state: State, condition: Condition) -> torch.Tensor:
        """E = Σ G(s) − Φ(s) (the noise term is added by ``total_energy``)."""
        return sum(self.act.G(s).sum(1) for s in state) - self.primitive(state, condition)


class LayeredHopfield(SymmetricLayered):
    """The layered Hopfield network of Scellier & Bengio (2017): the energy and dynamics of
    :class:`SymmetricLayered`, with the top layer the label read-out (the target of labels
    ``y`` ``(batch,)`` is their one-hot code ``(batch, out_features)``).

    Args:
        sizes: ``[in_features, hidden..., out_features]``; the first layer is clamped to x.
        activation: one of ``hard_sigmoid`` (ρ = clip(·, 0, 1)), ``hard_sigmoid_half_slope`` (ρ = clip(·/2, 0, 1)),
            ``sigmoid``, ``tanh``.
        init_gain: the initial weights are ``init_gain`` × nn.Linear's U(±1/√fan_in).
    """

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """One-hot ``(batch, out_features)`` target of integer labels ``y``."""
        return DynamicalModel.target(self, y)
