"""The curvature of predictive coding's energy, for second-order settles (capability
:class:`~dynets.capabilities.Curvature`, ``settle(method="conjugate_gradient")``).

F = Σ_l ½‖ε_l‖² + β·C(v_L, y) − Σ_l ξ_lᵀv_l. Each error is ε_to = v_to − W_k f(v_from) − b_k
(or v_L − prior), so its Jacobian along a direction d is J d = d_to − W_k (f'(v_from) ⊙ d_from)
(a clamped layer's d is zero), and the Gauss–Newton curvature is dᵀHd = Σ_l ‖J_l d‖² (+ β·dᵀ∂²C d
on the top). It leaves out the term −Σ f''(v)⊙(ε W)⊙d², which vanishes with the errors and is
O(β) in a nudged phase; H ⪰ I, so every line step is finite and positive.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..phases import Condition, State


def cost_curvature(condition: Condition) -> float:
    """β·c with c the bound of the cost's curvature on β's side (the largest of β·∂²C): 0
    without a nudge. A cost that declares no bound (``Cost.curvature``) is an error."""
    beta, cost = condition.beta, condition.cost
    if beta == 0.0:
        return 0.0
    if cost.curvature is None:
        raise ValueError(f"settle=conjugate_gradient needs the curvature of the nudged cost, and "
                         f"{type(cost).__name__} declares none (Cost.curvature): declare it, or use settle=fast_euler")
    low, high = cost.curvature
    return beta * (high if beta > 0 else low)


def directional(model, condition: Condition) -> Callable[[State, State], torch.Tensor]:
    """``c(state, d) -> (batch,)``: dᵀHd, the Gauss–Newton curvature of F along d per sample.

    Args:
        model: a :class:`~dynets.models.PredictiveCoding`.
        condition: the phase (its β and cost add the top's curvature).
    """
    off, top_term, df, f = model._offset(condition), cost_curvature(condition), model.act.df, model.act.f

    def curvature(state: State, d: State) -> torch.Tensor:
        v, dv = model._values(state, condition), [None] * off + list(d)
        total = (1.0 + top_term) * dv[-1].pow(2).sum(1) if model.is_generative else top_term * dv[-1].pow(2).sum(1)
        for k, (to, frm, nonlinear) in enumerate(model.edges):
            jd = dv[to]
            if dv[frm] is not None:
                source = dv[frm] * df(v[frm], f(v[frm])) if nonlinear else dv[frm]
                pushed = source @ model.layers[k].weight.T
                jd = -pushed if jd is None else jd - pushed
            total = total + jd.pow(2).sum(1)
        return total

    return curvature


def _right_solve(r: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """r·A⁻¹ for A = LLᵀ (``lower`` = L, ``upper`` = Lᵀ): two triangular solves from the right, on
    the rows of r as they lie (solving Aᵀ-wise on r's transpose would copy it twice)."""
    return torch.linalg.solve_triangular(lower, torch.linalg.solve_triangular(upper, r, upper=True, left=False),
                                         upper=False, left=False)


def block_preconditioner(model, condition: Condition, state: State) -> Callable[[State], State]:
    """``apply(r) -> State``: r_l·A_l⁻¹ per state layer, A_l = (1 + β·c)·I + D̄ W_kᵀW_k D̄ the
    block of H on layer l with f'(v_l) replaced by its batch mean D̄ at ``state`` (the
    (1 + β·c) on the nudged top only; a layer that predicts nothing has A_l = that scalar).
    One Cholesky factorisation per layer, here; for a linear net with one free layer A = H and
    one conjugate-gradient step lands on the minimiser.

    Args:
        model: a :class:`~dynets.models.PredictiveCoding`.
        condition: the phase.
        state: the settle's start state (where D̄ is measured).
    """
    off, top = model._offset(condition), len(state) - 1
    out_edges = {frm: (k, nonlinear) for k, (_, frm, nonlinear) in enumerate(model.edges)}
    own = [1.0 + (cost_curvature(condition) if l == top else 0.0) for l in range(len(state))]
    if min(own) <= 0:
        raise ValueError(f"a phase nudged with beta={condition.beta} has no minimum in the top layer "
                         f"(1 + beta·curvature <= 0): conjugate_gradient cannot settle it")
    solves = []
    for l, s in enumerate(state):
        if l + off not in out_edges:
            solves.append(lambda r, a=own[l]: r / a)
            continue
        k, nonlinear = out_edges[l + off]
        w = model.layers[k].weight.to(s.dtype)
        scaled = w * model.act.df(s, model.act.f(s)).mean(0) if nonlinear else w
        gram = torch.addmm(torch.eye(w.shape[1], dtype=s.dtype, device=s.device), scaled.T, scaled, beta=own[l])
        lower = torch.linalg.cholesky(gram)
        solves.append(lambda r, lower=lower, upper=lower.T.contiguous(): _right_solve(r, lower, upper))
    return lambda r: tuple(solve(rl) for solve, rl in zip(solves, r))
