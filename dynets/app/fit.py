"""The training loop. It knows nothing of hydra: every argument is a plain object."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import checkpoint
from ..capabilities import Stateful
from ..data import Dataset, Split
from .distributed import all_sum, average_grads, broadcast_parameters, is_main, rank_and_size, shard
from .loggers import Logger, percent
from ..models.base import DynamicalModel
from ..rules.base import Rule, Update, generators, write_grads
from ..settle import SettleOptions
from ..phases import Condition, State, UnconvergedError

log = logging.getLogger("dynets")


def layer_param_groups(model: torch.nn.Module, lr: float, layer_lrs: Sequence[float] | None = None) -> list[dict]:
    """Optimizer parameter groups: one per top-level layer (``layers.<i>``) with its own
    learning rate when ``layer_lrs`` is given, else one group at ``lr``."""
    if layer_lrs is None:
        return [{"params": list(model.parameters()), "lr": lr}]
    groups: dict[str, list] = {}
    for name, p in model.named_parameters():
        groups.setdefault(".".join(name.split(".")[:2]), []).append(p)
    if len(layer_lrs) != len(groups):
        raise ValueError(f"layer_lrs has {len(layer_lrs)} rates but the model has {len(groups)} layers ({', '.join(groups)})")
    return [{"params": ps, "lr": float(r)} for ps, r in zip(groups.values(), layer_lrs)]


def _quiet() -> bool:
    """No progress bars off a terminal (CI, log files) and on ranks other than 0."""
    return not (is_main() and sys.stderr.isatty())


def _bar(iterable: Iterable, **kwargs) -> Iterable:
    """A tqdm progress bar on stderr, unless :func:`_quiet`."""
    return tqdm(iterable, disable=_quiet(), dynamic_ncols=True, **kwargs)


Evaluation = Callable[[DynamicalModel, Split], dict[str, float]]
"""What :func:`fit` measures the model with: ``evaluation(model, split)`` returns named metrics of
the model on the split (e.g. accuracy, reconstruction error, log-likelihood); one that needs no
labels ignores ``split.y``. Under torch.distributed it is called on every process and must
return the same numbers on each.

An evaluation may name, in an attribute ``model_metrics``, the metrics that are properties of
the model alone, the same on every split (e.g. KL(data‖model) from the exact data
distribution, :class:`dynets.likelihood.Likelihood`): :func:`fit` logs and reports those once,
under their own name, never as ``val_<name>`` or ``test_<name>``."""

SPLITS = ("train", "val", "test")

GOALS = ("maximize", "minimize")
DEAD = 0.99   # the fraction of pinned hidden units from which a network is reported dead
AT_CHANCE_EPOCHS = 3   # consecutive epochs at chance accuracy after which fit warns
BLOWUP = 1e3   # a training loss this many times the run's first one has diverged


class TrainingWarning(UserWarning):
    """A run that has diverged or does not learn: what :func:`fit` saw, and the options to change."""


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


def _diverged_or(error: UnconvergedError, model: torch.nn.Module, start_norm: float) -> Exception:
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
    layer or no activation ``model.act.rho``."""
    rho = getattr(getattr(model, "act", None), "rho", None)   # the layered models' ρ (LayeredHopfield)
    if rho is None or len(state) < 2:
        return None
    hidden = torch.cat([s.flatten() for s in state[:-1]])
    low, high = rho(torch.tensor([-math.inf, math.inf], dtype=hidden.dtype, device=hidden.device))
    return (((hidden - low).abs() <= tol) | ((hidden - high).abs() <= tol)).double().mean().item()


@torch.no_grad()
def free_phase_metrics(model: DynamicalModel, split: Split, settle: SettleOptions,
                       batch_size: int = 512) -> dict[str, float]:
    """The default :data:`Evaluation`: ``accuracy`` of the free-phase read-out (argmax against
    the labels) on ``split``; mean settle ``steps``; ``converged`` fraction; ``pinned``, the
    :func:`pinned_fraction` of the hidden units within ``settle.atol`` of a bound (where the
    model defines it).

    Under torch.distributed each process settles its shard of ``split`` and the sums are
    reduced, so every process returns the same numbers.
    """
    x, y = shard(split.x, split.y)
    sums, pinned = torch.zeros(4, dtype=torch.float64), None
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        eq = settle(model, Condition(xb))
        correct = (model.output(eq.state).argmax(1) == yb).sum().item()
        pinned, n = pinned_fraction(model, eq.state, settle.atol), len(yb)
        sums += torch.tensor([correct, eq.steps * n, eq.converged_fraction * n, (pinned or 0.0) * n],
                             dtype=torch.float64)
    means = dict(zip(("accuracy", "steps", "converged", "pinned"), (s / len(split) for s in all_sum(sums).tolist())))
    if pinned is None:   # not defined for this model
        del means["pinned"]
    return means


def train_step(model: DynamicalModel, rule: Rule, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[dict[str, float], int]:
    """One optimizer step on the batch ``x`` ``(batch, in)``, ``y`` ``(batch,)`` (``None``: no labels):
    the rule's :class:`~dynets.rules.base.Update`, written to ``p.grad`` (:func:`write_grads`).

    Under torch.distributed each process runs ``rule.update`` on its contiguous shard of the
    batch, and the gradients are averaged weighted by shard size before the step, so the
    step is the single-process step on the whole batch, up to float rounding and up to the
    settle tolerance (each shard stops settling when its own samples have settled).

    Returns this process's metrics (the rule's, means over its shard, and ``update_norm``, the
    :func:`update_norm` of the step's update; empty for an empty shard) and its shard size.
    """
    xs, ys = shard(x, x if y is None else y)
    n = len(xs)
    # A last batch smaller than the number of processes leaves some shards empty: no
    # gradient there; average_grads counts it as zero.
    update = rule.update(model, xs, None if y is None else ys) if n else Update()
    write_grads(model, update.grads)
    average_grads(model, n / len(x))
    metrics = dict(update.metrics)
    if n:   # the update, the same on every process now
        metrics["update_norm"] = update_norm(model)
    optimizer.step()
    return metrics, n


def update_norm(model: torch.nn.Module) -> float:
    """‖p.grad‖ over all the parameters that have one: the size of the update a rule wrote."""
    return _norm(p.grad for p in model.parameters() if p.grad is not None)


def _train_epoch(model, rule, optimizer, split: Split, batch_size: int, generator: torch.Generator,
                 labelled: bool = True) -> tuple[dict[str, float], float | None]:
    """One pass over ``split`` in the order drawn from ``generator`` (the rule given no labels
    unless ``labelled``): the rule's metrics, means over the split, and the loss of the first
    batch (before its step; ``None`` if the rule reports none)."""
    totals: dict[str, float] = {}
    first_loss, start_norm = None, weight_norm(model)
    batches = split.batches(batch_size, shuffle=True, generator=generator)
    for x, y in _bar(batches, total=math.ceil(len(split) / batch_size), desc="batches", leave=False):
        try:
            metrics, n = train_step(model, rule, optimizer, x, y if labelled else None)
        except UnconvergedError as error:
            raise _diverged_or(error, model, start_norm) from error
        first_loss = metrics.get("loss") if not totals else first_loss
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + v * n
    sums = all_sum(torch.tensor(list(totals.values()), dtype=torch.float64)).tolist()
    return {f"train_{k}": v / len(split) for k, v in zip(totals, sums)}, first_loss


@dataclass
class History:
    """What :func:`fit` carries from epoch to epoch besides the model and optimizer."""

    select: str = "val_accuracy"   # the validation metric that selects the best epoch
    goal: str = "maximize"         # its direction, one of GOALS
    epoch: int = 0                 # last complete epoch
    best_epoch: int = 0            # the epoch of the best ``select`` so far (the first of equals)
    best_value: float | None = None
    best_model: dict | None = None  # model.state_dict() at best_epoch
    settle_steps: float = 0.0      # sum over epochs of the mean free-phase settle steps in training,
    settle_epochs: int = 0         # over this many epochs (those whose rule reports train_steps_free)
    wall_time_s: float = 0.0       # training time up to the end of ``epoch``
    first_loss: float | None = None  # the training loss of the run's first batch, at the initial weights
    chance_epochs: int = 0         # consecutive epochs up to ``epoch`` with the accuracy at chance

    def record(self, epoch: int, metrics: dict[str, float], model: torch.nn.Module) -> None:
        """Count ``epoch``; keep ``model``'s weights if its ``select`` metric is the best so far."""
        self.epoch = epoch
        if "train_steps_free" in metrics:
            self.settle_steps += metrics["train_steps_free"]
            self.settle_epochs += 1
        if self.select not in metrics:
            found = ", ".join(k for k in metrics if k.startswith("val_"))
            raise ValueError(f"select={self.select!r} is not among the validation metrics of the evaluation "
                             f"({found}); select one of them")
        if self._improves(metrics[self.select]):
            self.best_epoch, self.best_value = epoch, metrics[self.select]
            self.best_model = {k: v.clone() for k, v in model.state_dict().items()}

    def _improves(self, value: float) -> bool:
        """Whether ``value`` beats the best so far; NaN beats nothing but the absence of a value."""
        if self.best_value is None or math.isnan(self.best_value):
            return self.best_value is None or not math.isnan(value)
        return value > self.best_value if self.goal == "maximize" else value < self.best_value


def _streams(rule, generator: torch.Generator) -> dict[str, torch.Generator]:
    """The run's own random streams: the batch order and the rule's generators."""
    return {"batch_order": generator, **{f"rule.{name}": g for name, g in generators(rule).items()}}


def _state(model, rule, optimizer, generator: torch.Generator, history: History, config, scheduler=None) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly (the random streams of every process)."""
    return {"epoch": history.epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rule": rule.state_dict() if isinstance(rule, Stateful) else None,
            "rng": checkpoint.rng_state(_streams(rule, generator)),
            "history": dict(vars(history)), "model_signature": checkpoint.model_signature(model),
            "config": config}


def _restore(state: Mapping[str, Any], source: str, model, rule, optimizer, generator: torch.Generator,
             scheduler=None) -> History:
    """Load a checkpoint's state into the run's objects; the run's :class:`History`."""
    checkpoint.check_model(state["model_signature"], model, source)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if (state.get("scheduler") is None) != (scheduler is None):
        raise checkpoint.CheckpointError(f"{source} was trained {'with' if scheduler is None else 'without'} a "
                                         "learning-rate schedule, and this run is not: pass the same scheduler")
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state["rule"] is not None:
        rule.load_state_dict(state["rule"])
    checkpoint.set_rng_state(state["rng"], _streams(rule, generator), source)
    return History(**state["history"])


def _check_select(select: str, goal: str, alone: frozenset[str]) -> None:
    """Raise unless ``select`` names a validation metric ``val_<name>`` or a metric of the model
    alone (one of ``alone``), and ``goal`` is one of :data:`GOALS`."""
    if select.removeprefix("val_") in alone and select not in alone:
        raise ValueError(f"select={select!r}: {select.removeprefix('val_')} is a property of the model, the same on "
                         f"every split, not a validation metric: select={select.removeprefix('val_')!r}")
    if not (select.startswith("val_") or select in alone) or goal not in GOALS:
        raise ValueError(f"select names a validation metric (val_<name>) or one of the model's own metrics "
                         f"({', '.join(sorted(alone)) or 'none here'}) and goal is one of {', '.join(GOALS)}; "
                         f"got select={select!r}, goal={goal!r}")


def _check_selection(history: History, select: str, goal: str, source: str) -> None:
    """Raise if a run resumed from ``source`` would select its epoch otherwise than it did."""
    if (history.select, history.goal) != (select, goal):
        raise ValueError(f"{source} selected the best epoch by {history.goal} {history.select}, and this run by "
                         f"{goal} {select}: pass select={history.select!r}, goal={history.goal!r}, or start a new run")


def _checkpoint_of(resume_from: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """A checkpoint and a name for messages, from a loaded checkpoint, a file or a run directory."""
    if isinstance(resume_from, Mapping):
        return resume_from, "the checkpoint"
    path = Path(resume_from)
    state = checkpoint.load(path) if path.is_dir() else checkpoint.read(path)
    if state is None:
        raise FileNotFoundError(f"resume_from={path}: the directory holds no {checkpoint.CHECKPOINT}")
    return state, str(path)


def _model_metrics(evaluate: Evaluation) -> frozenset[str]:
    """The metrics of ``evaluate`` that belong to the model alone, the same on every split."""
    return frozenset(getattr(evaluate, "model_metrics", ()))


def _summary(model, data: Dataset, evaluate: Evaluation, history: History, epochs: int, wall_time_s: float):
    """Of the best epoch's model (loaded into ``model``): the selected metric on every split,
    or, when it is a metric of the model alone, every other metric on every split; the
    model's own metrics once; and the run's totals."""
    model.load_state_dict(history.best_model)
    alone = _model_metrics(evaluate)
    metrics = {part: evaluate(model, getattr(data, part)) for part in SPLITS}
    names = [history.select.removeprefix("val_")] if history.select not in alone else \
        [name for name in metrics["val"] if name not in alone]
    summary = {f"{part}_{name}": metrics[part][name] for part in SPLITS for name in names}
    summary.update({name: value for name, value in metrics["val"].items() if name in alone})
    summary.update(best_epoch=history.best_epoch, epochs=epochs)
    if history.settle_epochs:
        summary.update(mean_settle_steps=history.settle_steps / history.settle_epochs)
    summary.update(wall_time_s=wall_time_s)
    return summary


def fit(model: DynamicalModel, rule: Rule, data: Dataset, optimizer: torch.optim.Optimizer, *,
        epochs: int, batch_size: int, seed: int = 0, evaluate: Evaluation | None = None,
        select: str = "val_accuracy", goal: str = "maximize", eval_settle: SettleOptions | None = None,
        loggers: Sequence[Logger] = (), run_dir: str | os.PathLike | None = None,
        resume_from: str | os.PathLike | Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        probes: Sequence[Callable[[DynamicalModel], dict[str, float]]] = (),
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> dict[str, Any]:
    """Train ``model`` with ``rule`` for ``epochs`` epochs; select the epoch with the best
    validation metric ``select`` (never test); load its weights into ``model``; return the summary.

    Args:
        epochs: total epochs of the run, counting those before ``resume_from``.
        batch_size: rows per optimizer step (split among processes under torch.distributed).
        seed: seed of the batch order (the model's init is the caller's).
        evaluate: the :data:`Evaluation` run on the validation split after every epoch, its
            metrics logged as ``val_<name>``; default :func:`free_phase_metrics` (accuracy of
            the free-phase read-out) settled with ``eval_settle``.
        select: the validation metric ``val_<name>`` of ``evaluate`` that selects the best
            epoch, e.g. ``val_accuracy`` or ``val_reconstruction_error``, or one of its
            ``model_metrics`` (see :data:`Evaluation`), e.g. ``kl_bits``.
        goal: ``maximize`` or ``minimize`` ``select``. A resumed run keeps its checkpoint's
            ``select`` and ``goal`` (another one is an error).
        eval_settle: settle options of the default evaluation; default the rule's free-phase options.
        loggers: each gets every epoch's metrics (rank 0 only); starting them and passing
            them the summary (``finish``) is the caller's, who may add plots in between.
        run_dir: a directory (created if missing) where ``checkpoint.pt`` is written
            atomically every epoch (see :mod:`dynets.app.checkpoint`) and ``summary.json`` at
            the end, by rank 0. Under
            torch.distributed pass it (or ``None``) on every process.
        resume_from: a run directory, a checkpoint file or a checkpoint loaded with
            :func:`dynets.app.checkpoint.load`: continue after its epoch. Every random stream
            continues where it was: torch's CPU and CUDA generators, the batch order and each
            ``torch.Generator`` attribute of the rule (e.g. ``rule.generator``; see
            :func:`dynets.rules.base.generators`). With the same seed, data and process count
            the run ends exactly as one never interrupted (on CPU). Loggers get only the epochs
            after it (see :func:`dynets.app.checkpoint.truncate_metrics`).
        config: plain data saved in every checkpoint (e.g. the composed config), for checks on resume.
        probes: functions of the model called after each epoch's training, whose metrics
            join the epoch's (e.g. alignment with the true gradient on a probe batch).
        scheduler: a learning-rate schedule of ``optimizer``, stepped after every epoch (its
            state is checkpointed); the epoch's first group's rate is logged as ``lr``.

    Metrics a rule or an evaluation does not produce are absent from the epoch's metrics.
    A :class:`TrainingWarning` (rank 0) tells of a run that diverged (a training loss not
    finite or :data:`BLOWUP` times its first batch's, or weights not finite) and of one whose
    accuracy stays at chance (:func:`chance_accuracy`) for :data:`AT_CHANCE_EPOCHS` epochs.
    A progress bar over epochs and batches shows when stderr is a terminal. The summary
    holds ``train/val/test_<name>`` (the selected metric, of the selected epoch; when that is a
    metric of the model alone, every other metric of the evaluation), the model's own metrics
    once (e.g. ``kl_bits``), ``best_epoch``,
    ``epochs``, ``mean_settle_steps`` (free phase, training; if the rule reports it) and
    ``wall_time_s`` (summed over resumes).
    """
    processes = rank_and_size()[1]
    if epochs < 1 or batch_size < processes:
        raise ValueError(f"need epochs >= 1 and batch_size >= the number of processes ({processes}), "
                         f"got {epochs} and {batch_size}")
    evaluate = evaluate or functools.partial(free_phase_metrics, settle=eval_settle or rule.settle)
    _check_select(select, goal, _model_metrics(evaluate))
    rule.check_optimizer(optimizer)
    loggers = loggers if is_main() else ()
    generator = torch.Generator().manual_seed(seed)
    broadcast_parameters(model)
    history = History(select, goal)
    if resume_from is not None:
        state, source = _checkpoint_of(resume_from)
        history = _restore(state, source, model, rule, optimizer, generator, scheduler)
        _check_selection(history, select, goal, source)
    if history.epoch > epochs:
        raise ValueError(f"the checkpoint is at epoch {history.epoch}, beyond epochs={epochs}")
    if run_dir is not None and is_main():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    guess = chance_accuracy(data.train.y)
    start, base_time = time.perf_counter(), history.wall_time_s
    with nullcontext() if _quiet() else logging_redirect_tqdm():
        for epoch in _bar(range(history.epoch + 1, epochs + 1), initial=history.epoch, total=epochs, desc="epochs"):
            metrics, first_loss = _epoch(model, rule, optimizer, data, batch_size, generator, evaluate, probes)
            if history.first_loss is None:
                history.first_loss = first_loss
            if scheduler is not None:
                metrics["lr"] = optimizer.param_groups[0]["lr"]   # the rate this epoch trained with
                scheduler.step()
            history.record(epoch, metrics, model)
            history.wall_time_s = base_time + time.perf_counter() - start
            diverged = divergence(metrics, model, history.first_loss)
            history.chance_epochs = history.chance_epochs + 1 if _at_chance(metrics, guess, data) else 0
            if is_main():
                _warn(epoch, metrics, rule, model, history, diverged, guess)
            _report(epoch, metrics, loggers, diverged is not None)
            if run_dir is not None:
                state = _state(model, rule, optimizer, generator, history, config, scheduler)
                if is_main():
                    checkpoint.save(state, run_dir)
    summary = _summary(model, data, evaluate, history, epochs, base_time + time.perf_counter() - start)
    if run_dir is not None and is_main():
        (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _epoch(model, rule, optimizer, data: Dataset, batch_size: int, generator: torch.Generator,
           evaluate: Evaluation, probes: Sequence[Callable]) -> tuple[dict[str, float], float | None]:
    """Train one epoch; its metrics with the probes', the validation metrics and the epoch's
    time, and the loss of its first batch."""
    t0 = time.perf_counter()
    metrics, first_loss = _train_epoch(model, rule, optimizer, data.train, batch_size, generator, data.labelled)
    for probe in probes:
        metrics.update(probe(model))
    alone = _model_metrics(evaluate)
    metrics.update({name if name in alone else f"val_{name}": value for name, value in evaluate(model, data.val).items()})
    metrics.update(epoch_time_s=time.perf_counter() - t0)
    return metrics, first_loss


def chance_accuracy(y: torch.Tensor) -> float:
    """The accuracy of always guessing the commonest label in ``y``: 1/n_classes when the classes are balanced."""
    return torch.bincount(y).max().item() / len(y) if len(y) else 1.0


def _at_chance(metrics: dict[str, float], guess: float, data: Dataset) -> bool:
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


def _warn(epoch: int, metrics: dict[str, float], rule: Rule, model: torch.nn.Module, history: History,
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
        if hasattr(rule, "beta"):
            options.append(f"another nudge (rule.beta, now {rule.beta:g})")
        options.append("another activation (model.activation)")
        if hasattr(model, "init_gain"):
            options.append(f"larger initial weights (model.init_gain, now {model.init_gain:g}; 4 for the sigmoid)")
        warnings.warn(f"epoch {epoch}: the accuracy has stayed at chance for {AT_CHANCE_EPOCHS} epochs "
                      f"({percent(accuracy)}; guessing the commonest class: {percent(guess)}): the network is "
                      f"not learning. Try {', '.join(options)}.", TrainingWarning, stacklevel=3)


def _report(epoch: int, metrics: dict[str, float], loggers: Sequence[Logger], diverged: bool = False) -> None:
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
