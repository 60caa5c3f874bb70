"""Whether a run is learning: what :func:`dynets.app.fit.fit` watches after every epoch.

A run that diverged (a training loss not finite or :data:`BLOWUP` times its first batch's,
weights not finite), one whose accuracy stays at chance, settles that did not converge and a
dead network (hidden units pinned at a bound of their activation, an update of exactly zero)
are told to the user with the options to change.
"""
from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Sequence

import torch

from ..capabilities import Saturating
from ..data import Dataset
from ..models.base import DynamicalModel
from ..phases import State, UnconvergedError
from ..rules.base import Rule
from .distributed import is_main
from .loggers import Logger, percent

if TYPE_CHECKING:
    from .history import History

log = logging.getLogger("dynets")

DEAD = 0.99   # the fraction of pinned hidden units from which a network is reported dead
AT_CHANCE_EPOCHS = 3   # consecutive epochs at chance accuracy after which fit warns
BLOWUP = 1e3   # a training loss this many times the run's first one has diverged


class TrainingWarning(UserWarning):
    """A run that has diverged or does not learn: what :func:`~dynets.app.fit.fit` saw, and the options to change."""


class TrainingDiverged(RuntimeError):
    """The weights blew up within an epoch, so the settles stopped converging: the learning rate,
    not the settle's tolerances, is what to change."""


def _norm(tensors: Iterable[torch.Tensor]) -> float:
    """The Euclidean norm of ``tensors`` as one vector (one host sync; 0 for none)."""
    norms = [torch.linalg.vector_norm(t.detach()) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms)).item() if norms else 0.0


def weight_norm(model: torch.nn.Module) -> float:
    """‖θ‖ over every parameter of ``model``."""
    return _norm(model.parameters())


def update_norm(model: torch.nn.Module) -> float:
    """‖p.grad‖ over all the parameters that have one: the size of the update a rule wrote."""
    return _norm(p.grad for p in model.parameters() if p.grad is not None)


def diverged_or(error: UnconvergedError, model: torch.nn.Module, start_norm: float) -> Exception:
    """``error``, unless the weights have grown :data:`BLOWUP`-fold (or past finite) since the
    epoch began: then a :class:`TrainingDiverged` naming the learning rate, with ``error`` as its cause."""
    grown = weight_norm(model) / max(start_norm, 1e-12)
    if math.isfinite(grown) and grown <= BLOWUP:
        return error
    return TrainingDiverged(f"training diverged: the weights grew {grown:.2g}-fold within the epoch, so the "
                            "settles stopped converging; lower optimizer.lr (or trainer.layer_lrs)")


def pinned_fraction(model: DynamicalModel, state: State, tol: float = 0.0) -> float | None:
    """The fraction of hidden units (every layer of ``state`` but the read-out) within ``tol`` of a
    bound of the model's activation ρ, i.e. of ρ(−∞) or ρ(+∞) (0 or 1 for the hard sigmoid).
    Such a unit is saturated: no small change of its input moves it, and a network with nearly
    all of them pinned has stopped learning. With ``tol`` the settle's ``atol``, a unit that a
    settle stopped short of its bound counts as there. ``None`` for a model with no hidden
    layer or without the capability :class:`~dynets.capabilities.Saturating`."""
    if not isinstance(model, Saturating) or len(state) < 2:
        return None
    hidden = torch.cat([s.flatten() for s in state[:-1]])
    low, high = model.unit_bounds()
    return (((hidden - low).abs() <= tol) | ((hidden - high).abs() <= tol)).double().mean().item()


def chance_accuracy(y: torch.Tensor) -> float:
    """The accuracy of always guessing the commonest label in ``y``: 1/n_classes when the classes are balanced."""
    return torch.bincount(y).max().item() / len(y) if len(y) else 1.0


def at_chance(metrics: dict[str, float], guess: float, data: Dataset) -> bool:
    """Whether the epoch's training accuracy (else its validation accuracy) is no better than
    ``guess`` by more than three binomial standard errors of a guess on that split. Never with
    a single class (labels blanked), where every guess is right."""
    for key, split in (("train_accuracy", data.train), ("val_accuracy", data.val)):
        if key in metrics and guess < 1.0:
            return metrics[key] <= guess + 3.0 * math.sqrt(guess * (1.0 - guess) / len(split))
    return False


def divergence(metrics: dict[str, float], model: torch.nn.Module, first_loss: float | None) -> str | None:
    """Why the run has diverged, or ``None``: a training loss that is not finite or has grown
    :data:`BLOWUP`-fold over the run's first batch's (``first_loss``), or weights that are not finite."""
    loss = metrics.get("train_loss")
    if loss is not None and not math.isfinite(loss):
        return f"the training loss is {loss}"
    if loss is not None and first_loss and loss > BLOWUP * abs(first_loss):
        return f"the training loss {loss:.3g} is {loss / abs(first_loss):.2g} times the first batch's {first_loss:.3g}"
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return "the weights are no longer finite"
    return None


def warn_epoch(epoch: int, metrics: dict[str, float], rule: Rule, model: torch.nn.Module, history: History,
          diverged: str | None, guess: float) -> None:
    """A :class:`TrainingWarning` for a diverged run (every epoch), else for one whose accuracy
    has stayed at chance for :data:`AT_CHANCE_EPOCHS` epochs, naming the options to change."""
    if diverged is not None:
        warnings.warn(f"epoch {epoch}: training diverged ({diverged}): the learning rate is most likely too "
                      "large; lower optimizer.lr (or trainer.layer_lrs). Settles that fail to converge follow "
                      "from it.", TrainingWarning, stacklevel=3)
    elif history.chance_epochs == AT_CHANCE_EPOCHS:
        accuracy = metrics.get("train_accuracy", metrics.get("val_accuracy"))
        options = ["another learning rate (optimizer.lr, or trainer.layer_lrs per layer)"]
        if takes(rule, "beta"):
            options.append(f"another nudge (rule.beta, now {rule.beta:g})")
        options.append("another activation (model.activation)")
        if takes(model, "init_gain"):
            options.append(f"larger initial weights (model.init_gain, now {model.init_gain:g}; 4 for the sigmoid)")
        warnings.warn(f"epoch {epoch}: the accuracy has stayed at chance for {AT_CHANCE_EPOCHS} epochs "
                      f"({percent(accuracy)}; guessing the commonest class: {percent(guess)}): the network is "
                      f"not learning. Try {', '.join(options)}.", TrainingWarning, stacklevel=3)


def takes(owner: object, name: str) -> bool:
    """Whether ``owner``'s class takes the argument ``name``, i.e. has the config option
    ``<group>.<name>`` (configs mirror constructors), which it keeps as the attribute ``name``."""
    return name in inspect.signature(type(owner)).parameters


def report(epoch: int, metrics: dict[str, float], loggers: Sequence[Logger], diverged: bool = False) -> None:
    """Send an epoch's metrics to the loggers; warn (on rank 0) about unconverged settles (unless
    the run ``diverged``, their cause) and a dead network (nearly all hidden units pinned, or an
    update of exactly zero)."""
    if metrics.get("train_converged", 1.0) < 1.0 and is_main() and not diverged:
        # The shortfall, never rounded to 0% or 100%: "100.0% reached" hid the few that did not.
        # A rule refuses such updates unless rule.allow_unconverged=true: say how many it wrote.
        written = metrics.get("train_unconverged_updates", 0.0)
        log.warning("epoch %d: %s of the samples did not reach the settle tolerance in some phase%s; "
                    "raise settle.max_time or loosen settle.atol", epoch, percent(1 - metrics["train_converged"]),
                    f" (rule.allow_unconverged=true: {percent(written)} of the updates came from such phases)"
                    if written else "")
    dead = []
    if metrics.get("val_pinned", 0.0) >= DEAD:
        dead.append(f"{percent(metrics['val_pinned'])} of the hidden units sit at a bound of their activation")
    if metrics.get("train_update_norm") == 0.0:
        dead.append("the rule's update is exactly zero")
    if dead and is_main():
        log.warning("epoch %d: the network is dead (%s) and will not learn: lower optimizer.lr, or the scale "
                    "of the initial weights", epoch, "; ".join(dead))
    for logger in loggers:
        logger.log(metrics, epoch)


