"""Resuming a run: the checkpoint it continues from, and the config changes it may make."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import checkpoint, distributed
from .loggers import flatten
from .options import ConfigError

log = logging.getLogger("dynets")
# Config keys that may change when a run is resumed, without a warning.
RESUMABLE_CHANGES = ("resume", "trainer.epochs", "logger")
# Config groups that must not change when a run is resumed: the checkpoint's weights need
# its model, and other data (another split seed or fraction) moves samples between train,
# validation and test.
FIXED_ON_RESUME = {"model": "a different model", "data": "different data"}


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
