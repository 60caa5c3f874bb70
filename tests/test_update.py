"""Rules return their update and never touch ``p.grad``; labels are optional for the rules that
need none, refused clearly by those that do, and accuracy is reported only where it means something."""
import inspect

import pytest
import torch

import dynets.rules
from dynets import Condition, SettleOptions
from dynets.app.fit import fit
from dynets.data import Dataset, Split, digits, unlabelled
from dynets.models import (Asymmetric, BoltzmannMachine, BurstNetwork, DendriticMicrocircuit, Helmholtz, LayeredHopfield,
                           PredictiveCoding, RateRNN, ReadBackHopfield)
from dynets.models.memory import AssociativeMemory
from dynets.rules import (Backprop, BackpropThroughTime, BoltzmannLearning, Burstprop, ContrastiveHebbian, DendriticSleep,
                          DifferenceTargetPropagation, EligibilityTrace, EquilibriumPropagation, FeedbackAlignment,
                          HebbianSleep, HebbianStorage, ImplicitDifferentiation, KolenPollack, NodePerturbation,
                          PredictiveCodingRule, Rule, SleepInterleaved, UrbanczikSenn, Update, VectorFieldEP, WakeSleep,
                          WeightMirror, WeightPerturbation, write_grads)

SETTLE = SettleOptions(method="fast_euler", atol=1e-8, max_time=400)


def batch(kind="real", n=6, features=4):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, features, generator=g, dtype=torch.float64)
    if kind == "binary":
        x = (x > 0.5).double()
    elif kind == "spins":
        x = torch.where(x > 0.5, 1.0, -1.0).double()
    elif kind == "series":   # a free-running trial: input and target series, the target scored at the end
        y = torch.full((n, 20, 1), float("nan"), dtype=torch.float64)
        y[:, -5:] = 0.5
        return torch.rand(n, 20, 2, generator=g, dtype=torch.float64), y
    return x, torch.randint(0, 3, (n,), generator=g)


def settled(cls, **kwargs):
    return lambda: cls(settle=SETTLE, **kwargs)


hopfield = lambda: LayeredHopfield([4, 5, 3], "sigmoid").double()
asymmetric = lambda: Asymmetric([4, 5, 3], "learned", "sigmoid", seed=0).double()
helmholtz = lambda: Helmholtz([4, 3, 2], seed=0).double()
microcircuit = lambda: DendriticMicrocircuit([4, 5, 3]).double()

# Every exported rule: how to build it, a model it trains, its batch, and whether it reads labels.
CASES = {
    EquilibriumPropagation: (settled(EquilibriumPropagation), hopfield, "real", True),
    ContrastiveHebbian: (settled(ContrastiveHebbian), hopfield, "real", True),
    ImplicitDifferentiation: (settled(ImplicitDifferentiation), hopfield, "real", True),
    BackpropThroughTime: (BackpropThroughTime, hopfield, "real", True),
    NodePerturbation: (settled(NodePerturbation, n_probes=2), hopfield, "real", True),
    WeightPerturbation: (settled(WeightPerturbation, n_probes=2), hopfield, "real", True),
    PredictiveCodingRule: (settled(PredictiveCodingRule), lambda: PredictiveCoding([4, 5, 3]).double(), "real", True),
    Backprop: (Backprop, lambda: PredictiveCoding([4, 5, 3]).double(), "real", True),
    FeedbackAlignment: (settled(FeedbackAlignment), asymmetric, "real", True),
    VectorFieldEP: (settled(VectorFieldEP), asymmetric, "real", True),
    KolenPollack: (settled(KolenPollack), asymmetric, "real", True),
    WeightMirror: (settled(WeightMirror, samples=10), asymmetric, "real", True),
    DifferenceTargetPropagation: (settled(DifferenceTargetPropagation), asymmetric, "real", True),
    WakeSleep: (WakeSleep, helmholtz, "binary", False),
    SleepInterleaved: (lambda: SleepInterleaved(WakeSleep(), ratio=1.0), helmholtz, "binary", False),
    BoltzmannLearning: (lambda: BoltzmannLearning(chains=4), lambda: BoltzmannMachine([4, 3]).double(), "binary", False),
    HebbianStorage: (HebbianStorage, lambda: AssociativeMemory(4).double(), "spins", False),
    HebbianSleep: (lambda: HebbianSleep(dreams=4, patience=None), lambda: AssociativeMemory(4).double(), "spins", False),
    UrbanczikSenn: (settled(UrbanczikSenn), microcircuit, "real", True),
    DendriticSleep: (settled(DendriticSleep), microcircuit, "real", False),
    Burstprop: (settled(Burstprop), lambda: BurstNetwork([4, 5, 3], feedback_mode="learned").double(), "real", True),
    EligibilityTrace: (lambda: EligibilityTrace(warmup=0, scale_by_baseline=False),
                       lambda: RateRNN(units=8, tau=5.0, bias=(1.0,)).double(), "series", True),
}


def test_every_exported_rule_is_covered():
    exported = {obj for obj in vars(dynets.rules).values()
                if inspect.isclass(obj) and issubclass(obj, Rule) and not inspect.isabstract(obj)}
    assert exported == set(CASES), "add the missing rules to CASES"


@pytest.mark.parametrize("rule_class", list(CASES), ids=lambda c: c.__name__)
def test_an_update_leaves_every_p_grad_as_it_was(rule_class):
    """Each p.grad is set to its own sentinel tensor; after ``update`` every parameter still holds
    that very tensor, unchanged, and the update holds gradients of the model's parameters' shapes."""
    make, model_of, kind, labelled = CASES[rule_class]
    torch.manual_seed(0)
    model, (x, y) = model_of(), batch(kind)
    sentinels = {name: torch.full_like(p, 7.0) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = sentinels[name]
    update = make().update(model, x, y if labelled else None)
    assert isinstance(update, Update) and update.grads
    shapes = {name: p.shape for name, p in model.named_parameters()}
    assert all(g.shape == shapes[name] for name, g in update.grads.items())
    for name, p in model.named_parameters():
        assert p.grad is sentinels[name] and bool((p.grad == 7.0).all()), f"{rule_class.__name__} wrote {name}.grad"


def test_write_grads_applies_an_update_and_clears_the_rest():
    model, (x, y) = hopfield(), batch()
    update = EquilibriumPropagation(settle=SETTLE).update(model, x, y)
    trained = {name: g for name, g in update.grads.items() if name != "layers.0.bias"}
    write_grads(model, trained)
    for name, p in model.named_parameters():
        assert p.grad is None if name == "layers.0.bias" else torch.equal(p.grad, trained[name])


@pytest.mark.parametrize("rule_class", [c for c, case in CASES.items() if case[3]], ids=lambda c: c.__name__)
def test_a_rule_that_needs_labels_names_them_when_given_none(rule_class):
    make, model_of, kind, _ = CASES[rule_class]
    with pytest.raises(ValueError, match=r"needs labels y .* got y=None"):
        make().update(model_of(), batch(kind)[0])


def test_rules_that_need_no_labels_learn_without_them_and_report_no_accuracy():
    """Generative PC (unsupervised) and EP/CHL on a read-back autoencoder: the same update with
    labels or without (they read none), a loss where the model has its own target, and no
    accuracy without labels, nor with them from a model with no label read-out."""
    x, y = batch()
    for rule, model in ((PredictiveCodingRule(variant="unsupervised", settle=SETTLE),
                         PredictiveCoding([4, 5, 3], arrangement="generative").double()),
                        (EquilibriumPropagation(settle=SETTLE), ReadBackHopfield([4, 3]).double()),
                        (ContrastiveHebbian(settle=SETTLE), ReadBackHopfield([4, 3]).double())):
        without, with_labels = rule.update(model, x), rule.update(model, x, y)
        assert "accuracy" not in without.metrics
        assert ("accuracy" in with_labels.metrics) == model.supervised   # PC's top layer is a label layer
        assert without.grads.keys() == with_labels.grads.keys()
        assert all(torch.equal(without.grads[n], with_labels.grads[n]) for n in without.grads)
    assert "loss" in EquilibriumPropagation(settle=SETTLE).update(ReadBackHopfield([4, 3]).double(), x).metrics


def test_accuracy_is_the_argmax_read_out_against_the_labels():
    model, (x, y) = hopfield(), batch()
    metrics = EquilibriumPropagation(settle=SETTLE).update(model, x, y).metrics
    out = SETTLE(model, Condition(x)).state[-1]
    assert metrics["accuracy"] == (out.argmax(1) == y).double().mean().item()


class Spy(Rule):
    """Records the labels fit gives the rule it wraps."""

    def __init__(self, rule):
        super().__init__(rule.settle)
        self.rule, self.seen = rule, []

    def update(self, model, x, y=None):
        self.seen.append(y)
        return self.rule.update(model, x, y)


def test_fit_gives_the_rule_no_labels_for_unlabelled_data():
    small = digits().flat()
    data = Dataset("small", Split(small.train.x[:32], small.train.y[:32]), small.val, small.test, 64, 10)
    for dataset, labelled in ((data, True), (unlabelled(data), False)):
        rule, model = Spy(EquilibriumPropagation(settle=SETTLE, allow_unconverged=True)), ReadBackHopfield([64, 8])
        fit(model, rule, dataset, torch.optim.SGD(model.parameters(), lr=0.01), epochs=1, batch_size=16,
            evaluate=lambda model, split: {"score": 0.0}, select="val_score")
        assert len(rule.seen) == 2 and all((y is not None) == labelled for y in rule.seen)
