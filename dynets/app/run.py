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
import inspect
import logging
import os
import shlex
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from .. import diagnostics, sampling
from ..capabilities import Dreams, GibbsBlocked, Likelihood, Recognition, Reconstructs
from ..data import Dataset, Split, unlabelled
from ..models.base import DynamicalModel
from ..phases import Condition, UnconvergedError
from ..rules import ImplicitDifferentiation
from ..rules.base import Rule
from . import checkpoint, distributed, plots
from .fit import TrainingDiverged, fit, free_phase_metrics, layer_param_groups
from .loggers import JsonLinesLogger, flatten
from .options import HIDDEN_GONE, ConfigError, check_values, either, fitting, option, options

log = logging.getLogger("dynets")
# Config keys that may change when a run is resumed, without a warning.
RESUMABLE_CHANGES = ("resume", "trainer.epochs", "logger")
# Config groups that must not change when a run is resumed: the checkpoint's weights need
# its model, and other data (another split seed or fraction) moves samples between train,
# validation and test.
FIXED_ON_RESUME = {"model": "a different model", "data": "different data"}
PROBE = 64   # validation samples of the alignment probe and the settling plot
# The mistakes of a user, which scripts/train.py reports as one message (anything else is a bug
# and keeps its traceback): a config that does not fit (ConfigError, raised here for what the
# library's checks refuse while a group is built, for data too) and a checkpoint that does not
# fit the run or cannot be read (CheckpointError).
USER_ERRORS = (ConfigError, checkpoint.CheckpointError, TrainingDiverged, UnconvergedError)
SELF_SUPERVISED = ("model=readback with rule=ep or rule=chl; model=pc model.arrangement=generative rule=pc "
                   "rule.variant=unsupervised; model=helmholtz with rule=wake_sleep or rule=rws (binary data: "
                   "data=bars); model=boltzmann rule=boltzmann evaluate=likelihood")


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
        ConfigError: ``_target_`` names nothing importable, or the fields are not arguments
            of its target (a misspelt or missing option); the message names them.
    """
    if isinstance(node, list):
        return [instantiate(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    fields = {key: instantiate(value) for key, value in node.items() if key not in ("_target_", "_partial_")}
    if "_target_" not in node:
        return fields
    target, partial = locate(node["_target_"]), node.get("_partial_", False)
    check_arguments(target, fields, partial)
    return functools.partial(target, **fields) if partial else target(**fields)


def locate(path: str) -> Any:
    """The object at the dotted import path ``path`` (``module.attribute``)."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"_target_: {path!r} cannot be imported ({err}); check its spelling in the config") from err


def check_arguments(target, fields: Mapping[str, Any], partial: bool) -> None:
    """Raise :class:`ConfigError` unless ``target`` takes ``fields`` (all it needs, unless ``partial``)."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):   # a builtin without one: its call will tell
        return
    try:
        (signature.bind_partial if partial else signature.bind)(**fields)
    except TypeError as err:
        names = ", ".join(signature.parameters)
        raise ConfigError(f"{target.__name__} {err} (its options: {names}); check the config's keys") from err


def sized(config: Mapping[str, Any], data: Dataset, labelled: bool = True) -> dict[str, Any]:
    """``config`` with ``shape`` the data's sizes, ``features`` and ``classes`` (``None`` when the task
    has no labels), for images ``channels`` and ``in_size`` (C and H of ``(C, H, W)``, ``None`` for
    vectors), and the interpolations that read them resolved: a model's
    ``sizes: ["${shape.features}", 256, "${shape.classes}"]`` becomes ``[64, 256, 10]`` on digits.
    (``configs/train.yaml`` keeps them escaped until then: the data is known only here.)"""
    return OmegaConf.to_container(OmegaConf.create({**config, "shape": data_shape(data, labelled)}), resolve=True)


def data_shape(data: Dataset, labelled: bool = True) -> dict[str, int | None]:
    """The sizes a config's ``shape`` holds: ``features``, ``classes`` (``None`` without labels), and
    for ``(C, H, W)`` images ``channels`` = C and ``in_size`` = H (``None`` for vector data)."""
    image = len(data.sample_shape) == 3
    return {"features": data.n_features, "classes": data.n_classes if labelled else None,
            "channels": data.sample_shape[0] if image else None, "in_size": data.sample_shape[1] if image else None}


def build_model(node: Mapping[str, Any]) -> torch.nn.Module:
    """The model a (:func:`sized`) config node describes; a ``None`` size, the label layer of a task
    without labels, is no layer.

    Raises:
        ConfigError: the node says ``hidden`` (the old way), naming ``sizes`` (the new one).
    """
    if "hidden" in node:
        raise ConfigError(f"model.hidden: {HIDDEN_GONE}")
    sizes = node.get("sizes")
    return instantiate({**node, "sizes": [n for n in sizes if n is not None]} if sizes else node)


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
    ``trainer.device``, after checking the config's values (:func:`dynets.app.options.check_values`).

    ``task: self_supervised``: the labels are replaced by zeros before anything sees them and
    the model has no label layer.

    Raises:
        ConfigError: a value of the wrong type or unset; a group the library refuses to build
            (the message names the group's option); data the model cannot read; a rule that
            cannot train the model, or that needs labels under ``self_supervised`` (the
            message names the options that fit).
    """
    check_values(config)
    task = config.get("task", "supervised")
    torch.manual_seed(config["seed"])
    device = resolve_device(config["trainer"]["device"])
    with refused(option("data", config["data"])):
        data = instantiate(config["data"]).to(device)
    data = unlabelled(data) if task == "self_supervised" else data
    config = sized(config, data, labelled=task == "supervised")
    with refused(option("model", config["model"])):
        model = build_model(config["model"]).to(device)
    with refused(option("rule", config["rule"])):
        rule = instantiate(config["rule"])
    check_pair(config, model, rule)
    with refused(f"{option('model', config['model'])} on {option('data', config['data'])}"):
        data = data.shaped(model.in_shape)   # an MLP's (features,) flattens images; a conv net keeps them
        model.check_input(data.train.x)
    if task == "self_supervised" and not learns_without_labels(model, rule):
        raise ConfigError(f"task=self_supervised: {option('rule', config['rule'])} trains "
                          f"{option('model', config['model'])} from labels (its read-out is a label layer, or the "
                          f"rule clamps or nudges it toward one). The methods that learn without labels: {SELF_SUPERVISED}")
    groups = layer_param_groups(model, config["optimizer"]["lr"], config["trainer"]["layer_lrs"])
    with refused(option("optimizer", config["optimizer"])):
        optimizer = instantiate(config["optimizer"])(groups)
    return data, model, rule, optimizer


@contextmanager
def refused(name: str) -> Iterator[None]:
    """What the library refuses while ``name`` (an option, e.g. ``data=npz``) is built — a
    ValueError of its argument checks, a missing file or array — as a :class:`ConfigError` that
    names the option."""
    try:
        yield
    except (ValueError, KeyError, FileNotFoundError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{name}: {err.args[0] if err.args else err}") from err


def mismatch(model: DynamicalModel, rule: Rule) -> str | None:
    """Why ``rule`` cannot train ``model``, ``None`` when it can: the rule's own check
    (``Rule.check_model``), or a rule that trains a read-out toward a label (one that can train a
    model with a label layer) given a model with no label layer and no target of its own."""
    try:
        rule.check_model(model)
    except (TypeError, ValueError) as err:
        return str(err)
    inner = rule.wake if isinstance(getattr(rule, "wake", None), Rule) else rule   # SleepInterleaved
    needs_target = inner.needs_target
    own_target = type(model).target is not DynamicalModel.target   # e.g. the read-back model's input
    if needs_target and not (model.supervised or own_target):
        return f"{type(rule).__name__} trains a read-out toward a label, and {type(model).__name__} has no label layer"
    return None


def check_pair(config: Mapping[str, Any], model, rule) -> None:
    """Raise :class:`ConfigError` if ``rule`` cannot train ``model``, naming the ``rule=``
    options that train this model and the ``model=`` options this rule trains (``config``:
    :func:`sized`, so that the models of ``configs/model`` get the data's sizes)."""
    problem = mismatch(model, rule)
    if problem is None:
        return
    m, r = option("model", config["model"]), option("rule", config["rule"])
    rules = fitting(config, "rule", lambda node: mismatch(model, instantiate(node)) is None)
    models = fitting(config, "model", lambda node: mismatch(build_model(node), rule) is None)
    raise ConfigError(f"{r} cannot train {m} ({problem}). With {m} use {either(rules) or 'no rule of configs/rule'}; "
                      f"{r} trains {either(models) or 'no model of configs/model'}")


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
        raise ConfigError(f"resume={resume}: no {checkpoint.CHECKPOINT} there to continue from "
                          "(to start a new run, leave out resume=)")
    else:
        log.warning("resume: %s holds no checkpoint, starting at epoch 1 (to continue a run, pass "
                    "hydra.run.dir=<its directory> resume=true, or resume=<its directory>; in a multirun, the same "
                    "hydra.sweep.dir and overrides with resume=true)", run_dir)
    if distributed.is_main():
        checkpoint.truncate_metrics(run_dir / "metrics.jsonl", 0 if state is None else state["epoch"])
    return state


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
    x_probe, y_probe = data.val.x[:PROBE], data.val.y[:PROBE]
    # The exact gradient the probe compares with is that of a labelled loss: none for a generative
    # model, and none without labels.
    probes = [alignment_probe(rule, x_probe, y_probe)] if trainer["alignment"] and model.supervised and supervised else []
    summary = fit(model, rule, data, optimizer, epochs=trainer["epochs"], batch_size=trainer["batch_size"],
                  seed=config["seed"], evaluate=evaluate, select=select, goal=goal,
                  loggers=loggers, run_dir=run_dir, resume_from=state, config=dict(config), probes=probes,
                  scheduler=build_scheduler(config, optimizer))
    if distributed.is_main():
        write_plots(run_dir, model, Split(x_probe, y_probe), rule.settle, config["seed"])
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


def evaluations(model, labelled: bool, k: int | None = None) -> dict[str, str | None]:
    """For each evaluation of ``configs/evaluate``, why it cannot evaluate ``model`` (``None``: it can)."""
    # A discriminative PC net has the input below its errors, nothing that reconstructs it.
    reconstructs = isinstance(model, Reconstructs) and getattr(model, "arrangement", "generative") == "generative"
    return {"accuracy": None if labelled and model.supervised else
            "it has no label layer" if labelled else "task=self_supervised has no labels",
            "likelihood": None if isinstance(model, Likelihood) and (k is None or isinstance(model, Recognition))
            else "it has no likelihood to compute" if not isinstance(model, Likelihood) else
            "it has no recognition model to importance-sample with: leave evaluate.k=null",
            "reconstruction": None if reconstructs else "it does not reconstruct its input"}


def evaluation_name(node: Mapping[str, Any] | None) -> str:
    """The ``configs/evaluate`` option of a config's ``evaluate`` node (``None``: accuracy)."""
    if not node:
        return "accuracy"
    named = [name for name, spec in options("evaluate").items()
             if (spec.get("evaluate") or {}).get("_target_") == node.get("_target_")]
    return named[0] if named else str(node.get("_target_"))


def checked_evaluation(config: Mapping[str, Any], data: Dataset, model, rule, select: str, labelled: bool):
    """The run's evaluation (as :func:`evaluation`), once it is known to fit ``model`` (one of
    ``configs/evaluate``) and to give the metric ``select`` (tried on two validation samples),
    before any training.

    Raises:
        ConfigError: naming the ``evaluate=`` options that fit the model, or the metrics to select.
    """
    node = config.get("evaluate")
    name = evaluation_name(node)
    fits = evaluations(model, labelled, (node or {}).get("k"))
    if fits.get(name) is not None:
        good = [f"evaluate={n}" for n, why in fits.items() if why is None]
        raise ConfigError(f"evaluate={name} cannot evaluate {option('model', config['model'])} "
                          f"({fits[name]}): use {either(good) or 'another model'}")
    evaluate = evaluation(node, data)
    trial = evaluate or functools.partial(free_phase_metrics, settle=rule.settle)
    alone = set(getattr(evaluate, "model_metrics", ()))   # properties of the model, not of a split (fit)
    found = [metric if metric in alone else f"val_{metric}"
             for metric in trial(model, Split(data.val.x[:2], data.val.y[:2]))]
    if select not in found:
        raise ConfigError(f"trainer.select={select} is not a metric of evaluate={name} on "
                          f"{option('data', config['data'])}: select one of {', '.join(found)}, e.g. "
                          f"trainer.select={found[0]}")
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


def alignment_probe(rule, x: torch.Tensor, y: torch.Tensor):
    """Per-epoch cosine of the rule's update with the exact equilibrium gradient on a fixed
    validation batch, as ``align_cos/<parameter>`` metrics (the key plots read)."""
    reference = ImplicitDifferentiation(rule.settle, cost=rule.cost)   # the gradient of the loss the rule trains
    return lambda model: plots.alignment_metrics(diagnostics.alignment(model, rule, reference, x, y))


def write_plots(run_dir: Path, model, probe: Split, settle_options, seed: int = 0) -> None:
    """The run's PNGs: a model that dreams from noise or a prior (and has no label layer), its
    dreams and learning curves; any other, the settling of the ``probe`` inputs, learning
    curves, alignment and receptive fields. A failed plot is a warning, never the loss of a
    finished run."""
    try:
        if not model.supervised and isinstance(model, GibbsBlocked):
            paths = plots.plot_generative_run(run_dir, dreams(model, PROBE, seed))
        else:
            condition = model.prepare(Condition(probe.x, model.target(probe.y)))
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
