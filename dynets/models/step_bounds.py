"""How large a predictive coding layer's Gauss–Seidel step may be on a net of couplings
(:class:`~dynets.models.conv_pc.CoupledPredictiveCoding`): a bound on a coupling's Jacobian over
every input (:func:`coupling_squared_norm`, the safe default) and each sample's curvature at its
free equilibrium (:func:`block_curvature`, ``sweep_steps="measured"``), both by power iteration."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..couplings import Conv, Coupling, Dense
from .pc import _squared_norm


def block_curvature(coupling: Coupling, v: torch.Tensor, act, iterations: int = 20) -> torch.Tensor:
    """``(batch, 1, ...)`` λ_max(D Jᵀ J D) of each sample, D = f'(v), J = ∂g/∂a at a = f(v): the
    part of a PC layer's block Hessian I + D Jᵀ J D that its coupling above adds, by power
    iteration from a fixed start (it approaches from below).

    Args:
        coupling: the coupling above the layer (:meth:`~dynets.couplings.Coupling.tangent` and
            its adjoint at f(v)).
        v: ``(batch, *shape)`` the layer's values.
        act: the activation (``f``, ``df``).
        iterations: power iterations (each one product by J and one by Jᵀ).
    """
    fv = act.f(v)
    d, jvp, (_, vjp) = act.df(v, fv), coupling.tangent(fv), coupling.linearize(fv)
    shape = (-1,) + (1,) * (v.dim() - 1)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(v.shape, generator=g, dtype=v.dtype).to(v.device)
    for _ in range(iterations):
        # clamped: a sample with every unit's f' zero (relu off) has H u = 0, curvature 0
        u = u / torch.linalg.vector_norm(u.flatten(1), dim=1).clamp(min=torch.finfo(u.dtype).tiny).view(shape)
        hu = d * vjp(jvp(d * u))
        u, hu = hu, u
    return (u * hu).flatten(1).sum(1).view(shape)   # uᵀHu at the last unit u (hu holds it)


def coupling_squared_norm(coupling: Coupling, iterations: int = 30) -> torch.Tensor:
    """An upper estimate of ‖∂g/∂a‖₂² over every a, for the couplings that have one.

    Args:
        coupling: a :class:`~dynets.couplings.Dense` or :class:`~dynets.couplings.Conv`.
        iterations: power iterations on the convolution's AᵀA.
    """
    if isinstance(coupling, Dense):
        return _squared_norm(coupling.linear.weight)
    if not isinstance(coupling, Conv):
        raise ValueError(f"settle=gauss_seidel sizes each layer's step by a bound on its coupling's Jacobian, and a "
                         f"{type(coupling).__name__} coupling has none: use settle=fast_euler (the flow)")
    c = coupling.conv
    A = lambda u: F.conv2d(u, c.weight, None, c.stride, c.padding)
    At = lambda u: F.conv_transpose2d(u, c.weight, None, c.stride, c.padding, coupling.output_padding)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        u = torch.randn(1, *coupling.in_shape, generator=g, dtype=c.weight.dtype).to(c.weight.device)
        for _ in range(iterations):
            u = At(A(u))
            u = u / torch.linalg.vector_norm(u)
        # Raised by 10 %: the estimate approaches from below.
        return 1.1 * torch.linalg.vector_norm(A(u)) ** 2 * (0.25 if coupling.pool == "avg" else 1.0)
