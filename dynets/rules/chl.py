"""Contrastive Hebbian learning (Movellan 1991)."""
from __future__ import annotations

import torch

from ..capabilities import Energy
from ..costs import Cost
from ..models.base import EnergyModel
from ..settle import SettleOptions
from .base import Rule, Update


class ContrastiveHebbian(Rule):
    r"""Contrastive Hebbian learning: a free phase (x clamped) and a clamped phase (x
    clamped and the read-out layer held at the target y), then

        p.grad = ∂E/∂θ(s^c) − ∂E/∂θ(s^f),

    which lowers the energy of the clamped state and raises that of the free one. For
    :class:`~dynets.models.LayeredHopfield` (whose states are firing rates, s = ρ(u)) it is
    Movellan's anti-Hebbian/Hebbian pair, per weight and bias:

        −ΔW_l ∝ ⟨s^c_{l+1} s^cᵀ_l⟩ − ⟨s^f_{l+1} s^fᵀ_l⟩,   −Δb_l ∝ ⟨s^c_{l+1}⟩ − ⟨s^f_{l+1}⟩

    (batch means ⟨·⟩, s_0 = x). The clamped phase is the β → ∞ limit of EP's nudged phase
    (Scellier & Bengio 2017), so the update is not scaled by 1/β: it follows the gradient
    of the loss only when the free output is close to the target, and differs from it
    when clamping moves the hidden layers far (Movellan 1991; Xie & Seung 2003).

    Args:
        settle: free-phase settle options.
        clamped_settle: clamped-phase options (default: ``settle``); the clamped phase
            starts from the free equilibrium.
        cost: the cost reported as ``loss`` (the clamped phase needs none).
        allow_unconverged: see :class:`~dynets.rules.base.Rule`.
    """

    needs = (Energy,)

    def __init__(self, settle: SettleOptions | None = None, clamped_settle: SettleOptions | None = None,
                 cost: Cost | None = None, allow_unconverged: bool = False) -> None:
        super().__init__(settle, cost, allow_unconverged)
        self.clamped_settle = clamped_settle if clamped_settle is not None else self.settle

    def update(self, model: EnergyModel, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        condition, free, metrics = self.free_phase(model, x, y)
        clamped = self.clamped_settle(model, condition.clamped({-1: condition.target}), init=free.state)
        metrics.update(steps_clamped=clamped.steps, converged=min(metrics["converged"], clamped.converged_fraction))
        self.check_converged(metrics, {"free": free, "clamped": clamped})
        return Update(model.param_grad_difference(clamped.state, free.state, condition), metrics)
