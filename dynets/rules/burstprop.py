"""Burstprop: burst-dependent plasticity of a deep rate network (Payeur, Guerguiev, Zenke,
Richards & Naud 2021, Nat. Neurosci. 24:1010, Methods "deep network"; code jordan-g/Burstprop)."""
from __future__ import annotations

import torch

from ..capabilities import Bursting
from ..costs import Cost
from ..settle import SettleOptions
from .base import Rule, Update


class Burstprop(Rule):
    r"""Two phases of the same input: without a teacher (the steady state's burst probabilities
    p_l^0, the reference the plasticity compares with) and with it (β, p_l^β); then

        ΔW_l = ⟨((p_l^β − p_l^0) ⊙ e_l) e_{l−1}ᵀ⟩,    Δc_l = ⟨(p_l^β − p_l^0) ⊙ e_l⟩

    (``model.burst_plasticity``): potentiation where the burst probability rose above the one
    without teacher, depression where it fell, gated by the postsynaptic event rate and the
    presynaptic one. Written as grads = −ΔW_l / (β g_l) with ``normalize`` (g_l the model's
    ``burst_gains``: with tied feedback (B_l = W_{l+1}) and cancellation this is ∂L/∂W_l to first order in β,
    so the optimizer's learning rate means what it means for backprop), else −ΔW_l / β (the
    published code's update, over the batch size and β, layer by layer with the learning rates
    it chooses). Learned feedback weights B_l get the update of W_{l+1}, as in the published code
    (with weight decay they align, as Kolen–Pollack's).

    Args:
        beta: the teacher's strength (1: the published code's; smaller: closer to the linear regime).
        normalize: divide layer l's update by β g_l (``True``) or by β only.
        settle: how the two phases settle.
        cost: the cost whose gradient the teacher reads (default squared error).
        allow_unconverged: see :class:`~dynets.rules.base.Rule`.
    """

    needs = (Bursting,)

    def __init__(self, beta: float = 1.0, normalize: bool = True, settle: SettleOptions | None = None,
                 cost: Cost | None = None, allow_unconverged: bool = False) -> None:
        super().__init__(settle, cost, allow_unconverged)
        if not beta > 0:
            raise ValueError(f"beta must be > 0 (the teacher's strength), got {beta}")
        self.beta, self.normalize = float(beta), bool(normalize)

    def update(self, model, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        condition, free, metrics = self.free_phase(model, x, y)
        taught = self.settle(model, condition.nudged(self.beta), init=free.state)
        dw = model.burst_plasticity(free.state, taught.state, condition)
        gains = model.burst_gains() if self.normalize else [1.0] * len(model.burst_gains())
        grads = {n: -d / (self.beta * gains[int(n.split(".")[1])]) for n, d in dw.items()}
        for l, (name, p) in enumerate(model.named_feedback()):
            if p.requires_grad:
                grads[name] = grads[f"layers.{l + 1}.weight"]
        metrics.update(steps_taught=taught.steps, converged=min(metrics["converged"], taught.converged_fraction))
        self.check_converged(metrics, {"free": free, "taught": taught})
        return Update(grads, metrics)
