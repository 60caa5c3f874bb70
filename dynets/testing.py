"""Textbook reference implementations: EP and PC written the way their papers' code writes
them, with autograd at every step and no closed form or dynets solver. The tests check
dynets' rules against them (same weights, batch and step budget: the same gradients), and
``scripts/bench.py`` times dynets against them."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .couplings import Conv
from .phases import Condition
from .rules import EquilibriumPropagation, PredictiveCodingRule
from .settle import SettleOptions, residual_norm


class ReferenceEP:
    r"""Centered equilibrium propagation on a layered Hopfield net with the hard sigmoid
    ρ(u) = clamp(u, 0, 1), in the style of Laborieux et al. (2021)'s code (Scellier &
    Bengio 2017): the states carry ``requires_grad`` and every Euler step takes ∂Φ/∂s by
    autograd, rebuilding the input drive each time,

        Φ_β(s) = Σ_l s_{l+1}·(W_l s_l + b_l) − β·½‖s_L − y‖²    (s_0 = x, summed over the batch),
        s ← s + Δt·(−s + ρ(∂Φ_β/∂s)),
        ∇θ = −[∂Φ_β/∂θ(s^β) − ∂Φ_{−β}/∂θ(s^{−β})] / (2β·batch).

    The free phase takes ``free_steps`` steps from s = 0, each nudged phase ``nudged_steps``
    from the free state. :meth:`rule` is dynets' rule with the same β, Δt and step budget;
    :meth:`stopped_rule` stops each phase at the residual the reference leaves (:meth:`residuals`).
    """

    def __init__(self, layers: nn.ModuleList, beta: float = 0.5, step_size: float = 0.5,
                 free_steps: int = 30, nudged_steps: int = 10) -> None:
        self.layers, self.beta, self.step_size = layers, beta, step_size
        self.free_steps, self.nudged_steps = free_steps, nudged_steps

    prefix = "layers"   # the model's name of ``layers``: the gradients are keyed as its parameters

    @staticmethod
    def rho(u: torch.Tensor) -> torch.Tensor:
        return u.clamp(0.0, 1.0)

    def zeros(self, x: torch.Tensor) -> list:
        return [x.new_zeros(x.shape[0], layer.out_features) for layer in self.layers]

    def phi(self, x: torch.Tensor, states: list, y: torch.Tensor, beta: float) -> torch.Tensor:
        below = [x, *states[:-1]]
        phi = sum((s * layer(b)).sum() for s, layer, b in zip(states, self.layers, below))
        return phi - beta * 0.5 * (states[-1] - y).pow(2).sum()

    def settle(self, x: torch.Tensor, y: torch.Tensor, states: list, beta: float, steps: int) -> list:
        for _ in range(steps):
            states = [s.detach().requires_grad_() for s in states]
            grads = torch.autograd.grad(self.phi(x, states, y, beta), states)
            states = [s + self.step_size * (-s + self.rho(g)) for s, g in zip(states, grads)]
        return [s.detach() for s in states]

    def free_phase(self, x: torch.Tensor, y: torch.Tensor) -> list:
        return self.settle(x, y, self.zeros(x), 0.0, self.free_steps)

    def nudged_phase(self, x: torch.Tensor, y: torch.Tensor, free: list, beta: float) -> list:
        return self.settle(x, y, free, beta, self.nudged_steps)

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The gradient of every layer's parameters, named as the model's (:func:`_named`).

        Args:
            x: the input ``(batch, in)``.
            y: the one-hot target ``(batch, out)``.
        """
        free = self.free_phase(x, y)
        plus, minus = (self.nudged_phase(x, y, free, b) for b in (self.beta, -self.beta))
        delta = (self.phi(x, plus, y, self.beta) - self.phi(x, minus, y, -self.beta)) / (2 * self.beta)
        return _named(self.layers, -delta / x.shape[0], self.prefix)

    def rule(self, method: str = "fast_euler", compile: str = "off") -> EquilibriumPropagation:
        """Centered EP with the same β, Δt and steps (a fixed budget, so its phases end short
        of the settle tolerance: ``allow_unconverged``)."""
        free, nudged = (_budget(method, self.step_size, n, compile) for n in (self.free_steps, self.nudged_steps))
        return EquilibriumPropagation(self.beta, "centered", free, nudged, allow_unconverged=True)

    def residuals(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """The largest ‖ds/dt‖ of ``model``'s flow over the batch at the states the reference
        leaves: ``free``, and ``nudged`` (the worse of ±β)."""
        y = model.target(labels)
        c, free = Condition(x, y), self.free_phase(x, y)
        nudged = (_worst_residual(model, self.nudged_phase(x, y, free, b), c.nudged(b))
                  for b in (self.beta, -self.beta))
        return {"free": _worst_residual(model, free, c), "nudged": max(nudged)}

    def stopped_rule(self, residuals: dict[str, float], method: str, step_size: float,
                     compile: str = "off", check_every: int = 10) -> EquilibriumPropagation:
        """Centered EP whose phases stop as soon as every sample is within ``residuals``, checking
        at most every ``check_every`` steps (:class:`~dynets.settle.SettleOptions`)."""
        free, nudged = (SettleOptions(method=method, step_size=step_size, atol=residuals[k], max_time=200,
                                      compile=compile, check_every=check_every) for k in ("free", "nudged"))
        return EquilibriumPropagation(self.beta, "centered", free, nudged)


class ReferenceConvEP(ReferenceEP):
    r"""Centered EP on a :class:`~dynets.models.ConvHopfield` (hard sigmoid, squared error) the way
    the published convolutional code (``P_CNN`` of Laborieux et al. 2021) computes it: Φ built from
    the torch modules themselves, pool(conv(s_l)) and linear(flatten(s_l)), with no adjoint of
    dynets', and every step of the synchronous iteration

        Φ_β(s) = Σ_l ⟨pool(W_l ⋆ s_l + b_l), s_{l+1}⟩ − β·½‖s_L − y‖²,
        s ← s + Δt·(−s + ρ(∂Φ_β/∂s))      (Δt = 1: the published s ← ρ(∂Φ_β/∂s)),

    differentiating Φ by autograd; the update is ∂Φ/∂θ by autograd at the two nudged equilibria,
    as :class:`ReferenceEP`'s. ``layers``: a copy of the model's ``couplings``.
    """

    prefix = "couplings"

    def __init__(self, layers: nn.ModuleList, beta: float = 0.5, step_size: float = 1.0,
                 free_steps: int = 40, nudged_steps: int = 12) -> None:
        super().__init__(layers, beta, step_size, free_steps, nudged_steps)

    def zeros(self, x: torch.Tensor) -> list:
        return [x.new_zeros(x.shape[0], *c.out_shape) for c in self.layers]

    def phi(self, x: torch.Tensor, states: list, y: torch.Tensor, beta: float) -> torch.Tensor:
        below = [x, *states[:-1]]
        phi = sum((s * _published_drive(c, b)).sum() for s, c, b in zip(states, self.layers, below))
        return phi - beta * 0.5 * (states[-1] - y).pow(2).sum()


def _published_drive(coupling: nn.Module, s: torch.Tensor) -> torch.Tensor:
    """pool(conv(s)) of a :class:`~dynets.couplings.Conv`, linear(flatten(s)) of a ``Dense``."""
    if not isinstance(coupling, Conv):
        return coupling.linear(s.flatten(1))
    pools = {"max": lambda z: F.max_pool2d(z, 2), "avg": lambda z: F.avg_pool2d(z, 2), "none": lambda z: z}
    return pools[coupling.pool](coupling.conv(s))


class ReferencePC:
    r"""Supervised predictive coding (Whittington & Bogacz 2017) on a tanh net with a linear
    read-out: the value nodes start at the feedforward pass (the free equilibrium), then
    every Euler step of the nudged phase takes ∂F/∂s by autograd, recomputing every
    prediction (W_1 x included), and the update is ∂F/∂θ by autograd at the end,

        F = Σ_l ½‖s_l − (W_l tanh(s_{l−1}) + b_l)‖² + β·½‖s_L − y‖²   (tanh(s_0) read as x),
        s ← s − Δt·∂F/∂s   (``steps`` times),      ∇θ = ∂F/∂θ / (β·batch).

    :meth:`rule` is dynets' rule with the same β, Δt and step budget; :meth:`stopped_rule`
    stops at the residual the reference leaves (:meth:`residuals`).
    """

    def __init__(self, layers: nn.ModuleList, beta: float = 0.1, step_size: float = 0.5, steps: int = 20) -> None:
        self.layers, self.beta, self.step_size, self.steps = layers, beta, step_size, steps

    def energy(self, x: torch.Tensor, states: list, y: torch.Tensor) -> torch.Tensor:
        below = [x, *[torch.tanh(s) for s in states[:-1]]]
        errors = sum(0.5 * (s - layer(b)).pow(2).sum() for s, layer, b in zip(states, self.layers, below))
        return errors + self.beta * 0.5 * (states[-1] - y).pow(2).sum()

    def settle(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        with torch.no_grad():
            states = [self.layers[0](x)]
            for layer in self.layers[1:]:
                states.append(layer(torch.tanh(states[-1])))
        for _ in range(self.steps):
            states = [s.detach().requires_grad_() for s in states]
            grads = torch.autograd.grad(self.energy(x, states, y), states)
            states = [s - self.step_size * g for s, g in zip(states, grads)]
        return tuple(s.detach() for s in states)

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The gradient of every layer's parameters, named as the model's (:func:`_named`).

        Args:
            x: the input ``(batch, in)``.
            y: the one-hot target ``(batch, out)``.
        """
        states = self.settle(x, y)
        return _named(self.layers, self.energy(x, states, y) / (self.beta * x.shape[0]))

    def rule(self, method: str = "fast_euler", compile: str = "off") -> PredictiveCodingRule:
        """PC, nudged, with the same β, Δt and steps (the free phase starts at its
        equilibrium and takes none)."""
        return PredictiveCodingRule(self.beta, "nudged", _budget(method, self.step_size, self.steps, compile),
                                    allow_unconverged=True)   # a fixed budget ends short of the tolerance

    def residuals(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """``nudged``: the largest ‖ds/dt‖ of ``model``'s flow over the batch at the state the reference leaves."""
        y = model.target(labels)
        return {"nudged": _worst_residual(model, self.settle(x, y), model.prepare(Condition(x, y, self.beta)))}

    def stopped_rule(self, residuals: dict[str, float], method: str, step_size: float,
                     compile: str = "off") -> PredictiveCodingRule:
        """PC whose nudged phase stops as soon as every sample is within ``residuals``."""
        opts = SettleOptions(method=method, step_size=step_size, atol=residuals["nudged"], max_time=200,
                             check_every=self.steps, compile=compile)
        return PredictiveCodingRule(self.beta, "nudged", opts)


def _budget(method: str, step_size: float, steps: int, compile: str) -> SettleOptions:
    """Exactly ``steps`` steps: ``atol = 0`` never stops early, and a check every ``steps``
    leaves only the start and end residual checks."""
    return SettleOptions(method=method, step_size=step_size, atol=0.0, max_time=steps * step_size,
                         check_every=steps, compile=compile)


def _named(layers: nn.ModuleList, loss: torch.Tensor, prefix: str = "layers") -> dict[str, torch.Tensor]:
    """∂loss/∂θ for every parameter of ``layers``, by autograd, keyed as the layered models name
    them (``layers.<i>.weight``; ``couplings.<i>.conv.weight`` with ``prefix="couplings"``): an
    :class:`~dynets.rules.Update`'s ``grads``; no ``p.grad`` is written."""
    names, params = zip(*layers.named_parameters())
    return {f"{prefix}.{name}": g for name, g in zip(names, torch.autograd.grad(loss, params))}


def _worst_residual(model: nn.Module, state, condition: Condition) -> float:
    return residual_norm(model.vector_field(None, tuple(state), condition)).max().item()


def grad_mismatch(model: nn.Module, reference: ReferenceEP | ReferencePC, rule, x: torch.Tensor,
                  labels: torch.Tensor) -> dict[str, float]:
    """Per parameter, max |dynets' gradient − the reference's| / max |the reference's|, from the
    current weights (the reference's layers a copy of the model's).

    Args:
        model: the dynets model (a :class:`~dynets.models.LayeredHopfield` or
            :class:`~dynets.models.PredictiveCoding`).
        reference: its textbook counterpart, on a copy of ``model.layers``.
        rule: the dynets rule to compare.
        x: the input ``(batch, in)``.
        labels: the class labels ``(batch,)``.
    """
    want = reference.grads(x, model.target(labels))
    ours = rule.update(model, x, labels).grads
    if set(ours) != set(want):
        raise AssertionError(f"dynets updates {sorted(ours)}, the reference {sorted(want)}")
    return {name: ((ours[name] - w).abs().max() / w.abs().max()).item() for name, w in want.items()}


def check_same_grads(model: nn.Module, reference: ReferenceEP | ReferencePC, x: torch.Tensor, labels: torch.Tensor,
                     tol: float, methods: tuple[str, ...] = ("fast_euler", "euler")) -> None:
    """Raise unless dynets' rule (through each of ``methods``) gives the gradients the
    reference computes, within ``tol`` (relative to the largest entry)."""
    for method in methods:
        for name, err in grad_mismatch(model, reference, reference.rule(method), x, labels).items():
            if not err <= tol:
                raise AssertionError(f"dynets ({method}) and the autograd reference disagree on {name}.grad: "
                                     f"max |diff| / max |grad| = {err:.2e} > {tol:g}")
