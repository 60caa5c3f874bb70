"""How perturbation learning scales with the network: the cosine of node- and weight-
perturbation estimates with the exact gradient against the number p of perturbed
quantities and the number of probes, their variance, and training curves on a dataset
against other rules. Hydra-free: ``scripts/perturbation_scaling.py`` is the entry point.

Theory (Werfel, Xie & Seung 2005): an estimate from one probe, (g·z)z with z ~ N(0, I_p),
has cosine |g·z|/(‖g‖‖z‖) with g, whose mean is Γ(p/2)/(√π Γ((p+1)/2)) ≈ √(2/(πp)); its
relative squared error ‖ĝ − g‖²/‖g‖² has mean (p + 1)/K for K probes.
"""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .compare import Entry
from ..data import Dataset
from ..models import LayeredHopfield
from ..rules import ImplicitDifferentiation
from ..rules.perturbation import NodePerturbation, WeightPerturbation
from ..settle import SettleOptions
from ..app.fit import fit

RULES = {"np": NodePerturbation, "wp": WeightPerturbation}


def single_probe_cosine(p: int) -> float:
    """Mean cosine of a one-probe estimate with the gradient, p perturbed quantities."""
    return math.exp(math.lgamma(p / 2) - math.lgamma((p + 1) / 2)) / math.sqrt(math.pi)


def _grads(model: torch.nn.Module, rule, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    return rule.update(model, x, y).grads


def _flat(grads: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([grads[n].flatten() for n in names])


def _spaces(model: LayeredHopfield, rule: str) -> dict[str, tuple[list[str], int]]:
    """Where a rule's estimate is compared: ``{space: (parameter names, p)}``. Node
    perturbation's estimate of the drive sensitivities is its bias update (the noise enters
    the drive as the bias does), with p = the units; every estimate is compared on all weights."""
    names = [n for n, _ in model.named_parameters()]
    units = sum(model.sizes[1:])
    if rule == "np":
        return {"drives": ([n for n in names if n.endswith("bias")], units), "weights": (names, units)}
    return {"weights": (names, sum(q.numel() for q in model.parameters()))}


def cosine_rows(data: Dataset, *, widths: list[int], probes: list[int], samples: int, sigma: float,
                settle: SettleOptions, reference: ImplicitDifferentiation, seed: int = 0,
                progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """For each hidden width (a float64 ``LayeredHopfield([in, width, out])`` with the
    sigmoid, at its seeded init) and each rule and number of probes K: over ``samples``
    training samples, one at a time, the estimate's cosine with the exact gradient of that
    sample (mean and std) and its relative squared error ‖ĝ − g‖²/‖g‖² (mean)."""
    x, y = data.train.x[:samples].double(), data.train.y[:samples]
    rows = []
    for width in widths:
        torch.manual_seed(seed)
        model = LayeredHopfield([data.n_features, width, data.n_classes], "sigmoid").double()
        exact = [_grads(model, reference, x[i:i + 1], y[i:i + 1]) for i in range(samples)]
        for name, cls in RULES.items():
            for k in probes:
                t0, rule = time.perf_counter(), cls(sigma, k, seed=seed, settle=settle)
                estimates = [_grads(model, rule, x[i:i + 1], y[i:i + 1]) for i in range(samples)]
                for space, (names, p) in _spaces(model, name).items():
                    rows.append(_cosine_row(name, space, width, p, k, estimates, exact, names))
                progress(f"cosine: {name} width {width} K={k}: {rows[-1]['cos_mean']:.3f} ({time.perf_counter() - t0:.1f} s)")
    return rows


def _cosine_row(rule: str, space: str, width: int, p: int, k: int, estimates: list, exact: list,
                names: list[str]) -> dict[str, Any]:
    cos, err = [], []
    for est, ref in zip(estimates, exact):
        a, b = _flat(est, names), _flat(ref, names)
        cos.append((a @ b / (a.norm() * b.norm())).item())
        err.append(((a - b).norm() / b.norm()).item() ** 2)
    return {"section": "cosine", "rule": rule, "space": space, "width": width, "p": p, "probes": k,
            "samples": len(cos), "cos_mean": float(np.mean(cos)), "cos_std": float(np.std(cos, ddof=1)),
            "cos_theory": single_probe_cosine(p) if k == 1 else math.sqrt(k / (k + p + 1)),
            "cos_x_sqrt_p": float(np.mean(cos)) * math.sqrt(p) if k == 1 else math.nan,
            "rel_sq_error": float(np.mean(err)), "rel_sq_error_theory": (p + 1) / k}


class _Epochs:
    """A logger keeping every epoch's metrics and the wall time at which it ended."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.t0 = time.perf_counter()

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.epochs.append({**metrics, "wall_s": time.perf_counter() - self.t0})


def training_rows(entries: dict[str, Entry], data: Dataset, *, epochs: int, batch_size: int, seed: int = 0,
                  progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Each entry trained with the same seed, split and batches: per epoch the validation
    accuracy, the mean training loss and the wall time so far; the selected epoch's test
    accuracy on every row of that rule."""
    rows = []
    for name, entry in entries.items():
        torch.manual_seed(seed)
        model, rule = entry.model(), entry.rule()
        log = _Epochs()
        summary = fit(model, rule, data, entry.optimizer(list(model.parameters())), epochs=epochs,
                      batch_size=batch_size, seed=seed, loggers=[log])
        for epoch, m in enumerate(log.epochs, 1):
            rows.append({"section": "training", "rule": name, "epoch": epoch, "val_accuracy": m["val_accuracy"],
                         "train_loss": m["train_loss"], "wall_s": m["wall_s"],
                         "test_accuracy": summary["test_accuracy"]})
        progress(f"training: {name}: test {summary['test_accuracy']:.4f} ({summary['wall_time_s']:.1f} s)")
    return rows


def epochs_to(rows: list[dict[str, Any]], rule: str, accuracy: float) -> float:
    """The first epoch at which ``rule``'s validation accuracy reaches ``accuracy`` (NaN: never)."""
    hits = [r["epoch"] for r in rows if r.get("section") == "training" and r["rule"] == rule and r["val_accuracy"] >= accuracy]
    return float(min(hits)) if hits else math.nan


def markdown(rows: list[dict[str, Any]], accuracy: float = 0.9) -> str:
    """The study's tables: the single-probe law, every (rule, width, K) cell, the training runs."""
    cos = [r for r in rows if r["section"] == "cosine"]
    out = ["| rule | space | width | p | cosine (K=1, mean ± std) | theory Γ-law | cosine·√p |", "|" + "---|" * 7]
    out += [f"| {r['rule']} | {r['space']} | {r['width']} | {r['p']} | {r['cos_mean']:.4f} ± {r['cos_std']:.4f} | "
            f"{r['cos_theory']:.4f} | {r['cos_x_sqrt_p']:.2f} |" for r in cos if r["probes"] == 1]
    out += ["", "| rule | space | width | p | K | cosine | √(K/(K+p+1)) | ‖ĝ−g‖²/‖g‖² | (p+1)/K |", "|" + "---|" * 9]
    out += [f"| {r['rule']} | {r['space']} | {r['width']} | {r['p']} | {r['probes']} | {r['cos_mean']:.4f} | "
            f"{r['cos_theory']:.4f} | {r['rel_sq_error']:.4g} | {r['rel_sq_error_theory']:.4g} |" for r in cos]
    train = [r for r in rows if r["section"] == "training"]
    out += ["", f"| rule | test accuracy | best val accuracy | epochs to {100 * accuracy:.0f} % val | wall time (s) |",
            "|" + "---|" * 5]
    for name in dict.fromkeys(r["rule"] for r in train):
        mine = [r for r in train if r["rule"] == name]
        first = epochs_to(train, name, accuracy)
        out.append(f"| {name} | {100 * mine[-1]['test_accuracy']:.2f} % | {100 * max(r['val_accuracy'] for r in mine):.2f} % | "
                   f"{'never' if math.isnan(first) else int(first)} | {mine[-1]['wall_s']:.1f} |")
    return "\n".join(out) + "\n"


def write(rows: list[dict[str, Any]], out_dir: str | Path, name: str = "perturbation_scaling") -> dict[str, Path]:
    """``<name>.csv`` (every row, blank where a field does not apply), ``<name>.md`` and
    ``<name>.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "md", "png")}
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(dict.fromkeys(k for r in rows for k in r)), restval="")
        writer.writeheader()
        writer.writerows(rows)
    paths["md"].write_text(markdown(rows))
    _plot(rows, paths["png"])
    return paths


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cos = [r for r in rows if r["section"] == "cosine"]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    ps = np.array(sorted({r["p"] for r in cos}), dtype=float)
    if len(ps):
        grid = np.geomspace(ps.min() / 1.5, ps.max() * 1.5)
        a.fill_between(grid, 0.5 / np.sqrt(grid), 2 / np.sqrt(grid), color="0.9", label="1/√p within a factor 2")
        a.plot(grid, 1 / np.sqrt(grid), "k-", lw=1, label="1/√p")
        a.plot(grid, [single_probe_cosine(p) for p in grid], "k--", lw=1, label="Γ-law ≈ 0.8/√p")
    for (rule, space), mark in zip(dict.fromkeys((r["rule"], r["space"]) for r in cos), "osd^"):
        mine = [r for r in cos if (r["rule"], r["space"]) == (rule, space)]
        one = sorted((r for r in mine if r["probes"] == 1), key=lambda r: r["p"])
        sem = [r["cos_std"] / math.sqrt(r["samples"]) for r in one]   # the std itself reaches 0 on a log axis
        a.errorbar([r["p"] for r in one], [r["cos_mean"] for r in one], sem, fmt=mark, capsize=3,
                   label=f"{rule} ({space}), mean ± s.e.")
        b.loglog([r["rel_sq_error_theory"] for r in mine], [r["rel_sq_error"] for r in mine], mark, label=f"{rule} ({space})")
    a.set(xscale="log", yscale="log", xlabel="p (perturbed units or weights)", ylabel="cosine with the exact gradient",
          title="one probe (K = 1)")
    a.legend(fontsize=8)
    if cos:
        lim = [min(r["rel_sq_error_theory"] for r in cos) / 2, max(r["rel_sq_error_theory"] for r in cos) * 2]
        b.plot(lim, lim, "k-", lw=1, label="theory (p+1)/K")
    b.set(xlabel="(p + 1) / K", ylabel="‖ĝ − g‖² / ‖g‖²", title="relative squared error, every width and K")
    b.legend(fontsize=8)
    train = [r for r in rows if r["section"] == "training"]
    for name in dict.fromkeys(r["rule"] for r in train):
        mine = [r for r in train if r["rule"] == name]
        c.plot([r["epoch"] for r in mine], [100 * r["val_accuracy"] for r in mine], "-", label=name)
    c.set(xlabel="epoch", ylabel="validation accuracy (%)", title="training")
    c.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
