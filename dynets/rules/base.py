"""The rule interface: settle the phases a rule needs; return the update (gradients by
parameter name, and metrics)."""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch

from .. import models
from ..capabilities import Dynamical, missing
from ..costs import Cost, SquaredError
from ..models.base import DynamicalModel
from ..settle import SettleOptions
from ..phases import Condition, Equilibrium, UnconvergedError


@dataclass(frozen=True)
class Update:
    """What one step of a rule gives: ``grads``, its estimate of +∂L/∂θ by parameter name
    (torch's descent sign, what ``p.grad`` holds: ``optimizer.step()`` subtracts it) for the
    parameters it trains, and only those; ``metrics``, named numbers about the step (those
    a rule does not produce are absent). :func:`write_grads` applies it to a model.

    Args:
        grads: ``{name: tensor of the parameter's shape}``.
        metrics: ``{name: float}``.
    """

    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class Rule(ABC):
    """A learning rule. :meth:`update` returns, for the parameters the rule trains, its
    estimate of +∂L/∂θ (an :class:`Update`), where L is the batch mean of the cost at the
    free equilibrium; it never touches ``p.grad``. :func:`write_grads` applies an update
    (the parameters it leaves out get ``grad = None``, so an optimizer leaves them alone).

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

    ``needs`` names the capabilities (:mod:`dynets.capabilities`) a model must have for the rule
    to train it; :meth:`check_model` raises for a model that lacks one, naming it. A stochastic
    rule keeps its ``torch.Generator`` as an attribute: every generator attribute is saved in
    checkpoints and restored on resume (:mod:`dynets.app.checkpoint`), so a seeded run resumes
    bit-identically; a rule that carries any other state from step to step (chains, a stop
    rule) has ``state_dict`` and ``load_state_dict``, which checkpoints save and restore.

    Labels are optional: a rule whose phases need a target (a nudge or clamp of the read-out
    toward it, a loss) has ``needs_target`` and raises, in :meth:`condition`, when it gets
    no labels and the model makes no target of its own.
    """

    needs: tuple[type, ...] = (Dynamical,)
    needs_target: bool = True

    def __init__(self, settle: SettleOptions | None = None, cost: Cost | None = None,
                 allow_unconverged: bool = False) -> None:
        self.settle = settle if settle is not None else SettleOptions()
        self.cost = cost if cost is not None else SquaredError()
        self.allow_unconverged = bool(allow_unconverged)

    @abstractmethod
    def update(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        """The update for a batch (``p.grad`` untouched). A rule that settles a free phase
        reports ``steps_free`` and ``converged``, ``loss`` when it has a target and ``accuracy``
        when it has labels and the model a label read-out.

        Args:
            model: the model to train.
            x: ``(batch, *in_shape)`` inputs.
            y: ``(batch,)`` integer labels, or ``None`` (a rule that needs them raises).
        """

    def check_model(self, model: DynamicalModel) -> None:
        """Raise if ``model`` lacks a capability of :attr:`needs`, naming it and the models that have it."""
        why = missing(model, self.needs, type(self).__name__, _known_models())
        if why:
            raise TypeError(why)

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

    def condition(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor | None = None) -> Condition:
        """The batch's free-phase condition, prepared (its constants shared by every phase);
        its target is ``model.target(y)``, or the model's own (``None`` without labels).

        Raises:
            ValueError: the rule ``needs_target`` and there is none.
        """
        self.check_model(model)
        condition = model.prepare(Condition(x, None if y is None else model.target(y), cost=self.cost))
        if self.needs_target and condition.target is None:
            raise ValueError(f"{type(self).__name__} needs labels y (its phases nudge or clamp the read-out of "
                             f"{type(model).__name__} toward a target), and got y=None. Without labels use a rule "
                             "that needs none (WakeSleep, BoltzmannLearning, HebbianStorage, HebbianSleep, "
                             "PredictiveCodingRule(variant='unsupervised') on a generative model) or a model that "
                             "makes its own target (ReadBackHopfield)")
        return condition

    def free_phase(self, model: DynamicalModel, x: torch.Tensor,
                   y: torch.Tensor | None = None) -> tuple[Condition, Equilibrium, dict[str, float]]:
        """Settle with x clamped and no nudging; metrics of that equilibrium (see :func:`readout`)."""
        condition = self.condition(model, x, y)
        free = self.settle(model, condition)
        metrics = {**readout(model, free.state, condition, y), "steps_free": free.steps,
                   "converged": free.converged_fraction}
        return condition, free, metrics


def _known_models() -> Iterator[type]:
    """The concrete model classes dynets exports, named in errors as examples of a capability
    (a generator: listed only when an error is raised, not on every rule call)."""
    classes = map(models.__dict__.get, models.__all__)
    yield from (c for c in classes if isinstance(c, type) and not inspect.isabstract(c))


def _describe(late: Mapping[str, Equilibrium]) -> str:
    """Which phases did not converge, for how many samples, how far, after how long."""
    parts = []
    for name, eq in late.items():
        above = eq.residual > eq.tolerance
        parts.append(f"the {name} phase left {int(above.sum())} of {len(above)} samples above the settle "
                     f"tolerance (‖ds/dt‖ up to {eq.residual.max().item():.3g} > {eq.tolerance.max().item():.3g} "
                     f"at t={eq.t:g})")
    return "; ".join(parts)


def readout(model: DynamicalModel, state, condition: Condition, y: torch.Tensor | None) -> dict[str, float]:
    """``loss``, the batch mean of the cost at ``state`` when ``condition`` has a target, and
    ``accuracy`` of the argmax read-out when there are labels ``y`` and the model has a label
    read-out (``model.supervised``); absent otherwise.

    Args:
        model: the model whose read-out is measured.
        state: a state of ``model`` for the batch (e.g. the free equilibrium's).
        condition: the phase's condition (its target and cost).
        y: ``(batch,)`` integer labels, or ``None``.
    """
    values = {}
    if condition.target is not None:
        values["loss"] = model.cost(state, condition).mean()
    if y is not None and model.supervised:
        correct = model.output(state).flatten(1).argmax(1) == y
        values["accuracy"] = correct.to(values["loss"].dtype if "loss" in values else torch.float32).mean()
    if not values:
        return {}
    return dict(zip(values, torch.stack([v.detach() for v in values.values()]).tolist()))   # one sync for all


def write_grads(model: torch.nn.Module, grads: Mapping[str, torch.Tensor]) -> None:
    """Set ``p.grad`` of the named parameters (an :class:`Update`'s ``grads``); every other
    parameter gets ``grad = None`` (an optimizer skips it). A name the model does not have
    is an error."""
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
