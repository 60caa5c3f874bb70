"""A second-order settle: preconditioned nonlinear conjugate gradient on the energy a model
describes (capability :class:`~dynets.capabilities.Curvature`), ``settle(method="conjugate_gradient")``.

It has the steppers' interface (:mod:`dynets.steppers`) and runs in the same loop, stopped by
the same test on the flow's own ds/dt.
"""
from __future__ import annotations

import torch

from .capabilities import Curvature, Dynamical
from .phases import Condition, State
from .steppers import phase_field


def _dot(a: State, b: State) -> torch.Tensor:
    """``(batch,)`` Σ_l ⟨a_l, b_l⟩ per sample."""
    return sum((x * y).flatten(1).sum(1) for x, y in zip(a, b))


def _axpy(s: State, w: torch.Tensor, d: State) -> State:
    """s + w·d with a weight ``(batch,)`` per sample."""
    return tuple(x + w.view(-1, *[1] * (x.dim() - 1)) * y for x, y in zip(s, d))


class ConjugateGradient:
    r"""Preconditioned nonlinear conjugate gradient (Polak–Ribière+; Nocedal & Wright 2006,
    *Numerical Optimization*, §5.2) on the energy F of a gradient flow r = ds/dt = −∂F/∂s:

        z = P⁻¹r,   p ← z + β·p,   β = max(0, r'ᵀ(z' − z) / rᵀz),
        s ← s + Δt·α·p,   α = rᵀp / pᵀHp,

    with H the model's positive-definite curvature (α: the minimiser along p of F's quadratic
    model; Δt = ``step_size``, 1 for the whole step) and P its preconditioner, fixed for the
    settle. Every sample has its own α and β: the samples' energies are independent. On a
    quadratic F with H exact this is preconditioned linear CG, whose error falls at least as
    2((√κ − 1)/(√κ + 1))^k, κ the condition number of P⁻¹H (Golub & Van Loan, §11.3); Euler's
    falls as (1 − 2/κ(H))^k at its best step. Where a direction is not one of descent
    (rᵀp ≤ 0, as inexact line steps off a quadratic can give) it restarts at z.

    It carries r (the residual the stop test reads: checks are free), z, p and P⁻¹.
    ``compile``: it runs eager (``on`` is an error).
    """

    def __init__(self, model: Dynamical, condition: Condition, compile: str, device: torch.device) -> None:
        if not isinstance(model, Curvature):   # once per settle, never per step
            raise TypeError(f"settle method 'conjugate_gradient' needs a model that gives its energy's "
                            f"curvature (capability Curvature: methods curvature(condition) and "
                            f"preconditioner(condition, state)); {type(model).__name__} has none: use fast_euler")
        if compile == "on":
            raise ValueError("settle method 'conjugate_gradient' runs eager: use compile=auto or off")
        self.model, self.condition = model, condition
        self.f, self.curvature = phase_field(model, condition), model.curvature(condition)
        self.t = torch.zeros((), device=device)   # a gradient flow is autonomous: f reads no time

    def start(self, state: State) -> tuple:
        precondition = self.model.preconditioner(self.condition, state)
        r = self.f(self.t, state)
        z = precondition(r)
        return r, z, z, precondition

    def step(self, state: State, carry: tuple, dt: float) -> tuple[State, tuple]:
        r, z, p, precondition = carry
        hp = self.curvature(state, p)
        alpha = torch.where(hp > 0, _dot(r, p) / hp.clamp(min=torch.finfo(hp.dtype).tiny), 0.0)
        state = _axpy(state, dt * alpha, p)
        r_new = self.f(self.t, state)
        z_new = precondition(r_new)
        rz = _dot(r, z)
        beta = torch.where(rz > 0, (_dot(r_new, z_new) - _dot(r_new, z)) / rz.clamp(min=torch.finfo(rz.dtype).tiny),
                           0.0).clamp(min=0.0)
        p = _axpy(z_new, beta, p)
        descent = _dot(r_new, p) > 0
        p = tuple(torch.where(descent.view(-1, *[1] * (d.dim() - 1)), d, zl) for d, zl in zip(p, z_new))
        return state, (r_new, z_new, p, precondition)

    def residual(self, state: State, carry: tuple) -> State:
        return carry[0]
