"""The training loop. It knows nothing of hydra: every argument is a plain object."""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .data import Dataset, Split
from .logging import Logger
from .models.base import DynamicalModel
from .rules.base import Rule
from .settle import SettleOptions
from .types import Condition

log = logging.getLogger("dynets")


def layer_param_groups(model: torch.nn.Module, lr: float, layer_lrs: Sequence[float] | None = None) -> list[dict]:
    """Optimizer parameter groups: one per top-level layer (``layers.<i>``) with its own
    learning rate when ``layer_lrs`` is given, else one group at ``lr``."""
    if layer_lrs is None:
        return [{"params": list(model.parameters()), "lr": lr}]
    groups: dict[str, list] = {}
    for name, p in model.named_parameters():
        groups.setdefault(".".join(name.split(".")[:2]), []).append(p)
    if len(layer_lrs) != len(groups):
        raise ValueError(f"layer_lrs has {len(layer_lrs)} rates but the model has {len(groups)} layers ({', '.join(groups)})")
    return [{"params": ps, "lr": float(r)} for ps, r in zip(groups.values(), layer_lrs)]


@torch.no_grad()
def evaluate(model: DynamicalModel, split: Split, settle: SettleOptions, batch_size: int = 512) -> dict[str, float]:
    """Accuracy of the free-phase read-out on ``split``; mean settle steps; converged fraction."""
    correct = steps = converged = 0.0
    for x, y in split.batches(batch_size, shuffle=False):
        eq = settle(model, Condition(x))
        correct += (model.output(eq.state).argmax(1) == y).sum().item()
        steps += eq.steps * len(y)
        converged += eq.converged_fraction * len(y)
    n = len(split)
    return {"accuracy": correct / n, "steps": steps / n, "converged": converged / n}


def _atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file, then rename: a crash never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _train_epoch(model, rule, optimizer, split: Split, batch_size: int, generator: torch.Generator) -> dict[str, float]:
    totals: dict[str, float] = {}
    for x, y in split.batches(batch_size, shuffle=True, generator=generator):
        metrics = rule.grads(model, x, y)
        optimizer.step()
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + v * len(y)
    return {f"train_{k}": v / len(split) for k, v in totals.items()}


def fit(model: DynamicalModel, rule: Rule, data: Dataset, optimizer: torch.optim.Optimizer, *,
        epochs: int, batch_size: int, seed: int = 0, eval_settle: SettleOptions | None = None,
        loggers: Sequence[Logger] = (), run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train ``model`` with ``rule`` for ``epochs`` epochs; select the epoch with the best
    validation accuracy (never test); return the summary.

    Each epoch goes to every logger; with ``run_dir``, ``checkpoint.pt`` (model, optimizer,
    epoch) is rewritten atomically every epoch and ``summary.json`` at the end.
    ``eval_settle`` defaults to the rule's free-phase settle options. The summary holds
    ``train/val/test_accuracy`` (of the selected epoch), ``best_epoch``, ``epochs``,
    ``mean_settle_steps`` (free phase, training) and ``wall_time_s``.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    eval_settle = eval_settle or rule.settle
    generator = torch.Generator().manual_seed(seed)
    run_dir = Path(run_dir) if run_dir is not None else None
    start, best, best_val, steps_sum = time.perf_counter(), None, -1.0, 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        metrics = _train_epoch(model, rule, optimizer, data.train, batch_size, generator)
        val = evaluate(model, data.val, eval_settle)
        metrics.update(val_accuracy=val["accuracy"], epoch_time_s=time.perf_counter() - t0)
        steps_sum += metrics["train_steps_free"]
        if metrics["train_converged"] < 1.0:
            log.warning("epoch %d: %.1f%% of free/nudged settles reached the tolerance; raise settle.max_time "
                        "or loosen settle.atol", epoch, 100 * metrics["train_converged"])
        if val["accuracy"] > best_val:
            best_val, best = val["accuracy"], (epoch, copy.deepcopy(model.state_dict()))
        for logger in loggers:
            logger.log(metrics, epoch)
        if run_dir is not None:
            _atomic_save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()},
                         run_dir / "checkpoint.pt")
    best_epoch, state = best
    model.load_state_dict(state)
    summary = {f"{name}_accuracy": evaluate(model, getattr(data, name), eval_settle)["accuracy"]
               for name in ("train", "val", "test")}
    summary.update(best_epoch=best_epoch, epochs=epochs, mean_settle_steps=steps_sum / epochs,
                   wall_time_s=time.perf_counter() - start)
    if run_dir is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for logger in loggers:
        logger.finish(summary)
    return summary
