"""The training app behind ``scripts/train.py``, without hydra.

A run is described by its composed config as plain data (nested dicts and lists, as
``OmegaConf.to_container(cfg, resolve=True)`` gives; the layout of ``configs/train.yaml``):
:func:`dynets.app.builder.build` turns it into data, model, rule and optimizer,
:func:`dynets.app.resume.resume_from` finds and checks the checkpoint a resumed run continues
from, :func:`train` runs it in a run directory and :func:`main` wraps that for torch.distributed.
Library classes get plain arguments only.
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import diagnostics, sampling
from ..capabilities import Dreams, GibbsBlocked
from ..data import Split
from ..phases import Condition, UnconvergedError
from ..rules import ImplicitDifferentiation
from . import checkpoint, distributed, plots
# The builder's and resume's names are importable from here too, as before they moved.
from .builder import (build, build_model, build_scheduler, check_arguments, check_pair,  # noqa: F401
                      check_self_supervised, checked_evaluation, evaluation, evaluation_name, evaluations,
                      instantiate, learns_without_labels, locate, mismatch, refused, resolve_device, sized)
from .fit import TrainingDiverged, fit
from .loggers import JsonLinesLogger
from .options import ConfigError
from .resume import check_config, differences, resume_from  # noqa: F401

log = logging.getLogger("dynets")
VAL_ROWS = 64   # validation samples of the alignment measure and the settling plot
# The mistakes of a user, which scripts/train.py reports as one message (anything else is a bug
# and keeps its traceback): a config that does not fit (ConfigError, raised here for what the
# library's checks refuse while a group is built, for data too) and a checkpoint that does not
# fit the run or cannot be read (CheckpointError).
USER_ERRORS = (ConfigError, checkpoint.CheckpointError, TrainingDiverged, UnconvergedError)


def train(config: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """Build the run of ``config``, check its evaluation, train it in ``run_dir`` (resuming if
    asked), write its plots; return :func:`dynets.app.fit.fit`'s summary."""
    data, model, rule, optimizer = build(config)
    supervised = config.get("task", "supervised") == "supervised"
    config = sized(config, data, supervised)   # what build built: the model's sizes, logged and checkpointed
    trainer, loggers = config["trainer"], []
    select, goal = trainer.get("select", "val_accuracy"), trainer.get("goal", "maximize")
    evaluate = checked_evaluation(config, data, model, rule, select, labelled=supervised)
    state = resume_from(config, run_dir)
    if distributed.is_main():
        loggers = [instantiate(node) for node in config["logger"].values()]
        loggers.append(JsonLinesLogger(run_dir / "metrics.jsonl"))
    for logger in loggers:
        logger.start(dict(config), run_dir)
    x_val, y_val = data.val.x[:VAL_ROWS], data.val.y[:VAL_ROWS]
    # The exact gradient the measure compares with is that of a labelled loss: none for a generative
    # model, and none without labels.
    measures = [alignment_measure(rule, x_val, y_val)] if trainer["alignment"] and model.supervised and supervised else []
    summary = fit(model, rule, data, optimizer, epochs=trainer["epochs"], batch_size=trainer["batch_size"],
                  seed=config["seed"], evaluate=evaluate, select=select, goal=goal,
                  loggers=loggers, run_dir=run_dir, resume_from=state, config=dict(config), measures=measures,
                  scheduler=build_scheduler(config, optimizer), summary_train_rows=trainer["summary_train_rows"],
                  sync_timing=trainer["sync_timing"])
    if distributed.is_main():
        write_plots(run_dir, model, Split(x_val, y_val), rule.settle, config["seed"])
    for logger in loggers:   # after the plots: the wandb logger uploads the PNGs it finds
        logger.finish(summary)
    return summary


def main(config: Mapping[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """:func:`train` as one process of a torchrun job (or alone); rank 0 speaks for all."""
    distributed.init_from_env()   # a no-op on one process
    if not distributed.is_main():
        log.setLevel(logging.ERROR)
    try:
        return train(config, Path(run_dir))
    finally:
        distributed.close()


def run(config: Mapping[str, Any], run_dir: str | os.PathLike, overrides: list[str], command: str) -> dict[str, Any]:
    """:func:`main` for the command line ``command`` with ``overrides``: a user's mistake
    (:data:`USER_ERRORS`) exits with its message alone (status 1); Ctrl-C exits with status 130
    and the command that resumes the run; any other exception is a bug and keeps its traceback."""
    try:
        return main(config, run_dir)
    except USER_ERRORS as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        print(f"\ninterrupted. {resume_hint(Path(run_dir), overrides, command)}", file=sys.stderr)
        raise SystemExit(130) from None


def resume_hint(run_dir: Path, overrides: list[str], command: str) -> str:
    """How to continue the run in ``run_dir``: the same overrides with ``resume=<run_dir>``."""
    if not (run_dir / checkpoint.CHECKPOINT).exists():
        return f"No epoch had ended: {run_dir} holds no checkpoint to resume from; run the command again."
    kept = [o for o in overrides if o.lstrip("+~").partition("=")[0] != "resume"]
    return f"To continue from the last complete epoch: {shlex.join([*shlex.split(command), *kept, f'resume={run_dir}'])}"


def alignment_measure(rule, x: torch.Tensor, y: torch.Tensor):
    """Per-epoch cosine of the rule's update with the exact equilibrium gradient on a fixed
    validation batch, as ``align_cos/<parameter>`` metrics (the key plots read)."""
    reference = ImplicitDifferentiation(rule.settle, cost=rule.cost)   # the gradient of the loss the rule trains
    return lambda model: plots.alignment_metrics(diagnostics.alignment(model, rule, reference, x, y))


def write_plots(run_dir: Path, model, shown: Split, settle_options, seed: int = 0) -> None:
    """The run's PNGs: a model that dreams from noise or a prior (and has no label layer), its
    dreams and learning curves; any other, the settling of the ``shown`` inputs, learning
    curves, alignment and receptive fields. A failed plot is a warning, never the loss of a
    finished run."""
    try:
        if not model.supervised and isinstance(model, GibbsBlocked):
            paths = plots.plot_generative_run(run_dir, dreams(model, VAL_ROWS, seed))
        else:
            condition = model.prepare(Condition(shown.x, model.target(shown.y)))
            paths = plots.plot_run(run_dir, model, condition, settle_options)
        log.info("plots: %s", ", ".join(p.name for p in paths.values()))
    except Exception as err:  # noqa: BLE001 - any plotting failure must not sink the run
        log.warning("plots failed: %s", err)


def dreams(model, n: int, seed: int) -> torch.Tensor:
    """``(n, visible)`` dreams of a generative model: one top-down sweep from its prior when it
    has one (an exact sample of a directed model), else a Gibbs chain of 1000 sweeps from noise."""
    prior = isinstance(model, Dreams)
    sleep = sampling.Sleep("prior" if prior else "noise", sampling.SampleOptions(sweeps=1 if prior else 1000))
    condition = Condition(batch_size=n, generator=torch.Generator().manual_seed(seed))
    return sleep.dream(model, condition).state[0]
