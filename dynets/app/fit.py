"""The training loop. It knows nothing of hydra: every argument is a plain object."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..data import Dataset, Split
from ..models.base import DynamicalModel
from ..phases import Condition, UnconvergedError
from ..rules.base import Rule, Update, write_grads
from ..settle import SettleOptions
from . import checkpoint
from .distributed import all_sum, average_grads, broadcast_parameters, is_main, rank_and_size, shard
from .health import (at_chance, chance_accuracy, divergence, diverged_or, pinned_fraction, report, update_norm,
                     warn_epoch, weight_norm)
# Importable from here too, as before they moved to health.
from .health import AT_CHANCE_EPOCHS, BLOWUP, TrainingDiverged, TrainingWarning  # noqa: F401
from .history import (SUMMARY_TRAIN_ROWS, History, check_select, check_selection, checkpoint_of, model_metrics,
                      restore, run_state, summarize, train_sample)
from .loggers import Logger
from .stopwatch import Stopwatch, for_model

log = logging.getLogger("dynets")
PROGRESS_EVERY_S = 60.0   # off a terminal, the most seconds between two progress lines of an epoch


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


def _batches_bar(iterable: Iterable, total: int) -> Iterable:
    """The batches' progress bar on a terminal; off one (a log file, a cluster job) a log line at most
    every :data:`PROGRESS_EVERY_S` seconds of an epoch, so that a long epoch shows it is alive and how
    long it has left (a conv EP epoch on a CPU takes tens of minutes)."""
    if not _quiet():
        return _bar(iterable, total=total, desc="batches", leave=False)
    return _logged(iterable, total) if is_main() else iterable


def _logged(iterable: Iterable, total: int) -> Iterable:
    """``iterable``, logging the batches done and the time left at most every PROGRESS_EVERY_S seconds."""
    start = last = time.perf_counter()
    for done, item in enumerate(iterable):
        yield item   # the caller trains on it before the loop resumes: `done + 1` batches are done
        now = time.perf_counter()
        if now - last >= PROGRESS_EVERY_S:
            log.info("batch %d/%d, %.0f s, about %.0f s left in the epoch", done + 1, total, now - start,
                     (now - start) / (done + 1) * (total - done - 1))
            last = now


Evaluation = Callable[[DynamicalModel, Split], dict[str, float]]
"""What :func:`fit` measures the model with: ``evaluation(model, split)`` returns named metrics of
the model on the split (e.g. accuracy, reconstruction error, log-likelihood); one that needs no
labels ignores ``split.y``. Under torch.distributed it is called on every process and must
return the same numbers on each.

An evaluation may name, in an attribute ``model_metrics``, the metrics that are properties of
the model alone, the same on every split (e.g. KL(data‖model) from the exact data
distribution, :class:`dynets.likelihood.Likelihood`): :func:`fit` logs and reports those once,
under their own name, never as ``val_<name>`` or ``test_<name>``."""


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
               x: torch.Tensor, y: torch.Tensor | None = None,
               stopwatch: Stopwatch | None = None) -> tuple[dict[str, float], int]:
    """One optimizer step on the batch ``x`` ``(batch, in)``, ``y`` ``(batch,)`` (``None``: no labels):
    the rule's :class:`~dynets.rules.base.Update`, written to ``p.grad`` (:func:`write_grads`).

    Under torch.distributed each process runs ``rule.update`` on its contiguous shard of the
    batch, and the gradients are averaged weighted by shard size before the step, so the
    step is the single-process step on the whole batch, up to float rounding and up to the
    settle tolerance (each shard stops settling when its own samples have settled).

    Returns this process's metrics (the rule's, means over its shard, and ``update_norm``, the
    :func:`update_norm` of the step's update, absent when it trains no parameter; empty for an
    empty shard) and its shard size. ``stopwatch`` (if given) adds the time of ``rule.update``
    to its ``settle_time_s`` and that of writing, averaging and stepping to ``optimizer_time_s``.
    """
    watch = stopwatch or Stopwatch()
    xs, ys = shard(x, x if y is None else y)
    n = len(xs)
    # A last batch smaller than the number of processes leaves some shards empty: no
    # gradient there; average_grads counts it as zero.
    with watch.section("settle_time_s"):
        update = rule.update(model, xs, None if y is None else ys) if n else Update()
    with watch.section("optimizer_time_s"):
        write_grads(model, update.grads)
        average_grads(model, n / len(x))
    metrics = dict(update.metrics)
    # The update, the same on every process now. One that trains nothing (a rule that stopped,
    # e.g. HebbianSleep) has no size: 0 would read as a dead network.
    if n and any(p.grad is not None for p in model.parameters()):
        metrics["update_norm"] = update_norm(model)
    with watch.section("optimizer_time_s"):
        optimizer.step()
    return metrics, n


def _train_epoch(model, rule, optimizer, split: Split, batch_size: int, generator: torch.Generator,
                 labelled: bool = True, stopwatch: Stopwatch | None = None) -> tuple[dict[str, float], float | None]:
    """One pass over ``split`` in the order drawn from ``generator`` (the rule given no labels
    unless ``labelled``): the rule's metrics, means over the split, with the epoch's
    ``settle_time_s`` and ``optimizer_time_s`` (:class:`Stopwatch`), and the loss of the first
    batch (before its step; ``None`` if the rule reports none)."""
    watch = stopwatch or Stopwatch()
    totals: dict[str, float] = {}
    first_loss, start_norm = None, weight_norm(model)
    batches = split.batches(batch_size, shuffle=True, generator=generator)
    for x, y in _batches_bar(batches, math.ceil(len(split) / batch_size)):
        try:
            metrics, n = train_step(model, rule, optimizer, x, y if labelled else None, watch)
        except UnconvergedError as error:
            raise diverged_or(error, model, start_norm) from error
        first_loss = metrics.get("loss") if not totals else first_loss
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + v * n
    sums = all_sum(torch.tensor(list(totals.values()), dtype=torch.float64)).tolist()
    return {**{f"train_{k}": v / len(split) for k, v in zip(totals, sums)}, **watch.read()}, first_loss


def fit(model: DynamicalModel, rule: Rule, data: Dataset, optimizer: torch.optim.Optimizer, *,
        epochs: int, batch_size: int, seed: int = 0, evaluate: Evaluation | None = None,
        select: str = "val_accuracy", goal: str = "maximize", eval_settle: SettleOptions | None = None,
        loggers: Sequence[Logger] = (), run_dir: str | os.PathLike | None = None,
        resume_from: str | os.PathLike | Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        measures: Sequence[Callable[[DynamicalModel], dict[str, float]]] = (),
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        summary_train_rows: int | None = SUMMARY_TRAIN_ROWS, sync_timing: bool = False) -> dict[str, Any]:
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
        measures: functions of the model called after each epoch's training, whose metrics
            join the epoch's (e.g. alignment with the true gradient on a fixed batch).
        scheduler: a learning-rate schedule of ``optimizer``, stepped after every epoch (its
            state is checkpointed); the epoch's first group's rate is logged as ``lr``.
        summary_train_rows: the summary's training metrics are those of this many rows of the
            training split drawn with ``seed`` (:func:`~dynets.app.history.train_sample`); ``None``:
            the whole split (a settle of every training sample).
        sync_timing: synchronise a CUDA device around each timed section (see below), so that
            the times are those of the work and not of its launch; one sync each, hence off by
            default. On a CPU there is nothing to wait for.

    Every epoch's metrics hold ``epoch_time_s`` (training, measures and validation),
    ``settle_time_s`` (in ``rule.update``: its settles and the update it computes) and
    ``optimizer_time_s`` (writing the gradients, averaging them across processes, the optimizer
    step). Metrics a rule or an evaluation does not produce are absent from the epoch's metrics.
    A :class:`TrainingWarning` (rank 0) tells of a run that diverged (a training loss not
    finite or :data:`BLOWUP` times its first batch's, or weights not finite) and of one whose
    accuracy stays at chance (:func:`chance_accuracy`) for :data:`AT_CHANCE_EPOCHS` epochs.
    A progress bar over epochs and batches shows when stderr is a terminal; off one, a log line
    tells the batches done and the time left at most every :data:`PROGRESS_EVERY_S` seconds. The summary
    holds ``train/val/test_<name>`` (the selected metric, of the selected epoch, ``train`` on
    ``summary_train_rows`` rows; when that is a
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
    check_select(select, goal, model_metrics(evaluate))
    sample = train_sample(data.train, summary_train_rows, seed)   # drawn now: a bad size is an error before training
    rule.check_optimizer(optimizer)
    loggers = loggers if is_main() else ()
    generator = torch.Generator().manual_seed(seed)
    broadcast_parameters(model)
    history = History(select, goal)
    if resume_from is not None:
        state, source = checkpoint_of(resume_from)
        history = restore(state, source, model, rule, optimizer, generator, scheduler)
        check_selection(history, select, goal, source)
    if history.epoch > epochs:
        raise ValueError(f"the checkpoint is at epoch {history.epoch}, beyond epochs={epochs}")
    if run_dir is not None and is_main():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    guess = chance_accuracy(data.train.y)
    start, base_time, watch = time.perf_counter(), history.wall_time_s, for_model(model, sync_timing)
    with nullcontext() if _quiet() else logging_redirect_tqdm():
        for epoch in _bar(range(history.epoch + 1, epochs + 1), initial=history.epoch, total=epochs, desc="epochs"):
            metrics, first_loss = _epoch(model, rule, optimizer, data, batch_size, generator, evaluate, measures, watch)
            if history.first_loss is None:
                history.first_loss = first_loss
            if scheduler is not None:
                metrics["lr"] = optimizer.param_groups[0]["lr"]   # the rate this epoch trained with
                scheduler.step()
            history.record(epoch, metrics, model)
            history.wall_time_s = base_time + time.perf_counter() - start
            diverged = divergence(metrics, model, history.first_loss)
            history.chance_epochs = history.chance_epochs + 1 if at_chance(metrics, guess, data) else 0
            if is_main():
                warn_epoch(epoch, metrics, rule, model, history, diverged, guess)
            report(epoch, metrics, loggers, diverged is not None)
            if run_dir is not None:
                state = run_state(model, rule, optimizer, generator, history, config, scheduler)
                if is_main():
                    checkpoint.save(state, run_dir)
    summary = summarize(model, data, evaluate, history, epochs, base_time + time.perf_counter() - start, sample)
    if run_dir is not None and is_main():
        (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _epoch(model, rule, optimizer, data: Dataset, batch_size: int, generator: torch.Generator,
           evaluate: Evaluation, measures: Sequence[Callable],
           stopwatch: Stopwatch | None = None) -> tuple[dict[str, float], float | None]:
    """Train one epoch; its metrics with the measures', the validation metrics and the epoch's
    time, and the loss of its first batch."""
    t0 = time.perf_counter()
    metrics, first_loss = _train_epoch(model, rule, optimizer, data.train, batch_size, generator, data.labelled,
                                       stopwatch)
    for measure in measures:
        metrics.update(measure(model))
    alone = model_metrics(evaluate)
    metrics.update({name if name in alone else f"val_{name}": value for name, value in evaluate(model, data.val).items()})
    metrics.update(epoch_time_s=time.perf_counter() - t0)
    return metrics, first_loss


