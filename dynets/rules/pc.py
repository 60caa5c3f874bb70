"""Predictive coding learning (Whittington & Bogacz 2017; the nudged form: Millidge,
Tschantz & Buckley 2022, "Predictive coding approximates backprop along arbitrary
computation graphs"; generative: Rao & Ballard 1999)."""
from __future__ import annotations

import torch

from ..capabilities import PredictionErrors
from ..costs import Cost
from ..settle import SettleOptions
from ..phases import Condition
from .base import Rule, Update

VARIANTS = ("nudged", "centered", "clamp", "unsupervised")
# Variants that give nothing useful on one arrangement, and why.
INVALID = {("nudged", "generative"): "the free phase's errors are not zero, so ε(s^β)/β is dominated by them "
                                     "(use centered)",
           ("unsupervised", "discriminative"): "the free equilibrium has no errors: there is nothing to learn"}


class PredictiveCodingRule(Rule):
    r"""The predictive coding update: settle with the input clamped and the output nudged
    or clamped, then the local Hebbian update of each prediction,

        ΔW_k ∝ ⟨ε_to f(v_from)ᵀ⟩,  Δb_k ∝ ⟨ε_to⟩,   i.e.  p.grad = Σ_phases w·∂E/∂θ(s_phase),

    in closed form (``model.param_grads``), on layers of any shape (vectors, feature maps:
    :class:`~dynets.models.PredictiveCoding`, :class:`~dynets.models.ConvPredictiveCoding`). Variants:

    - ``nudged`` (default): one phase nudged with β (F = E + β·C, warm-started from the
      free equilibrium), w = 1/β. For the discriminative arrangement the free errors are
      zero and ε_l ≈ −β·∂C/∂μ_l, so this tends to backprop's gradient with error O(β).
    - ``centered``: phases at +β and −β, w = ±1/(2β): error O(β²) (as for EP, of which it
      is the special case on this energy); valid for both arrangements.
    - ``clamp``: Whittington & Bogacz's clamped output, v_L = target, w = 1. It is *not*
      backprop's gradient even for small output errors (cosine 0.83–0.97 measured;
      ``shared/notes/predictive-coding.md``): the output error is shared among the layers.
      It tends to backprop only as the output precision tends to 0, which is the nudge.
      With a generative model: data at the bottom and the label at the top both clamped.
    - ``unsupervised`` (generative only): the free phase with the data clamped, w = 1:
      descends the model's free energy of the data (Rao & Ballard 1999).

    Args:
        beta: nudging strength β > 0 (``nudged``, ``centered``).
        variant: one of ``nudged``, ``centered``, ``clamp``, ``unsupervised``.
        settle: how every phase is settled (nudged and clamped phases start from the free one).
        cost: the cost C of the read-out (default squared error).
        allow_unconverged: see :class:`~dynets.rules.base.Rule`.
    """

    needs = (PredictionErrors,)

    def __init__(self, beta: float = 0.1, variant: str = "nudged", settle: SettleOptions | None = None,
                 cost: Cost | None = None, allow_unconverged: bool = False) -> None:
        super().__init__(settle, cost, allow_unconverged)
        if variant not in VARIANTS:
            raise ValueError(f"unknown predictive coding variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta, self.variant = float(beta), variant

    @property
    def needs_target(self) -> bool:
        """Every variant but ``unsupervised`` nudges or clamps the read-out toward the target."""
        return self.variant != "unsupervised"

    def phases(self, condition: Condition) -> list[tuple[str, Condition | None, float]]:
        """``(name, condition, weight)`` of each phase the update sums; ``None``: the free phase."""
        b = self.beta   # only this variant's phases: the unsupervised one has no target to nudge toward
        if self.variant == "nudged":
            return [("nudged_+", condition.nudged(b), 1 / b)]
        if self.variant == "centered":
            return [("nudged_+", condition.nudged(b), 0.5 / b), ("nudged_-", condition.nudged(-b), -0.5 / b)]
        if self.variant == "clamp":
            return [("clamped", condition.clamped({-1: condition.target}), 1.0)]
        return [("free", None, 1.0)]

    def update(self, model: PredictionErrors, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        self.check_model(model)
        why = INVALID.get((self.variant, model.arrangement))
        if why:
            raise ValueError(f"PredictiveCodingRule variant {self.variant!r} cannot train a {model.arrangement} "
                             f"model: {why}")
        condition, free, metrics = self.free_phase(model, x, y)
        settled = {"free": free}
        for name, phase, _ in self.phases(condition):
            if phase is not None:
                settled[name] = eq = self.settle(model, phase, init=free.state)
                metrics[f"steps_{name}"] = eq.steps
                metrics["converged"] = min(metrics["converged"], eq.converged_fraction)
        self.check_converged(metrics, settled)
        grads: dict[str, torch.Tensor] = {}
        for name, _, weight in self.phases(condition):
            for key, g in model.param_grads(settled[name].state, condition).items():
                grads[key] = grads[key].add_(g, alpha=weight) if key in grads else g.mul_(weight)
        if model.is_generative:
            metrics["reconstruction"] = model.reconstruction(free.state, condition).mean().item()
        return Update(grads, metrics)
