"""PNG plots of a run: settling of a probe batch, learning curves, first-layer receptive
fields, and alignment of the rule's update with the true gradient over training.

Figures are drawn on ``matplotlib.figure.Figure`` with an Agg canvas, never through
``pyplot``, so importing or using this module leaves the user's matplotlib backend and
pyplot's figure list alone (it works headless, in threads, and inside notebooks).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .. import couplings
from ..models.base import DynamicalModel, EnergyModel
from ..settle import SettleOptions, residual_norm
from ..phases import Condition
from ..capabilities import PredictionErrors

ALIGN_PREFIX = "align_cos/"
"""metrics.jsonl key prefix of alignment cosines; see :func:`alignment_metrics`."""

ACCURACY_KEYS = ("train_accuracy", "val_accuracy", "test_accuracy")
BITS_KEYS = ("kl_bits", "val_nll_bits")   # generative models' likelihood (dynets.likelihood)
LOSS_KEYS = ("train_loss", "val_loss")


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` with Agg to the PNG ``path`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path


# --- settling -------------------------------------------------------------------------

def settling_curves(model: DynamicalModel, condition: Condition, options: SettleOptions) -> dict[str, Any]:
    """Energy and residual along the settle of ``condition``'s batch, at every solver step.

    Settles with ``options`` but ``check_every=1`` and ``record=True``, so the curves
    have one point per step of Δt = ``options.step_size`` up to the stop.

    Returns a dict of numpy arrays, T recorded times and B samples:
        ``t``: ``(T,)`` integration times;
        ``residual``: ``(T, B)`` ‖ds/dt‖ per sample over all layers, as ``settle`` measures it;
        ``energy``: ``(T, B)`` F = E + β·C per sample for an :class:`EnergyModel`, else ``None``.
    """
    eq = replace(options, check_every=1)(model, condition, record=True)
    f = model.dynamics(condition)
    with torch.no_grad():
        residual = [residual_norm(f(torch.tensor(t), s)) for t, s in eq.trajectory]
        energy = ([model.total_energy(s, condition) for _, s in eq.trajectory]
                  if isinstance(model, EnergyModel) else None)
    stack = lambda xs: torch.stack(xs).cpu().double().numpy()
    return {"t": np.array([t for t, _ in eq.trajectory]), "residual": stack(residual),
            "energy": None if energy is None else stack(energy)}


def settling(model: DynamicalModel, condition: Condition, options: SettleOptions,
             path: str | os.PathLike) -> Path:
    """Plot :func:`settling_curves` to the PNG ``path``: the batch-mean energy F vs t
    (energy models only) and the median and max over the batch of ‖ds/dt‖ vs t on a
    log scale, with the stop tolerance ``options.atol``. Returns ``path``."""
    curves = settling_curves(model, condition, options)
    panels = 1 if curves["energy"] is None else 2
    fig = Figure(figsize=(5 * panels, 3.8), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if curves["energy"] is not None:
        axes[0].plot(curves["t"], curves["energy"].mean(1))
        axes[0].set(xlabel="time t", ylabel="energy F = E + βC (batch mean)", title="Energy")
    ax = axes[-1]
    ax.plot(curves["t"], np.median(curves["residual"], 1), label="median over batch")
    ax.plot(curves["t"], curves["residual"].max(1), label="max over batch")
    ax.axhline(options.atol, color="gray", linestyle="--", label=f"atol = {options.atol:g}")
    ax.set(xlabel="time t", ylabel="‖ds/dt‖", yscale="log", title="Residual")
    ax.legend()
    fig.suptitle(f"Settling of a probe batch of {curves['residual'].shape[1]} ({options.method}, Δt={options.step_size:g})")
    return _save(fig, path)


# --- metrics.jsonl --------------------------------------------------------------------

def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` written by :class:`dynets.app.loggers.JsonLinesLogger`,
    one dict per epoch, blank lines skipped."""
    with Path(path).open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def metric_series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` of ``key`` over the records that have it; a ``null`` value
    (a non-finite metric, as the JSON-lines logger writes it) becomes NaN."""
    rows = [(r["epoch"], math.nan if r[key] is None else r[key]) for r in records if key in r]
    epochs, values = zip(*rows) if rows else ((), ())
    return np.array(epochs, dtype=float), np.array(values, dtype=float)


def learning_curves(metrics_jsonl_path: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Plot accuracies (``train/val/test_accuracy``), losses (``train/val_loss``) and a generative
    model's ``kl_bits`` / ``val_nll_bits`` vs epoch from ``metrics_jsonl_path`` to the PNG ``path``; keys absent from the file
    are left out, and so is a panel with none of its keys. Returns ``path``.

    Raises ValueError when the file has none of these keys."""
    records = read_metrics(metrics_jsonl_path)
    present = lambda keys: [k for k in keys if any(k in r for r in records)]
    groups = ((ACCURACY_KEYS, "accuracy"), (LOSS_KEYS, "loss"), (BITS_KEYS, "bits"))
    panels = [(present(keys), label) for keys, label in groups if present(keys)]
    if not panels:
        raise ValueError(f"{metrics_jsonl_path} has none of the keys {', '.join(ACCURACY_KEYS + LOSS_KEYS + BITS_KEYS)}")
    fig = Figure(figsize=(5 * len(panels), 3.8), layout="constrained")
    for ax, (keys, label) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in keys:
            ax.plot(*metric_series(records, key), marker=".", label=key)
        ax.set(xlabel="epoch", ylabel=label, title=label.capitalize())
        ax.legend()
    fig.suptitle("Learning curves")
    return _save(fig, path)


# --- alignment ------------------------------------------------------------------------

def alignment_metrics(alignment: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flatten the result of :func:`dynets.diagnostics.alignment` into the metrics keys that
    :func:`alignment_curves` reads: ``{"align_cos/<param name>": cosine, ..., "align_cos/all": cosine}``,
    and ``align_reference_converged`` (0 or 1) where the reference reports it."""
    metrics = {f"{ALIGN_PREFIX}{name}": values["cosine"] for name, values in alignment.items()}
    if "reference_converged" in alignment["all"]:
        metrics["align_reference_converged"] = float(alignment["all"]["reference_converged"])
    return metrics


def alignment_keys(records: list[dict[str, Any]]) -> list[str]:
    """The ``align_cos/...`` keys in ``records``, in first-seen order, ``align_cos/all`` last."""
    keys = dict.fromkeys(k for r in records for k in r if k.startswith(ALIGN_PREFIX))
    return sorted(keys, key=lambda k: k == ALIGN_PREFIX + "all")


def alignment_curves(metrics_jsonl_path: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Plot the cosine between the rule's update and the true gradient vs epoch, one line
    per parameter, to the PNG ``path``. Returns ``path``.

    Key convention: each epoch's record in ``metrics.jsonl`` holds
    ``align_cos/<param name>`` (``<param name>`` as in ``model.named_parameters()``, e.g.
    ``align_cos/layers.0.weight``) and ``align_cos/all`` (all parameters as one vector),
    the ``cosine`` entries of :func:`dynets.diagnostics.alignment` against the reference
    gradient on a probe batch. :func:`alignment_metrics` makes these keys from that result.

    Raises ValueError when the file has no ``align_cos/`` key."""
    records = read_metrics(metrics_jsonl_path)
    keys = alignment_keys(records)
    if not keys:
        raise ValueError(f"{metrics_jsonl_path} has no {ALIGN_PREFIX}<param name> keys to plot")
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for key in keys:
        overall = key == ALIGN_PREFIX + "all"
        ax.plot(*metric_series(records, key), marker=".", label=key.removeprefix(ALIGN_PREFIX),
                color="black" if overall else None, linewidth=2.5 if overall else 1.2)
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.set(xlabel="epoch", ylabel="cosine(update, true gradient)", ylim=(-1.05, 1.05),
           title="Alignment with the true gradient")
    ax.legend(fontsize="small")
    return _save(fig, path)


# --- receptive fields -----------------------------------------------------------------

def square_shape(in_features: int) -> tuple[int, int]:
    """``(k, k)`` with k² = ``in_features`` (64 → 8×8 digits, 784 → 28×28 MNIST).

    Raises ValueError when ``in_features`` is not a perfect square."""
    k = math.isqrt(in_features)
    if k * k != in_features:
        raise ValueError(f"cannot infer an image shape for {in_features} inputs (not a square); "
                         f"pass image_shape=(height, width)")
    return k, k


def receptive_field_grid(weight: torch.Tensor, image_shape: tuple[int, int], n: int = 64) -> np.ndarray:
    """Tile the first ``n`` rows of ``weight`` ``(units, in_features)`` as images.

    Row i, reshaped to ``image_shape`` (h, w), goes to tile (i // cols, i % cols) of a
    grid of ``cols = ceil(√n')`` columns and ``ceil(n'/cols)`` rows, n' = min(n, units);
    tile (r, c) starts at pixel (r·(h+1), c·(w+1)). Gaps and unused tiles are NaN.
    Returns the ``(rows·(h+1) − 1, cols·(w+1) − 1)`` array of raw weights."""
    h, w = image_shape
    if h * w != weight.shape[1]:
        raise ValueError(f"image_shape {image_shape} has {h * w} pixels but the layer has {weight.shape[1]} inputs")
    fields = weight[:n].detach().cpu().double().numpy().reshape(-1, h, w)
    cols = math.ceil(math.sqrt(len(fields)))
    rows = math.ceil(len(fields) / cols)
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for i, field in enumerate(fields):
        r, c = divmod(i, cols)
        grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = field
    return grid


def first_map(model: DynamicalModel) -> torch.nn.Module | None:
    """The map from the input to the first layer: the first of ``model.couplings`` (a coupled
    network's) or of ``model.layers``; ``None`` when the model has neither."""
    for name in ("couplings", "layers"):
        maps = getattr(model, name, None)
        if isinstance(maps, torch.nn.ModuleList) and len(maps):
            return maps[0]
    return None


def first_layer_fields(model: DynamicalModel) -> tuple[torch.Tensor, str, tuple[int, int] | None] | None:
    """``(units, pixels)``: each first-layer unit's weights on the input, what they are, and their
    image shape where the weights fix it (``None``: the input's); ``None`` when no figure applies.

    Rows of a dense first layer's weight (``W x``: a unit's input weights, its receptive field),
    except for generative predictive coding, whose first weights predict the pixels from the
    first hidden layer (μ_0 = W_0 f(v_1) + b_0, ``W_0`` of shape ``(pixels, units)``): its
    columns, the image each unit draws (its projective field). A convolution on one-channel
    images: its filters, each a ``k × k`` image; on several channels, ``None`` (no grey image)."""
    first = first_map(model)
    if isinstance(first, couplings.Conv):
        weight = first.conv.weight
        if weight.shape[1] != 1:
            return None
        return weight.flatten(1), "First-layer convolution filters", tuple(weight.shape[-2:])
    if isinstance(first, couplings.Dense):
        first = first.linear
    if not isinstance(first, torch.nn.Linear):
        return None
    weight = first.weight
    if isinstance(model, PredictionErrors) and model.is_generative:
        return weight.T, "Generative fields (the pixels each first-layer unit predicts)", None
    return weight, "First-layer receptive fields", None


def receptive_fields(model: DynamicalModel, path: str | os.PathLike,
                     image_shape: tuple[int, int] | None = None, n: int = 64) -> Path:
    """Plot the first ``n`` units of :func:`first_layer_fields` as images, on one symmetric
    colour scale (blue < 0 < red), to the PNG ``path``.

    ``image_shape`` (h, w) defaults to the fields' own (a convolution's kernel), else to
    :func:`square_shape` of the input size, which raises ValueError for a non-square input.
    Returns ``path``.

    Raises:
        ValueError: the model has no first-layer weights to draw (:func:`first_layer_fields`)."""
    fields = first_layer_fields(model)
    if fields is None:
        raise ValueError(f"{type(model).__name__} has no first-layer weights to draw as images "
                         "(a dense layer, or a convolution on one-channel images)")
    weight, title, own = fields
    shape = image_shape or own or square_shape(weight.shape[1])
    grid = receptive_field_grid(weight, shape, n)
    scale = np.nanmax(np.abs(grid))
    fig = Figure(figsize=(6, 6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{title}: {min(n, weight.shape[0])} of {weight.shape[0]} units", fontsize="small")
    fig.colorbar(image, ax=ax, shrink=0.8, label="weight")
    return _save(fig, path)


# --- a run ----------------------------------------------------------------------------

def plot_run(run_dir: str | os.PathLike, model: DynamicalModel, probe_condition: Condition,
             settle_options: SettleOptions, image_shape: tuple[int, int] | None = None) -> dict[str, Path]:
    """Write the plots that apply to a run into ``run_dir``; return name → PNG path.

    ``settling`` (always, on ``probe_condition``), ``learning_curves`` (when
    ``metrics.jsonl`` exists), ``alignment`` (when it has ``align_cos/`` keys) and
    ``receptive_fields`` (when :func:`first_layer_fields` finds weights to draw, and ``image_shape``
    is given, the fields fix their own, or the input size is a square)."""
    run_dir = Path(run_dir)
    out = {"settling": settling(model, probe_condition, settle_options, run_dir / "settling.png")}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        out["learning_curves"] = learning_curves(metrics, run_dir / "learning_curves.png")
        if alignment_keys(read_metrics(metrics)):
            out["alignment"] = alignment_curves(metrics, run_dir / "alignment.png")
    fields = first_layer_fields(model)
    if fields is not None and (image_shape or fields[2] or math.isqrt(fields[0].shape[1]) ** 2 == fields[0].shape[1]):
        out["receptive_fields"] = receptive_fields(model, run_dir / "receptive_fields.png", image_shape)
    return out


def images(x: torch.Tensor, path: str | os.PathLike, image_shape: tuple[int, int] | None = None,
           title: str = "") -> Path:
    """Tile the samples of ``x`` ``(n, pixels)`` or ``(n, [1,] h, w)`` (e.g. dreams or reconstructions)
    as grey images in [0, 1] (black 0, white 1) to the PNG ``path``; ``image_shape`` defaults to
    x's last two dimensions for a one-channel image, else to :func:`square_shape` of the pixels."""
    shape = image_shape if image_shape is not None else _image_shape(x)
    grid = receptive_field_grid(x.flatten(1), shape, n=len(x))
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    ax.imshow(np.nan_to_num(grid, nan=0.5), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return _save(fig, path)


def _image_shape(x: torch.Tensor) -> tuple[int, int]:
    """(h, w) of the samples of ``x``: its last two dimensions if a sample is one image of them,
    else :func:`square_shape` of its pixels."""
    pixels = x[0].numel()
    if x.dim() > 2 and x.shape[-2] * x.shape[-1] == pixels:
        return tuple(x.shape[-2:])
    return square_shape(pixels)


def _is_image(x: torch.Tensor) -> bool:
    """Whether :func:`_image_shape` finds the samples of ``x`` to be images."""
    pixels = x[0].numel()
    return (x.dim() > 2 and x.shape[-2] * x.shape[-1] == pixels) or math.isqrt(pixels) ** 2 == pixels


def plot_generative_run(run_dir: str | os.PathLike, dreams: torch.Tensor | None = None, *,
                        image_shape: tuple[int, int] | None = None) -> dict[str, Path]:
    """A generative model's plots in ``run_dir``: ``dreams`` (a grid of its dreams ``(n, visible)``
    or ``(n, [1,] h, w)``, when given and the visible layer is an image) and ``learning_curves`` (when ``metrics.jsonl`` exists)."""
    run_dir, out = Path(run_dir), {}
    if dreams is not None and (image_shape is not None or _is_image(dreams)):
        out["dreams"] = images(dreams, run_dir / "dreams.png", image_shape, title="dreams")
    if (run_dir / "metrics.jsonl").exists():
        out["learning_curves"] = learning_curves(run_dir / "metrics.jsonl", run_dir / "learning_curves.png")
    return out
