"""The config as a user writes it: its mistakes, told in the names of its options (hydra-free).

A run's config is plain data in the layout of ``configs/train.yaml``. :class:`ConfigError` is
a mistake in it (a value of the wrong type, a mandatory ``???`` left unset, a model and a rule
or an evaluation that do not fit, data a model cannot read): ``scripts/train.py`` prints its
message alone and exits with status 1, where any other exception is a bug and keeps its
traceback. :func:`check_values` checks the types before anything is built; :func:`option`
names a built node by its option (``rule=implicit``), matching the ``_target_`` of the YAML
files in ``configs/<group>/``; :func:`fitting` lists the options of a group that pass a test.
"""
from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from .loggers import flatten

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MISSING = "???"   # OmegaConf's mandatory value, as OmegaConf.to_container leaves it
TASKS = ("supervised", "self_supervised")
# A model's YAML names all its sizes, the constructor's argument; its ends read the data.
HIDDEN_GONE = ("a model's sizes are model.sizes, the constructor's argument, [input, hidden..., labels] with the "
               "ends read from the data: model.sizes.1=512 widens the first hidden layer, "
               "'model.sizes=[${shape.features},512,256,${shape.classes}]' sets them all")
# Overrides of an older config layout, and what replaced them (see renamed).
RENAMED = {"model.hidden": HIDDEN_GONE,
           "hidden": ("the table's sizes are sizes, [input, hidden..., labels] with the ends read from the data: "
                      "sizes.1=512 widens the first hidden layer, 'sizes=[${shape.features},512,${shape.classes}]' "
                      "sets them all"),
           "model.feedback": ("the word now means only an Asymmetric model's feedback weights B: which B it has is "
                              "model.feedback_mode=random, tied or learned; the Helmholtz machine's wake-phase "
                              "lambda is model.feedback_gain")}


class ConfigError(ValueError):
    """A mistake in the run's config; the message names the option to set."""


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _device(value) -> bool:
    if value == "auto":
        return True
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        return False
    return True


# dotted key: (test, what a valid value is). Keys the app reads itself; the library classes
# check their own arguments when they are built.
SCHEMA: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (_whole, "a whole number"),
    "task": (lambda v: v in TASKS, " or ".join(TASKS)),
    "resume": (lambda v: isinstance(v, (bool, str)), "true, false or a run directory"),
    "trainer.epochs": (lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    "trainer.batch_size": (lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    "trainer.layer_lrs": (lambda v: v is None or isinstance(v, list) and all(_number(x) and x > 0 for x in v),
                          "null or a list of positive learning rates, one per layer, e.g. [4e-3,1e-3]"),
    "trainer.alignment": (lambda v: isinstance(v, bool), "true or false"),
    "trainer.device": (_device, "auto, cpu, cuda or cuda:<index>"),
    "trainer.summary_train_rows": (lambda v: v is None or _whole(v) and v >= 1,
                                   "a whole number >= 1 or null (the whole training split)"),
    "trainer.sync_timing": (lambda v: isinstance(v, bool), "true or false"),
    "trainer.select": (lambda v: isinstance(v, str) and v != "",
                       "a validation metric val_<name> (e.g. val_accuracy) or a metric of the model (kl_bits)"),
    "trainer.goal": (lambda v: v in ("maximize", "minimize"), "maximize or minimize"),
    "optimizer.lr": (lambda v: _number(v) and v > 0, "a positive number"),
}


def check_values(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for a mandatory value left unset (``???``), naming the
    override that sets it, or a value of :data:`SCHEMA` of the wrong type or range."""
    flat = flatten(dict(config))
    unset = [key for key, value in flat.items() if value == MISSING]
    if unset:
        raise ConfigError("no value for " + ", ".join(unset) + ": set it on the command line, e.g. "
                          + " ".join(f"{key}=<value>" for key in unset))
    for key, (valid, what) in SCHEMA.items():
        if key in flat and not valid(flat[key]):
            raise ConfigError(f"{key}={flat[key]!r}: expected {what}")


@functools.cache
def options(group: str) -> dict[str, dict[str, Any]]:
    """The options of ``configs/<group>/`` as written (interpolations unresolved), by name, with
    the options they include from a group by their defaults list (``- /rule@wake: wake_sleep``:
    rule=sleep's wake rule); none where the package has no configs folder beside it."""
    folder = CONFIGS / group
    return {path.stem: _option(group, path.stem) for path in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


@functools.cache
def _option(group: str, name: str) -> dict[str, Any]:
    node = OmegaConf.to_container(OmegaConf.load(CONFIGS / group / f"{name}.yaml"), resolve=False)
    included = {}
    for entry in node.pop("defaults", []):
        key, choice = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
        other, _, package = key.lstrip("/").partition("@")
        if key.startswith("/") and package and (CONFIGS / other / f"{choice}.yaml").is_file():
            included[package] = _option(other, choice)   # the overrides of another group's choice are left out
    return {**included, **node}


def option(group: str, node: Mapping[str, Any]) -> str:
    """``<group>=<name>``: the option whose ``_target_`` is ``node``'s (of several, the one that
    agrees with ``node`` on the most fields); ``<group>._target_=<target>`` when none has it."""
    target = node.get("_target_")
    named = {name: spec for name, spec in options(group).items() if spec.get("_target_") == target}
    if not named:
        return f"{group}._target_={target}"
    agree = lambda name: sum(node.get(k) == v for k, v in named[name].items())
    return f"{group}={max(named, key=agree)}"


def resolved(config: Mapping[str, Any], group: str, name: str) -> dict[str, Any]:
    """The option ``name`` of ``group`` as plain data, its interpolations (``${seed}``,
    ``${settle.step_size}``) resolved against ``config``."""
    referred = {ref.split(".")[0] for ref in re.findall(r"\$\{([\w.]+)\}", str(options(group)[name]))} - {group}
    return copy.deepcopy(_resolved(group, name, json.dumps({key: config[key] for key in referred if key in config})))


@functools.lru_cache(maxsize=256)
def _resolved(group: str, name: str, referred: str) -> dict[str, Any]:
    """:func:`resolved` given the JSON of the top-level keys the option refers to (OmegaConf
    wraps whatever it is given, slowly: only those, and each combination once)."""
    root = OmegaConf.create(json.loads(referred) | {group: options(group)[name]})
    return OmegaConf.to_container(root[group], resolve=True)


def fitting(config: Mapping[str, Any], group: str, fits: Callable[[dict[str, Any]], bool]) -> list[str]:
    """The options ``<group>=<name>`` whose resolved node passes ``fits`` (one that raises
    ValueError or TypeError does not)."""
    def passes(name: str) -> bool:
        try:
            return fits(resolved(config, group, name))
        except (ValueError, TypeError):
            return False
    return [f"{group}={name}" for name in options(group) if passes(name)]


def renamed(overrides: list[str]) -> str | None:
    """The message for the first of ``overrides`` (command-line ``key=value``) that sets a key of
    :data:`RENAMED`, naming what replaced it; ``None`` when there is none."""
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        if key in RENAMED:
            return f"{override}: {key} is gone: {RENAMED[key]}"
    return None


def either(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
