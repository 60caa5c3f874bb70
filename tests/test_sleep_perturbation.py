"""Perturbation as a sleep learner (issue 23): learners of a Helmholtz machine's recognition
network R, in sleep (the dream's cause the target) or on data (−log p(x, m), no label), checked
against the delta rule, finite differences and the wake rule alone."""
import pytest
import torch
from torch import nn

from dynets import capabilities as caps
from dynets.models import DynamicalModel, Helmholtz, LayeredHopfield
from dynets.phases import Condition
from dynets.rules import (EquilibriumPropagation, NodePerturbation, RecognitionDelta, RecognitionExact,
                          RecognitionNodePerturbation, RecognitionWeightPerturbation, SleepInterleaved, WakeSleep)
from dynets.rules.base import Rule, Update
from dynets.rules.interleave import prior_code
from dynets.sampling import SampleOptions, Sleep

from test_configs import composed
from dynets.app.builder import build


def machine(sizes=(5, 3, 2), seed=1):
    return Helmholtz(list(sizes), init_scale=1.0, seed=seed).double()


def dream(model, n=6, seed=0):
    return Sleep("prior", SampleOptions(sweeps=1)).dream(model, Condition(batch_size=n, generator=torch.Generator().manual_seed(seed))).state


def data(n=6, visible=5, seed=3):
    return (torch.rand(n, visible, generator=torch.Generator().manual_seed(seed)) < 0.5).double()


def relative_error(got, want):
    u = torch.cat([got[n].flatten() for n in sorted(want)])
    v = torch.cat([want[n].flatten() for n in sorted(want)])
    return ((u - v).norm() / v.norm()).item()


def wake_cost_by_hand(model, x):
    """−Σ_l log p(m_l | m_{l+1}) = −log p(x, m) + log p(m_L), m the settled state of the model's
    continuous-time recognition dynamics at λ = 0 (its init_state is that fixed point), mean over
    the batch: written apart from the learners."""
    m = model.init_state(Condition(x))
    assert max((model.dynamics(Condition(x))(0.0, m)[l].abs().max().item() for l in range(len(m)))) < 1e-12
    top = m[-1] * model.prior - torch.nn.functional.softplus(model.prior)
    return (-model.log_joint(x, list(m)) + top.sum(-1)).mean()


def finite_differences(model, cost, h=1e-6):
    grads = {}
    for name, p in model.named_parameters():
        if not name.startswith("recognition"):
            continue
        g = torch.zeros_like(p)
        with torch.no_grad():
            for i in range(p.numel()):
                p.view(-1)[i] += h
                up = cost().item()
                p.view(-1)[i] -= 2 * h
                down = cost().item()
                p.view(-1)[i] += h
                g.view(-1)[i] = (up - down) / (2 * h)
        grads[name] = g
    return grads


def test_the_exact_sleep_gradient_is_the_delta_rule():
    model, layers = machine(), dream(machine())
    exact, delta = RecognitionExact().sleep(model, layers)[0], RecognitionDelta().sleep(model, layers)[0]
    assert relative_error(exact, delta) < 1e-12


def test_the_exact_wake_gradient_matches_finite_differences_of_the_settled_code():
    model, x = machine(), data()
    exact = RecognitionExact().wake(model, x)[0]
    assert relative_error(exact, finite_differences(model, lambda: wake_cost_by_hand(model, x))) < 1e-6


@pytest.mark.parametrize("phase", ["sleep", "wake"])
def test_node_perturbation_tends_to_the_gradient_of_the_phase_cost(phase):
    """Many probes at small σ: the estimate's mean is the delta rule's gradient (sleep) or the
    finite-difference gradient of −log p(x, m) (wake). 20000 probes of 5 units: the Monte Carlo
    error is about √(5/20000) ≈ 0.016 of the gradient's norm."""
    model = machine()
    if phase == "sleep":
        layers = dream(model)
        want = RecognitionDelta().sleep(model, layers)[0]
        got, metrics = RecognitionNodePerturbation(sigma=1e-3, n_probes=20000).sleep(model, layers)
    else:
        x = data()
        want = finite_differences(model, lambda: wake_cost_by_hand(model, x))
        got, metrics = RecognitionNodePerturbation(sigma=1e-3, n_probes=20000).wake(model, x)
    assert relative_error(got, want) < 0.05 and metrics[f"{phase}_dropped_probes"] == 0


def test_weight_perturbation_tends_to_the_delta_rule_in_sleep():
    """A 3-2-1 machine, 11 weights and biases, 8000 probes: Monte Carlo error √(11/8000) ≈ 0.04."""
    model = machine((3, 2, 1))
    layers = dream(model, n=8)
    want = RecognitionDelta().sleep(model, layers)[0]
    got = RecognitionWeightPerturbation(sigma=1e-3, n_probes=8000).sleep(model, layers)[0]
    assert relative_error(got, want) < 0.12


def test_ratio_zero_with_a_sleep_learner_is_the_wake_rule_bit_for_bit():
    model, x = machine(), data()
    learner = RecognitionNodePerturbation(seed=5)
    got = SleepInterleaved(WakeSleep(seed=1), ratio=0, sleep_learner=learner).update(model, x).grads
    want = WakeSleep(seed=1).wake(model, x)[0]
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)
    assert torch.equal(learner.generator.get_state(), torch.Generator().manual_seed(5).get_state())   # no draw


def test_the_delta_learner_is_the_default_sleep_bit_for_bit():
    x = data(n=8)
    runs = []
    for learner in (None, RecognitionDelta()):
        rule, model = SleepInterleaved(WakeSleep(seed=1), ratio=1.5, seed=2, sleep_learner=learner), machine()
        runs.append([rule.update(model, x).grads for _ in range(3)])
    for a, b in zip(*runs):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_a_wake_learner_adds_its_data_gradient_to_the_wake_update():
    model, x = machine(), data()
    got = SleepInterleaved(WakeSleep(seed=1), ratio=0, wake_learner=RecognitionExact()).update(model, x).grads
    want = {**WakeSleep(seed=1).wake(model, x)[0], **RecognitionExact().wake(model, x)[0]}
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)


# ---- bad input ---------------------------------------------------------------------------------

def test_a_sleep_learner_on_a_model_that_cannot_dream_names_the_missing_capabilities():
    rule = SleepInterleaved(EquilibriumPropagation(), sleep_learner=RecognitionNodePerturbation())
    with pytest.raises(TypeError) as err:
        rule.check_model(LayeredHopfield([4, 3, 2]))
    for capability in (caps.Recognition, caps.Dreams, caps.GibbsBlocked):
        assert f"(capability {capability.__name__}: " in str(err.value)
    SleepInterleaved(EquilibriumPropagation()).check_model(LayeredHopfield([4, 3, 2]))   # no learner: replay, as before


def test_a_learner_with_no_cost_in_a_phase_says_which():
    with pytest.raises(TypeError, match="NodePerturbation has no cost in the sleep phase .*a dream has a cause, not a label"):
        SleepInterleaved(WakeSleep(), sleep_learner=NodePerturbation())
    with pytest.raises(TypeError, match="RecognitionDelta has no cost in the wake phase"):
        SleepInterleaved(WakeSleep(), wake_learner=RecognitionDelta())


class Exploding(DynamicalModel):
    """A decoder whose generative pass diverges (to infinity) for codes with a positive unit."""

    in_features, out_features, code_layer = 3, 2, 0

    def __init__(self):
        super().__init__()
        self.w = nn.Linear(3, 2)

    def dynamics(self, condition):
        return lambda t, s: (self.w(condition.x) - s[0],)

    def init_state(self, condition):
        return (condition.x.new_zeros(condition.batch, 2),)

    def prior_mean(self):
        return torch.zeros(2)

    def decode(self, code):
        return torch.where(code.max(1, keepdim=True).values > 0, torch.inf, 1.0).expand(-1, 3)


class Recording(Rule):
    """A wake rule that records the inputs it is given."""
    needs_target = False

    def __init__(self):
        super().__init__()
        self.seen = []

    def update(self, model, x, y=None):
        self.seen.append(x)
        return Update({"w.bias": x.sum(0)[:2]}, {})


def test_dreams_that_diverged_are_reported_not_trained_on():
    model, wake = Exploding(), Recording()
    x = torch.zeros(64, 3)
    metrics = SleepInterleaved(wake, ratio=1, seed=4).update(model, x).metrics
    code = prior_code(model, 64, 1.0, torch.Generator().manual_seed(4))
    finite = (code <= 0).all(1)
    assert 0 < finite.sum() < 64 and metrics["sleep_unusable"] == int((~finite).sum())
    assert torch.equal(wake.seen[1], torch.ones(int(finite.sum()), 3))   # only the finite dreams


def test_the_configs_select_the_learners_in_wake_sleep_or_both():
    base = ["rule=sleep", "model=helmholtz", "data=bars", "trainer.device=cpu"]
    cases = {(): (type(None), type(None)),
             ("rule/sleep_learner=node_perturbation",): (RecognitionNodePerturbation, type(None)),
             ("rule.ratio=0", "rule/sleep_learner@rule.wake_learner=node_perturbation"): (type(None), RecognitionNodePerturbation),
             ("rule/sleep_learner=weight_perturbation", "rule/sleep_learner@rule.wake_learner=exact"):
                 (RecognitionWeightPerturbation, RecognitionExact),
             ("rule/sleep_learner=delta",): (RecognitionDelta, type(None))}
    for overrides, (sleep, wake) in cases.items():
        rule = build(composed([*base, *overrides]))[2]
        assert type(rule.sleep_learner) is sleep and type(rule.wake_learner) is wake, overrides


def test_sleep_and_wake_learners_from_one_config_draw_independent_noise():
    """Perturbation in both phases from one config file (both learners seeded by ${seed}): the two
    learners' noise streams differ, else the wake and the sleep estimates would share their probes."""
    rule = build(composed(["rule=sleep", "model=helmholtz", "data=bars", "trainer.device=cpu",
                           "rule/sleep_learner=node_perturbation",
                           "rule/sleep_learner@rule.wake_learner=node_perturbation"]))[2]
    sleep = torch.randn(64, generator=rule.sleep_learner.generator)
    wake = torch.randn(64, generator=rule.wake_learner.generator)
    assert torch.corrcoef(torch.stack([sleep, wake]))[0, 1].abs() < 0.5
