"""Associative memories: a fully connected Hopfield network (Hopfield 1982, 1984) and the
dense (polynomial) memory of Krotov & Hopfield (2016), run as continuous-time flows.

Patterns are ±1 vectors. A 0/1 pattern is rejected (map it with 2x − 1): silently
accepting both would let a 0/1 pattern be stored as a biased ±1 one. A phase has no
input, ``Condition(batch_size=B)``; a cue is the initial state,
``settle(model, condition, init=model.split(cue))``.
"""
from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from ..phases import Block, Condition, State, VectorField, by_layer
from .base import EnergyModel


def check_patterns(patterns: torch.Tensor, n: int) -> None:
    """Raise unless ``patterns`` is ``(P, n)`` with every entry −1 or +1."""
    if patterns.dim() != 2 or patterns.shape[1] != n or patterns.shape[0] < 1:
        raise ValueError(f"patterns must be (n_patterns, {n}) with n_patterns >= 1; got shape {tuple(patterns.shape)}")
    bad = (patterns != 1) & (patterns != -1)
    if bad.any():
        values = torch.unique(patterns[bad])[:5].tolist()
        hint = " (0/1 patterns: pass 2*x - 1)" if ((patterns == 0) | (patterns == 1)).all() else ""
        raise ValueError(f"patterns must be ±1 in every entry; found {values}{hint}")


def overlaps(state: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """``(B,)`` m_b = ξ_b·sign(s_b)/N of each state with its own pattern (rows paired):
    1 is perfect recall; a unit at exactly 0 counts as wrong."""
    return (torch.sign(state) * patterns).mean(1)


def noisy_cues(patterns: torch.Tensor, flip: float, generator: torch.Generator) -> torch.Tensor:
    """Each pattern with exactly round(flip·N) of its units flipped, chosen from ``generator``."""
    if not 0 <= flip <= 1:
        raise ValueError(f"flip must be a fraction in [0, 1], got {flip}")
    p, n = patterns.shape
    k = round(flip * n)
    ranks = torch.rand(p, n, generator=generator, device=generator.device).argsort(1).to(patterns.device)
    sign = torch.ones_like(patterns).scatter_(1, ranks[:, :k], -1.0)
    return patterns * sign


class Memory(EnergyModel):
    r"""A fully connected memory of N units settling by the leaky flow

        ds/dt = tanh(γ·(∂Φ/∂s + ξ)) − s,   s ∈ (−1, 1)^N,

    γ the gain, Φ the model's primitive (its coupling), ξ the condition's noise. It
    descends the energy

        E(s) = Σ_i G(s_i) − Φ(s),   G(s) = [(1 + s)·ln(1 + s) + (1 − s)·ln(1 − s)] / (2γ),

    G' = atanh/γ (Hopfield 1984): the fixed points are the stationary points of E and E
    never increases along the flow. As γ → ∞ they approach the ±1 fixed points of the
    discrete network s ← sign(∂Φ/∂s).

    The N units are split into ``groups`` contiguous state layers (near-equal sizes).
    The groups are the Gauss–Seidel blocks (``method="gauss_seidel"``, Δt = 1): a sweep
    sets each group to tanh(γ·∂Φ/∂s) in turn, reading the newest state, i.e. Hopfield's
    asynchronous updates in a fixed order; ``groups = N`` is fully asynchronous (one
    unit at a time, one small matmul per unit: exact, but slow for large N). One group
    (the default) suits the flow (Euler) and is the fastest.
    """

    needs_input = False
    in_features = 0

    def __init__(self, n: int, gain: float, groups: int) -> None:
        super().__init__()
        if not (int(n) == n and n >= 2):
            raise ValueError(f"n (number of units) must be an integer >= 2, got {n}")
        if not gain > 0:
            raise ValueError(f"gain must be > 0, got {gain}")
        if not (int(groups) == groups and 1 <= groups <= n):
            raise ValueError(f"groups must be an integer in 1..n={n}, got {groups}")
        self.n, self.gain, self.groups = int(n), float(gain), int(groups)
        self.out_features = self.n
        self.sizes = [len(c) for c in torch.arange(self.n).tensor_split(self.groups)]

    @abstractmethod
    def primitive(self, s: torch.Tensor) -> torch.Tensor:
        """``(B,)`` Φ(s) of ``(B, N)`` states."""

    @abstractmethod
    def drive_fn(self):
        """``u(s, cols) -> (B, len(cols))``: ∂Φ/∂s of ``(B, N)`` states, for the units in the
        slice ``cols``, with the weights' constants computed once (they are fixed in a settle)."""

    def split(self, s: torch.Tensor) -> State:
        """The state of ``(B, N)`` units: one ``(B, size)`` layer per group."""
        if s.dim() != 2 or s.shape[1] != self.n:
            raise ValueError(f"a memory state must be (batch, {self.n}); got shape {tuple(s.shape)}")
        return tuple(s.split(self.sizes, 1))

    def output(self, state: State) -> torch.Tensor:
        """``(B, N)``: the groups side by side."""
        return torch.cat(state, 1)

    def check_condition(self, condition: Condition) -> None:
        if condition.x is not None:
            raise ValueError(f"{type(self).__name__} takes no input x: a phase is Condition(batch_size=B), "
                             "and a cue is the initial state of the settle")
        if condition.beta != 0.0 or condition.target is not None:
            raise ValueError(f"{type(self).__name__} has no read-out cost: a phase cannot have a target or beta")

    def init_state(self, condition: Condition) -> State:
        p = next(self.parameters())
        return tuple(p.new_zeros(condition.batch, k) for k in self.sizes)

    def energy(self, state: State, condition: Condition) -> torch.Tensor:
        """E = Σ G(s) − Φ(s) (the noise term is added by ``total_energy``)."""
        s = self.output(state)
        g = 0.5 * (torch.xlogy(1 + s, 1 + s) + torch.xlogy(1 - s, 1 - s)) / self.gain
        return g.sum(1) - self.primitive(s)

    def _noise(self, condition: Condition) -> torch.Tensor | None:
        """``(B, N)`` drive noise of the condition (zero in groups it leaves out), or None."""
        if not condition.noise:
            return None
        rest = self.init_state(condition)
        noise = by_layer(condition.noise, rest, "noise")
        return torch.cat([noise.get(l, r) for l, r in enumerate(rest)], 1)

    def _targets(self, condition: Condition):
        """``g(s, cols)`` = tanh(γ·(u + ξ)) of the units in ``cols``."""
        self.check_condition(condition)
        u, xi, gain = self.drive_fn(), self._noise(condition), self.gain
        return lambda s, cols: torch.tanh(gain * (u(s, cols) if xi is None else u(s, cols) + xi[:, cols]))

    def dynamics(self, condition: Condition) -> VectorField:
        g, every = self._targets(condition), slice(None)

        def f(t: torch.Tensor, state: State) -> State:
            s = self.output(state)
            return self.split(g(s, every) - s)

        return f

    def blocks(self, condition: Condition) -> list[Block]:
        """One block per group, in order: each sets its units to tanh(γ·(∂Φ/∂s + ξ)) read
        from the newest state. For :class:`AssociativeMemory` with one unit per group that
        is the exact minimiser of E over the unit (its self-coupling is zero), so a sweep
        never raises E; larger groups update their units jointly (Jacobi within a group)."""
        g, bounds = self._targets(condition), torch.tensor([0] + self.sizes).cumsum(0).tolist()

        def block(k: int) -> Block:
            cols = slice(bounds[k], bounds[k + 1])
            return (k,), lambda state: [g(self.output(state), cols)]

        return [block(k) for k in range(self.groups)]


class AssociativeMemory(Memory):
    r"""Hopfield's fully connected network: Φ(s) = ½ sᵀCs, so ∂Φ/∂s = Cs, with the
    coupling C = ½(W + Wᵀ) and zero diagonal taken from the parameter ``weight`` W:
    symmetric with zero diagonal by construction, whatever edits W receives (its gradient
    is symmetric with zero diagonal too).

    Args:
        n: number of units N.
        gain: γ of tanh(γ·Cs). Hebbian couplings give aligned fields near 1 at low load,
            so γ ≫ 1 makes the states nearly ±1.
        groups: state layers = Gauss–Seidel blocks (see :class:`Memory`).

    W starts at zero (an empty memory); store patterns with
    :class:`dynets.rules.memory.HebbianStorage` or :func:`dynets.rules.memory.hebbian`.
    """

    unit_values = (-1.0, 1.0)   # as stochastic binary units (dynets.sampling, method="gibbs")

    def __init__(self, n: int, gain: float = 20.0, groups: int = 1) -> None:
        super().__init__(n, gain, groups)
        self.weight = nn.Parameter(torch.zeros(self.n, self.n))

    def coupling(self) -> torch.Tensor:
        """C = ½(W + Wᵀ) with zero diagonal."""
        return (self.weight + self.weight.T).mul(0.5).fill_diagonal_(0.0)

    def primitive(self, s: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((s @ self.coupling()) * s).sum(1)

    def drive_fn(self):
        c = self.coupling()
        return lambda s, cols: s @ c[:, cols]

    def gibbs_blocks(self, condition: Condition) -> list[Block]:
        """Stochastic ±1 units (Glauber dynamics of Hopfield's discrete network): the energy
        gap of unit i, E(s_i = −1) − E(s_i = +1) = 2[(Cs)_i + ξ_i] (G(±1) is the same at both
        values), one block per group. Units of a block must be conditionally independent
        given the rest, so this needs one unit per group (``groups = n``)."""
        if self.groups != self.n:
            raise ValueError(f"Gibbs sampling updates one unit at a time: build the memory with groups=n={self.n} "
                             f"(it has groups={self.groups}, and units of a group are coupled)")
        self.check_condition(condition)
        u, xi = self.drive_fn(), self._noise(condition)

        def block(k: int) -> Block:
            cols = slice(k, k + 1)
            return (k,), lambda state: [2 * (u(self.output(state), cols) + (0 if xi is None else xi[:, cols]))]

        return [block(k) for k in range(self.n)]


RECTIFIERS = {"power": lambda m: m, "rectified": torch.relu}


class DenseAssociativeMemory(Memory):
    r"""Dense associative memory (Krotov & Hopfield 2016, "Dense associative memory for
    pattern recognition"): the memories ξ_μ themselves are the parameters, and

        Φ(s) = (N/n) Σ_μ F(m_μ),   m_μ = ξ_μ·s/N,   ∂Φ/∂s = Σ_μ ξ_μ F'(m_μ)/n,

    with F(x) = xⁿ (``power``) or max(x, 0)ⁿ (``rectified``), n the ``degree``. For n = 2
    and ``power``, Φ is Hopfield's ½ sᵀ(ΞᵀΞ/N)s with the diagonal (P/N) kept.

    Args:
        patterns: ``(P, N)`` ±1 memories (a 0/1 entry is an error).
        degree: n ≥ 2.
        function: ``rectified`` or ``power``.
        gain: as in :class:`Memory`.
        groups: as in :class:`Memory`.
    """

    def __init__(self, patterns: torch.Tensor, degree: int = 3, function: str = "rectified",
                 gain: float = 20.0, groups: int = 1) -> None:
        patterns = torch.as_tensor(patterns, dtype=torch.get_default_dtype())
        if patterns.dim() != 2:
            raise ValueError(f"patterns must be (n_patterns, n_units); got shape {tuple(patterns.shape)}")
        super().__init__(patterns.shape[1], gain, groups)
        check_patterns(patterns, self.n)
        if function not in RECTIFIERS:
            raise ValueError(f"unknown function {function!r}; valid: {', '.join(RECTIFIERS)}")
        if not (int(degree) == degree and degree >= 2):
            raise ValueError(f"degree must be an integer >= 2, got {degree}")
        self.degree, self.function = int(degree), function
        self.memories = nn.Parameter(patterns.clone())

    def _overlaps(self, s: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` r(m_μ): the overlaps, rectified for ``rectified``."""
        return RECTIFIERS[self.function](s @ self.memories.T / self.n)

    def primitive(self, s: torch.Tensor) -> torch.Tensor:
        return self.n / self.degree * self._overlaps(s).pow(self.degree).sum(1)

    def drive_fn(self):
        xi, d = self.memories, self.degree
        return lambda s, cols: self._overlaps(s).pow(d - 1) @ xi[:, cols]
