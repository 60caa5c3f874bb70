"""Does sleep make perturbation learning practical? (issue 23; hydra-free).

A Helmholtz machine (Hinton, Dayan, Frey & Neal 1995) learns its generative weights G by the wake
delta rule in every method; what differs is how its recognition network R learns
(:class:`~dynets.rules.SleepInterleaved` with a learner of :mod:`dynets.rules.recognition`):

- ``ws``: wake-sleep, the delta rule on dreams (= the exact gradient of −log q(cause | dream));
- ``np_sleep`` / ``wp_sleep``: node / weight perturbation on dreams, the dream's cause the target;
- ``np_wake``: node perturbation on data only, scored by the reconstruction
  −Σ_l log p(m_l | m_{l+1}) of the data through R, then G (no label, no dream);
- ``exact_wake``: the exact gradient (autograd) of that data objective.

Each run is plain SGD on batches drawn with replacement; at log-spaced steps it records the
data samples used, the sleep steps, the training wall time (evaluation excluded) and the
measure: the exact KL(data ‖ model) in bits on bars (:func:`dynets.likelihood.kl_bits`), or on
binarised digits the test accuracy of a linear probe (:func:`dynets.studies.probe.linear_probe`,
one weight decay, 10⁻³, to keep the many evaluations cheap) of the recognised code (the hidden
rates of R's mean-field pass). Labels enter only the probe.
"""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..data import Dataset, Split
from ..likelihood import kl_bits
from ..models import Helmholtz
from ..phases import Condition
from ..rules import SleepInterleaved, WakeSleep
from .probe import accuracy, linear_probe

Row = dict[str, Any]


def checkpoints(steps: int, points: int = 12) -> list[int]:
    """0 and ``points`` log-spaced steps from steps/64 to ``steps``."""
    return sorted({0, *(int(round(s)) for s in np.geomspace(max(steps / 64, 1), steps, points))})


def code(model: Helmholtz, x: torch.Tensor) -> torch.Tensor:
    """``(n, hidden)`` the recognised code: every hidden layer's rate in R's mean-field pass (the
    settled state of the model's recognition dynamics at λ = 0)."""
    return torch.cat(model.init_state(Condition(x)), 1)


def measure(model: Helmholtz, data: Dataset, task: str) -> float:
    """KL bits (bars: needs ``data.distribution``) or the linear probe's test accuracy (any other)."""
    if task == "bars":
        return kl_bits(model, data.distribution)
    encoded = [Split(code(model, s.x), s.y) for s in (data.train, data.val, data.test)]
    probe = linear_probe(encoded[0], encoded[1], data.n_classes, weight_decays=(1e-3,), max_iter=100)
    return accuracy(probe.predict(encoded[2].x), encoded[2].y)


def train(model: Helmholtz, rule: SleepInterleaved, data: Dataset, task: str, *, steps: int, batch_size: int,
          lr: float, seed: int) -> list[Row]:
    """SGD on ``model`` by ``rule``; a row per checkpoint: step, data_samples, sleep_steps,
    dreams, wall_s (training only), value."""
    generator, x, rows = torch.Generator().manual_seed(seed), data.train.x, []
    wall, sleeps, marks = 0.0, 0, checkpoints(steps)
    for step in range(steps + 1):
        if step in marks:
            rows.append(dict(step=step, data_samples=step * batch_size, sleep_steps=sleeps,
                             dreams=sleeps * (rule.dreams or batch_size), wall_s=wall, value=measure(model, data, task)))
        if step == steps:
            break
        start = time.perf_counter()
        batch = x[torch.randint(len(x), (batch_size,), generator=generator)]
        update = rule.update(model, batch)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in update.grads:
                    p.sub_(lr * update.grads[name])
        sleeps += update.metrics["sleeps"]
        wall += time.perf_counter() - start
    return rows


def run(task: str, data: Dataset, methods: dict[str, dict[str, Any]], *, sizes: list[int], steps: int,
        batch_size: int, lr: float, seeds: list[int], build: Callable[[Any, int], Any],
        progress: Callable[[str], None] = print) -> list[Row]:
    """Every method on ``task`` for each seed: the rows of :func:`train`.

    Args:
        task: ``bars`` (KL) or another name (linear probe).
        data: its dataset (binary, flat).
        methods: ``{name: {ratio, sleep_learner?, wake_learner?, lr?, steps?}}``, each learner a
            config node that ``build`` makes.
        sizes: the Helmholtz machine's layer sizes.
        steps: SGD steps (a method's ``steps`` wins).
        batch_size: data samples per step.
        lr: learning rate (a method's ``lr`` wins).
        seeds: each run's model, rule and batch seed.
        build: ``build(node, seed)``, the learner of a config node (``None`` for ``None``).
        progress: called with a line per run.
    """
    rows = []
    for name, method in methods.items():
        for seed in seeds:
            model = Helmholtz(sizes, seed=seed)
            rule = SleepInterleaved(WakeSleep(seed=seed), ratio=method.get("ratio", 1.0), seed=seed,
                                    sleep_learner=build(method.get("sleep_learner"), seed),
                                    wake_learner=build(method.get("wake_learner"), seed + 1000))
            curve = train(model, rule, data, task, steps=method.get("steps", steps), batch_size=batch_size,
                          lr=method.get("lr", lr), seed=seed)
            rows += [dict(task=task, method=name, seed=seed, **r) for r in curve]
            progress(f"{task} {name} seed {seed}: {curve[-1]['value']:.4f} after {curve[-1]['step']} steps, "
                     f"{curve[-1]['wall_s']:.1f} s")
    return rows


def mean_curve(rows: list[Row], task: str, method: str, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The checkpoints' ``x`` (mean over seeds), and the value's mean and std over seeds."""
    mine = [r for r in rows if r["task"] == task and r["method"] == method]
    steps = sorted({r["step"] for r in mine})
    at = [[r for r in mine if r["step"] == s] for s in steps]
    xs = np.array([np.mean([r[x] for r in a]) for a in at])
    values = [np.array([r["value"] for r in a]) for a in at]
    return xs, np.array([v.mean() for v in values]), np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])


def first_reach(rows: list[Row], task: str, method: str, x: str, level: float, better: Callable) -> float:
    """``x`` where the mean value first reaches ``level`` (or better), interpolated linearly between
    the checkpoints either side of the crossing; NaN: never."""
    xs, mean, _ = mean_curve(rows, task, method, x)
    for i, m in enumerate(mean):
        if better(m, level):
            if i == 0:
                return float(xs[0])
            return float(np.interp(level, *((mean[i - 1:i + 1], xs[i - 1:i + 1]) if mean[i] > mean[i - 1]
                                             else (mean[i - 1:i + 1][::-1], xs[i - 1:i + 1][::-1]))))
    return math.nan


def _better(task: str) -> Callable[[float, float], bool]:
    return (lambda v, level: v <= level) if task == "bars" else (lambda v, level: v >= level)


def targets(rows: list[Row]) -> list[str]:
    """The issue's two targets, measured on the mean curves over seeds (a sentence each, for every
    ``np_sleep*`` method)."""
    out = []
    bars = list(dict.fromkeys(r["method"] for r in rows if r["task"] == "bars"))
    out += [_bars_target(rows, m) for m in bars if m.startswith("np_sleep") and "ws" in bars]
    methods = list(dict.fromkeys(r["method"] for r in rows if r["task"] == "digits"))
    for sleep in (m for m in methods if m.startswith("np_sleep")):
        wake = "np_wake" + sleep.removeprefix("np_sleep")   # np_sleep_k16 against np_wake_k16
        out.append(_digits_target(rows, sleep, wake if wake in methods else "np_wake"))
    return out


def _bars_target(rows: list[Row], sleep: str) -> str:
    """The sleep steps ``sleep`` needs to reach wake-sleep's final mean KL, against wake-sleep's."""
    steps, ws, _ = mean_curve(rows, "bars", "ws", "sleep_steps")
    reach = first_reach(rows, "bars", sleep, "sleep_steps", ws[-1], _better("bars"))
    head = f"bars: wake-sleep reaches {ws[-1]:.3f} bits after {steps[-1]:.0f} sleep steps; {sleep}"
    if not math.isnan(reach):
        return f"{head} reaches it after {reach:.0f} sleep steps ({reach / steps[-1]:.2f}x; target <= 1.5x)"
    end = mean_curve(rows, "bars", sleep, "sleep_steps")
    return f"{head} does not within {end[0][-1]:.0f} ({end[0][-1] / steps[-1]:.2f}x): it ends at {end[1][-1]:.3f} bits"


def _digits_target(rows: list[Row], sleep: str, wake: str) -> str:
    """The data samples node perturbation with dreams (``sleep``) and on data alone (``wake``) need
    to reach the best mean probe accuracy both reach."""
    best = {m: mean_curve(rows, "digits", m, "data_samples")[1] for m in (sleep, wake)}
    level, start = min(b.max() for b in best.values()), best[wake][0]
    if level <= start:
        return (f"digits: {sleep} and {wake} do not both improve on the untrained code's probe accuracy "
                f"{start:.3f} (best means: {sleep} {best[sleep].max():.3f}, {wake} {best[wake].max():.3f})")
    n_sleep, n_wake = (first_reach(rows, "digits", m, "data_samples", level, _better("digits")) for m in best)
    return (f"digits: probe accuracy {level:.3f} (the best mean both reach; untrained {start:.3f}) takes {sleep} "
            f"{n_sleep:.0f} data samples and {wake} {n_wake:.0f}: {n_wake / n_sleep:.2f}x fewer with dreams "
            f"(target >= 10x)")


def markdown(rows: list[Row]) -> str:
    """A table of each method's final value (mean ± std over seeds), data samples, sleep steps and
    wall time, per task, and the targets."""
    lines = ["| task | method | final value (mean ± std) | seeds | data samples | sleep steps | train s |",
             "|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["task"] == task):
            final = [r for r in rows if r["task"] == task and r["method"] == method]
            final = [r for r in final if r["step"] == max(f["step"] for f in final)]
            v = np.array([r["value"] for r in final])
            lines.append(f"| {task} | {method} | {v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f} | {len(v)} | "
                         f"{final[0]['data_samples']} | {np.mean([r['sleep_steps'] for r in final]):.0f} | "
                         f"{np.mean([r['wall_s'] for r in final]):.1f} |")
    return "\n".join(lines + [""] + [f"- {t}" for t in targets(rows)]) + "\n"


def write(rows: list[Row], out_dir: str | Path, name: str = "sleep_perturbation") -> dict[str, Path]:
    """``<name>.csv`` (every checkpoint), ``<name>.md`` (:func:`markdown`) and ``<name>.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "md", "png")}
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["md"].write_text(markdown(rows))
    plot(rows, paths["png"])
    return paths


def plot(rows: list[Row], path: Path) -> None:
    """Per task, the value against training wall time and against data samples (mean ± std over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    axes = ("wall_s", "data_samples", "sleep_steps")
    fig, grid = plt.subplots(len(tasks), len(axes), figsize=(5 * len(axes), 4 * len(tasks)), squeeze=False)
    for row, task in zip(grid, tasks):
        for ax, x in zip(row, axes):
            for method in dict.fromkeys(r["method"] for r in rows if r["task"] == task):
                xs, mean, std = mean_curve(rows, task, method, x)
                keep = xs > 0
                ax.errorbar(xs[keep], mean[keep], std[keep], capsize=2, marker="o", ms=3, label=method)
            ax.set(xscale="log", xlabel={"wall_s": "training wall time (s)", "data_samples": "data samples used",
                                         "sleep_steps": "sleep steps"}[x],
                   ylabel="KL(data ‖ model), bits" if task == "bars" else "linear-probe test accuracy", title=task)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
