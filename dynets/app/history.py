"""What :func:`dynets.app.fit.fit` carries between epochs and across a resume: the selection of
the best epoch, the checkpointed state of a run, and the summary of its best epoch."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..capabilities import Stateful
from ..data import Dataset, Split
from ..rules.base import generators
from . import checkpoint

if TYPE_CHECKING:
    from .fit import Evaluation

SPLITS = ("train", "val", "test")

# Training rows the end-of-run summary evaluates by default: its accuracy to within 1 % (binomial,
# 2σ at worst), without a settle of every training sample (54k on Fashion-MNIST: 9.7 s against 2.1 s).
SUMMARY_TRAIN_ROWS = 10_000

GOALS = ("maximize", "minimize")


@dataclass
class History:
    """What :func:`~dynets.app.fit.fit` carries from epoch to epoch besides the model and optimizer."""

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


def streams(rule, generator: torch.Generator) -> dict[str, torch.Generator]:
    """The run's own random streams: the batch order and the rule's generators."""
    return {"batch_order": generator, **{f"rule.{name}": g for name, g in generators(rule).items()}}


def run_state(model, rule, optimizer, generator: torch.Generator, history: History, config, scheduler=None) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly (the random streams of every process)."""
    return {"epoch": history.epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rule": rule.state_dict() if isinstance(rule, Stateful) else None,
            "rng": checkpoint.rng_state(streams(rule, generator)),
            "history": dict(vars(history)), "model_signature": checkpoint.model_signature(model),
            "config": config}


def restore(state: Mapping[str, Any], source: str, model, rule, optimizer, generator: torch.Generator,
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
    checkpoint.set_rng_state(state["rng"], streams(rule, generator), source)
    return History(**state["history"])


def check_select(select: str, goal: str, alone: frozenset[str]) -> None:
    """Raise unless ``select`` names a validation metric ``val_<name>`` or a metric of the model
    alone (one of ``alone``), and ``goal`` is one of :data:`GOALS`."""
    if select.removeprefix("val_") in alone and select not in alone:
        raise ValueError(f"select={select!r}: {select.removeprefix('val_')} is a property of the model, the same on "
                         f"every split, not a validation metric: select={select.removeprefix('val_')!r}")
    if not (select.startswith("val_") or select in alone) or goal not in GOALS:
        raise ValueError(f"select names a validation metric (val_<name>) or one of the model's own metrics "
                         f"({', '.join(sorted(alone)) or 'none here'}) and goal is one of {', '.join(GOALS)}; "
                         f"got select={select!r}, goal={goal!r}")


def check_selection(history: History, select: str, goal: str, source: str) -> None:
    """Raise if a run resumed from ``source`` would select its epoch otherwise than it did."""
    if (history.select, history.goal) != (select, goal):
        raise ValueError(f"{source} selected the best epoch by {history.goal} {history.select}, and this run by "
                         f"{goal} {select}: pass select={history.select!r}, goal={history.goal!r}, or start a new run")


def checkpoint_of(resume_from: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """A checkpoint and a name for messages, from a loaded checkpoint, a file or a run directory."""
    if isinstance(resume_from, Mapping):
        return resume_from, "the checkpoint"
    path = Path(resume_from)
    state = checkpoint.load(path) if path.is_dir() else checkpoint.read(path)
    if state is None:
        raise FileNotFoundError(f"resume_from={path}: the directory holds no {checkpoint.CHECKPOINT}")
    return state, str(path)


def model_metrics(evaluate: Evaluation) -> frozenset[str]:
    """The metrics of ``evaluate`` that belong to the model alone, the same on every split."""
    return frozenset(getattr(evaluate, "model_metrics", ()))


def train_sample(split: Split, rows: int | None, seed: int) -> Split:
    """``rows`` rows of ``split`` drawn without replacement by ``torch.Generator().manual_seed(seed)``
    (the same on every process), in the split's order; the whole split when ``rows`` is ``None``
    or not fewer than its length.

    Args:
        split: the training split.
        rows: how many rows, or ``None``.
        seed: the draw's seed.
    """
    if rows is not None and rows < 1:
        raise ValueError(f"summary_train_rows must be >= 1 or None (the whole split), got {rows}")
    if rows is None or rows >= len(split):
        return split
    chosen = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:rows].sort().values
    return replace(split, x=split.x[chosen], y=split.y[chosen])


def summarize(model, data: Dataset, evaluate: Evaluation, history: History, epochs: int, wall_time_s: float,
              train: Split | None = None):
    """Of the best epoch's model (loaded into ``model``): the selected metric on every split
    (``train``: these rows of the training split, by default all of it), or, when it is a metric
    of the model alone, every other metric on every split; the model's own metrics once; and
    the run's totals."""
    model.load_state_dict(history.best_model)
    alone = model_metrics(evaluate)
    parts = {"train": data.train if train is None else train, "val": data.val, "test": data.test}
    metrics = {part: evaluate(model, split) for part, split in parts.items()}
    names = [history.select.removeprefix("val_")] if history.select not in alone else \
        [name for name in metrics["val"] if name not in alone]
    summary = {f"{part}_{name}": metrics[part][name] for part in SPLITS for name in names}
    summary.update({name: value for name, value in metrics["val"].items() if name in alone})
    summary.update(best_epoch=history.best_epoch, epochs=epochs)
    if history.settle_epochs:
        summary.update(mean_settle_steps=history.settle_steps / history.settle_epochs)
    summary.update(wall_time_s=wall_time_s)
    return summary


