"""``run``: integrate ds/dt = f(s) for a fixed time and keep the whole trajectory.

:func:`dynets.settle` stops at a steady state; a free-running network (a chaotic rate network
doing a task, Miconi 2017) never reaches one: a trial lasts a fixed time and a rule reads the
path it took. ``run`` is that front: the same vector field (``model.dynamics(condition)`` with the
condition's clamps held, :func:`dynets.steppers.phase_field`), integrated on the fixed grid
t_k = k·Δt by dynets' own Euler step (``fast_euler``) or by torchdiffeq's ``odeint`` (any of its
fixed-grid methods), every state kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from .capabilities import ChecksCondition, Dynamical
from .phases import Condition, DivergedError, State
from .settle import FIXED_GRID, initial_state
from .steppers import phase_field

METHODS = ("fast_euler",) + FIXED_GRID


@dataclass(frozen=True, eq=False)
class Trajectory:
    """The states of a fixed-length run.

    Attributes:
        t: ``(steps + 1,)`` the times t_k = k·Δt.
        states: one ``(steps + 1, batch, *shape)`` tensor per layer: ``states[l][k]`` is layer l at t_k
            (``states[l][0]`` the initial state).
    """

    t: torch.Tensor
    states: State

    @property
    def steps(self) -> int:
        """The number of steps taken."""
        return len(self.t) - 1


def run(model: Dynamical, condition: Condition, init: State | None = None, *, steps: int, dt: float,
        method: str = "fast_euler") -> Trajectory:
    """Integrate ``model`` under ``condition`` for ``steps`` steps of ``dt`` from ``init`` (default:
    the rest state), under ``torch.no_grad()``, keeping every state.

    Args:
        model: the network (its ``dynamics(condition)`` gives f(t, s)).
        condition: the phase; clamped layers are held (ds/dt = 0).
        init: the initial state, one ``(batch, *shape)`` tensor per layer (default: ``model.init_state``).
        steps: the number of steps, ≥ 1.
        dt: the step Δt > 0.
        method: ``fast_euler`` (s ← s + Δt·f(t, s), dynets' loop) or a torchdiffeq fixed-grid method
            (``euler``, ``rk4``, ...) on the same grid.

    Returns:
        The :class:`Trajectory`.

    Raises:
        DivergedError: a non-finite state, naming the first step and the samples where it appeared.
    """
    if method not in METHODS:
        raise ValueError(f"unknown trajectory method {method!r}; valid: {', '.join(METHODS)}")
    if int(steps) != steps or steps < 1 or not dt > 0:
        raise ValueError(f"a trajectory needs steps >= 1 (an integer) and dt > 0, got steps={steps}, dt={dt}")
    if isinstance(model, ChecksCondition):
        model.check_condition(condition)
    with torch.no_grad():
        state = initial_state(model, condition, init)
        f = phase_field(model, condition)
        t = torch.arange(steps + 1, dtype=state[0].dtype, device=state[0].device) * dt
        states = _euler(f, state, t, dt) if method == "fast_euler" else odeint(f, state, t, method=method)
    _check_finite(states, dt)
    return Trajectory(t, tuple(states))


def _euler(f, state: State, t: torch.Tensor, dt: float) -> State:
    """The Euler path on the grid ``t``: each step written straight into one preallocated
    ``(steps + 1, batch, *shape)`` tensor per layer (no copy of the state per step)."""
    out = tuple(s.new_empty((len(t), *s.shape)) for s in state)
    for o, s in zip(out, state):
        o[0] = s
    for k in range(1, len(t)):
        ds = f(t[k - 1], tuple(o[k - 1] for o in out))
        for o, d in zip(out, ds):
            torch.add(o[k - 1], d, alpha=dt, out=o[k])
    return out


def _check_finite(states: State, dt: float) -> None:
    """Raise :class:`DivergedError` at the first non-finite state: its step, time and samples."""
    for layer, s in enumerate(states):
        bad = ~torch.isfinite(s.flatten(2)).all(2)   # (steps + 1, batch)
        if bad.any():
            step = int(bad.any(1).nonzero()[0])
            rows = bad[step].nonzero().flatten().tolist()
            raise DivergedError(f"the trajectory diverged: layer {layer} is non-finite from step {step} "
                                f"(t={step * dt:g}) in samples {rows[:10]}{' ...' if len(rows) > 10 else ''}; "
                                "nothing was learned from it. Check the weights and inputs for inf/NaN, "
                                "or use a smaller dt")
