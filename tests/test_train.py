"""The whole path on real data: a short run learns, is reproducible and leaves its records."""
import io
import json
import sys

import pytest
import torch

import dynets
from dynets import SettleOptions
from dynets.logging import JsonLinesLogger
from dynets.models import LayeredHopfield
from dynets.rules import EquilibriumPropagation
from dynets.train import fit, layer_param_groups


@pytest.fixture(scope="module")
def digits():
    return dynets.data.digits()


def short_run(digits, run_dir=None, seed=0):
    torch.manual_seed(seed)
    model = LayeredHopfield([64, 64, 10])
    rule = EquilibriumPropagation(0.5, "centered", SettleOptions(method="fast_euler", atol=1e-3, max_time=40))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loggers = [JsonLinesLogger(run_dir / "metrics.jsonl")] if run_dir else []
    for logger in loggers:
        logger.start({}, run_dir)
    return fit(model, rule, digits, optimizer, epochs=3, batch_size=32, seed=seed, loggers=loggers, run_dir=run_dir)


def test_short_training_run_learns_and_records(digits, tmp_path):
    summary = short_run(digits, tmp_path)
    assert summary["test_accuracy"] > 0.8            # chance is 0.1
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3]
    assert max(l["val_accuracy"] for l in lines) == summary["val_accuracy"]   # selected on val
    assert json.loads((tmp_path / "summary.json").read_text()) == pytest.approx(summary)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3


def test_runs_are_reproducible(digits):
    a, b = short_run(digits, seed=5), short_run(digits, seed=5)
    a.pop("wall_time_s"), b.pop("wall_time_s")
    assert a == b


def test_layer_learning_rates():
    model = LayeredHopfield([4, 3, 2])
    groups = layer_param_groups(model, 0.1, [0.5, 0.25])
    assert [g["lr"] for g in groups] == [0.5, 0.25]
    assert [p for g in groups for p in g["params"]] == list(model.parameters())
    with pytest.raises(ValueError, match="2 layers"):
        layer_param_groups(model, 0.1, [0.5])


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream,shown", [(Terminal, True), (io.StringIO, False)])
def test_progress_bars_show_only_on_a_terminal(digits, monkeypatch, stream, shown):
    monkeypatch.setattr(sys, "stderr", stream())
    small = dynets.data.from_arrays(digits.train.x[:60], digits.train.y[:60])
    model = LayeredHopfield([64, 8, 10])
    rule = EquilibriumPropagation(0.5, "centered", SettleOptions(method="fast_euler", atol=1e-3, max_time=10))
    fit(model, rule, small, torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, batch_size=16)
    text = sys.stderr.getvalue()
    assert ("epochs" in text and "2/2" in text and "batches" in text) == shown
