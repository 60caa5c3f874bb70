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


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class ConsoleLogger:
    """One line per epoch through Python logging (hydra also copies it to the run's log file)."""

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        log.info("run directory %s", run_dir)

    def log(self, metrics: dict[str, float], step: int) -> None:
        log.info("epoch %d  %s", step, "  ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if k != "epoch"))

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


class WandbLogger:
    """Logs to Weights & Biases, offline by default (sync later with ``wandb sync``).

    Args:
        project: wandb project name.
        mode: ``offline`` (default: no network needed), ``online`` or ``disabled``.
        init_kwargs: any further ``wandb.init`` arguments (``entity``, ``tags``, ``group``...).

    The run starts in :meth:`start`, with the composed config, in the run directory.
    """

    MODES = ("offline", "online", "disabled")

    def __init__(self, project: str = "dynets", mode: str = "offline", **init_kwargs: Any) -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown wandb mode {mode!r}; valid: {', '.join(self.MODES)}")
        try:
            import wandb
        except ImportError as err:
            raise ImportError("logger=wandb needs the wandb package: pip install wandb, or use logger=console") from err
        self.wandb, self.project, self.mode, self.init_kwargs = wandb, project, mode, init_kwargs
        self.run = None

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        self.run = self.wandb.init(project=self.project, mode=self.mode, config=config, dir=str(run_dir),
                                   **self.init_kwargs)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(summary)
        self.run.finish()
