"""What fit tells of a run that diverges or does not learn; its run directory; metrics of the model alone."""
import json
import math
import warnings

import pytest
import torch

import dynets
from dynets import SettleOptions, UnconvergedError
from dynets.likelihood import Likelihood, kl_bits
from dynets.models import Helmholtz, LayeredHopfield, PredictiveCoding
from dynets.rules import EquilibriumPropagation, PredictiveCodingRule, WakeSleep
from dynets.rules.base import Rule, Update
from dynets.app.fit import AT_CHANCE_EPOCHS, BLOWUP, TrainingDiverged, TrainingWarning, chance_accuracy, divergence, fit

FAST = SettleOptions(method="fast_euler", atol=1e-3, max_time=40)
GAUSS_SEIDEL = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-3, max_time=400)


@pytest.fixture(scope="module")
def digits():
    return dynets.data.digits().flat()


@pytest.fixture(scope="module")
def small(digits):
    return dynets.data.from_arrays(digits.train.x[:300], digits.train.y[:300])


class Scripted(Rule):
    """Returns a zero update and reports the accuracy (None: none) and loss it is given, one loss per batch."""

    def __init__(self, accuracy: float, losses):
        super().__init__(FAST)
        self.accuracy, self.losses = accuracy, iter(losses)

    def update(self, model, x, y=None):
        metrics = {"loss": next(self.losses)} if self.accuracy is None else \
            {"accuracy": self.accuracy, "loss": next(self.losses)}
        return Update({name: torch.zeros_like(p) for name, p in model.named_parameters()}, metrics)


def training_warnings(run) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught if issubclass(w.category, TrainingWarning)]


def test_fit_creates_its_run_directory(small, tmp_path):
    run_dir = tmp_path / "runs" / "first"
    torch.manual_seed(0)
    model = LayeredHopfield([64, 16, 10])
    summary = fit(model, EquilibriumPropagation(0.5, settle=GAUSS_SEIDEL), small, torch.optim.Adam(model.parameters(), 3e-3),
                  epochs=2, batch_size=32, run_dir=run_dir)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert json.loads((run_dir / "summary.json").read_text()) == pytest.approx(summary)


def test_chance_is_the_accuracy_of_guessing_the_commonest_class():
    assert chance_accuracy(torch.tensor([0, 0, 1, 2, 2, 2, 3, 3])) == 3 / 8
    assert chance_accuracy(torch.arange(10).repeat(7)) == pytest.approx(0.1)


@pytest.mark.parametrize("errors,warns", [(0.0, True), (2.0, True), (4.0, False)])
def test_an_accuracy_at_chance_for_several_epochs_is_reported_once(small, errors, warns):
    """At chance: within three binomial standard errors of the commonest-class guess on the
    training split; the warning comes after AT_CHANCE_EPOCHS such epochs, once."""
    guess = chance_accuracy(small.train.y)
    accuracy = guess + errors * math.sqrt(guess * (1 - guess) / len(small.train))
    model = LayeredHopfield([64, 8, 10])
    rule = Scripted(accuracy, [0.5] * 1000)
    epochs = AT_CHANCE_EPOCHS + 2
    found = training_warnings(lambda: fit(model, rule, small, torch.optim.SGD(model.parameters(), lr=0.1),
                                          epochs=epochs, batch_size=32))
    assert len(found) == warns
    assert not warns or found[0].startswith(f"epoch {AT_CHANCE_EPOCHS}: the accuracy has stayed at chance")


@pytest.mark.parametrize("at_chance", [True, False])
def test_a_rule_that_reports_no_accuracy_is_judged_by_the_validation_accuracy(small, at_chance):
    guess = chance_accuracy(small.train.y)
    model = LayeredHopfield([64, 8, 10])
    evaluate = lambda model, split: {"accuracy": guess if at_chance else 0.9}
    found = training_warnings(lambda: fit(model, Scripted(None, [0.5] * 1000), small,
                                          torch.optim.SGD(model.parameters(), lr=0.1), epochs=AT_CHANCE_EPOCHS,
                                          batch_size=32, evaluate=evaluate))
    assert len(found) == at_chance
    assert not at_chance or "the accuracy has stayed at chance" in found[0]


def test_a_deep_sigmoid_net_learns_with_the_sigmoid_gain_and_is_reported_without(digits):
    """The README's 64-512-256-10 sigmoid net: at nn.Linear's init the input's spread shrinks
    ~7x per layer (ρ' ≤ 1/4) and the accuracy stays at 10 %; with init_gain = 1/ρ'(0) = 4 it learns."""
    runs = {}
    for gain in (1.0, 4.0):
        torch.manual_seed(0)
        model = LayeredHopfield([64, 512, 256, 10], "sigmoid", init_gain=gain)
        rule = EquilibriumPropagation(0.5, settle=GAUSS_SEIDEL)
        run = lambda: runs.setdefault(gain, fit(model, rule, digits, torch.optim.Adam(model.parameters(), lr=2e-3),
                                                epochs=AT_CHANCE_EPOCHS, batch_size=32))
        found = training_warnings(run)
        assert (len(found) == 1 and "model.init_gain, now 1" in found[0] and "rule.beta" in found[0]) == (gain == 1.0)
    assert runs[1.0]["val_accuracy"] < 0.15 < 0.3 < runs[4.0]["val_accuracy"]


def test_init_gain_scales_the_initial_weights():
    torch.manual_seed(0)
    plain = LayeredHopfield([200, 300, 10])
    torch.manual_seed(0)
    scaled = LayeredHopfield([200, 300, 10], init_gain=4.0)
    for a, b in zip(plain.layers, scaled.layers):
        torch.testing.assert_close(b.weight, 4.0 * a.weight)
        torch.testing.assert_close(b.bias, a.bias)
    with pytest.raises(ValueError, match="init_gain"):
        LayeredHopfield([2, 2], init_gain=0.0)


def test_a_huge_nudge_that_stops_learning_is_reported_naming_beta(digits):
    torch.manual_seed(0)
    model = LayeredHopfield([64, 256, 10])
    rule = EquilibriumPropagation(100.0, settle=GAUSS_SEIDEL)
    found = training_warnings(lambda: fit(model, rule, digits, torch.optim.Adam(model.parameters(), lr=2e-3),
                                          epochs=AT_CHANCE_EPOCHS, batch_size=32))
    assert len(found) == 1 and "rule.beta, now 100" in found[0]


def test_divergence_names_what_blew_up():
    model = LayeredHopfield([3, 2])
    assert divergence({"train_loss": 0.5 * BLOWUP}, model, 0.5) is None
    assert "times the first batch's" in divergence({"train_loss": 0.6 * BLOWUP}, model, 0.5)
    assert "is nan" in divergence({"train_loss": math.nan}, model, 0.5)
    assert divergence({}, model, None) is None
    with torch.no_grad():
        model.layers[0].weight[0, 0] = math.inf
    assert "weights are no longer finite" in divergence({"train_loss": 0.5}, model, 0.5)


def test_a_loss_that_explodes_is_reported_every_epoch(small):
    model = LayeredHopfield([64, 8, 10])
    batches = math.ceil(len(small.train) / 32)
    losses = [0.5] + [2 * BLOWUP * 0.5] * (2 * batches)   # the first batch's loss, then 2·BLOWUP times it
    found = training_warnings(lambda: fit(model, Scripted(0.9, losses), small,
                                          torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, batch_size=32))
    assert [m.split(":")[0] for m in found] == ["epoch 1", "epoch 2"] and all("optimizer.lr" in m for m in found)


def test_predictive_coding_at_a_huge_learning_rate_is_reported_as_divergence_not_settling(small):
    torch.manual_seed(0)
    model = PredictiveCoding([64, 32, 10], "tanh")
    rule = PredictiveCodingRule(0.1, "nudged", SettleOptions(method="fast_euler", step_size=0.2, atol=1e-3,
                                                               max_time=40))
    with pytest.raises(TrainingDiverged, match="optimizer.lr") as raised:
        fit(model, rule, small, torch.optim.Adam(model.parameters(), lr=1e6), epochs=1, batch_size=32)
    assert isinstance(raised.value.__cause__, UnconvergedError)   # what the rule saw, kept as the cause


def test_an_unconverged_settle_at_sane_weights_is_not_called_divergence(small):
    torch.manual_seed(0)
    model = PredictiveCoding([64, 32, 10], "tanh")
    rule = PredictiveCodingRule(0.1, "nudged", SettleOptions(method="fast_euler", step_size=0.2, atol=1e-3,
                                                               max_time=0.4))   # two steps: never settles
    with pytest.raises(UnconvergedError, match="settle.max_time"):
        fit(model, rule, small, torch.optim.Adam(model.parameters(), lr=1e-3), epochs=1, batch_size=32)


def test_a_metric_of_the_model_alone_is_reported_once_and_split_metrics_per_split():
    """KL(data‖model) of bars is the model's, whatever the split: one ``kl_bits``; the NLL of
    each split's samples differs by split and keeps its prefix."""
    data = dynets.data.bars(n_train=400, n_val=200, n_test=200)
    model = Helmholtz([16, 8, 1], seed=0)
    evaluate = Likelihood(distribution=data.distribution)
    epochs = []

    class Recorder:
        def log(self, metrics, step):
            epochs.append(metrics)

    summary = fit(model, WakeSleep(), data, torch.optim.SGD(model.parameters(), lr=0.5), epochs=2, batch_size=16,
                  evaluate=evaluate, select="kl_bits", goal="minimize", loggers=[Recorder()])
    assert summary["kl_bits"] == pytest.approx(kl_bits(model, data.distribution))   # the selected epoch's model
    assert summary["kl_bits"] == min(e["kl_bits"] for e in epochs)
    assert not any(k.endswith("_kl_bits") for k in summary) and not any("val_kl_bits" in e for e in epochs)
    for part in ("train", "val", "test"):
        assert summary[f"{part}_nll_bits"] == pytest.approx(evaluate(model, getattr(data, part))["nll_bits"])
    with pytest.raises(ValueError, match="select='kl_bits'"):
        fit(model, WakeSleep(), data, torch.optim.SGD(model.parameters(), lr=0.5), epochs=1, batch_size=16,
            evaluate=evaluate, select="val_kl_bits", goal="minimize")
