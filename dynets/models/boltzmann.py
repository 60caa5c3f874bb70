"""Restricted Boltzmann machine (Ackley, Hinton & Sejnowski 1985; Smolensky 1986), with the exact
likelihood of a small machine by enumerating its smaller layer."""
from __future__ import annotations

import torch
from torch import nn

from ..likelihood import MAX_ENUMERATED, binary_states
from ..phases import Condition, State, VectorField
from .base import DynamicalModel

CHUNK_BITS = 16   # log Z enumerates 2^16 states of the smaller layer at a time (bounded memory)


class BoltzmannMachine(DynamicalModel):
    r"""A Boltzmann machine with a visible and a hidden layer of binary {0, 1} stochastic units
    and no connections within a layer (the restricted form), with the energy

        E(v, h) = −vᵀWh − aᵀv − bᵀh,   p(v, h) = exp(−E(v, h)) / Z.

    The state is ``(v, h)``; a phase with data clamps the visible layer, ``clamp={0: x}``
    (no ``x``: the model has no input below its visible layer). Given one layer, the units of
    the other are independent: p(h_j = 1 | v) = σ(b_j + (vW)_j), p(v_i = 1 | h) = σ(a_i + (Wh)_i),
    so :meth:`gibbs_blocks` are the two layers (block Gibbs sampling with
    :func:`dynets.sampling.sample`). Summing out h gives the free energy in closed form,

        F(v) = −aᵀv − Σ_j softplus(b_j + (vW)_j),   p(v) = exp(−F(v)) / Z,

    and :meth:`log_prob` is exact, with log Z summed over every state of the smaller layer.

    The deterministic :meth:`dynamics` are the mean-field equations as a flow,
    dv/dt = σ(a + Wh) − v, dh/dt = σ(b + Wᵀv) − h, on mean activities in [0, 1]
    (Peterson & Anderson 1987): what :func:`dynets.settle` runs.

    Args:
        sizes: ``[n_visible, n_hidden]``.
        init_scale: W ~ N(0, init_scale²); biases 0. Hinton's 0.01 ("A practical guide to
            training RBMs", 2010) stalls on bars: with 16 hidden units even the exact gradient
            stopped near 3 bits, against 0.01–0.07 bits from 0.1 (Adam at 0.03, 3000 steps, three seeds).
        seed: seed of the generator W is drawn from.
    """

    needs_input = False
    supervised = False
    unit_values = (0.0, 1.0)

    def __init__(self, sizes: list[int], init_scale: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if len(sizes) != 2 or any(int(n) < 1 for n in sizes):
            raise ValueError(f"sizes must be [n_visible, n_hidden], two positive sizes; got {list(sizes)}")
        if init_scale < 0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale}")
        self.sizes = [int(n) for n in sizes]
        self.in_features, self.out_features = self.sizes
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(init_scale * torch.randn(*self.sizes, generator=generator))
        self.visible_bias = nn.Parameter(torch.zeros(self.sizes[0]))
        self.hidden_bias = nn.Parameter(torch.zeros(self.sizes[1]))

    def check_condition(self, condition: Condition) -> None:
        """A phase has no input (data is a clamp), no nudge and no noise: the model honours clamps only."""
        if condition.x is not None:
            raise ValueError("BoltzmannMachine has no input below its visible layer: clamp the data with "
                             "Condition(batch_size=n, clamp={0: x}), not Condition(x)")
        if condition.beta != 0.0 or condition.noise:
            raise ValueError("BoltzmannMachine cannot honour a nudge (beta) or noise in a condition; "
                             "it honours clamps only")

    def init_state(self, condition: Condition) -> State:
        self.check_condition(condition)
        w = self.weight
        return tuple(w.new_zeros(condition.batch, n) for n in self.sizes)

    def energy(self, state: State, condition: Condition | None = None) -> torch.Tensor:
        """``(batch,)`` E(v, h) = −vᵀWh − aᵀv − bᵀh."""
        v, h = state
        return -((v @ self.weight) * h).sum(1) - v @ self.visible_bias - h @ self.hidden_bias

    def hidden_field(self, v: torch.Tensor) -> torch.Tensor:
        """``(batch, n_hidden)`` b + vW = E(h_j = 0) − E(h_j = 1) given v: p(h_j = 1 | v) = σ of it."""
        return torch.addmm(self.hidden_bias, v, self.weight)

    def visible_field(self, h: torch.Tensor) -> torch.Tensor:
        """``(batch, n_visible)`` a + Wh: p(v_i = 1 | h) = σ of it."""
        return torch.addmm(self.visible_bias, h, self.weight.t())

    def gibbs_blocks(self, condition: Condition):
        """The hidden layer, then the visible one: a sweep from data v₀ draws h ~ p(h | v₀), then
        v ~ p(v | h) (the order of contrastive divergence, Hinton 2002)."""
        self.check_condition(condition)
        return [((1,), lambda s: [self.hidden_field(s[0])]), ((0,), lambda s: [self.visible_field(s[1])])]

    def dynamics(self, condition: Condition) -> VectorField:
        self.check_condition(condition)

        def f(t: torch.Tensor, state: State) -> State:
            v, h = state
            return torch.sigmoid(self.visible_field(h)) - v, torch.sigmoid(self.hidden_field(v)) - h

        return f

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` F(v) = −aᵀv − Σ_j softplus(b_j + (vW)_j) = −log Σ_h exp(−E(v, h))."""
        return -(v @ self.visible_bias) - nn.functional.softplus(self.hidden_field(v)).sum(1)

    def log_partition(self) -> torch.Tensor:
        """log Z, exact: the hidden (or visible, if smaller) units summed out in closed form and
        the other layer's 2^n states enumerated, 2^16 at a time.

        Raises:
            ValueError: both layers have more than :data:`dynets.likelihood.MAX_ENUMERATED` units.
        """
        n_v, n_h = self.sizes
        if min(n_v, n_h) > MAX_ENUMERATED:
            raise ValueError(f"log Z of a BoltzmannMachine enumerates its smaller layer, at most {MAX_ENUMERATED} "
                             f"units; this one has {n_v} visible and {n_h} hidden: estimate it instead")
        # Summing out the visible layer: −F_h(h) = bᵀh + Σ_i softplus(a_i + (Wh)_i), symmetric to F(v).
        w, bias_in, bias_out = (self.weight, self.visible_bias, self.hidden_bias) if n_v <= n_h else \
            (self.weight.t(), self.hidden_bias, self.visible_bias)
        n = w.shape[0]
        low = binary_states(min(n, CHUNK_BITS), w.dtype, w.device)
        high = binary_states(n - low.shape[1], w.dtype, w.device)
        parts = []
        for prefix in high:   # each prefix: its 2^16 completions in one matmul
            states = torch.cat([prefix.expand(len(low), -1), low], 1)
            neg_f = states @ bias_in + nn.functional.softplus(torch.addmm(bias_out, states, w)).sum(1)
            parts.append(torch.logsumexp(neg_f, 0))
        return torch.logsumexp(torch.stack(parts), 0)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` exact log p(x) = −F(x) − log Z in nats, for binary ``x`` ``(batch, n_visible)``."""
        if x.dim() != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"x of shape {tuple(x.shape)} does not match the machine: it needs (batch, {self.sizes[0]})")
        return -self.free_energy(x) - self.log_partition()
