"""The self-supervised study (hydra-free; ``scripts/probe.py`` builds its methods from configs).

Every method is trained by :func:`dynets.app.fit.fit` on the unlabelled data for the same epochs
and batch size, its epoch selected by the validation reconstruction error, and probed
(:mod:`dynets.studies.probe`) on the frozen, settled representation; so are the same network at its
random initial weights, the raw pixels, and a backprop autoencoder of the same sizes trained
for the same epochs.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..app import plots
from ..app.fit import fit
from ..app.run import check_self_supervised
from ..capabilities import Dreams, MeanPrior
from ..data import Dataset, Split, binarised, unlabelled
from ..evaluate import ReconstructionError, pick_layer, settled
from ..phases import Condition
from ..rules.interleave import prior_code, top_down
from ..sampling import Sleep
from .probe import accuracy, knn_predict, linear_probe


@dataclass
class Method:
    """One row of the study: its model (built after ``torch.manual_seed(seed)``: the layered
    models draw their initial weights from it), its rule and optimizer, and whether it needs
    binary data (``x > 0.5``)."""

    model: Callable[[], nn.Module]
    rule: Callable[[], Any]
    optimizer: Callable[[list], torch.optim.Optimizer]
    binarize: bool = False


@dataclass
class Probes:
    """How representations are probed: the logistic regression's weight decays and L-BFGS
    iterations, kNN's k, and at most ``train_subsample`` train rows for fitting them (``None``: all)."""

    weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    max_iter: int = 200
    k: int = 10
    train_subsample: int | None = None


def probe(z: dict[str, torch.Tensor], data: Dataset, probes: Probes) -> dict[str, float]:
    """Linear-probe and kNN accuracies of the representations ``z`` (``train``, ``val``, ``test``).
    Everything up to the two test accuracies reads no test label."""
    rows = len(z["train"]) if probes.train_subsample is None else min(probes.train_subsample, len(z["train"]))
    train = Split(z["train"][:rows], data.train.y[:rows])
    linear = linear_probe(train, Split(z["val"], data.val.y), data.n_classes, tuple(probes.weight_decays),
                           probes.max_iter)
    knn_val = accuracy(knn_predict(train, z["val"], probes.k), data.val.y)
    fitted = {"linear_val": linear.val_accuracy, "weight_decay": linear.weight_decay, "knn_val": knn_val}
    return {**fitted, "linear_test": accuracy(linear.predict(z["test"]), data.test.y),
            "knn_test": accuracy(knn_predict(train, z["test"], probes.k), data.test.y)}


def represent(model, rule, data: Dataset, layer: int | None, rows: int | None = None) -> tuple[dict[str, torch.Tensor], float]:
    """The settled representation at ``layer`` of every split (of the first ``rows`` train rows,
    the probes' training set; ``None``: all), one vector per sample (a layer of any shape
    flattened), and the test reconstruction error."""
    z, error = {}, float("nan")
    for part in ("train", "val", "test"):
        x = getattr(data, part).x[:rows] if part == "train" else getattr(data, part).x
        state, recon = settled(model, x, rule.settle)
        z[part] = pick_layer(model, state, layer).flatten(1)   # the probes read a vector per sample
        if part == "test":
            error = (recon - x).pow(2).mean().item()
    return z, error


def train_method(method: Method, data: Dataset, *, epochs: int, batch_size: int,
                 seed: int, layer: int | None = None, probes: Probes = Probes()) -> tuple[nn.Module, list[dict]]:
    """Two rows, the method at its random initial weights and after training; and the trained model."""
    data = binarised(data) if method.binarize else data
    torch.manual_seed(seed)
    model, rule = method.model(), method.rule()
    check_self_supervised(model, rule)
    rows = []
    z, error = represent(model, rule, data, layer, probes.train_subsample)
    rows.append({"reconstruction": error, **probe(z, data, probes), "train_time_s": 0.0})
    t0 = time.perf_counter()
    summary = fit(model, rule, unlabelled(data), method.optimizer(list(model.parameters())), epochs=epochs,
                  batch_size=batch_size, seed=seed, evaluate=ReconstructionError(rule.settle),
                  select="val_reconstruction", goal="minimize")
    wall = time.perf_counter() - t0
    z, error = represent(model, rule, data, layer, probes.train_subsample)
    rows.append({"reconstruction": error, **probe(z, data, probes), "train_time_s": wall,
                 "best_epoch": summary["best_epoch"]})
    return model, rows


class Autoencoder(nn.Module):
    """The backprop baseline: x̂ = σ(W_d σ(W_e x + b_e) + b_d), the code σ(W_e x + b_e); weights
    ~ U(±1/√fan_in) (as ``nn.Linear``) drawn from ``generator``."""

    def __init__(self, sizes: list[int], generator: torch.Generator) -> None:
        super().__init__()
        self.encoder = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in (self._linear(a, b, generator), nn.Sigmoid())])
        back = sizes[::-1]
        self.decoder = nn.Sequential(*[m for a, b in zip(back, back[1:]) for m in (self._linear(a, b, generator), nn.Sigmoid())])

    @staticmethod
    def _linear(n_in: int, n_out: int, generator: torch.Generator) -> nn.Linear:
        layer = nn.utils.skip_init(nn.Linear, n_in, n_out)
        bound = n_in ** -0.5
        with torch.no_grad():
            layer.weight.copy_((torch.rand(n_out, n_in, generator=generator) * 2 - 1) * bound)
            layer.bias.copy_((torch.rand(n_out, generator=generator) * 2 - 1) * bound)
        return layer


def train_autoencoder(data: Dataset, sizes: list[int], *, epochs: int, batch_size: int, seed: int,
                      lr: float = 1e-3, probes: Probes = Probes()) -> tuple[Autoencoder, dict]:
    """The backprop autoencoder whose encoder has ``sizes`` ``[in, hidden...]``, trained with Adam on the mean squared error for
    ``epochs`` epochs in the batch order of ``seed``; its probed row."""
    model = Autoencoder(sizes, torch.Generator().manual_seed(seed))
    opt, order = torch.optim.Adam(model.parameters(), lr=lr), torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, _ in unlabelled(data).train.batches(batch_size, shuffle=True, generator=order):
            opt.zero_grad()
            nn.functional.mse_loss(model.decoder(model.encoder(x)), x).backward()
            opt.step()
    wall = time.perf_counter() - t0
    with torch.no_grad():
        z = {part: model.encoder(getattr(data, part).x) for part in ("train", "val", "test")}
        error = (model.decoder(z["test"]) - data.test.x).pow(2).mean().item()
    return model, {"reconstruction": error, **probe(z, data, probes), "train_time_s": wall}


def study(methods: dict[str, Method], data: Dataset, sizes: list[int], *, epochs: int, batch_size: int,
          seed: int, layer: int | None = None, probes: Probes = Probes(), out_dir: str | Path | None = None,
          progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The table: raw pixels, the backprop autoencoder, then each method at random weights and
    trained; ``sizes``: the autoencoder's encoder, ``[in, hidden...]`` as the methods'. With ``out_dir``,
    each model's test reconstructions (and dreams) as PNG grids."""
    raw = {part: getattr(data, part).x for part in ("train", "val", "test")}
    rows = [{"method": "raw pixels", **probe(raw, data, probes)}]
    progress(f"raw pixels: {rows[-1]}")
    ae, row = train_autoencoder(data, sizes, epochs=epochs, batch_size=batch_size, seed=seed, probes=probes)
    rows.append({"method": "backprop autoencoder", **row})
    progress(f"backprop autoencoder: {row}")
    for name, method in methods.items():
        model, (random, trained) = train_method(method, data, epochs=epochs, batch_size=batch_size,
                                                seed=seed, layer=layer, probes=probes)
        rows += [{"method": f"{name} (random weights)", **random}, {"method": name, **trained}]
        progress(f"{name}: {trained} (random weights: {random})")
        if out_dir is not None:
            pictures(model, method.rule(), binarised(data) if method.binarize else data, name, Path(out_dir), seed)
    return rows


def pictures(model, rule, data: Dataset, name: str, out_dir: Path, seed: int, n: int = 32) -> None:
    """``<name>_reconstructions.png`` (test inputs above their reconstructions) and, for a model
    with a top-level prior, ``<name>_dreams.png``."""
    x = data.test.x[:n]
    _, recon = settled(model, x, rule.settle)
    plots.images(torch.cat([x, recon.clamp(0, 1)]), out_dir / f"{name}_reconstructions.png",
                 title=f"{name}: test inputs (top), reconstructions (bottom)")
    dreamt = dreams(model, rule.settle, n, seed)
    if dreamt is not None:
        plots.images(dreamt.clamp(0, 1), out_dir / f"{name}_dreams.png", title=f"{name}: dreams")


@torch.no_grad()
def dreams(model, settle, n: int, seed: int) -> torch.Tensor | None:
    """``(n, in)`` dreams: a Helmholtz machine's top-down sweep from its prior (exact samples);
    a continuous model's generative pass from codes prior + ξ, ξ ~ N(0, I); ``None`` without a prior."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(model, Dreams):
        return Sleep("prior").dream(model, Condition(batch_size=n, generator=generator)).state[0]
    if isinstance(model, MeanPrior) and model.prior_mean() is not None:
        return top_down(model, prior_code(model, n, 1.0, generator), settle)
    return None


COLUMNS = ("method", "reconstruction", "linear_val", "linear_test", "knn_val", "knn_test", "weight_decay",
           "train_time_s", "best_epoch")


def write(rows: list[dict[str, Any]], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """``probe.csv`` and ``probe.md`` (accuracies in %) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "probe.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    head = ["method", "test recon. MSE", "linear probe val / test (%)", "kNN val / test (%)", "train wall time (s)"]
    lines = ([title, ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    num = lambda r, k, f: f(r[k]) if k in r else "—"
    pair = lambda r, a, b: f"{100 * r[a]:.2f} / {100 * r[b]:.2f}"
    for r in rows:
        cells = [r["method"], num(r, "reconstruction", "{:.4f}".format), pair(r, "linear_val", "linear_test"),
                 pair(r, "knn_val", "knn_test"), num(r, "train_time_s", "{:.1f}".format)]
        lines.append("| " + " | ".join(cells) + " |")
    (out_dir / "probe.md").write_text("\n".join(lines) + "\n")
    return {"csv": out_dir / "probe.csv", "md": out_dir / "probe.md"}
