"""Values passed between dynets' parts: states, phase conditions, equilibria, errors."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

State = tuple[torch.Tensor, ...]
"""One tensor per free layer, each ``(batch, units)``. Clamped inputs live in the
:class:`Condition`, not in the state, so the state is exactly what the ODE integrates."""

VectorField = Callable[[torch.Tensor, State], State]
"""``f(t, state) -> ds/dt``, the signature torchdiffeq integrates."""

LayerMap = Callable[[State], list[torch.Tensor]]
"""g(s) of some of the layers of a model in leaky form ds/dt = g(s) − s, as a function
of the whole state."""


@dataclass(frozen=True, eq=False)
class Condition:
    """What is clamped and what is added to the dynamics during one phase.

    Args:
        x: ``(batch, in_features)`` input clamped on the first layer.
        target: ``(batch, out_features)`` target for the cost C, or ``None`` (free phase).
        beta: nudging strength β; the dynamics descend F = E + β·C. ``beta != 0`` needs a target.
    """

    x: torch.Tensor
    target: torch.Tensor | None = None
    beta: float = 0.0
    _memo: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.beta != 0.0 and self.target is None:
            raise ValueError(f"Condition with beta={self.beta} needs a target")
        if self.target is not None and self.target.shape[0] != self.x.shape[0]:
            raise ValueError(
                f"target has batch {self.target.shape[0]} but x has batch {self.x.shape[0]}"
            )

    def nudged(self, beta: float, target: torch.Tensor | None = None) -> "Condition":
        """The same clamping with nudging β (and optionally a new target); it shares the
        memo of quantities derived from ``x`` (see :meth:`cached`)."""
        return replace(self, beta=beta, target=self.target if target is None else target, _memo=self._memo)

    def cached(self, key: Any, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()``, memoised for the conditions of one input batch (the phases of one
        rule step share the input drive W₀x). Only outside autograd: a tensor reused with
        a graph would be backpropagated twice. ``key`` must name everything the value
        depends on besides ``x`` (e.g. the weights' ``_version``)."""
        if torch.is_grad_enabled():
            return compute()
        key = (key, self.x._version)
        if key not in self._memo:
            self._memo.clear()   # older weight versions are stale: keep one entry
            self._memo[key] = compute()
        return self._memo[key]


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


class DivergedError(RuntimeError):
    """A settle produced a non-finite state."""
