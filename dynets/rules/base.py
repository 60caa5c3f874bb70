"""The rule interface: settle the phases a rule needs, write ``p.grad``, return metrics."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

import torch

from ..costs import Cost, SquaredError
from ..models.base import DynamicalModel
from ..settle import SettleOptions
from ..phases import Condition, Equilibrium


class Rule(ABC):
    """A learning rule. ``grads`` sets ``p.grad`` of the parameters the rule trains to its
    estimate of +∂L/∂θ (torch's descent convention: ``optimizer.step()`` subtracts it),
    where L is the batch mean of the cost at the free equilibrium; the others keep
    ``grad = None``, so an optimizer leaves them alone.

    Args:
        settle: how the free phase is settled (and the other phases unless a rule says).
        cost: the cost C of the read-out (default squared error).

    ``models`` names the model classes a rule can train; :meth:`check_model` raises for
    any other. A stochastic rule keeps its ``torch.Generator`` as an attribute: every
    generator attribute is saved in checkpoints and restored on resume
    (:mod:`dynets.app.checkpoint`), so a seeded run resumes bit-identically.
    """

    models: tuple[type, ...] = (DynamicalModel,)

    def __init__(self, settle: SettleOptions | None = None, cost: Cost | None = None) -> None:
        self.settle = settle if settle is not None else SettleOptions()
        self.cost = cost if cost is not None else SquaredError()

    @abstractmethod
    def grads(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Write ``p.grad`` for a batch ``x`` ``(batch, in)``, labels ``y`` ``(batch,)``;
        return metrics (at least ``loss``, ``accuracy``, ``steps_free``, ``converged``)."""

    def check_model(self, model: DynamicalModel) -> None:
        """Raise if this rule cannot train ``model``, naming the models it can."""
        if not isinstance(model, self.models):
            names = ", ".join(m.__name__ for m in self.models)
            raise TypeError(f"{type(self).__name__} cannot train {type(model).__name__}: it needs a model "
                            f"of class {names} (or a subclass)")

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Warn if ``optimizer`` defeats what this rule relies on (``fit`` calls it once; most
        rules rely on nothing and accept any optimizer)."""

    def condition(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor) -> Condition:
        """The batch's free-phase condition, prepared (its constants shared by every phase)."""
        self.check_model(model)
        return model.prepare(Condition(x, model.target(y), cost=self.cost))

    def free_phase(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[Condition, Equilibrium, dict[str, float]]:
        """Settle with x clamped and no nudging; metrics of that equilibrium."""
        condition = self.condition(model, x, y)
        free = self.settle(model, condition)
        loss = model.cost(free.state, condition).mean()
        accuracy = (model.output(free.state).argmax(1) == y).to(loss.dtype).mean()
        loss, accuracy = torch.stack([loss, accuracy]).tolist()   # one sync for both
        metrics = {"loss": loss, "accuracy": accuracy, "steps_free": free.steps,
                   "converged": free.converged_fraction}
        return condition, free, metrics


def write_grads(model: torch.nn.Module, grads: Mapping[str, torch.Tensor]) -> None:
    """Set ``p.grad`` of the named parameters; every other parameter gets ``grad = None``
    (an optimizer skips it). A name the model does not have is an error."""
    params = dict(model.named_parameters())
    unknown = set(grads) - set(params)
    if unknown:
        raise KeyError(f"gradients for parameters the model does not have: {sorted(unknown)}; "
                       f"it has {sorted(params)}")
    for name, p in params.items():
        p.grad = grads[name].detach().to(p.dtype) if name in grads else None


def generators(owner: object) -> dict[str, torch.Generator]:
    """The random streams ``owner`` (a rule) owns: its attributes that are ``torch.Generator``s,
    by attribute name. These are saved in every checkpoint and restored on resume."""
    return {name: g for name, g in sorted(vars(owner).items()) if isinstance(g, torch.Generator)}
