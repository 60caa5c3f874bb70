"""The recall study: recall success against the load α = P/N of an associative memory,
for Hebbian storage alone, storage followed by sleep unlearning, and the dense memory.

Hydra-free: ``scripts/recall.py`` builds the memories, rules and monitor from ``configs/recall.yaml``
(which composes ``configs/memory``).
A row is one (variant, α, seed). Recall is measured after the fact by a
:class:`~dynets.rules.memory.RecallMonitor` with its own cue seed (``1000 + seed``),
never with the cues the sleep rule's stop rule watched.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..data import patterns
from ..models.memory import AssociativeMemory, DenseAssociativeMemory
from ..rules import write_grads
from ..rules.memory import HebbianSleep, HebbianStorage, RecallMonitor
from .compare import write_csv

Variant = Callable[[torch.Tensor, int], tuple[torch.nn.Module, dict[str, Any]]]
"""``(patterns, seed) -> (memory, facts)``: a memory holding the patterns, and what it
took (dreams, stop reason)."""


def hebbian_memory(memory: Callable[[int], AssociativeMemory], storage: HebbianStorage) -> Variant:
    """Storage alone: ``memory(N)`` (an empty memory of N units) given W = (1/N) Σ ξξᵀ by
    ``storage`` and SGD with lr = 1."""
    def build(xi: torch.Tensor, seed: int) -> tuple[AssociativeMemory, dict[str, Any]]:
        model = memory(xi.shape[1])
        write_grads(model, storage.update(model, xi).grads)
        torch.optim.SGD(model.parameters(), lr=1.0).step()
        return model, {}
    return build


def slept_memory(store: Variant, sleep: Callable[..., HebbianSleep], epsilon: float, max_calls: int) -> Variant:
    """``store``, then the sleep rule ``sleep(seed=<the row's seed>)`` with SGD at lr = ε until
    its stop rule halts it or ``max_calls`` calls."""
    def build(xi: torch.Tensor, seed: int) -> tuple[AssociativeMemory, dict[str, Any]]:
        model, _ = store(xi, seed)
        rule = sleep(seed=seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=epsilon)
        calls = 0
        while calls < max_calls and rule.stopped is None:
            write_grads(model, rule.update(model, xi).grads)
            optimizer.step()
            calls += 1
        dreams = rule.dreams * (calls - (rule.stopped is not None))   # the stopping call dreams nothing
        return model, {"dreams": dreams, "stopped": rule.stopped or "max_calls"}
    return build


def dense_memory(dense: Callable[[torch.Tensor], DenseAssociativeMemory]) -> Variant:
    """``dense(patterns)``: a :class:`DenseAssociativeMemory` with the patterns as its memories."""
    def build(xi: torch.Tensor, seed: int) -> tuple[DenseAssociativeMemory, dict[str, Any]]:
        return dense(xi), {}
    return build


def study(n: int, alphas: list[float], seeds: list[int], variants: dict[str, Variant], monitor: RecallMonitor,
          progress: Callable[[str], None] = lambda line: None) -> list[dict[str, Any]]:
    """One row per variant, load α (P = round(αN) patterns from ``dynets.data.patterns``) and
    seed: ``recall`` and ``stable`` fractions measured by ``monitor`` (cue seed 1000 + seed),
    the variant's facts, and the wall time of building the memory."""
    rows = []
    for alpha in alphas:
        for seed in seeds:
            xi = patterns(max(1, round(alpha * n)), n, seed=seed)
            for name, build in variants.items():
                start = time.perf_counter()
                model, facts = build(xi, seed)
                seconds = time.perf_counter() - start
                measured = replace(monitor, seed=1000 + seed)(model, xi)
                rows.append({"variant": name, "alpha": alpha, "patterns": len(xi), "seed": seed, **measured,
                             **facts, "seconds": round(seconds, 2)})
                progress(f"{name} alpha={alpha:g} seed={seed}: recall {measured['recall']:.2f} "
                         f"stable {measured['stable']:.2f} {facts} {seconds:.1f}s")
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[float, float]]:
    """``{variant: {α: mean recall over seeds}}``."""
    out: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        out.setdefault(r["variant"], {}).setdefault(r["alpha"], []).append(r["recall"])
    return {v: {a: float(np.mean(x)) for a, x in by_alpha.items()} for v, by_alpha in out.items()}


def markdown(rows: list[dict[str, Any]]) -> str:
    """Mean recall success per α (rows) and variant (columns), and the mean dreams of sleep runs."""
    summary = summarise(rows)
    names, alphas = list(summary), sorted({a for s in summary.values() for a in s})
    dreams = {}
    for r in rows:
        if "dreams" in r:
            dreams.setdefault(r["alpha"], []).append(r["dreams"])
    head = ["α", *names] + (["dreams (mean)"] if dreams else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in alphas:
        cells = [f"{a:g}", *(f"{summary[v][a]:.2f}" if a in summary[v] else "" for v in names)]
        cells += [f"{np.mean(dreams[a]):.0f}"] if a in dreams else ([""] if dreams else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict[str, Any]], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """``recall.csv`` (every row), ``recall.md`` (the table) and ``recall.png`` (the curves, titled ``title``)."""
    out_dir = write_csv(rows, Path(out_dir) / "recall.csv").parent
    (out_dir / "recall.md").write_text(markdown(rows))
    return {"csv": out_dir / "recall.csv", "md": out_dir / "recall.md", "png": _plot(rows, out_dir / "recall.png", title)}


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Recall success against α, one curve per variant (Agg canvas: no pyplot state)."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for name, by_alpha in summarise(rows).items():
        alphas = sorted(by_alpha)
        ax.plot(alphas, [by_alpha[a] for a in alphas], marker="o", label=name)
    ax.set_xlabel("load α = P/N")
    ax.set_ylabel("recall success")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(-0.03, 1.03)
    ax.legend()
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120)
    return path
