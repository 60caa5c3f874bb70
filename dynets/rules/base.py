"""The rule interface: settle the phases a rule needs, write ``p.grad``, return metrics."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

import torch

from ..costs import Cost, SquaredError
from ..models.base import DynamicalModel
from ..settle import SettleOptions
from ..phases import Condition, Equilibrium, UnconvergedError


class Rule(ABC):
    """A learning rule. ``grads`` sets ``p.grad`` of the parameters the rule trains to its
    estimate of +∂L/∂θ (torch's descent convention: ``optimizer.step()`` subtracts it),
    where L is the batch mean of the cost at the free equilibrium; the others keep
    ``grad = None``, so an optimizer leaves them alone.

    Args:
        settle: how the free phase is settled (and the other phases unless a rule says).
        cost: the cost C of the read-out (default squared error).
        allow_unconverged: a rule computes its gradient from equilibria; by default a phase
            in which some sample did not reach the settle tolerance is an error
            (:class:`~dynets.phases.UnconvergedError`, from :meth:`check_converged`), since the
            update it gives is not the rule's (PC with 3× weights: cosine down to 0.35 with
            the converged one). ``True`` writes it anyway and reports ``unconverged_updates``
            (1 for such an update, else 0: its epoch mean is the fraction). Rules that drop
            the unconverged samples of a batch (perturbation, feedback rules) drop them
            instead of using them.

    ``models`` names the model classes a rule can train; :meth:`check_model` raises for
    any other. A stochastic rule keeps its ``torch.Generator`` as an attribute: every
    generator attribute is saved in checkpoints and restored on resume
    (:mod:`dynets.app.checkpoint`), so a seeded run resumes bit-identically.
    """

    models: tuple[type, ...] = (DynamicalModel,)

    def __init__(self, settle: SettleOptions | None = None, cost: Cost | None = None,
                 allow_unconverged: bool = False) -> None:
        self.settle = settle if settle is not None else SettleOptions()
        self.cost = cost if cost is not None else SquaredError()
        self.allow_unconverged = bool(allow_unconverged)

    @abstractmethod
    def grads(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Write ``p.grad`` for a batch ``x`` ``(batch, *in_shape)``, labels ``y`` ``(batch,)``;
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

    def check_converged(self, metrics: dict[str, float], phases: Mapping[str, Equilibrium]) -> None:
        """The one check before a rule writes a gradient from the equilibria ``phases``
        (``{name: Equilibrium}``): raise :class:`~dynets.phases.UnconvergedError` if some sample
        of some phase is above its tolerance, unless ``allow_unconverged``; then set
        ``metrics["unconverged_updates"]`` to 1 (else 0)."""
        late = {name: eq for name, eq in phases.items() if not eq.converged}
        if self.allow_unconverged:
            metrics["unconverged_updates"] = float(bool(late))
            return
        if late:
            raise UnconvergedError(f"{type(self).__name__}: {_describe(late)}, so its update would come from states "
                                   "that are not equilibria. Raise settle.max_time, loosen settle.atol, or lower "
                                   "settle.step_size; or set rule.allow_unconverged=true to write such updates anyway "
                                   "(counted in the metric unconverged_updates)")

    def condition(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor) -> Condition:
        """The batch's free-phase condition, prepared (its constants shared by every phase)."""
        self.check_model(model)
        return model.prepare(Condition(x, model.target(y), cost=self.cost))

    def free_phase(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[Condition, Equilibrium, dict[str, float]]:
        """Settle with x clamped and no nudging; metrics of that equilibrium."""
        condition = self.condition(model, x, y)
        free = self.settle(model, condition)
        loss = model.cost(free.state, condition).mean()
        accuracy = (model.output(free.state).flatten(1).argmax(1) == y).to(loss.dtype).mean()
        loss, accuracy = torch.stack([loss, accuracy]).tolist()   # one sync for both
        metrics = {"loss": loss, "accuracy": accuracy, "steps_free": free.steps,
                   "converged": free.converged_fraction}
        return condition, free, metrics


def _describe(late: Mapping[str, Equilibrium]) -> str:
    """Which phases did not converge, for how many samples, how far, after how long."""
    parts = []
    for name, eq in late.items():
        above = eq.residual > eq.tolerance
        parts.append(f"the {name} phase left {int(above.sum())} of {len(above)} samples above the settle "
                     f"tolerance (‖ds/dt‖ up to {eq.residual.max().item():.3g} > {eq.tolerance.max().item():.3g} "
                     f"at t={eq.t:g})")
    return "; ".join(parts)


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
