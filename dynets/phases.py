"""Values passed between dynets' parts: states, phase conditions, equilibria, errors."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch

from .costs import Cost, SquaredError

State = tuple[torch.Tensor, ...]
"""One tensor per free layer, each ``(batch, *shape)``: a vector ``(batch, units)``, a feature
map ``(batch, C, H, W)``, any shape the model's ``init_state`` gives. Clamped inputs live in the
:class:`Condition`, not in the state, so the state is exactly what the ODE integrates."""

VectorField = Callable[[torch.Tensor, State], State]
"""``f(t, state) -> ds/dt``, the signature torchdiffeq integrates."""

LayerMap = Callable[[State], list[torch.Tensor]]
"""g(s) of some of the layers of a model in leaky form ds/dt = g(s) − s, as a function
of the whole state."""

Block = tuple[tuple[int, ...], LayerMap] | tuple[tuple[int, ...], LayerMap, tuple[float | torch.Tensor, ...]]
"""A block of a Gauss–Seidel sweep: the state layers it updates, g of those layers (ds/dt =
g(s) − s on them), read from the whole current state, and optionally a step α_l per layer
(default 1): a half-step sets s_l ← s_l + Δt·α_l·(g_l − s_l). With α_l = 1, g is the value a
half-step at Δt = 1 sets the layer to (the exact block minimiser, for LayeredHopfield); a
model whose g is only a gradient step declares α_l below 2/(the block's curvature).

A compartment with a time constant τ_l follows ds_l/dt = (g_l − s_l)/τ_l. Its model declares τ_l
(capability :class:`~dynets.capabilities.Compartments`), not a step: the sweep then steps the
layer by α_l/τ_l (s_l ← s_l + Δt·α_l/τ_l·(g_l − s_l), α_l = 1 unless the block says otherwise)
and its residual check reads (g_l − s_l)/τ_l, the flow's ds/dt."""


@dataclass(frozen=True, eq=False)
class Condition:
    """Everything about one phase: what is clamped and what is added to the dynamics.

    Args:
        x: ``(batch, *in_shape)`` input clamped below the first free layer, or ``None``
            for a phase with no input (then ``batch_size`` gives the batch).
        target: ``(batch, *out_shape)`` target of the cost C (the read-out's shape), or ``None``.
        beta: nudging strength β; the dynamics descend F = E + β·C. ``beta != 0`` needs a target.
        cost: the :class:`~dynets.costs.Cost` C of the read-out (default squared error).
        clamp: ``{layer: (batch, *shape) values}``: free-state layers (indices into the
            :data:`State`) held at given values during the settle, e.g. ``{-1: target}``
            for the output clamped to the target (CHL, PC). Negative indices count from the top.
        noise: ``{layer: (batch, *shape)}`` added to the drive of those layers and held
            fixed through the settle (perturbation rules).
        generator: the ``torch.Generator`` that stochastic units of this phase draw from.
        batch_size: the batch of a phase with no input.
        constants: what the model computed once for this input batch (``model.prepare``):
            the phases of one rule step share it. It depends on ``x`` and the weights only,
            so :meth:`nudged` and :meth:`clamped` keep it; after changing either, prepare anew.

    A model raises an error for a field it cannot honour; it never ignores one. The
    condition checks that every tensor's first dimension is the batch; the rest of each
    shape is checked against the model where the model is known (:func:`by_layer` for
    clamps and noise, the model's ``check_condition`` for x and the target).
    """

    x: torch.Tensor | None = None
    target: torch.Tensor | None = None
    beta: float = 0.0
    cost: Cost = field(default_factory=SquaredError)
    clamp: Mapping[int, torch.Tensor] = field(default_factory=dict)
    noise: Mapping[int, torch.Tensor] = field(default_factory=dict)
    generator: torch.Generator | None = None
    batch_size: int | None = None
    constants: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.beta != 0.0 and self.target is None:
            raise ValueError(f"Condition with beta={self.beta} needs a target (a nudge pulls the read-out toward it)")
        if self.x is None and self.batch_size is None:
            raise ValueError("a Condition with no input x needs batch_size (how many samples run free)")
        batch = self.batch
        named = [("target", self.target)] + [(f"clamp[{k}]", v) for k, v in self.clamp.items()] + \
                [(f"noise[{k}]", v) for k, v in self.noise.items()]
        for name, t in named:
            if t is not None and (t.dim() == 0 or t.shape[0] != batch):
                raise ValueError(f"{name} has shape {tuple(t.shape)} but the phase has batch {batch}: "
                                 f"its first dimension must be the batch, (batch, *shape)")

    @property
    def batch(self) -> int:
        """The number of samples of the phase."""
        return self.x.shape[0] if self.x is not None else int(self.batch_size)

    def nudged(self, beta: float, target: torch.Tensor | None = None) -> "Condition":
        """The same phase with nudging β (and optionally a new target); the constants are kept."""
        return replace(self, beta=beta, target=self.target if target is None else target)

    def clamped(self, clamp: Mapping[int, torch.Tensor]) -> "Condition":
        """The same phase with these layers clamped (replacing any earlier clamps)."""
        return replace(self, clamp=dict(clamp))


@dataclass(frozen=True, eq=False)
class Equilibrium:
    """The result of :func:`dynets.settle`, with its diagnostics.

    Attributes:
        state: the state reached (detached).
        t: integration time reached.
        residual: ``(batch,)`` ‖ds/dt‖ per sample at ``state`` (all layers together).
        tolerance: ``(batch,)`` atol + rtol·‖s_b‖, the per-sample stop threshold.
        converged: every sample has ``residual <= tolerance``.
        steps: time integrated, in units of ``step_size`` (the Euler steps taken, for
            fixed-grid methods; adaptive solvers choose their own steps inside).
        nfe: vector-field evaluations, including the residual checks (a Gauss–Seidel
            sweep counts as one; its checks' evaluations of the odd layers are not counted).
        trajectory: ``[(t, state), ...]`` at every residual check when ``record=True``.
    """

    state: State
    t: float
    residual: torch.Tensor
    tolerance: torch.Tensor
    converged: bool
    steps: int
    nfe: int
    trajectory: list[tuple[float, State]] | None = None

    @property
    def converged_fraction(self) -> float:
        """Fraction of the batch whose residual is within tolerance."""
        if self.converged:   # every sample is: no need to count (nor to sync)
            return 1.0
        return (self.residual <= self.tolerance).float().mean().item()


def by_layer(layers: Mapping[int, torch.Tensor], rest: State, what: str) -> dict[int, torch.Tensor]:
    """``layers`` (a ``Condition.clamp`` or ``noise``) with indices in 0..n−1, n = len(rest)
    (negative ones count from the top); raises for a layer that does not exist or a
    tensor whose shape is not the layer's, ``(batch, *shape)`` of ``rest[k]``."""
    n, out = len(rest), {}
    for k, v in layers.items():
        if not -n <= k < n:
            raise ValueError(f"{what}: layer {k} does not exist; the state has {n} free layers "
                             f"(0..{n - 1}, or -{n}..-1)")
        if v.shape != rest[k].shape:
            raise ValueError(f"{what} of layer {k}: expected {batch_shape(rest[k].shape[1:])}, got {tuple(v.shape)}")
        out[k % n] = v
    return out


def batch_shape(shape: tuple[int, ...]) -> str:
    """``"(batch, 2, 3, 3)"``: how an error names the shape a tensor needs (its batch aside)."""
    return "(" + ", ".join(["batch", *map(str, shape)]) + ("," if not shape else "") + ")"


class DivergedError(RuntimeError):
    """A settle produced a non-finite state."""


class UnconvergedError(RuntimeError):
    """A rule was asked for a gradient from phases that did not reach steady state."""
