"""One table for every rule: the same data split, network sizes, epochs and batch size for each (a
row may name its own epochs and batch size, shown in the table), and
the same measurements (the test metric over seeds: accuracy, or a generative model's KL in
bits; per-layer alignment with the exact gradient at init and at the end, where there is
one; time per epoch; settle steps per phase).

Hydra-free: ``scripts/compare.py`` builds the :class:`Entry` objects from configs.
"""
from __future__ import annotations

import csv
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import diagnostics
from ..capabilities import SeparateFeedback
from ..data import Dataset
from ..models.base import DynamicalModel
from ..phases import UnconvergedError
from ..rules import ImplicitDifferentiation, Rule
from ..settle import SettleOptions
from ..app.fit import fit

log_fields = ("steps_free", "steps_nudged_+", "steps_nudged_-", "steps_clamped")


@dataclass
class Entry:
    """One row of the table: how to build the model and its rule for a seed (after
    ``torch.manual_seed(seed)``; one with a generator of its own takes the seed), its optimizer,
    its own number of epochs (``None``: the table's; a rule that learns more slowly than the
    others may be given more, and the table says so), its own batch size (``None``: the table's;
    shown in the table too) and its learning-rate schedule, built on the optimizer (``None``: a
    constant rate; stepped after every epoch by :func:`~dynets.app.fit.fit`)."""

    model: Callable[[int], DynamicalModel]
    rule: Callable[[int], Rule]
    optimizer: Callable[[list], torch.optim.Optimizer]
    epochs: int | None = None
    scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None
    batch_size: int | None = None


class _Collect:
    """A logger keeping every epoch's metrics in memory, and telling ``progress`` (if given) of each
    epoch under ``label``: a run of hours shows how it goes before its row is written."""

    def __init__(self, progress: Callable[[str], None] | None = None, label: str = "") -> None:
        self.epochs: list[dict[str, float]] = []
        self.progress, self.label = progress, label

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.epochs.append(dict(metrics))
        if self.progress is not None:
            shown = {k: v for k, v in metrics.items() if k.startswith("val_") or k in ("epoch_time_s", "train_loss")
                     or k[len("train_"):] in log_fields}
            self.progress(f"{self.label} epoch {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))

    def finish(self, summary: dict[str, Any]) -> None:
        pass


def layer_cosines(model: DynamicalModel, rule: Rule, reference: Rule, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Cosine of the rule's update with the reference gradient, per weight matrix (``W<l>``)
    and for all parameters together (``all``); NaN where it is undefined (a zero side).
    Feedback weights (an ``Asymmetric`` model's ``feedback.*``) are left out: the rules that
    train them aim at Wᵀ or at inverting the forward pass, not at the loss's gradient."""
    feedback = tuple(name for name, _ in model.named_parameters() if name.startswith("feedback."))
    aligned = diagnostics.alignment(model, rule, reference, x, y, exclude=feedback)
    weights = [name for name in aligned if name.endswith("weight")]
    out = {f"W{i}": aligned[name]["cosine"] for i, name in enumerate(weights)}
    out["all"] = aligned["all"]["cosine"]
    return out


def probe_cosines(model: DynamicalModel, rule: Rule, reference: Rule | None, x: torch.Tensor,
                  y: torch.Tensor) -> dict[str, float]:
    """:func:`layer_cosines`, or none (``{}``, with a warning) where there is no reference or either
    side's phases do not settle on the probe: a measurement that cannot be made must not discard the
    trained run it measures."""
    if reference is None:
        return {}
    try:
        return layer_cosines(model, rule, reference, x, y)
    except UnconvergedError as error:
        warnings.warn(f"alignment probe left out (cosine columns empty for this run): {error}", stacklevel=2)
        return {}


@dataclass(frozen=True)
class Metric:
    """What the table reports and selects each run's epoch by: ``val_<name>`` of the evaluation
    (``None``: fit's default, the free phase's accuracy), toward ``goal``. A supervised table
    also measures each rule's alignment with the exact gradient."""

    name: str = "accuracy"
    goal: str = "maximize"
    evaluate: Callable | None = None

    @property
    def percent(self) -> bool:
        return self.name == "accuracy"


def run_entry(name: str, entry: Entry, data: Dataset, *, epochs: int, batch_size: int, seed: int,
              probe: int, reference_settle: SettleOptions, adjoint_max_steps: int = 5000,
              metric: Metric = Metric(), progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train one rule with one seed for ``entry.epochs`` in batches of ``entry.batch_size``, or
    ``epochs`` and ``batch_size`` where the entry has none;
    its measurements as a flat dict. The exact gradient is implicit differentiation at the free
    equilibrium of the rule's own cost (supervised models only: a generative model has no labelled
    loss to differentiate), on ``probe`` validation samples (0: no probe, no cosine columns: on a
    large net its adjoint solve can take longer than an epoch). ``progress``, if given, is told of
    every epoch's validation metrics, time and settle steps."""
    epochs, batch_size = entry.epochs or epochs, entry.batch_size or batch_size
    torch.manual_seed(seed)
    model, rule = entry.model(seed), entry.rule(seed)
    data = data.shaped(model.in_shape)   # an MLP reads images flattened, a conv net as they are
    optimizer = entry.optimizer(list(model.parameters()))
    reference = ImplicitDifferentiation(reference_settle, adjoint_max_steps=adjoint_max_steps,
                                       cost=rule.cost) if model.supervised and probe > 0 else None
    x, y = data.val.x[:probe], data.val.y[:probe]
    at_init = probe_cosines(model, rule, reference, x, y)
    collect = _Collect(progress, f"{name} seed {seed}")
    own = metric.name in getattr(metric.evaluate, "model_metrics", ())   # the model's alone (KL): no split
    scheduler = entry.scheduler(optimizer) if entry.scheduler else None
    summary = fit(model, rule, data, optimizer, epochs=epochs, batch_size=batch_size, seed=seed, loggers=[collect],
                  scheduler=scheduler, evaluate=metric.evaluate, select=metric.name if own else f"val_{metric.name}", goal=metric.goal)
    at_end = probe_cosines(model, rule, reference, x, y)
    test, val = (summary[metric.name],) * 2 if own else (summary[f"test_{metric.name}"], summary[f"val_{metric.name}"])
    row: dict[str, Any] = {"rule": name, "seed": seed, f"test_{metric.name}": test,
                           f"val_{metric.name}": val, "best_epoch": summary["best_epoch"], "epochs": epochs,
                           "batch_size": batch_size, "epoch_time_s": summary["wall_time_s"] / epochs}
    if isinstance(model, SeparateFeedback) and model.own_feedback:   # B of its own: how far from Wᵀ
        row["feedback_angle"] = max(model.feedback_angles())
    row.update({f"cos_init_{k}": v for k, v in at_init.items()})
    row.update({f"cos_end_{k}": v for k, v in at_end.items()})
    for key in log_fields:
        values = [m[f"train_{key}"] for m in collect.epochs if f"train_{key}" in m]
        if values:
            row[key] = float(np.mean(values))
    return row


def compare(entries: dict[str, Entry], data: Dataset, *, epochs: int, batch_size: int, seeds: list[int],
            probe: int = 64, reference_settle: SettleOptions | None = None, adjoint_max_steps: int = 5000,
            metric: Metric = Metric(), progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every entry trained with every seed; one row per (rule, seed), with ``test_<metric>``.
    ``reference_settle`` and ``adjoint_max_steps`` set the exact gradient's free settle and
    its adjoint solve (:class:`~dynets.rules.ImplicitDifferentiation`)."""
    reference_settle = reference_settle or SettleOptions(method="fast_euler", atol=1e-6, max_time=400)
    rows = []
    for name, entry in entries.items():
        for seed in seeds:
            t0 = time.perf_counter()
            rows.append(run_entry(name, entry, data, epochs=epochs, batch_size=batch_size, seed=seed,
                                  probe=probe, reference_settle=reference_settle,
                                  adjoint_max_steps=adjoint_max_steps, metric=metric, progress=progress))
            progress(f"{name} seed {seed}: test {metric.name} {rows[-1][f'test_{metric.name}']:.4f} "
                     f"({time.perf_counter() - t0:.1f} s)")
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rule: mean ± std over seeds of the test metric (the row's ``test_<metric>``); means of the rest."""
    out = []
    for name in dict.fromkeys(r["rule"] for r in rows):
        mine = [r for r in rows if r["rule"] == name]
        key = next(k for k in mine[0] if k.startswith("test_"))
        test = np.array([r[key] for r in mine])
        line: dict[str, Any] = {"rule": name, "seeds": len(mine), "test_mean": test.mean(),
                                "test_std": test.std(ddof=1) if len(test) > 1 else 0.0}
        keys = [k for k in mine[0] if k not in ("rule", "seed", key)]
        for k in keys:
            values = [r[k] for r in mine if k in r]
            line[k] = float(np.nanmean(values)) if values and not all(math.isnan(v) for v in values) else math.nan
        out.append(line)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown(summary: list[dict[str, Any]], metric: Metric = Metric()) -> str:
    """The summary as a Markdown table: the test metric, the epochs and batch size (where the rows say),
    cosines at init → end, time, steps, and for networks with separate feedback the largest
    angle between a B_l and W_lᵀ at the end."""
    cos_keys = sorted({k[len("cos_init_"):] for s in summary for k in s if k.startswith("cos_init_")})
    steps = [k for k in log_fields if any(k in s for s in summary)]
    epochs = any("epochs" in s for s in summary)   # rows from run_entry; absent in older CSVs
    batch = any("batch_size" in s for s in summary)
    head = ["rule", "test acc. (mean ± std)" if metric.percent else f"test {metric.name} (mean ± std)"] + \
        ["epochs"] * epochs + ["batch"] * batch + [f"cos {k} init → end" for k in cos_keys] + ["s / epoch"] + [f"steps {k[6:]}" for k in steps]
    angles = any("feedback_angle" in s for s in summary)
    head += ["B–Wᵀ angle end (°)"] if angles else []
    scale, digits = (100, 2) if metric.percent else (1, 3)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [s["rule"], f"{scale * s['test_mean']:.{digits}f} ± {scale * s['test_std']:.{digits}f} (n={s['seeds']})"]
        cells += [f"{s.get('epochs', math.nan):g}"] if epochs else []
        cells += [f"{s.get('batch_size', math.nan):g}"] if batch else []
        cells += [f"{_fmt(s.get(f'cos_init_{k}', math.nan))} → {_fmt(s.get(f'cos_end_{k}', math.nan))}" for k in cos_keys]
        cells += [f"{s['epoch_time_s']:.2f}"] + [_fmt(s.get(k, math.nan)) if k in s else "—" for k in steps]
        cells += [f"{s['feedback_angle']:.1f}" if "feedback_angle" in s else "—"] if angles else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """``rows`` as a CSV file at ``path`` (its folder made if missing), one column per key any row has."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write(rows: list[dict[str, Any]], out_dir: str | Path, metric: Metric = Metric()) -> dict[str, Path]:
    """``compare.csv`` (one row per rule and seed), ``compare.md`` (the summary table) and
    ``compare.png`` (the test metric, and the final alignment where measured, per rule) in ``out_dir``."""
    out_dir = write_csv(rows, Path(out_dir) / "compare.csv").parent
    summary = summarise(rows)
    (out_dir / "compare.md").write_text(markdown(summary, metric))
    return {"csv": out_dir / "compare.csv", "md": out_dir / "compare.md",
            "png": _plot(summary, out_dir / "compare.png", metric)}


def _plot(summary: list[dict[str, Any]], path: Path, metric: Metric) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["rule"] for s in summary]
    aligned = any("cos_end_all" in s for s in summary)
    fig, axes = plt.subplots(1, 2 if aligned else 1, figsize=(9 if aligned else 4.5, 3.5), squeeze=False)
    a = axes[0][0]
    scale = 100 if metric.percent else 1
    a.bar(names, [scale * s["test_mean"] for s in summary], yerr=[scale * s["test_std"] for s in summary], capsize=4)
    if metric.percent:
        a.set_ylabel("test accuracy (%)")
        a.set_ylim(max(0.0, min(100 * s["test_mean"] for s in summary) - 5), 100)
    else:
        a.set_ylabel(f"test {metric.name}")
    if aligned:
        b = axes[0][1]
        b.bar(names, [s.get("cos_end_all", math.nan) for s in summary])
        b.set_ylabel("cosine with the exact gradient (end)")
        b.set_ylim(-0.1, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
