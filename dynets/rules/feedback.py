"""Rules for networks whose feedback weights B are not the transpose of the forward W
(:class:`~dynets.models.asymmetric.Asymmetric`): vector-field EP, feedback alignment,
Kolen–Pollack and weight mirrors. Each compares a free and a nudged equilibrium of the
same asymmetric network; they differ in the update of W and in what sets B."""
from __future__ import annotations

import warnings

import torch

from ..capabilities import SeparateFeedback
from ..costs import Cost
from ..models.asymmetric import Asymmetric
from ..settle import SettleOptions
from ..phases import Condition, Equilibrium, State
from .base import Rule, Update

# Nudging strengths of the two phases compared, in units of β (as EquilibriumPropagation).
VARIANTS = {"centered": (-1.0, 1.0), "positive": (0.0, 1.0)}


class _Nudged(Rule):
    """Free phase and two phases nudged by ±β from it. A phase with an unconverged sample is
    an error (:meth:`~dynets.rules.base.Rule.check_converged`); with ``allow_unconverged`` a
    sample is used only if every one of its settles converged, and the others are left out of
    the batch mean and counted (``unconverged``): an oscillating, non-equilibrium state is
    never learned from."""

    needs = (SeparateFeedback,)
    needs_learned_feedback = False

    def __init__(self, beta: float = 0.5, variant: str = "centered", settle: SettleOptions | None = None,
                 cost: Cost | None = None, allow_unconverged: bool = False) -> None:
        super().__init__(settle, cost, allow_unconverged)
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta, self.variant = float(beta), variant

    def check_model(self, model) -> None:
        super().check_model(model)
        if self.needs_learned_feedback and not model.learns_feedback:
            raise ValueError(f"{type(self).__name__} trains the feedback weights B, but this model has "
                             f"feedback_mode={model.feedback_mode!r}; set feedback_mode='learned'")

    def phases(self, model: Asymmetric, x: torch.Tensor, y: torch.Tensor | None):
        """(condition, free, a, b, ok, scale, metrics): the nudged ends a (β₂) and b (β₁),
        the mask ``ok`` of samples that converged everywhere, and 1/(β₂ − β₁)."""
        condition, free, metrics = self.free_phase(model, x, y)
        ends, ok, settled = [], free.residual <= free.tolerance, {"free": free}
        for k in VARIANTS[self.variant]:
            eq = free if k == 0.0 else self.nudged(model, condition, free, k * self.beta)
            ok = ok & (eq.residual <= eq.tolerance)
            ends.append(eq.state)
            if k != 0.0:
                name = f"nudged_{'+' if k > 0 else '-'}"
                metrics[f"steps_{name}"], settled[name] = eq.steps, eq
        self.check_converged(metrics, settled)
        metrics["unconverged"] = int((~ok).sum())
        metrics["converged"] = ok.float().mean().item()
        k1, k2 = VARIANTS[self.variant]
        return condition, free, ends[1], ends[0], ok, 1.0 / ((k2 - k1) * self.beta), metrics

    def nudged(self, model: Asymmetric, condition: Condition, free: Equilibrium, beta: float) -> Equilibrium:
        """The phase nudged by ``beta``, settled from the free equilibrium."""
        return self.settle(model, condition.nudged(beta), init=free.state)

    def update(self, model: Asymmetric, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        condition, free, a, b, ok, scale, metrics = self.phases(model, x, y)
        pick = lambda s: tuple(t[ok] for t in s)
        if ok.any():
            step = self.phase_update(model, condition, pick(free.state), pick(a), pick(b), x[ok], scale)
        else:
            step = Update({n: torch.zeros_like(p) for n, p in model.named_parameters() if self.trains(n, model)})
        metrics.update(step.metrics)
        metrics.update({f"feedback_angle_{l}": v for l, v in enumerate(model.feedback_angles())})
        return Update(step.grads, metrics)

    def trains(self, name: str, model: Asymmetric) -> bool:
        """Whether this rule writes a gradient for parameter ``name`` (every forward one)."""
        return not name.startswith("feedback.") or self.needs_learned_feedback

    def phase_update(self, model: Asymmetric, condition: Condition, free: State, a: State, b: State,
                     x: torch.Tensor, scale: float) -> Update:
        """The update from the phases of the converged samples (forward weights: the delta
        rule on the postsynaptic activity difference); its metrics join the step's."""
        return Update(model.delta_rule(a, b, free, x, scale))


class VectorFieldEP(_Nudged):
    r"""EP's phase difference on an asymmetric network (Scellier, Goyal, Binas, Mesnard &
    Bengio 2018):

        ΔW_l ∝ −[s^{β₂}_{l+1} s^{β₂ᵀ}_l − s^{β₁}_{l+1} s^{β₁ᵀ}_l] / (β₂ − β₁),

    the same Hebbian difference as EP (and, for learned feedback, its transpose for B_l),
    with both phases settled in the asymmetric field. With tied feedback it is exactly
    :class:`~dynets.rules.EquilibriumPropagation`; otherwise it is not the gradient of
    anything, and its alignment with the exact gradient is what the table measures.

    Args:
        beta: the output nudge β, as in EquilibriumPropagation.
        variant: ``centered`` (nudges ±β) or ``positive`` (0 and β), as in EquilibriumPropagation.
        allow_unconverged: see :class:`_Nudged`.
    """

    def trains(self, name: str, model: Asymmetric) -> bool:
        return not name.startswith("feedback.") or model.learns_feedback

    def phase_update(self, model, condition, free, a, b, x, scale):
        return Update(model.hebbian_difference(a, b, x, scale))


class FeedbackAlignment(_Nudged):
    r"""Feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016) in a settled network:
    the nudge at the output travels down through the fixed feedback B, and each forward
    weight learns locally from its postsynaptic unit's activity difference,

        ΔW_l ∝ −(s^{β₂}_{l+1} − s^{β₁}_{l+1}) s^{0ᵀ}_l / (β₂ − β₁).

    With B = Wᵀ this tends to the exact gradient of the asymmetric network's W as β → 0
    (the nudge's response is the adjoint times ρ′: Scellier et al. 2018); with a random B,
    W comes to align with Bᵀ. The angles between each B_l and W_lᵀ are logged
    (``feedback_angle_<l>``, degrees).
    """


class KolenPollack(_Nudged):
    r"""Kolen & Pollack (1994) (as in Akrout et al. 2019): W learns as in feedback alignment and
    B receives the same update, transposed, with the same weight decay λ on both:

        ΔW_{l} = −η(δ_{l} + λW_{l}),   ΔB_l = −η(δ_lᵀ + λB_l),

    so that W_lᵀ − B_l shrinks by (1 − ηλ) every step and B comes to mirror Wᵀ, whatever δ is.

    That holds for an optimizer whose step is the same function of identical gradients and
    whose decay is the same on W and B: plain SGD with the decay in the gradient (``decay=λ``),
    or AdamW's decoupled decay (``decay=0``, ``weight_decay=λ``: W and B then get identical
    Adam moments, so identical steps, and the decay multiplies both by 1 − ηλ). Adam with the
    decay in the gradient does not: the decay terms λW and λB differ, Adam's normalisation
    turns them into different steps, and on digits the weights collapsed (12 % at λ = 1e-2).
    :meth:`check_optimizer` warns about such pairings.

    Args:
        decay: λ ≥ 0 added to the gradients (for SGD; 0 for AdamW, whose decay is its own).
    """

    needs_learned_feedback = True

    def __init__(self, beta: float = 0.5, variant: str = "centered", decay: float = 0.0,
                 settle: SettleOptions | None = None, cost: Cost | None = None, allow_unconverged: bool = False) -> None:
        super().__init__(beta, variant, settle, cost, allow_unconverged)
        if not decay >= 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.decay = float(decay)

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        decoupled = isinstance(optimizer, torch.optim.Adam) and all(
            g.get("decoupled_weight_decay", False) for g in optimizer.param_groups)
        sgd = isinstance(optimizer, torch.optim.SGD)
        shrinks = any(g.get("weight_decay", 0) > 0 for g in optimizer.param_groups) or self.decay > 0
        if self.decay > 0 and not sgd:
            warnings.warn(f"KolenPollack(decay={self.decay}) with {type(optimizer).__name__}: the decay is "
                          "in the gradient, which only SGD turns into the same shrinkage of W and B. Use "
                          "decay=0 with AdamW's weight_decay (optimizer=adamw), or SGD", stacklevel=2)
        elif not (sgd or decoupled) or not shrinks:
            warnings.warn(f"KolenPollack(decay={self.decay}) with {type(optimizer).__name__} and no decay "
                          "that shrinks W and B alike: B will not converge to Wᵀ. Use decay=0 with "
                          "AdamW's weight_decay > 0 (optimizer=adamw), or SGD with decay > 0", stacklevel=2)

    def phase_update(self, model, condition, free, a, b, x, scale):
        grads = model.delta_rule(a, b, free, x, scale)
        mirrored = model.mirror_update(grads)   # W's update carried onto B, before W's own decay is added
        for l, fb in enumerate(model.feedback):
            grads[f"feedback.{l}"] = mirrored[f"feedback.{l}"] + self.decay * fb.detach()
        if self.decay:
            for name, w in model.named_parameters():
                if name.endswith("weight") and not name.startswith("feedback."):
                    grads[name] = grads[name] + self.decay * w.detach()
        return Update(grads)


class WeightMirror(_Nudged):
    r"""Weight mirrors (Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019): W learns as in
    feedback alignment (wake), and in a sleep phase interleaved with it (one per step) the
    units of each hidden layer l fire noise ξ ~ N(0, σ²I) and B_l learns by the Hebbian
    rule between those rates and the postsynaptic currents W_l ξ they cause upstream,
    with decay:

        ΔB_l ∝ ⟨ξ (W_l ξ)ᵀ⟩/σ² − B_l,    E[ΔB_l] ∝ W_lᵀ − B_l,

    written as B's gradient, so the optimizer drives B to mirror Wᵀ (the mean of ξ is
    zero, so the biases drop out).

    With ``pretrain`` the mirror is trained before W learns (as Akrout et al. pre-train it): at
    the first update B is set to the mean of ``pretrain`` sleeps' estimates, the fixed point
    the sleep rule above reaches on those pretrain·samples patterns, so W's first wake step
    already sends its error down through B ≈ Wᵀ. Whether it has happened is the rule's state
    (:meth:`state_dict`): a resumed run does not pre-train again.

    Args:
        beta: nudge strength β > 0 of the wake phases.
        variant: ``centered`` (±β) or ``positive`` (0 and β).
        sigma: σ > 0 of the sleep noise (the estimate does not depend on it: it is scaled out).
        samples: noise patterns per sleep (the estimate's noise falls as 1/√samples).
        seed: seed of the rule's ``generator`` (checkpointed).
        pretrain: sleeps averaged into B before the first wake update (0: none, B starts
            where the model drew it).
        settle: settle options of every phase.
        cost: the cost the output is nudged by (default the squared error).
        allow_unconverged: see :class:`~dynets.rules.base.Rule`.
    """

    needs_learned_feedback = True

    def __init__(self, beta: float = 0.5, variant: str = "centered", sigma: float = 1.0, samples: int = 1000,
                 seed: int = 0, pretrain: int = 0, settle: SettleOptions | None = None, cost: Cost | None = None,
                 allow_unconverged: bool = False) -> None:
        super().__init__(beta, variant, settle, cost, allow_unconverged)
        if not sigma > 0 or int(samples) < 1 or int(pretrain) < 0:
            raise ValueError(f"sigma must be > 0, samples >= 1 and pretrain >= 0, got sigma={sigma}, "
                             f"samples={samples}, pretrain={pretrain}")
        self.sigma, self.samples, self.pretrain, self.pretrained = float(sigma), int(samples), int(pretrain), False
        self.generator = torch.Generator().manual_seed(int(seed))

    def state_dict(self) -> dict:
        """Whether B has been pre-trained (a resumed run must not pre-train it again)."""
        return {"pretrained": self.pretrained}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.pretrained = bool(state["pretrained"])

    def update(self, model: Asymmetric, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        """Pre-train B (once, with ``pretrain``), then the wake update and one sleep."""
        if self.pretrain and not self.pretrained:
            self.mirror_pretrain(model)
        return super().update(model, x, y)

    def mirror_pretrain(self, model: Asymmetric) -> None:
        """Set B to the mean of ``pretrain`` sleeps' estimates of Wᵀ (drawn by the rule's generator)."""
        self.check_model(model)
        sleeps = [model.mirror_sleep(self.sigma, self.samples, self.generator) for _ in range(self.pretrain)]
        model.set_feedback([torch.stack(per_b).mean(0) for per_b in zip(*sleeps)])
        self.pretrained = True

    def sleep_grads(self, model: Asymmetric) -> dict[str, torch.Tensor]:
        """One sleep: ``{"feedback.<l>": B_l − (the model's mirror estimate of what B_l stands
        for, W_{l+1}ᵀ: ⟨ξ (W_{l+1} ξ)ᵀ⟩/σ²)}`` (index l counts the hidden layers from 0), noise
        from the rule's generator (:meth:`~dynets.models.asymmetric.Asymmetric.mirror_sleep`)."""
        self.check_model(model)
        estimates = model.mirror_sleep(self.sigma, self.samples, self.generator)
        return {f"feedback.{l}": fb.detach() - m for l, (fb, m) in enumerate(zip(model.feedback, estimates))}

    def phase_update(self, model, condition, free, a, b, x, scale):
        return Update({**model.delta_rule(a, b, free, x, scale), **self.sleep_grads(model)})

