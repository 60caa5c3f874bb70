"""A free-running network learning a task by perturbation with eligibility traces (Miconi 2017):
the training loop over trials, the paper's criterion, and the learning curves."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import torch

from ..data.dnms import Trials
from ..rules import write_grads
from ..rules.eligibility import EligibilityTrace


def learn(model: torch.nn.Module, rule: EligibilityTrace, task: Trials, trials: int,
          progress: Callable[[str], None] | None = None, every: int = 500) -> torch.Tensor:
    """Train ``model`` by ``rule`` for ``trials`` trials, cycling through the task's trial types
    (trial n is type n mod kinds, as in the published code); every row of the batch (a network of
    the population) runs the same type.

    Args:
        model: a free-running network; its batch is its number of networks.
        rule: the learning rule; its change is applied by SGD with lr = 1 (W ← W + ΔW).
        task: the trial types.
        trials: the number of trials.
        progress: called with a line every ``every`` trials.
        every: trials between progress lines.

    Returns:
        ``(trials, rows)`` each trial's error (mean |output − target| over the scored steps),
        measured on the perturbed trial that learned from it.
    """
    rows = model.get_parameter("weight").shape[0]
    optimizer = torch.optim.SGD([model.get_parameter("weight")], lr=1.0)
    errors = torch.empty(trials, rows)
    kinds = len(task.names)
    for n in range(trials):
        kind = torch.full((rows,), n % kinds)
        x, y = task.batch(kind)
        update = rule.update(model, x, y, kind)
        write_grads(model, update.grads)
        optimizer.step()
        errors[n] = rule.last_error
        if progress and (n + 1) % every == 0:
            recent = errors[max(0, n + 1 - every):n + 1]
            progress(f"trial {n + 1}: median error over the last {len(recent)} trials by network "
                     f"{[round(v, 3) for v in recent.median(0).values.tolist()]}")
    return errors


def criterion(errors: torch.Tensor, window: int = 100, fraction: float = 0.95, threshold: float = 1.0) -> list[int | None]:
    """The trial at which each network reaches Miconi 2017's criterion (Fig. 1B): at least
    ``fraction`` of ``window`` successive trials "correct", a trial being correct when its error
    is below ``threshold``. The count of trials up to the end of the first such window (``None``
    if never).

    Args:
        errors: ``(trials, rows)`` the errors of each trial.
        window: the number of successive trials.
        fraction: the fraction of them that must be correct.
        threshold: the error below which a trial is correct.
    """
    correct = (errors < threshold).float()
    if len(correct) < window:
        return [None] * errors.shape[1]
    counts = correct.unfold(0, window, 1).sum(-1)   # (trials − window + 1, rows)
    met = counts >= fraction * window - 1e-9
    return [int(met[:, b].nonzero()[0]) + window if met[:, b].any() else None for b in range(errors.shape[1])]


def write(errors: torch.Tensor, out_dir: str | Path, labels: list[str], title: str) -> dict[str, Path]:
    """``eligibility.csv`` (every trial's error per network), ``eligibility.md`` (the criterion per
    network and the errors of the last 500 trials) and ``eligibility.png`` (the learning curves).

    Args:
        errors: ``(trials, rows)``.
        out_dir: the folder written to.
        labels: a name per network (its seed).
        title: the plot's title.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "eligibility.csv", "md": out / "eligibility.md", "png": out / "eligibility.png"}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", *labels])
        writer.writerows([[n + 1, *(f"{v:.5f}" for v in row)] for n, row in enumerate(errors.tolist())])
    paths["md"].write_text(markdown(errors, labels))
    plot(errors, labels, title, paths["png"])
    return paths


def markdown(errors: torch.Tensor, labels: list[str]) -> str:
    """The table of the criterion trial and the final errors, one row per network."""
    reached, tail = criterion(errors), errors[-500:]
    lines = [f"| network | trials to criterion | median error, last {len(tail)} trials | mean error, last {len(tail)} | "
             f"correct (error < 1), last {len(tail)} |", "|---|---|---|---|---|"]
    for b, label in enumerate(labels):
        lines.append(f"| {label} | {reached[b] if reached[b] is not None else 'not reached'} | "
                     f"{tail[:, b].median().item():.3f} | {tail[:, b].mean().item():.3f} | "
                     f"{(tail[:, b] < 1).float().mean().item():.1%} |")
    return "\n".join(lines) + "\n"


def plot(errors: torch.Tensor, labels: list[str], title: str, path: Path) -> None:
    """Two panels against the trial: each network's error (mean over the last 100 trials) with the
    median over networks of each trial's error (Miconi 2017, Fig. 1B: the median over runs), and
    each network's fraction of correct trials (error < 1) over the last 100, the criterion's 95 %
    marked; dotted lines where each network reaches the criterion."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = min(100, len(errors))
    mean = lambda v: v.unfold(0, window, 1).mean(-1)   # over the last `window` trials
    trial = torch.arange(window, len(errors) + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True)
    top.plot(torch.arange(1, len(errors) + 1), errors.median(1).values, color="0.75", lw=0.3,
             label="median over networks, each trial")
    for b, (label, reached) in enumerate(zip(labels, criterion(errors))):
        line, = top.plot(trial, mean(errors[:, b]), lw=0.9, label=f"{label} (criterion at {reached or 'never'})")
        bottom.plot(trial, mean((errors[:, b] < 1).float()), lw=0.9, color=line.get_color())
        for ax in (top, bottom):
            if reached is not None:
                ax.axvline(reached, color=line.get_color(), ls=":", lw=0.8)
    top.set(ylabel=f"error (mean of {window} trials)", title=title, ylim=(0, 2))
    top.legend(fontsize=7)
    bottom.axhline(0.95, color="k", lw=0.6)
    bottom.set(xlabel="trial", ylabel=f"correct (error < 1), last {window}", ylim=(0, 1.02))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
