"""Checkpoints that a killed run resumes from: written atomically, read without running pickled code.

A run directory holds ``checkpoint.pt`` (the last complete epoch) and ``checkpoint_prev.pt``
(the one before it). Both are plain containers of tensors, numbers and strings, so they load
with ``torch.load(path, weights_only=True)``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("dynets")

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint_prev.pt"
FORMAT = 1  # raised when the layout of a checkpoint changes


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
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dynets checkpoint of format {FORMAT}")
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
