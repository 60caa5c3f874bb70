"""Difference target propagation on a settled asymmetric network (Lee, Zhang, Fischer &
Bengio 2015), its feedback trained by the difference reconstruction loss of Meulemans,
Carzaniga, Suykens, Sacramento & Grewe 2020 ("A theoretical framework for target propagation")."""
from __future__ import annotations

import torch

from ..costs import Cost
from ..models.asymmetric import Asymmetric
from ..settle import SettleOptions
from ..phases import Condition, Equilibrium, State
from .base import Update
from .feedback import _Nudged

TARGETS = ("settle", "sweep")


def difference_targets(model: Asymmetric, free: State, condition: Condition, top: torch.Tensor) -> State:
    r"""Targets by one top-down sweep of the difference correction (Lee et al. 2015):

        ĥ_L = ``top``,   ĥ_l = h_l + g_l(ĥ_{l+1}) − g_l(h_{l+1}),

    with g_l(s) = ρ(c_l + B_l s) the hidden layer's rate given the top-down input s and its
    own bottom-up drive c_l at the free state h. Where ĥ_{l+1} = h_{l+1}, ĥ_l = h_l exactly."""
    drives, rho = model.drives(free, condition), model.act.rho
    targets = [top]
    for l in range(len(free) - 2, -1, -1):
        fb = model.feedback_weights()[l]
        c = drives[l] - free[l + 1] @ fb.T
        # the correction first: (h + g(ĥ)) − g(h) would round away from h where ĥ = h
        targets.insert(0, free[l] + (rho(c + targets[0] @ fb.T) - rho(c + free[l + 1] @ fb.T)))
    return tuple(targets)


class DifferenceTargetPropagation(_Nudged):
    r"""Difference target propagation, dynamical: the target ĥ is the state the network
    settles to when its output is nudged (``targets="settle"``: the feedback B settles
    together with the forward pathway, so the top-down change B(ĥ_{l+1} − h_{l+1}) is the
    difference correction); or the classic sweep ĥ_l = h_l + g(ĥ_{l+1}) − g(h_{l+1}) from the
    output target ĥ_L = h_L − β·∂C/∂h_L (``targets="sweep"``, :func:`difference_targets`).
    Each forward weight learns locally from its layer's target,

        ΔW_l ∝ −(ĥ_{l+1} − h_{l+1}) h_lᵀ / β,

    and in the same step the feedback g learns to invert the forward map f by the difference
    reconstruction loss (a self-supervised phase; the layer-wise form, which for one hidden
    layer is Meulemans et al.'s loss): with ε ~ N(0, σ²I) at hidden layer l and η ~ N(0, σ²I)
    at layer l+1, around the free state h,

        L_l = ‖g_l(f_{l+1}(h_l + ε)) − g_l(f_{l+1}(h_l)) − ε‖²/σ² + λ‖g_l(h_{l+1} + η) − g_l(h_{l+1})‖²/σ²,

    whose minimiser for small σ is the damped Gauss–Newton inverse of f's Jacobian (λ damps
    it, and keeps the recurrent loop W, B of the settled network contractive).
    ``drl_loss`` is logged.

    Args:
        beta: the output nudge β.
        variant: ``centered`` (nudges ±β) or ``positive`` (0 and β).
        targets: ``settle`` or ``sweep``.
        sigma: σ > 0 of the reconstruction noise.
        reg: λ ≥ 0.
        seed: seed of the rule's ``generator`` (checkpointed).
        allow_unconverged: see :class:`~dynets.rules.feedback._Nudged`.
    """

    needs_learned_feedback = True

    def __init__(self, beta: float = 0.5, variant: str = "centered", targets: str = "settle", sigma: float = 0.1,
                 reg: float = 1.0, seed: int = 0, settle: SettleOptions | None = None,
                 cost: Cost | None = None, allow_unconverged: bool = False) -> None:
        super().__init__(beta, variant, settle, cost, allow_unconverged)
        if targets not in TARGETS:
            raise ValueError(f"unknown targets {targets!r}; valid: {', '.join(TARGETS)}")
        if not sigma > 0 or not reg >= 0:
            raise ValueError(f"sigma must be > 0 and reg >= 0, got sigma={sigma}, reg={reg}")
        self.targets, self.sigma, self.reg = targets, float(sigma), float(reg)
        self.generator = torch.Generator().manual_seed(int(seed))

    def check_model(self, model) -> None:
        """Also: the targets and the reconstruction loss are written for dense layers."""
        super().check_model(model)
        if not isinstance(model, Asymmetric):
            raise TypeError(f"DifferenceTargetPropagation cannot run on {type(model).__name__}: its targets "
                            "ρ(c_l + B_l ĥ_{l+1}) and its reconstruction loss, which trains each B_l to invert "
                            "layer l+1's map through a noise-perturbed forward pass, are written for dense layers "
                            "(model=asymmetric); use fa, vfep, kp or mirror on a convolutional net")

    def nudged(self, model: Asymmetric, condition: Condition, free: Equilibrium, beta: float) -> Equilibrium:
        if self.targets == "settle":
            return super().nudged(model, condition, free, beta)
        top = free.state[-1] - beta * condition.cost.grad(free.state[-1], condition.target)
        with torch.no_grad():
            state = difference_targets(model, free.state, condition, top)
        return Equilibrium(state, free.t, free.residual, free.tolerance, free.converged, 0, 0)

    def phase_update(self, model, condition, free, a, b, x, scale):
        loss, grads = self.reconstruction(model, condition, free, x)
        return Update({**model.delta_rule(a, b, free, x, scale), **grads}, {"drl_loss": loss})

    def reconstruction(self, model: Asymmetric, condition: Condition, free: State,
                       x: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
        """The difference reconstruction loss (batch mean, summed over layers) at the free
        state ``free`` of inputs ``x``, and its gradient ``{"feedback.<l>": ∂L/∂B_l}``."""
        rho = model.act.rho
        with torch.no_grad():
            drives = model.drives(free, Condition(x, cost=condition.cost))
        total, grads = 0.0, {}
        for l, fb in enumerate(model.feedback):
            w = model.layers[l + 1].weight.detach()
            eps, eta = (self.noise(free[k]) for k in (l, l + 1))
            up = rho(drives[l + 1] + eps @ w.T) - rho(drives[l + 1])    # f(h + ε) − f(h)
            with torch.enable_grad():
                g = lambda s: rho(drives[l] + s @ fb.T) - rho(drives[l])   # g(h_{l+1} + s) − g(h_{l+1})
                loss = ((g(up) - eps).pow(2).sum(1) + self.reg * g(eta).pow(2).sum(1)).mean() / self.sigma ** 2
                grads[f"feedback.{l}"] = torch.autograd.grad(loss, fb)[0]
            total += loss.item()
        return total, grads

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        z = torch.randn(like.shape, generator=self.generator, dtype=like.dtype)
        return z.to(like.device).mul_(self.sigma)

    def update(self, model: Asymmetric, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        step = super().update(model, x, y)
        step.metrics.setdefault("drl_loss", float("nan"))   # no converged sample: no reconstruction ran
        return step
