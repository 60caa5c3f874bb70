"""Build a run from its config: data, model, rule, optimizer, schedule and evaluation.

A run is described by its composed config as plain data (nested dicts and lists, as
``OmegaConf.to_container(cfg, resolve=True)`` gives; the layout of ``configs/train.yaml``):
:func:`instantiate` builds what a node names, :func:`build` the run's objects after checking
that they fit each other, :func:`checked_evaluation` the evaluation that selects its epoch.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from omegaconf import OmegaConf

from ..capabilities import Likelihood, Recognition, Reconstructs
from ..data import Dataset, Split, unlabelled
from ..models.base import DynamicalModel
from ..precision import device_precision
from ..rules.base import Rule
from .fit import free_phase_metrics, layer_param_groups
from .loggers import flatten
from .options import HIDDEN_GONE, ConfigError, check_values, either, fitting, option, options

SELF_SUPERVISED = ("model=readback with rule=ep or rule=chl; model=pc model.arrangement=generative rule=pc "
                   "rule.variant=unsupervised; model=helmholtz with rule=wake_sleep or rule=rws (binary data: "
                   "data=bars); model=boltzmann rule=boltzmann evaluate=likelihood")
METHODS_THAT_FIT = ("generative predictive coding (PredictiveCoding with arrangement='generative', "
                    "PredictiveCodingRule with variant='unsupervised'); ReadBackHopfield with "
                    "EquilibriumPropagation or ContrastiveHebbian; Helmholtz with WakeSleep; "
                    "any of these inside SleepInterleaved")


def learns_without_labels(model, rule) -> bool:
    """Whether ``rule`` trains ``model`` without reading a label: a model with no label layer
    (``supervised = False``), or a rule that needs no target (``Rule.needs_target``: e.g. generative
    predictive coding's ``unsupervised`` variant; :meth:`Rule.check_model` refuses the pairs it cannot train)."""
    return not model.supervised or not rule.needs_target


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
    check_precisions(config, device)
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


def check_precisions(config: Mapping[str, Any], device: torch.device) -> None:
    """Check the ``precision`` of each settle the config names against ``device`` before training
    (:func:`dynets.precision.device_precision`): one the device cannot honour is a
    :class:`ConfigError` naming the option; ``tf32`` off an NVIDIA GPU is logged once as a
    warning and runs in fp32. The top-level ``settle`` is named before the copies nested in
    the rule (``rule.settle``), which are the same option."""
    flat = flatten(dict(config))
    nodes = [key.removesuffix("._target_") for key, value in flat.items()
             if key.endswith("._target_") and value == "dynets.SettleOptions"]
    for node in sorted(nodes, key=lambda key: (key.count("."), key)):
        precision = flat.get(f"{node}.precision", "fp32")
        with refused(f"{node}.precision={precision}"):
            device_precision(precision, device)


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
    needs_target = rule.needs_target
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
