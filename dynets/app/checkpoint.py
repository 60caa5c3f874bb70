"""Checkpoints that a killed run resumes from: written atomically, read without running pickled code.

A run directory holds ``checkpoint.pt`` (the last complete epoch) and ``checkpoint_prev.pt``
(the one before it). Both are plain containers of tensors, numbers and strings, so they load
with ``torch.load(path, weights_only=True)``.

A resumed run draws the random numbers the uninterrupted run would have drawn: a checkpoint
holds the state of torch's global CPU generator, of the CUDA one (once CUDA is in use), of
the batch order, and of every ``torch.Generator`` the rule owns as an attribute
(:func:`dynets.rules.base.generators`): a stochastic rule that draws from e.g. ``self.generator`` is resumed
exactly with nothing more to write.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .distributed import gather, rank_and_size

log = logging.getLogger("dynets")

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint_prev.pt"
FORMAT = 2  # raised when the layout of a checkpoint changes


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that does not fit the run resuming from it."""


def save(state: dict[str, Any], run_dir: str | os.PathLike) -> Path:
    """Write ``state`` (plus ``format``) to ``run_dir/checkpoint.pt``; return its path.

    It goes to ``checkpoint.pt.tmp`` first; then the current ``checkpoint.pt`` becomes
    ``checkpoint_prev.pt`` and the new file takes its name (``os.replace``, atomic). A crash
    at any moment leaves the last complete checkpoint under one of the two names.
    """
    path = Path(run_dir) / CHECKPOINT
    tmp = path.with_name(CHECKPOINT + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    if path.exists():
        os.replace(path, path.with_name(PREVIOUS))
    os.replace(tmp, path)
    return path


def read(path: str | os.PathLike) -> dict[str, Any]:
    """One checkpoint file, loaded with ``weights_only=True`` onto the CPU.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated, corrupt, holds pickled objects other than
            tensors and plain containers, or is not a dynets checkpoint; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    # torch.load fails with zip, pickle, EOF or unpickler-policy errors: all mean an unusable file.
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated or corrupt "
                              f"({type(err).__name__}: {reason})") from err
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path} is not a dynets checkpoint")
    if state["format"] != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state['format']} and this dynets reads format "
                              f"{FORMAT}: resume it with the dynets version that wrote it, or start a new run")
    return state


def load(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The latest readable checkpoint of ``run_dir``: ``checkpoint.pt``, else
    ``checkpoint_prev.pt`` with a warning naming what was wrong. ``None`` if neither exists.

    Raises:
        CheckpointError: files exist but none can be read; the message names each file,
            its problem and what to do.
    """
    run_dir = Path(run_dir)
    candidates = [run_dir / CHECKPOINT, run_dir / PREVIOUS]
    if not any(p.exists() for p in candidates):
        return None
    problems = []
    for path in candidates:
        try:
            state = read(path)
        except (FileNotFoundError, CheckpointError) as err:
            problems.append(str(err))
            continue
        if problems:
            log.warning("%s; resuming from %s (epoch %d), the checkpoint before it", "; ".join(problems), path,
                        state["epoch"])
        return state
    raise CheckpointError("; ".join(problems) + f". No usable checkpoint in {run_dir}: put a good {CHECKPOINT} "
                          "there (e.g. from a backup), or start the run again without resume")


def model_signature(model: torch.nn.Module) -> dict[str, Any]:
    """The model's class and parameter shapes: what a checkpoint's weights need from the model loading them."""
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}",
            "parameters": {name: list(p.shape) for name, p in model.named_parameters()}}


def check_model(saved: dict[str, Any], model: torch.nn.Module, source: str) -> None:
    """Raise :class:`CheckpointError` listing every difference between the ``saved``
    :func:`model_signature` (from ``source``) and ``model``'s."""
    now = model_signature(model)
    diffs = [f"class {saved['class']} vs {now['class']}"] if saved["class"] != now["class"] else []
    old, new = saved["parameters"], now["parameters"]
    diffs += [f"{name} shape {old.get(name, 'absent')} vs {new.get(name, 'absent')}"
              for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
    if diffs:
        raise CheckpointError(f"{source} was written by a different model ({'; '.join(diffs)}; checkpoint vs now). "
                              "Resume with the model of that run, or start a new run")



def rng_state(streams: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """The state of every random stream of the run, each a list over processes in rank order:
    torch's global CPU generator (``torch``), the current CUDA device's (``cuda``, once CUDA is
    initialized: a run that has not touched CUDA drew nothing from it), and ``streams``
    (``generators``, by name)."""
    state = {"torch": gather(torch.get_rng_state()),
             "generators": {name: gather(g.get_state()) for name, g in streams.items()}}
    if torch.cuda.is_initialized():
        state["cuda"] = gather(torch.cuda.get_rng_state())
    return state


def set_rng_state(state: Mapping[str, Any], streams: Mapping[str, torch.Generator], source: str) -> None:
    """Restore what :func:`rng_state` saved, each process its rank's states. Warns, naming
    ``source``, when the draws cannot repeat the original run's: another number of processes
    (each then takes rank 0's states), or a stream in only one of the checkpoint and ``streams``
    (it starts afresh). A CUDA state is restored where CUDA is available."""
    rank, size = rank_and_size()
    if len(state["torch"]) != size:
        log.warning("%s was saved by %d processes and resumes on %d: random draws of the rules (if any) "
                    "will not repeat the original run's", source, len(state["torch"]), size)
    mine = lambda states: states[rank] if len(states) == size else states[0]
    torch.set_rng_state(mine(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine(state["cuda"]))
    saved = state["generators"]
    unmatched = sorted(set(saved) ^ set(streams))
    if unmatched:
        log.warning("%s: the random streams %s are in only one of the checkpoint and the run; they start "
                    "afresh, so their draws will not repeat the original run's", source, ", ".join(unmatched))
    for name in set(saved) & set(streams):
        streams[name].set_state(mine(saved[name]))


def truncate_metrics(path: str | os.PathLike, last_epoch: int) -> int:
    """Cut a JSON-lines metrics file after the line of ``last_epoch`` (and at a half-written
    line), so that a run resumed from that epoch logs no epoch twice. Rewritten atomically;
    a missing file stays missing. Returns the number of lines kept."""
    path = Path(path)
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text().splitlines():
        try:
            epoch = json.loads(line)["epoch"]
        except (ValueError, KeyError, TypeError):  # the line a killed run was writing
            break
        if epoch > last_epoch:
            break
        kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
    return len(kept)
