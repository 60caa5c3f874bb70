"""The cost of a training epoch against backprop's (issue 22): two runs of the app in one process.

``scripts/bench.py --families fashion_epochs`` trains the main job's Fashion-MNIST setting
(``+experiment=fashion``: 784-512-10, hard sigmoid, centered EP, batch 50, Adam 5e-4, 3 epochs) and
backprop through the same-size feed-forward net (the same hard sigmoid, the same squared error, batch,
optimizer and epochs), one after the other, and reads each epoch's wall time and its settle and
optimizer sections from the runs' ``metrics.jsonl``. Unlike a step's benchmark this includes what an
epoch also does: batching, the per-epoch validation, the optimizer's bookkeeping.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..app.builder import resolve_device
from ..app.plots import read_metrics
from ..app.run import train


def epoch_cost(configs: Mapping[str, Mapping[str, Any]], label: str, root: str | os.PathLike | None = None) -> dict:
    """Train each of ``configs`` (composed ``configs/train.yaml`` as plain data, ``backprop`` among
    them) in a run directory of its own under ``root`` (a temporary one if ``None``); the JSON line:
    per run, the epochs' wall times (``epoch_time_<name>``), settle and optimizer sections
    (``settle_time_<name>``, ``optimizer_time_<name>``), the test
    accuracy at the best validation epoch, and each run's total epoch time over backprop's
    (``ratio_vs_backprop_<name>``).

    Args:
        configs: name → composed config; one must be named ``backprop``.
        label: the line's ``config``, e.g. ``fashion_epochs 784-512-10/b50``.
        root: where the run directories go.
    """
    device = resolve_device(next(iter(configs.values()))["trainer"]["device"]).type
    line = {"device": device, "threads": torch.get_num_threads(), "config": label}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in configs.items():
            run_dir = Path(root or tmp) / name
            summary = train(config, run_dir)
            rows = read_metrics(run_dir / "metrics.jsonl")
            for key in ("epoch_time_s", "settle_time_s", "optimizer_time_s"):
                line[f"{key[:-2]}_{name}"] = [round(row[key], 3) for row in rows]
            line[f"test_accuracy_{name}"] = summary["test_accuracy"]
    total = {name: sum(line[f"epoch_time_{name}"]) for name in configs}
    line.update({f"ratio_vs_backprop_{name}": total[name] / total["backprop"] for name in configs if name != "backprop"})
    return line
