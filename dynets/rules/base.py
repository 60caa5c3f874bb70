"""The rule interface: settle the phases a rule needs, write ``p.grad``, return metrics."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch

from ..models.base import DynamicalModel
from ..settle import SettleOptions
from ..types import Condition, Equilibrium


class Rule(ABC):
    """A learning rule. ``grads`` sets ``p.grad`` of every parameter of the model to the
    rule's estimate of +∂L/∂θ (torch's descent convention: ``optimizer.step()``
    subtracts it), where L is the batch mean of the cost at the free equilibrium.

    Args:
        settle: how the free phase is settled (and the other phases unless a rule says).
    """

    def __init__(self, settle: SettleOptions | None = None) -> None:
        self.settle = settle if settle is not None else SettleOptions()

    @abstractmethod
    def grads(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Write ``p.grad`` for a batch ``x`` ``(batch, in)``, labels ``y`` ``(batch,)``;
        return metrics (at least ``loss``, ``accuracy``, ``steps_free``, ``converged``)."""

    def free_phase(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[Condition, Equilibrium, dict[str, float]]:
        """Settle with x clamped and no nudging; metrics of that equilibrium."""
        condition = Condition(x, model.target(y))
        free = self.settle(model, condition)
        loss = model.cost(free.state, condition.target).mean()
        accuracy = (model.output(free.state).argmax(1) == y).to(loss.dtype).mean()
        loss, accuracy = torch.stack([loss, accuracy]).tolist()   # one sync for both
        metrics = {"loss": loss, "accuracy": accuracy, "steps_free": free.steps,
                   "converged": free.converged_fraction}
        return condition, free, metrics


def write_grads(model: torch.nn.Module, grads: Sequence[torch.Tensor]) -> None:
    """Set ``p.grad`` of the model's parameters, in ``model.parameters()`` order."""
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.detach().to(p.dtype)
