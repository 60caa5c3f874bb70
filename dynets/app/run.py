"""The training app behind ``scripts/train.py``, without hydra.

A run is described by its composed config as plain data (nested dicts and lists, as
``OmegaConf.to_container(cfg, resolve=True)`` gives; the layout of ``configs/train.yaml``):
:func:`build` turns it into data, model, rule and optimizer, :func:`resume_from` finds and
checks the checkpoint a resumed run continues from, :func:`train` runs it in a run directory
and :func:`main` wraps that for torch.distributed. Library classes get plain arguments only.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import diagnostics, sampling
from ..data import Dataset, unlabelled
from ..phases import Condition
from ..rules import ImplicitDifferentiation
from . import checkpoint, distributed, plots
from .fit import fit, layer_param_groups
from .loggers import JsonLinesLogger, flatten

log = logging.getLogger("dynets")
# Config keys that may change when a run is resumed, without a warning.
RESUMABLE_CHANGES = ("resume", "trainer.epochs", "logger")
# Config groups that must not change when a run is resumed: the checkpoint's weights need
# its model, and other data (another split seed or fraction) moves samples between train,
# validation and test.
FIXED_ON_RESUME = {"model": "a different model", "data": "different data"}
TASKS = ("supervised", "self_supervised")
PROBE = 64   # validation samples of the alignment probe and the settling plot


METHODS_THAT_FIT = ("generative predictive coding (PredictiveCoding with arrangement='generative', "
                    "PredictiveCodingRule with variant='unsupervised'); ReadBackHopfield with "
                    "EquilibriumPropagation or ContrastiveHebbian; Helmholtz with WakeSleep; "
                    "any of these inside SleepInterleaved")


def learns_without_labels(model, rule) -> bool:
    """Whether ``rule`` trains ``model`` without reading a label: a model with no label layer
    (``supervised = False``), or generative predictive coding with the ``unsupervised`` rule."""
    rule = getattr(rule, "wake", rule)   # SleepInterleaved: its wake rule decides
    if not getattr(model, "supervised", True):
        return True
    return getattr(model, "arrangement", None) == "generative" and getattr(rule, "variant", None) == "unsupervised"


def check_self_supervised(model, rule) -> None:
    """Raise unless ``rule`` trains ``model`` without labels, naming the methods that do."""
    if not learns_without_labels(model, rule):
        raise ValueError(f"task=self_supervised: {type(rule).__name__} trains {type(model).__name__} from labels "
                         f"(its read-out is a label layer, or the rule clamps or nudges it toward one). The "
                         f"methods that learn without labels: {METHODS_THAT_FIT}")


def instantiate(node: Any) -> Any:
    """Build what a config node describes, innermost nodes first.

    A mapping with ``_target_`` (a dotted import path) becomes ``target(**fields)``, or
    ``functools.partial(target, **fields)`` with ``_partial_: true``; a mapping without
    it, a dict of its built fields; a list, the list of its built items; anything else
    is returned as it is. (The part of ``hydra.utils.instantiate`` that configs/ uses.)

    Raises:
        ImportError: ``_target_`` names nothing importable; the message names it.
    """
    if isinstance(node, list):
        return [instantiate(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    fields = {key: instantiate(value) for key, value in node.items() if key not in ("_target_", "_partial_")}
    if "_target_" not in node:
        return fields
    target = locate(node["_target_"])
    return functools.partial(target, **fields) if node.get("_partial_", False) else target(**fields)


def locate(path: str) -> Any:
    """The object at the dotted import path ``path`` (``module.attribute``)."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ImportError(f"_target_: {path!r} cannot be imported ({err}); check its spelling in the config") from err


def build_model(node: Mapping[str, Any], data: Dataset, labelled: bool = True) -> torch.nn.Module:
    """The model config names its hidden sizes; the ends come from the data: the input, and
    the labels unless the model learns without them (``supervised = False``) or the task has
    none (``labelled=False``)."""
    node = dict(node)
    hidden = node.pop("hidden")
    labels = [data.n_classes] if labelled and getattr(locate(node["_target_"]), "supervised", True) else []
    return instantiate({**node, "sizes": [data.n_features, *hidden, *labels]})


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when there is a GPU, else CPU; under torchrun, each process its own GPU."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and device.index is None:
        # torch.cuda.set_device refuses a device without an index.
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def build(config: Mapping[str, Any]):
    """Data, model, rule and optimizer of a composed config (seeded before the model), on
    ``trainer.device``.

    ``task: self_supervised``: the labels are replaced by zeros before anything sees them and
    the model has no label layer.

    Raises:
        TypeError: the rule cannot train the model (before any training); the message
            names the models it can train.
        ValueError: an unknown task, or a method that needs labels under ``self_supervised``
            (the message names the methods that fit).
    """
    task = config.get("task", "supervised")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    torch.manual_seed(config["seed"])
    device = resolve_device(config["trainer"]["device"])
    data = instantiate(config["data"]).to(device)
    data = unlabelled(data) if task == "self_supervised" else data
    model = build_model(config["model"], data, labelled=task == "supervised").to(device)
    rule = instantiate(config["rule"])
    rule.check_model(model)
    if task == "self_supervised":
        check_self_supervised(model, rule)
    groups = layer_param_groups(model, config["optimizer"]["lr"], config["trainer"]["layer_lrs"])
    optimizer = instantiate(config["optimizer"])(groups)
    return data, model, rule, optimizer


def build_scheduler(config: Mapping[str, Any], optimizer: torch.optim.Optimizer):
    """The learning-rate schedule a config names (``scheduler: null``: none)."""
    node = config.get("scheduler")
    return instantiate(node)(optimizer) if node else None


def differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """``(dotted key, old value, new value)`` for every leaf where two nested dicts differ."""
    old, new = flatten(old), flatten(new)
    pairs = ((k, old.get(k, "<absent>"), new.get(k, "<absent>")) for k in sorted(set(old) | set(new)))
    return [(k, a, b) for k, a, b in pairs if a != b]


def check_config(saved: dict, config: dict, source: str) -> None:
    """A resumed run must keep what FIXED_ON_RESUME names (else an error listing the
    differences); other changes, except those in RESUMABLE_CHANGES, are allowed with a warning."""
    diffs = [d for d in differences(saved, config) if not d[0].startswith(RESUMABLE_CHANGES)]
    fixed = {group: [d for d in diffs if d[0].startswith(f"{group}.")] for group in FIXED_ON_RESUME}
    changed = [group for group in FIXED_ON_RESUME if fixed[group]]
    if changed:
        what = " and ".join(f"{FIXED_ON_RESUME[group]} ({_text(fixed[group])})" for group in changed)
        raise checkpoint.CheckpointError(f"resume: {source} was trained with {what}. Pass that run's "
                                         f"{' and '.join(changed)} overrides again, or start a new run")
    if diffs:
        log.warning("resume: the config differs from the one %s was trained with: %s", source, _text(diffs))


def _text(diffs: list[tuple[str, object, object]]) -> str:
    return "; ".join(f"{key}: {old} -> {new}" for key, old, new in diffs)


def resume_from(config: Mapping[str, Any], run_dir: Path) -> dict | None:
    """The checkpoint to continue from, ``None`` for a fresh run; cuts metrics.jsonl after its epoch.

    ``resume: true`` on a directory without a checkpoint starts the run (so that a job can be
    requeued with the same command); ``resume: <dir>`` names a run, and must find its checkpoint.
    """
    resume = config["resume"]
    if not resume:
        return None
    state = checkpoint.load(run_dir)
    if state is not None:
        check_config(state["config"], dict(config), str(run_dir / checkpoint.CHECKPOINT))
        log.info("resuming %s after epoch %d", run_dir, state["epoch"])
    elif isinstance(resume, str):
        raise FileNotFoundError(f"resume={resume}: no {checkpoint.CHECKPOINT} there to continue from "
                                "(to start a new run, leave out resume=)")
    else:
        log.warning("resume: %s holds no checkpoint, starting at epoch 1 (to continue a run, pass "
                    "hydra.run.dir=<its directory> resume=true, or resume=<its directory>; in a multirun, the same "
                    "hydra.sweep.dir and overrides with resume=true)", run_dir)
    if distributed.is_main():
        checkpoint.truncate_metrics(run_dir / "metrics.jsonl", 0 if state is None else state["epoch"])
    return state


def train(config: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """Build the run of ``config``, train it in ``run_dir`` (resuming if asked), write its
    plots; return :func:`dynets.app.fit.fit`'s summary."""
    data, model, rule, optimizer = build(config)
    state = resume_from(config, run_dir)
    trainer, loggers = config["trainer"], []
    if distributed.is_main():
        loggers = [instantiate(node) for node in config["logger"].values()]
        loggers.append(JsonLinesLogger(run_dir / "metrics.jsonl"))
    for logger in loggers:
        logger.start(dict(config), run_dir)
    x_probe, y_probe = data.val.x[:PROBE], data.val.y[:PROBE]
    # The exact gradient the probe compares with is that of a labelled loss: none for a generative model.
    probes = [alignment_probe(rule, x_probe, y_probe)] if trainer["alignment"] and model.supervised else []
    summary = fit(model, rule, data, optimizer, epochs=trainer["epochs"], batch_size=trainer["batch_size"],
                  seed=config["seed"], evaluate=evaluation(config.get("evaluate"), data),
                  select=trainer.get("select", "val_accuracy"), goal=trainer.get("goal", "maximize"),
                  loggers=loggers, run_dir=run_dir, resume_from=state, config=dict(config), probes=probes,
                  scheduler=build_scheduler(config, optimizer))
    if distributed.is_main():
        write_plots(run_dir, model, Condition(x_probe, model.target(y_probe)) if model.supervised else None,
                    rule.settle, config["seed"])
    for logger in loggers:   # after the plots: the wandb logger uploads the PNGs it finds
        logger.finish(summary)
    return summary


def evaluation(node: Mapping[str, Any] | None, data: Dataset):
    """The evaluation a config names (``None``: fit's default, the free phase's accuracy); a
    likelihood evaluation gets the data's exact distribution when it is known."""
    evaluate = instantiate(node) if node else None
    if getattr(evaluate, "distribution", False) is None and data.distribution is not None:
        evaluate.distribution = data.distribution
    return evaluate


def main(config: Mapping[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """:func:`train` as one process of a torchrun job (or alone); rank 0 speaks for all."""
    distributed.init_from_env()   # a no-op on one process
    if not distributed.is_main():
        log.setLevel(logging.ERROR)
    try:
        return train(config, Path(run_dir))
    finally:
        distributed.close()


def alignment_probe(rule, x: torch.Tensor, y: torch.Tensor):
    """Per-epoch cosine of the rule's update with the exact equilibrium gradient on a fixed
    validation batch, as ``align_cos/<parameter>`` metrics (the key plots read)."""
    reference = ImplicitDifferentiation(rule.settle, cost=rule.cost)   # the gradient of the loss the rule trains
    return lambda model: plots.alignment_metrics(diagnostics.alignment(model, rule, reference, x, y))


def write_plots(run_dir: Path, model, probe: Condition | None, settle_options, seed: int = 0) -> None:
    """The run's PNGs (a generative model's: its dreams and learning curves); a failed plot is
    a warning, never the loss of a finished run."""
    try:
        if probe is not None:
            paths = plots.plot_run(run_dir, model, probe, settle_options)
        else:
            paths = plots.plot_generative_run(run_dir, dreams(model, PROBE, seed))
        log.info("plots: %s", ", ".join(p.name for p in paths.values()))
    except Exception as err:  # noqa: BLE001 - any plotting failure must not sink the run
        log.warning("plots failed: %s", err)


def dreams(model, n: int, seed: int) -> torch.Tensor:
    """``(n, visible)`` dreams of a generative model: one top-down sweep from its prior when it
    has one (an exact sample of a directed model), else a Gibbs chain of 1000 sweeps from noise."""
    prior = hasattr(model, "prior_state")
    sleep = sampling.Sleep("prior" if prior else "noise", sampling.SampleOptions(sweeps=1 if prior else 1000))
    condition = Condition(batch_size=n, generator=torch.Generator().manual_seed(seed))
    return sleep.dream(model, condition).state[0]
