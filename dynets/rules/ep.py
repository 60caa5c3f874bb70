"""Equilibrium propagation (Scellier & Bengio 2017; centered form: Laborieux et al. 2021)."""
from __future__ import annotations

import torch

from ..capabilities import Energy
from ..costs import Cost
from ..models.base import EnergyModel
from ..settle import SettleOptions
from .base import Rule, Update

# Nudging strengths of the two phases compared, in units of β.
VARIANTS = {"centered": (-1.0, 1.0), "positive": (0.0, 1.0), "negative": (-1.0, 0.0)}


class EquilibriumPropagation(Rule):
    r"""Equilibrium propagation: the gradient as a difference of two phases,

        ∂L/∂θ ≈ [∂F/∂θ(s^{β₂}) − ∂F/∂θ(s^{β₁})] / (β₂ − β₁),

    where s^β is the equilibrium of F = E + β·C, reached from the free equilibrium s^0
    (warm start). ``positive`` compares (0, β) and ``negative`` (−β, 0): error O(β);
    ``centered`` compares (−β, β): error O(β²) (Laborieux et al. 2021).

    Args:
        beta: nudging strength β > 0.
        variant: ``centered``, ``positive`` or ``negative``.
        settle: free-phase settle options.
        nudged_settle: nudged-phase options (default: ``settle``).
        cost: the cost C of the nudge (default squared error).
        allow_unconverged: see :class:`~dynets.rules.base.Rule`.
    """

    needs = (Energy,)

    def __init__(self, beta: float = 0.5, variant: str = "centered", settle: SettleOptions | None = None,
                 nudged_settle: SettleOptions | None = None, cost: Cost | None = None,
                 allow_unconverged: bool = False) -> None:
        super().__init__(settle, cost, allow_unconverged)
        if variant not in VARIANTS:
            raise ValueError(f"unknown EP variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta, self.variant = float(beta), variant
        self.nudged_settle = nudged_settle if nudged_settle is not None else self.settle

    def update(self, model: EnergyModel, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        condition, free, metrics = self.free_phase(model, x, y)
        ends, phases = [], {"free": free}
        for k in VARIANTS[self.variant]:
            if k == 0.0:
                ends.append((0.0, free))
                continue
            nudged = condition.nudged(k * self.beta)
            eq = self.nudged_settle(model, nudged, init=free.state)
            name = f"nudged_{'+' if k > 0 else '-'}"
            metrics[f"steps_{name}"], phases[name] = eq.steps, eq
            metrics["converged"] = min(metrics["converged"], eq.converged_fraction)
            ends.append((k * self.beta, eq))
        (b1, eq1), (b2, eq2) = ends
        self.check_converged(metrics, phases)
        return Update(model.param_grad_difference(eq2.state, eq1.state, condition, scale=1.0 / (b2 - b1)), metrics)
