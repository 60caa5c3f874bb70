"""The whole path on real data: a short run learns, is reproducible and leaves its records."""
import dataclasses
import io
import json
import logging
import sys

import pytest
import torch

import dynets
from dynets import SettleOptions
from dynets.app.loggers import JsonLinesLogger
from dynets.models import LayeredHopfield
from dynets.rules import EquilibriumPropagation
from dynets.rules.base import Rule, Update
from dynets.data import Split
from dynets.app.fit import fit, free_phase_metrics, layer_param_groups, pinned_fraction


@pytest.fixture(scope="module")
def digits():
    return dynets.data.digits().flat()


def short_run(digits, run_dir=None, seed=0):
    torch.manual_seed(seed)
    model = LayeredHopfield([64, 64, 10])
    rule = EquilibriumPropagation(0.5, "centered", SettleOptions(method="fast_euler", atol=1e-3, max_time=40), allow_unconverged=True)
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
    rule = EquilibriumPropagation(0.5, "centered", SettleOptions(method="fast_euler", atol=1e-3, max_time=10), allow_unconverged=True)
    fit(model, rule, small, torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, batch_size=16)
    text = sys.stderr.getvalue()
    assert ("epochs" in text and "2/2" in text and "batches" in text) == shown


@pytest.mark.parametrize("stream,every,every_batch", [(io.StringIO, 0.0, True), (io.StringIO, 60.0, False),
                                                     (Terminal, 0.0, False)])
def test_off_a_terminal_long_epochs_log_their_progress(digits, monkeypatch, caplog, stream, every, every_batch):
    monkeypatch.setattr(sys, "stderr", stream())
    monkeypatch.setattr(sys.modules["dynets.app.fit"], "PROGRESS_EVERY_S", every)   # dynets.app.fit is the function
    small = dynets.data.from_arrays(digits.train.x[:60], digits.train.y[:60])
    model, n = LayeredHopfield([64, 8, 10]), -(-len(small.train) // 16)   # batches per epoch
    with caplog.at_level(logging.INFO, logger="dynets"):
        fit(model, Silent(FAST), small, torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, batch_size=16)
    progress = [m for m in caplog.messages if m.startswith("batch ")]
    assert [m.split(",")[0] for m in progress] == ([f"batch {i}/{n}" for i in range(1, n + 1)] * 2 if every_batch else [])
    assert all(m.endswith(" s left in the epoch") for m in progress)


class Recorder:
    """A logger that keeps every epoch's metrics."""

    def __init__(self):
        self.epochs = []

    def start(self, config, run_dir):
        pass

    def log(self, metrics, step):
        self.epochs.append(metrics)

    def finish(self, summary):
        pass


# Short budgets keep these tests fast; their rules accept a sample that has not quite settled.
FAST = SettleOptions(method="fast_euler", atol=1e-3, max_time=40)


def small_run(data, seed, lr, epochs=6, **kwargs):
    """A short EP run of a 64-16-10 network on ``data``; its summary and every epoch's metrics."""
    torch.manual_seed(seed)
    model = LayeredHopfield([64, 16, 10])
    recorder = Recorder()
    summary = fit(model, EquilibriumPropagation(0.5, settle=FAST, allow_unconverged=True), data, torch.optim.Adam(model.parameters(), lr=lr),
                  epochs=epochs, batch_size=16, seed=seed, loggers=[recorder], **kwargs)
    return summary, recorder.epochs


def first_best(values, pick=max):
    return values.index(pick(values)) + 1


def test_selection_by_a_metric_to_minimize(digits):
    def cost_and_accuracy(model, split):   # an evaluation other than fit's default
        condition = dynets.Condition(split.x, model.target(split.y))
        state = FAST(model, condition).state
        return {"cost": model.cost(state, condition).mean().item(),
                "accuracy": (model.output(state).argmax(1) == split.y).double().mean().item()}

    small = dynets.data.from_arrays(digits.train.x[:300], digits.train.y[:300], val_fraction=0.2)
    summary, epochs = small_run(small, seed=2, lr=0.03, evaluate=cost_and_accuracy, select="val_cost",
                                goal="minimize")
    cost, accuracy = [e["val_cost"] for e in epochs], [e["val_accuracy"] for e in epochs]
    best = first_best(cost, min)
    assert best not in (len(epochs), first_best(accuracy), first_best(cost, max))   # a run that tells them apart
    assert summary["best_epoch"] == best
    assert summary["val_cost"] == min(cost)   # evaluated again on the weights fit ends with
    assert set(summary) >= {"train_cost", "test_cost"} and "val_accuracy" not in summary


def test_the_best_epoch_follows_validation_when_test_disagrees(digits):
    """Test labels shifted by one: the better the model on validation, the worse on test."""
    small = dynets.data.from_arrays(digits.train.x[:300], digits.train.y[:300], val_fraction=0.2)
    shifted = dataclasses.replace(small, test=Split(small.val.x, (small.val.y + 1) % 10))
    test_accuracy = lambda model: {"test_accuracy": free_phase_metrics(model, shifted.test, FAST)["accuracy"]}
    summary, epochs = small_run(shifted, seed=3, lr=0.01, measures=[test_accuracy])
    val, test = [e["val_accuracy"] for e in epochs], [e["test_accuracy"] for e in epochs]
    assert first_best(val) not in (first_best(test), len(epochs))   # a run where the choice matters
    assert summary["best_epoch"] == first_best(val) and summary["val_accuracy"] == max(val)
    assert summary["test_accuracy"] == test[first_best(val) - 1]   # the selected epoch's test accuracy


class Silent(Rule):
    """EP that reports no metrics: the loop may not expect any (train_steps_free, train_converged...)."""

    def update(self, model, x, y=None):
        return Update(EquilibriumPropagation(0.5, settle=self.settle, allow_unconverged=True).update(model, x, y).grads)


def test_metrics_a_rule_does_not_report_are_absent(digits):
    small = dynets.data.from_arrays(digits.train.x[:60], digits.train.y[:60])
    model, recorder = LayeredHopfield([64, 8, 10]), Recorder()
    summary = fit(model, Silent(FAST), small, torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, batch_size=16,
                  loggers=[recorder])
    assert [sorted(e) for e in recorder.epochs] == 2 * [["epoch_time_s", "optimizer_time_s", "settle_time_s",
                                                         "train_update_norm", "val_accuracy", "val_converged",
                                                         "val_pinned", "val_steps"]]
    assert "mean_settle_steps" not in summary and summary["epochs"] == 2


def test_selection_names_a_validation_metric_of_the_evaluation(digits):
    small = dynets.data.from_arrays(digits.train.x[:60], digits.train.y[:60])
    model = LayeredHopfield([64, 8, 10])
    run = lambda **kwargs: fit(model, EquilibriumPropagation(0.5, settle=FAST, allow_unconverged=True), small,
                               torch.optim.SGD(model.parameters(), lr=0.1), epochs=1, batch_size=16, **kwargs)
    with pytest.raises(ValueError, match="select names a validation metric"):   # never test
        run(select="test_accuracy")
    with pytest.raises(ValueError, match="goal is one of maximize, minimize"):
        run(goal="max")
    with pytest.raises(ValueError, match=r"'val_loss' is not among .*\(val_accuracy, val_steps, val_converged, "
                                         r"val_pinned\)"):
        run(select="val_loss")


def test_pinned_fraction_counts_hidden_units_at_a_bound_of_the_activation():
    state = (torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 0.2]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert pinned_fraction(LayeredHopfield([2, 3, 2]), state) == 4 / 6   # the read-out does not count
    assert pinned_fraction(LayeredHopfield([2, 3, 2], activation="tanh"), state) == 3 / 6   # bounds ±1
    assert pinned_fraction(LayeredHopfield([2, 3, 2]), (state[0] * 0.9995, state[1]), tol=1e-3) == 4 / 6
    assert pinned_fraction(LayeredHopfield([2, 3, 2]), (state[0] * 0.998, state[1]), tol=1e-3) == 1 / 6
    assert pinned_fraction(LayeredHopfield([2, 2]), state[1:]) is None   # no hidden layer


class Inert(Rule):
    """A rule whose update is exactly zero."""

    def update(self, model, x, y=None):
        return Update({name: torch.zeros_like(p) for name, p in model.named_parameters()})


class Stopped(Rule):
    """A rule that trains nothing any more, as HebbianSleep once its stop rule fired: an empty update."""

    def update(self, model, x, y=None):
        return Update({}, {"stopped": 1.0})


@pytest.mark.parametrize("rule,lr,dead", [
    (EquilibriumPropagation(0.5, settle=FAST, allow_unconverged=True), 50.0, "% of the hidden units sit at a bound of their activation"),
    (Inert(FAST), 3e-3, "the rule's update is exactly zero"),
    (Stopped(FAST), 3e-3, None),   # a rule that stopped is not a dead network
    (EquilibriumPropagation(0.5, settle=FAST, allow_unconverged=True), 3e-3, None),
])
def test_a_dead_network_is_reported(digits, caplog, rule, lr, dead):
    small = dynets.data.from_arrays(digits.train.x[:200], digits.train.y[:200])
    torch.manual_seed(0)
    model, recorder = LayeredHopfield([64, 32, 10]), Recorder()
    with caplog.at_level(logging.WARNING, logger="dynets"):
        fit(model, rule, small, torch.optim.Adam(model.parameters(), lr=lr), epochs=2, batch_size=16,
            loggers=[recorder])
    pinned = [e["val_pinned"] for e in recorder.epochs]
    assert pinned[-1] == pinned_fraction(model, FAST(model, dynets.Condition(small.val.x)).state, FAST.atol)
    assert ("the network is dead" in caplog.text) == (dead is not None)
    assert dead is None or dead in caplog.text
