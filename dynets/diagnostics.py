"""How well a rule's update lines up with a reference gradient."""
from __future__ import annotations

import math

import torch

from .models.base import DynamicalModel
from .rules.base import Rule


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float | bool]:
    """Cosine, angle and norm ratio ‖a‖/‖b‖ of two updates, and whether the angle is ``defined``.

    An angle needs two nonzero finite vectors. Otherwise (a zero reference: the exact
    gradient through saturated hard-sigmoid units is exactly zero; a zero or non-finite
    update) ``cosine`` and ``angle_deg`` are NaN and ``defined`` is False, never a
    perfect score. ``norm_ratio`` follows IEEE division: 0 for a zero update against a
    nonzero reference, inf for the converse, NaN when both are zero.
    """
    a, b = a.flatten().double(), b.flatten().double()
    na, nb, dot = torch.stack([a.norm(), b.norm(), a @ b]).tolist()   # one sync
    ratio = na / nb if nb else (math.inf if na else math.nan)
    if not (0 < na < math.inf and 0 < nb < math.inf):
        return {"cosine": math.nan, "angle_deg": math.nan, "norm_ratio": ratio, "defined": False}
    cos = max(-1.0, min(1.0, dot / (na * nb)))   # rounding can step just outside [-1, 1]
    return {"cosine": cos, "angle_deg": math.degrees(math.acos(cos)), "norm_ratio": ratio, "defined": True}


def alignment(model: DynamicalModel, rule: Rule, reference: Rule, x: torch.Tensor,
              y: torch.Tensor, exclude: tuple[str, ...] = ()) -> dict[str, dict[str, float | bool]]:
    """How ``rule``'s update lines up with ``reference``'s gradient on the same batch.

    Per parameter name, and for ``"all"`` parameters as one vector: ``cosine`` of the
    angle between the update a and the reference b, ``angle_deg`` (in [0, 180]),
    ``norm_ratio`` ‖a‖/‖b‖, and ``defined``: whether a and b are both nonzero and finite.
    Where they are not, cosine and angle are NaN (see :func:`_compare`): a rule is never
    reported aligned with a zero gradient. Only the parameters the rule trains are
    compared (those of its :class:`~dynets.rules.base.Update`; not feedback weights, nor
    the other pathway of a one-pathway-per-phase rule).
    ``exclude`` names parameters left out of the comparison, e.g. feedback weights that a
    rule trains toward another goal than the loss (mirroring Wᵀ, inverting the forward pass).
    A reference that reports ``adjoint_converged`` (implicit differentiation) adds
    ``reference_converged`` to the ``"all"`` entry: False when its gradient is inexact.
    """
    update, theirs = rule.update(model, x, y), reference.update(model, x, y)
    ref, ref_metrics = theirs.grads, theirs.metrics
    ours = {name: update.grads[name] for name, _ in model.named_parameters() if name in update.grads}   # model order
    missing = set(ours) - set(ref)
    if missing:
        raise ValueError(f"the reference {type(reference).__name__} gives no gradient for {sorted(missing)}, "
                         f"which {type(rule).__name__} trains")
    ours = {name: g for name, g in ours.items() if name not in exclude}
    out = {name: _compare(ours[name], ref[name]) for name in ours}
    out["all"] = _compare(torch.cat([g.flatten() for g in ours.values()]),
                          torch.cat([ref[name].flatten() for name in ours]))
    if "adjoint_converged" in (ref_metrics or {}):
        out["all"]["reference_converged"] = bool(ref_metrics["adjoint_converged"])
    return out
