"""How well a rule's update lines up with a reference gradient."""
from __future__ import annotations

import math

import torch

from .models.base import DynamicalModel
from .rules.base import Rule


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a.flatten().double(), b.flatten().double()
    cos = (a @ b / (a.norm() * b.norm())).item()
    return {"cosine": cos, "angle_deg": math.degrees(math.acos(max(-1.0, min(1.0, cos)))),
            "norm_ratio": (a.norm() / b.norm()).item()}


def _updates(model: DynamicalModel, rule: Rule, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    rule.grads(model, x, y)
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def alignment(model: DynamicalModel, rule: Rule, reference: Rule, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per parameter (and ``"all"`` of them together): cosine similarity, angle in
    degrees and norm ratio ‖rule‖/‖reference‖ between ``rule``'s update and
    ``reference``'s gradient on the same batch. The model's ``p.grad`` are left as they were."""
    saved = {name: p.grad for name, p in model.named_parameters()}
    try:
        ours, ref = _updates(model, rule, x, y), _updates(model, reference, x, y)
    finally:
        for name, p in model.named_parameters():
            p.grad = saved[name]
    out = {name: _compare(ours[name], ref[name]) for name in ours}
    out["all"] = _compare(torch.cat([g.flatten() for g in ours.values()]),
                          torch.cat([g.flatten() for g in ref.values()]))
    return out
