"""Perturbation learning on settled networks: node perturbation (Williams 1992; Fiete &
Seung 2006) and weight perturbation (Jabri & Flower 1992). One global scalar, the change
of the loss at equilibrium, is correlated with each perturbed quantity's own noise."""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace

import torch
from torch import nn

from ..costs import Cost
from ..models.base import DynamicalModel
from ..settle import SettleOptions
from ..steppers import phase_field
from ..phases import Condition, Equilibrium, State
from .base import Rule, Update
from .reference import ImplicitDifferentiation


class Probes:
    """Noise scale, probes, antithetic pairs and the generator of a perturbation estimate
    (:class:`_Perturbation`'s rules and the recognition learners of :mod:`dynets.rules.recognition`).

    Args:
        sigma: noise scale σ > 0.
        n_probes: K ≥ 1 independent draws per step.
        antithetic: evaluate each draw at ±ξ (else against the cost without noise).
        seed: seed of the ``generator`` (checkpointed with the rule that holds it).
    """

    def __init__(self, sigma: float, n_probes: int, antithetic: bool, seed: int) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0 (the noise scale), got {sigma}")
        if int(n_probes) != n_probes or n_probes < 1:
            raise ValueError(f"n_probes must be an integer >= 1, got {n_probes}")
        self.sigma, self.n_probes, self.antithetic = float(sigma), int(n_probes), bool(antithetic)
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def signs(self) -> tuple[float, ...]:
        """The signs each draw is evaluated at: (+1, −1) antithetic, else (+1,)."""
        return (1.0, -1.0) if self.antithetic else (1.0,)

    def noise(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """σ·z, z ~ N(0, I) from the (CPU) generator, on ``like``'s device and dtype."""
        z = torch.randn(shape, generator=self.generator, dtype=like.dtype)
        return z.to(like.device).mul_(self.sigma)

    def delta(self, costs: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """δC from ``costs`` ``(signs, ...)`` and the cost without noise ``base``."""
        return 0.5 * (costs[0] - costs[1]) if self.antithetic else costs[0] - base


class _Perturbation(Rule, Probes):
    r"""What both perturbation rules share. With ξ = σ·z, z ~ N(0, I), and δC the change of
    the cost at equilibrium it causes, the estimate of a gradient g is

        ĝ = (1/K) Σ_k δC_k · ξ_k / σ²,   δC = [C(+ξ) − C(−ξ)]/2 (antithetic) or C(ξ) − C(0),

    unbiased as σ → 0 (E[ξξᵀ] = σ²I); the antithetic pair cancels the even orders of C, so
    the deterministic error for given directions is O(σ²) instead of O(σ). A perturbed
    settle that does not converge is a probe that failed: it is left out of the estimate
    (which averages each sample's usable probes) and counted (``perturbed_unconverged``,
    settles in the batch). ``steps_perturbed`` is the sweeps (steps) of the perturbed settles,
    summed over them (node perturbation: one settle of all probes; weight perturbation: one per
    probe and sign). The free phase, at which the update is computed, goes through
    :meth:`~dynets.rules.base.Rule.check_converged`: an error if a sample did not converge,
    or with ``allow_unconverged`` that sample is left out too.

    Args:
        sigma: noise scale σ > 0 (keep the settle's ``atol`` well below σ·‖∂C/∂ξ‖: the
            settle's stopping error enters δC directly).
        n_probes: K ≥ 1 independent draws per step (antithetic: two settles each).
        antithetic: evaluate each draw at ±ξ (else against the free equilibrium).
        seed: seed of the rule's ``generator`` (checkpointed with the run).
        exact_cosine: also report ``cosine_exact``, the cosine of the update with the exact
            gradient (:class:`ImplicitDifferentiation` with its defaults, one adjoint solve
            per step; NaN when the adjoint does not converge).
        settle: settle options of the free and perturbed phases.
        cost: the cost C (default squared error).
        allow_unconverged: see above and :class:`~dynets.rules.base.Rule`.
    """

    def __init__(self, sigma: float = 0.05, n_probes: int = 1, antithetic: bool = True, seed: int = 0,
                 exact_cosine: bool = False, settle: SettleOptions | None = None, cost: Cost | None = None,
                 allow_unconverged: bool = False) -> None:
        Rule.__init__(self, settle, cost, allow_unconverged)
        Probes.__init__(self, sigma, n_probes, antithetic, seed)
        self.exact_cosine = bool(exact_cosine)

    @abstractmethod
    def estimate(self, model: DynamicalModel, condition: Condition, free: Equilibrium) -> tuple[dict[str, torch.Tensor], dict]:
        """``({name: estimate of ∂L/∂θ}, metrics)``: the metrics ``perturbed_unconverged`` (perturbed
        settles of a sample that did not converge) and ``steps_perturbed`` (their steps, summed)."""

    def update(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        exact = _exact_gradient(model, self, x, y) if self.exact_cosine else None
        condition, free, metrics = self.free_phase(model, x, y)
        self.check_converged(metrics, {"free": free})
        grads, perturbed = self.estimate(model, condition, free)
        metrics.update(perturbed)
        if self.exact_cosine:
            metrics["cosine_exact"] = _cosine(grads, exact) if exact is not None else float("nan")
        return Update(grads, metrics)


class NodePerturbation(_Perturbation):
    r"""Node perturbation: noise ξ_l ~ N(0, σ²I) added to the drive of every unit (held
    through the settle: ``Condition.noise``), and per sample b the estimate of the
    sensitivity of its cost to the drive,  ĝ_b = (1/K) Σ_k δC_{b,k} ξ_{b,k} / σ².
    K probes of a batch of B run as one settle of K·B (antithetic 2K·B) rows.

    Local weight updates: at the equilibrium, ∇_s E = ξ (energy models) or generally
    f(s*, θ, ξ) = 0, so with λ the adjoint of the implicit function theorem,
    dC/dξ = λᵀ ∂f/∂ξ and dC/dθ = λᵀ ∂f/∂θ. ξ enters each unit's own drive only, so ∂f/∂ξ is
    diagonal (D; ρ'(u) for LayeredHopfield, 1 for a gradient flow) and

        ∂L/∂θ ≈ (1/B) Σ_b (D⁻¹ĝ_b)ᵀ ∂f/∂θ(s*_b),

    one vector-Jacobian product of the vector field at the free equilibrium (units with
    D = 0 carry nothing: their ∂f/∂θ is 0 too). For LayeredHopfield this is
    ∂L/∂W_l = ⟨ĝ_{l+1} s_lᵀ + s_{l+1} ĝ_lᵀ⟩, ∂L/∂b_l = ⟨ĝ_l⟩: the unit's estimate times
    its presynaptic rates. A single probe's cosine with the gradient is about 1/√p for
    p perturbed units (Werfel, Xie & Seung 2005).
    """

    def estimate(self, model: DynamicalModel, condition: Condition, free: Equilibrium) -> tuple[dict[str, torch.Tensor], dict]:
        signs, K, B = self.signs, self.n_probes, condition.batch
        rows = len(signs) * K
        xi = [self.noise((K, *s.shape), s) for s in free.state]   # one ξ per unit, layers of any shape
        noise = {l: torch.cat([sign * v for sign in signs]).flatten(0, 1) for l, v in enumerate(xi)}
        stacked = _stacked(model, condition, rows, noise)
        eq = self.settle(model, stacked, init=tuple(_tile(s, rows) for s in free.state))
        costs = model.cost(eq.state, stacked).view(len(signs), K, B)
        settled = (eq.residual <= eq.tolerance).view(len(signs), K, B)
        ok = settled.all(0) & (free.residual <= free.tolerance)
        # Each sample's estimate averages its own usable probes.
        weight = torch.where(ok, self.delta(costs, model.cost(free.state, condition)), 0.0)
        weight = weight / ok.sum(0).clamp(min=1) / self.sigma ** 2
        g = tuple((weight.view(*weight.shape, *(1,) * (v.dim() - 2)) * v).sum(0) for v in xi)
        metrics = {"perturbed_unconverged": int((~settled).sum()), "steps_perturbed": eq.steps}
        return drive_to_params(model, condition, free, g), metrics


def _stacked(model: DynamicalModel, condition: Condition, rows: int, noise: dict) -> Condition:
    """The condition of ``rows`` copies of the batch, each with its own noise. A per-row input
    drive the free phase's ``prepare`` computed (a tensor: W₀x) is the same for every copy, so it
    is tiled rather than computed again for ``rows`` times the batch (most of a step's
    multiply–adds at 784-512-10 with 16 antithetic probes); other constants are prepared anew."""
    stacked = Condition(_tile(condition.x, rows), _tile(condition.target, rows), cost=condition.cost, noise=noise)
    if isinstance(condition.constants, torch.Tensor):
        return replace(stacked, constants=_tile(condition.constants, rows))
    return model.prepare(stacked)


def _tile(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``rows`` copies of the batch ``t`` ``(batch, *shape)`` stacked along the batch: ``(rows·batch, *shape)``."""
    return t.repeat(rows, *(1,) * (t.dim() - 1))


class WeightPerturbation(_Perturbation):
    r"""Weight perturbation: every trained parameter is perturbed at once, θ + ξ with
    ξ ~ N(0, σ²I), the batch settled under the perturbed weights, and

        ∂L/∂θ ≈ (1/K) Σ_k δL_k ξ_k / σ²,

    δL the change of the batch-mean cost (over the samples whose settles converged). The
    perturbed weights go in functionally (``torch.func.functional_call``): the module's
    parameters are never edited. Each probe is its own settle (different weights cannot
    share a batch in a generic model). A single probe's cosine with the gradient is about
    1/√N for N weights (Werfel, Xie & Seung 2005).
    """

    def estimate(self, model: DynamicalModel, condition: Condition, free: Equilibrium) -> tuple[dict[str, torch.Tensor], dict]:
        named = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        net, base = _Settled(model, self.settle), model.cost(free.state, condition)
        free_ok = free.residual <= free.tolerance
        sums, used, unconverged, steps = {n: torch.zeros_like(p) for n, p in named.items()}, 0, 0, 0
        for _ in range(self.n_probes):
            xi = {n: self.noise(p.shape, p) for n, p in named.items()}
            results = [torch.func.functional_call(net, {f"net.{n}": p + sign * xi[n] for n, p in named.items()},
                                                  (condition, free.state)) for sign in self.signs]
            settled = torch.stack([ok for _, ok, _ in results])
            unconverged, steps = unconverged + int((~settled).sum()), steps + sum(n for *_, n in results)
            ok = settled.all(0) & free_ok
            if not ok.any():
                continue
            delta = self.delta(torch.stack([c for c, *_ in results]), base)[ok].mean()
            for n in sums:
                sums[n].add_(xi[n], alpha=delta.item() / self.sigma ** 2)
            used += 1
        return {n: s / max(used, 1) for n, s in sums.items()}, {"perturbed_unconverged": unconverged,
                                                                  "steps_perturbed": steps}


class _Settled(nn.Module):
    """A model settled under whatever weights ``functional_call`` swaps in: the batch
    constants are prepared anew from those weights."""

    def __init__(self, model: DynamicalModel, options: SettleOptions) -> None:
        super().__init__()
        self.net, self.options = model, options

    def forward(self, condition: Condition, init: State) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The cost per sample at the equilibrium, which samples converged, and the settle's steps."""
        fresh = self.net.prepare(Condition(condition.x, condition.target, cost=condition.cost))
        eq = self.options(self.net, fresh, init=init)
        return self.net.cost(eq.state, fresh), eq.residual <= eq.tolerance, eq.steps


def drive_to_params(model: DynamicalModel, condition: Condition, free: Equilibrium,
                    g: State) -> dict[str, torch.Tensor]:
    """``{name: (1/B) Σ_b (D⁻¹g_b)ᵀ ∂f/∂θ}`` at the free equilibrium: weight gradients from
    ``g``, per-sample ``(batch, *shape)`` sensitivities of the cost to each layer's drive
    noise (see :class:`NodePerturbation`). D, the diagonal of ∂f/∂ξ, is one VJP with ones.
    A read-out outside the dynamics (``ConvHopfield(softmax=True)``) adds its direct ∂L/∂θ."""
    named = model.trained_parameters()
    with torch.enable_grad():
        zero = tuple(torch.zeros_like(s, requires_grad=True) for s in free.state)
        f = phase_field(model, replace(condition, noise=dict(enumerate(zero))))(torch.tensor(free.t), free.state)
        gain = torch.autograd.grad(f, zero, grad_outputs=tuple(torch.ones_like(s) for s in f), retain_graph=True)
        adjoint = tuple(torch.where(d != 0, gl / torch.where(d != 0, d, 1.0), 0.0) / condition.batch
                        for gl, d in zip(g, gain))
        grads = torch.autograd.grad(f, [p for _, p in named], grad_outputs=adjoint, allow_unused=True,
                                    materialize_grads=True)
        # A read-out outside the dynamics (a softmax layer) learns by its own delta rule, ∂L/∂θ.
        loss = model.cost(free.state, condition).mean()
        if loss.requires_grad:
            direct = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, materialize_grads=True)
            grads = [gr + d for gr, d in zip(grads, direct)]
    return {n: gr for (n, _), gr in zip(named, grads)}


def _exact_gradient(model: DynamicalModel, rule: Rule, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
    """The exact gradient of the rule's loss (implicit differentiation), by name, or ``None``
    if its adjoint did not converge."""
    exact = ImplicitDifferentiation(rule.settle, cost=rule.cost, allow_unconverged=rule.allow_unconverged).update(model, x, y)
    # no reference: the cosine is reported as NaN, never a made-up number
    return exact.grads if exact.metrics["adjoint_converged"] else None


def _cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine of two gradients over the names of ``a``, as one vector each (NaN if one is zero)."""
    u = torch.cat([a[n].flatten() for n in a]).double()
    v = torch.cat([b[n].flatten() for n in a]).double()
    norm = (u.norm() * v.norm()).item()
    return (u @ v).item() / norm if norm > 0 else float("nan")
