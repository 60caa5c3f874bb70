"""Plots: the data behind each figure against hand-computed answers, and the PNGs are real images."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from dynets import Condition, SettleOptions

from dynets.app.run import plots
from dynets.models import LayeredHopfield
from dynets.settle import residual_norm


def assert_png_with_content(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(path).var() > 1e-3


def zero_weight_net(biases):
    """Hidden sizes from ``biases``; all weights zero, so layer l obeys ds/dt = b_l − s."""
    model = LayeredHopfield([4] + [len(b) for b in biases]).double()
    with torch.no_grad():
        for layer, b in zip(model.layers, biases):
            layer.weight.zero_()
            layer.bias.copy_(torch.tensor(b, dtype=torch.float64))
    return model


@pytest.mark.parametrize("method", ["fast_euler", "euler"])
def test_settling_curves_follow_the_exact_euler_solution(method):
    """With zero weights and 0 < b < 1 Euler from s=0 gives s_k = c_k·b, c_k = 1 − (1−Δt)^k:
    ‖ds/dt‖ = (1−Δt)^k‖b‖ and E = Σ b²(½c_k² − c_k), one point per step whatever check_every."""
    biases = [[0.2, 0.5, 0.9], [0.3, 0.7]]
    model, dt, atol = zero_weight_net(biases), 0.25, 1e-3
    x = torch.rand(3, 4, dtype=torch.float64)
    curves = plots.settling_curves(model, Condition(x), SettleOptions(method=method, step_size=dt, atol=atol, check_every=7))
    b2 = sum(v * v for layer in biases for v in layer)
    last = math.ceil(math.log(atol / math.sqrt(b2)) / math.log(1 - dt))   # first k with residual ≤ atol
    k = np.arange(last + 1)
    c = 1 - (1 - dt) ** k
    np.testing.assert_allclose(curves["t"], k * dt)
    np.testing.assert_allclose(curves["residual"], np.tile((1 - dt) ** k * math.sqrt(b2), (3, 1)).T, rtol=1e-12)
    np.testing.assert_allclose(curves["energy"], np.tile(b2 * (0.5 * c * c - c), (3, 1)).T, rtol=1e-12)


def test_settling_curves_of_a_random_net_descend_and_match_a_hand_euler_loop():
    model = LayeredHopfield([6, 8, 3], "sigmoid").double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    x = torch.rand(5, 6, dtype=torch.float64)
    target = torch.nn.functional.one_hot(torch.arange(5) % 3, 3).double()
    c, opts = Condition(x, target, 0.5), SettleOptions(method="fast_euler", step_size=0.3, atol=1e-5)
    curves = plots.settling_curves(model, c, opts)
    assert np.all(np.diff(curves["energy"], axis=0) <= 1e-12)          # Hopfield 1984: F never increases
    assert curves["residual"][-1].max() <= opts.atol < curves["residual"][-2].max()   # stops at the first step within tolerance
    s = model.init_state(c)
    for k, t in enumerate(curves["t"]):
        ds = model.vector_field(torch.tensor(t), s, c)
        torch.testing.assert_close(torch.from_numpy(curves["residual"][k]), residual_norm(ds), rtol=1e-9, atol=1e-14)
        s = tuple(si + opts.step_size * di for si, di in zip(s, ds))


def test_settling_png(tmp_path):
    model = LayeredHopfield([6, 8, 3]).double()
    path = plots.settling(model, Condition(torch.rand(4, 6, dtype=torch.float64)), SettleOptions(), tmp_path / "s.png")
    assert path == tmp_path / "s.png"
    assert_png_with_content(path)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_metric_series_reads_by_hand_records_with_gaps_and_nulls(tmp_path):
    metrics = write_jsonl(tmp_path / "metrics.jsonl", [
        {"epoch": 1, "train_loss": 0.9, "train_accuracy": 0.5},
        {"epoch": 2, "train_loss": None, "train_accuracy": 0.6, "val_accuracy": 0.55},
        {"epoch": 3, "train_loss": 0.4, "train_accuracy": 0.8, "val_accuracy": 0.7},
    ])
    records = plots.read_metrics(metrics)
    epochs, loss = plots.metric_series(records, "train_loss")
    np.testing.assert_array_equal(epochs, [1, 2, 3])
    np.testing.assert_array_equal(loss, [0.9, np.nan, 0.4])
    np.testing.assert_array_equal(np.stack(plots.metric_series(records, "val_accuracy")), [[2, 3], [0.55, 0.7]])
    assert plots.metric_series(records, "test_accuracy")[0].size == 0
    assert_png_with_content(plots.learning_curves(metrics, tmp_path / "lc.png"))


def test_learning_curves_without_known_keys_is_an_error(tmp_path):
    metrics = write_jsonl(tmp_path / "metrics.jsonl", [{"epoch": 1, "epoch_time_s": 2.0}])
    with pytest.raises(ValueError, match="none of the keys"):
        plots.learning_curves(metrics, tmp_path / "lc.png")


def test_alignment_metrics_round_trip_through_metrics_jsonl(tmp_path):
    result = {"layers.0.weight": {"cosine": 0.8, "angle_deg": 36.9, "norm_ratio": 1.1},
              "all": {"cosine": 0.7, "angle_deg": 45.6, "norm_ratio": 1.0},
              "layers.1.bias": {"cosine": -0.2, "angle_deg": 101.5, "norm_ratio": 0.5}}
    flat = plots.alignment_metrics(result)
    assert flat == {"align_cos/layers.0.weight": 0.8, "align_cos/all": 0.7, "align_cos/layers.1.bias": -0.2}
    metrics = write_jsonl(tmp_path / "metrics.jsonl", [{"epoch": 1, "train_loss": 1.0, **flat},
                                                       {"epoch": 2, "train_loss": 0.5, **flat}])
    records = plots.read_metrics(metrics)
    assert plots.alignment_keys(records) == ["align_cos/layers.0.weight", "align_cos/layers.1.bias", "align_cos/all"]
    np.testing.assert_array_equal(plots.metric_series(records, "align_cos/layers.1.bias")[1], [-0.2, -0.2])
    assert_png_with_content(plots.alignment_curves(metrics, tmp_path / "al.png"))


def test_receptive_field_grid_places_each_row_reshaped_by_hand():
    weight = torch.randn(10, 64)
    grid = plots.receptive_field_grid(weight, plots.square_shape(64))
    assert grid.shape == (3 * 9 - 1, 4 * 9 - 1)          # 10 fields: 4 columns, 3 rows of 8x8 + 1px gaps
    for i in range(10):
        r, c = divmod(i, 4)
        np.testing.assert_array_equal(grid[9 * r:9 * r + 8, 9 * c:9 * c + 8], weight[i].double().view(8, 8).numpy())
    assert np.isnan(grid).sum() == grid.size - 10 * 64      # gaps and the two unused tiles


def test_image_shapes():
    assert plots.square_shape(784) == (28, 28)
    with pytest.raises(ValueError, match="not a square"):
        plots.square_shape(10)
    with pytest.raises(ValueError, match="has 12 pixels"):
        plots.receptive_field_grid(torch.zeros(3, 10), (3, 4))


def test_receptive_fields_png(tmp_path):
    assert_png_with_content(plots.receptive_fields(LayeredHopfield([64, 20, 10]), tmp_path / "rf.png"))


def test_plot_run_makes_the_plots_that_apply(tmp_path):
    model = LayeredHopfield([16, 6, 3]).double()
    probe = Condition(torch.rand(4, 16, dtype=torch.float64))
    assert set(plots.plot_run(tmp_path, model, probe, SettleOptions())) == {"settling", "receptive_fields"}
    write_jsonl(tmp_path / "metrics.jsonl", [{"epoch": 1, "train_accuracy": 0.3, "align_cos/all": 0.5}])
    paths = plots.plot_run(tmp_path, model, probe, SettleOptions())
    assert paths == {name: tmp_path / f"{name}.png" for name in ("settling", "learning_curves", "alignment", "receptive_fields")}
    odd = LayeredHopfield([10, 6, 3]).double()
    assert set(plots.plot_run(tmp_path / "odd", odd, Condition(torch.rand(4, 10, dtype=torch.float64)), SettleOptions())) == {"settling"}


def test_plotting_never_imports_pyplot(tmp_path):
    """pyplot would pick and switch a global backend; the plots must work without it."""
    code = ("import sys, torch; from dynets.app import plots; from dynets.models import LayeredHopfield; "
            f"plots.receptive_fields(LayeredHopfield([64, 4, 2]), {str(tmp_path / 'rf.png')!r}); "
            "print('matplotlib.pyplot' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


@pytest.mark.parametrize("kind", ["hopfield", "pc"])
def test_conv_runs_draw_their_first_filters_and_skip_what_does_not_apply(tmp_path, monkeypatch, kind):
    """A conv net has no dense first layer: on one-channel images its figure is the first
    convolution's filters, filter i (its 3×3 kernel) tile i; on three channels no grey image
    applies, and the run's other plots are still made."""
    from dynets.models import ConvHopfield, ConvPredictiveCoding
    make = ConvHopfield if kind == "hopfield" else ConvPredictiveCoding

    def net(channels):
        return make(in_size=8, channels=[channels, 5], kernels=[3], strides=[1], paddings=[1], pools=["max"],
                    fc=[3]).double()
    drawn = []
    grid = plots.receptive_field_grid
    monkeypatch.setattr(plots, "receptive_field_grid", lambda w, shape, *a: drawn.append((w, shape)) or grid(w, shape, *a))
    model = net(1)
    probe = Condition(torch.rand(2, 1, 8, 8, dtype=torch.float64))
    assert set(plots.plot_run(tmp_path, model, probe, SettleOptions())) == {"settling", "receptive_fields"}
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    weight, shape = drawn[0]
    assert shape == (3, 3)
    for i in range(5):
        torch.testing.assert_close(weight[i].reshape(3, 3), conv.weight[i, 0])
    colour = Condition(torch.rand(2, 3, 8, 8, dtype=torch.float64))
    assert set(plots.plot_run(tmp_path / "rgb", net(3), colour, SettleOptions())) == {"settling"}
    with pytest.raises(ValueError, match="no first-layer weights to draw"):
        plots.receptive_fields(net(3), tmp_path / "rf.png")
