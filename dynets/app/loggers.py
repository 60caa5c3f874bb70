"""Where metrics go: a small ``Logger`` protocol with console, JSON-lines and wandb sinks."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("dynets")


class Logger(Protocol):
    """Started with the run's config and directory, then receives one dict of scalar
    metrics per epoch, then the run's summary."""

    def start(self, config: dict[str, Any], run_dir: Path) -> None: ...
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


def percent(fraction: float) -> str:
    """``fraction`` as a percentage with two significant digits (at least one decimal), never
    rounded to 0% or 100% unless it is exactly that: 0.00079 -> ``0.079%``, 0.058 -> ``5.8%``,
    0.996 -> ``99.6%``, 0.99996 -> ``99.996%``, 1 -> ``100%``."""
    value = 100 * fraction
    if value in (0.0, 100.0) or not math.isfinite(value):
        return f"{value:g}%"
    decimals = max(1, 1 - math.floor(math.log10(value)))
    while float(text := f"{value:.{decimals}f}") in (0.0, 100.0):
        decimals += 1
    return f"{text}%"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# What a person reads per epoch: the loss, the evaluation, the settle's steps, the time. The
# full metrics go to metrics.jsonl and wandb.
CONSOLE = ("train_loss", "train_accuracy", "val_accuracy", "val_reconstruction", "val_nll_bits", "kl_bits",
           "align_cos/all", "train_steps_free", "epoch_time_s", "settle_time_s", "optimizer_time_s")


class ConsoleLogger:
    """One short line per epoch through Python logging (hydra also copies it to the run's log
    file): the metrics of :data:`CONSOLE` that the epoch has, in that order."""

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        log.info("run directory %s", run_dir)

    def log(self, metrics: dict[str, float], step: int) -> None:
        log.info("epoch %d  %s", step, "  ".join(f"{k}={_fmt(metrics[k])}" for k in CONSOLE if k in metrics))

    def finish(self, summary: dict[str, Any]) -> None:
        log.info("summary  %s", "  ".join(f"{k}={_fmt(v)}" for k, v in summary.items()))


class JsonLinesLogger:
    """Appends one JSON object per epoch to ``path``, flushed line by line so a crash
    loses at most the epoch in progress."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        with self.path.open("a") as fh:
            fh.write(json.dumps({"epoch": step, **clean}) + "\n")
            fh.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        pass


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys: ``{"rule": {"beta": 0.5}}`` -> ``{"rule.beta": 0.5}``.

    Lists and other leaves stay values. These are the names of hydra overrides, and so of
    wandb sweep parameters (see :class:`WandbLogger`).
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        flat.update(flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


RUN_ID_FILE = "wandb_run_id"


def wandb_group(loggers: dict[str, Any], group: str) -> dict[str, Any]:
    """The config's ``logger`` node with its ``wandb`` logger's ``group`` set to ``group``,
    unless it names one (``+logger.wandb.group=null``: no group). The runs of one hydra
    multirun or Optuna search get their sweep directory as group, and wandb shows them
    together, also after ``wandb sync`` of offline runs."""
    if "wandb" not in loggers or "group" in loggers["wandb"]:
        return loggers
    return {**loggers, "wandb": {**loggers["wandb"], "group": group}}


class WandbLogger:
    """Logs to Weights & Biases: the composed config, one row of metrics per epoch, the
    summary, and at :meth:`finish` every PNG then in the run directory as the image
    ``plots/<stem>`` (at the last logged step). The run id is kept in
    ``<run_dir>/wandb_run_id``, so that a resumed training run continues its wandb run.

    Offline by default: the run is written to ``<run_dir>/wandb/offline-run-*`` and uploaded
    later with ``wandb sync``. The config is logged flat (:func:`flatten`): a wandb sweep sets
    and locks its parameters under their override names (``rule=ep``, ``rule.beta=0.1``), and
    would silently drop a nested ``rule`` dict that collides with its ``rule``.

    A logging sink never stops training. If ``wandb.init`` fails (server unreachable for
    ``init_timeout`` seconds, no API key, ...) it warns and falls back to an offline run, and
    to no wandb run if that fails too; a failing log, summary or finish call is a warning;
    the final upload waits at most ``finish_timeout`` seconds (the rest stays on disk for
    ``wandb sync``).

    Args:
        project: wandb project name (a sweep agent's runs go to the sweep's project).
        mode: ``offline`` (default: no network needed), ``online`` or ``disabled``.
        init_timeout: seconds ``wandb.init`` may wait for the server.
        finish_timeout: seconds ``finish`` may wait for the upload.
        init_kwargs: any further ``wandb.init`` arguments (``entity``, ``tags``, ``group``...).

    Raises:
        ImportError: wandb is not installed.
        ValueError: unknown ``mode``.
    """

    MODES = ("offline", "online", "disabled")

    def __init__(self, project: str = "dynets", mode: str = "offline", init_timeout: float = 30.0,
                 finish_timeout: float = 60.0, **init_kwargs: Any) -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown wandb mode {mode!r}; valid: {', '.join(self.MODES)}")
        try:
            import wandb
        except ImportError as err:
            raise ImportError("logger=wandb needs the wandb package: pip install wandb, or use logger=console") from err
        self.wandb, self.project, self.mode, self.init_kwargs = wandb, project, mode, init_kwargs
        self.settings = wandb.Settings(init_timeout=init_timeout, finish_timeout=finish_timeout)
        self.run, self.run_dir, self.step = None, Path("."), 0

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        """Start (or, in a run directory that had one, resume) the wandb run."""
        self.run_dir, self.step = Path(run_dir), 0
        id_file = self.run_dir / RUN_ID_FILE
        # A resumed run continues its wandb run; a new one lets wandb (or a sweep agent) pick the id.
        resume = {"id": id_file.read_text().strip(), "resume": "allow"} if id_file.exists() else {}
        for mode in dict.fromkeys((self.mode, "offline")):
            self.run = _warn_on_error(f"wandb.init(mode={mode!r})", self.wandb.init, project=self.project,
                                      mode=mode, config=flatten(config), dir=str(run_dir),
                                      settings=self.settings, **resume, **self.init_kwargs)
            if self.run is not None:
                id_file.write_text(self.run.id + "\n")
                return
        log.warning("wandb is off for this run; metrics.jsonl and summary.json still have everything")

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.step = step
            _warn_on_error("wandb log", self.run.log, metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        images = _warn_on_error("wandb.Image", self._plots) or {}
        # Commit the last row before the summary: committed later, at finish, its values
        # would overwrite the summary's (the best epoch's val_accuracy, a sweep's metric).
        _warn_on_error("wandb log of plots", self.run.log, images, step=self.step, commit=True)
        _warn_on_error("wandb summary", self.run.summary.update, summary)
        _warn_on_error("wandb finish", self.run.finish)
        self.run = None

    def _plots(self) -> dict[str, Any]:
        return {f"plots/{p.stem}": self.wandb.Image(str(p)) for p in sorted(self.run_dir.glob("*.png"))}


def _warn_on_error(what: str, fn, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or ``None`` after a warning if it raises."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # any wandb failure (network, server, internal) must leave training running
        log.warning("%s failed, training goes on: %s: %s", what, type(err).__name__, err)
        return None
