"""Plasticity during the settle: weights that change as the state moves, integrated with it.

A model with the capability :class:`~dynets.capabilities.Plastic` gives its vector field with any
weights passed in (``functional_field``) and the rate of change of its weights at a state
(``plasticity``). :func:`settle_plastic` integrates both together, functionally: the module's
parameters are never edited, the weights the settle ends with are returned, and a rule turns the
change into an :class:`~dynets.rules.Update` that the optimizer applies (so checkpoints, the
optimizer's state and resume see every change). A plain :func:`~dynets.settle` never runs
plasticity: rules that need frozen weights get them.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .capabilities import ChecksCondition, Plastic
from .phases import Condition, DivergedError, Equilibrium, State
from .settle import SettleOptions, residual_norm


def settle_plastic(model: Plastic, condition: Condition, rates: Mapping[str, float], init: State,
                   options: SettleOptions, min_time: float = 0.0) -> tuple[Equilibrium, dict[str, torch.Tensor]]:
    """Euler on the state and the weights together, from ``init`` and the model's parameters:

        s ← s + Δt·f(s; W),    W_n ← W_n + Δt·η_n·dW_n/dt(s; W)   (η_n = ``rates[n]``),

    stopped by the settle's own test on the state, ‖f(s_b)‖ ≤ atol + rtol·‖s_b‖ for every sample,
    checked every ``check_every`` steps once ``min_time`` has passed, or at ``max_time``. Weights
    not in ``rates`` stay fixed.

    Args:
        model: a model with :class:`~dynets.capabilities.Plastic`.
        condition: the phase (e.g. a taught one).
        rates: ``{parameter name: η}``, the learning rate of each plastic weight.
        init: the state to start from (e.g. the free equilibrium).
        options: ``step_size`` (Δt), ``atol``, ``rtol``, ``max_time``, ``check_every``; the method
            is always Euler (the weights' rule is defined along the path, not at its end).

    Returns:
        The :class:`~dynets.phases.Equilibrium` reached and the weights ``{name: tensor}`` there.
    """
    if isinstance(model, ChecksCondition):
        model.check_condition(condition)
    dt, step, least = options.step_size, 0, round(min_time / options.step_size)
    with torch.no_grad():
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        state = tuple(s.detach() for s in init)
        while True:
            ds = model.functional_field(condition, weights)(torch.zeros(()), state)
            residual = residual_norm(ds)
            tolerance = options.atol + options.rtol * residual_norm(state)
            done = bool((residual <= tolerance).all())
            if not torch.isfinite(residual).all():
                raise DivergedError(f"plastic settle diverged: non-finite ds/dt at t={step * dt:g}")
            if (done and step >= least) or step >= options.max_steps:
                eq = Equilibrium(state, step * dt, residual, tolerance.expand_as(residual), done, step, step + 1)
                return eq, weights
            for _ in range(min(max(options.check_every, least - step), options.max_steps - step)):
                state, weights = _step(model, condition, rates, state, weights, dt, ds)
                step, ds = step + 1, None


def _step(model: Plastic, condition: Condition, rates: Mapping[str, float], state: State,
          weights: dict[str, torch.Tensor], dt: float,
          ds: State | None = None) -> tuple[State, dict[str, torch.Tensor]]:
    """One Euler step of the state and the plastic weights, both read at the step's start (``ds``:
    the state's ds/dt there, when the check before it has computed it)."""
    if ds is None:
        ds = model.functional_field(condition, weights)(torch.zeros(()), state)
    dw = model.plasticity(state, condition, weights)
    moved = {n: w + dt * rates[n] * dw[n] if rates.get(n) else w for n, w in weights.items()}
    return tuple(s + dt * d for s, d in zip(state, ds)), moved
