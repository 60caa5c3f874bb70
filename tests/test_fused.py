"""The models' fused Gauss–Seidel sweeps (dynets.models.fused) against the plain sweep over their
blocks (steppers.GaussSeidel): the same states, residuals and steps, bit for bit, in every kind of
phase; and the work they leave out really left out."""
import itertools

import pytest
import torch

from dynets import Condition, SettleOptions, settle
from dynets.costs import CrossEntropy
from dynets.models import Asymmetric, LayeredHopfield, PredictiveCoding
from dynets.models.fused import LayeredSweeps, PredictiveCodingSweeps
from dynets.rules import PredictiveCodingRule
from dynets.settle import _fast_loop, initial_state
from dynets.steppers import STEPPERS, GaussSeidel

X, Y = torch.rand(16, 20, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 5


def plain_and_fused(model, condition, init=None, step_size=1.0):
    """The plain loop's and settle's (fused) equilibria of one phase."""
    options = SettleOptions(method="gauss_seidel", step_size=step_size, atol=1e-5, max_time=200)
    with torch.no_grad():
        stepper = GaussSeidel(model, condition, "off", torch.device("cpu"))
        plain = _fast_loop(stepper, initial_state(model, condition, init), options, False)
    return plain, settle(model, condition, init, options=options)


def assert_identical(plain, fused):
    assert plain.steps == fused.steps and plain.converged == fused.converged
    assert torch.equal(plain.residual, fused.residual)
    for a, b in zip(plain.state, fused.state, strict=True):
        assert torch.equal(a, b)


def phases(condition):
    """Free, nudged ±β (the squared error and cross-entropy), a large anti-nudge, the output clamped."""
    nudged = [condition.nudged(b) for b in (0.5, -0.5, -2.0)]
    entropy = [Condition(condition.x, condition.target, b, cost=CrossEntropy(), constants=condition.constants)
               for b in (0.5, -0.5)]
    return [condition, *nudged, *entropy, condition.clamped({-1: condition.target})]


@pytest.mark.parametrize("activation, sizes", list(itertools.product(["hard_sigmoid", "sigmoid", "tanh"],
                                                                 [[20, 12, 5], [20, 12, 8, 5]])))
def test_layered_sweeps_are_the_plain_sweeps(activation, sizes):
    """Both parities of the top layer, and the top updates that read the top itself (cross-entropy;
    tanh at β = −2, where the block is not convex and the exact update gives way to the plain one)."""
    torch.manual_seed(0)
    model = LayeredHopfield(sizes, activation, init_gain=2.0)
    c = model.prepare(Condition(X, model.target(Y)))
    free = settle(model, c, method="gauss_seidel", atol=1e-6, max_time=400)
    for phase, dt in itertools.product(phases(c), [1.0, 0.7]):
        assert_identical(*plain_and_fused(model, phase, free.state, dt))


def test_asymmetric_and_noisy_phases_take_the_same_sweeps():
    torch.manual_seed(1)
    model = Asymmetric([20, 12, 8, 5], "random", "sigmoid")
    c = model.prepare(Condition(X, model.target(Y)))
    noisy = Condition(X, c.target, 0.5, noise={1: torch.randn(16, 8)}, constants=c.constants)
    for phase in (c, noisy):
        assert_identical(*plain_and_fused(model, phase))


@pytest.mark.parametrize("arrangement, sizes", list(itertools.product(["discriminative", "generative"],
                                                                 [[20, 12, 5], [20, 12, 8, 5]])))
def test_predictive_coding_sweeps_are_the_plain_sweeps(arrangement, sizes):
    torch.manual_seed(0)
    model = PredictiveCoding(sizes, "tanh", arrangement)
    target = model.target(Y) if arrangement == "discriminative" else torch.rand(16, sizes[-1])
    c = model.prepare(Condition(X, target))
    noisy = Condition(X, target, 0.3, noise={-2: torch.randn(16, sizes[-2])}, constants=c.constants)
    for phase, dt in itertools.product([*phases(c)[:3], phases(c)[-1], noisy], [1.0, 0.7]):
        assert_identical(*plain_and_fused(model, phase, None, dt))


def counting(fn, calls):
    def counted(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    return counted


def test_a_residual_check_of_layered_sweeps_evaluates_nothing():
    model = LayeredHopfield([20, 12, 5], "hard_sigmoid")
    c = model.prepare(Condition(X, model.target(Y), 0.5))
    stepper = STEPPERS["gauss_seidel"](model, c, "off", torch.device("cpu"))
    assert isinstance(stepper, LayeredSweeps)
    state, carry = stepper.step(model.init_state(c), stepper.start(model.init_state(c)), 1.0)
    calls = []
    stepper.u = counting(stepper.u, calls)
    plain = GaussSeidel(model, c, "off", torch.device("cpu"))
    for got, want in zip(stepper.residual(state, carry), plain.residual(state, plain.start(state)), strict=True):
        assert torch.equal(got, want)
    assert calls == []


def test_predictive_coding_sweeps_apply_f_once_per_move_of_a_layer():
    """784-512-10's shape in small: one hidden layer, so f(v_1) once per sweep (the plain sweep: twice,
    and once more at each check)."""
    model = PredictiveCoding([20, 12, 5], "tanh")
    c = model.prepare(Condition(X, model.target(Y), 0.5))
    stepper = STEPPERS["gauss_seidel"](model, c, "off", torch.device("cpu"))
    assert isinstance(stepper, PredictiveCodingSweeps)
    calls, f = [], model.act
    model.act = type(f)(counting(f.f, calls), f.df, f.slope)
    stepper = STEPPERS["gauss_seidel"](model, c, "off", torch.device("cpu"))
    state = model.init_state(c)   # the feedforward pass: f once
    carry = stepper.start(state)
    for _ in range(3):
        state, carry = stepper.step(state, carry, 1.0)
        stepper.residual(state, carry)
    assert len(calls) == 1 + 1 + 3


def test_a_subclass_with_blocks_of_its_own_gets_the_plain_sweep():
    class Own(LayeredHopfield):
        def blocks(self, condition):
            return super().blocks(condition)

    model = Own([20, 12, 5])
    c = model.prepare(Condition(X, model.target(Y)))
    assert isinstance(STEPPERS["gauss_seidel"](model, c, "off", torch.device("cpu")), GaussSeidel)
    assert isinstance(STEPPERS["gauss_seidel"](LayeredHopfield([20, 12, 5]), c, "on", torch.device("cpu")),
                      GaussSeidel)   # a compiled loop compiles the plain step


def test_predictive_coding_gradients_build_no_graph_and_reuse_the_prepared_prediction():
    """param_grads under autograd used to recompute μ_1 = W_1 x + b_1 (the step's largest matmul)
    with a graph; the closed form needs neither."""
    model = PredictiveCoding([20, 12, 5], "tanh")
    c = model.prepare(Condition(X, model.target(Y), 0.1))
    state = settle(model, c, method="gauss_seidel", atol=1e-6, max_time=200).state
    grads = model.param_grads(state, c)
    with torch.no_grad():
        want = model.param_grads(state, c)
    assert not any(g.requires_grad for g in grads.values())
    for name in want:
        assert torch.equal(grads[name], want[name])


def test_the_phases_of_a_predictive_coding_step_share_the_weights_norms(monkeypatch):
    """‖W_k‖₂² (30 power iterations each) sizes every Gauss–Seidel phase's steps; a prepared batch
    computes it once for all its phases (it used to be once per phase), with the same steps."""
    import dynets.models.pc as pc
    model = PredictiveCoding([20, 12, 8, 5], "tanh")
    c = model.prepare(Condition(X, model.target(Y), 0.1))
    want = model.curvature_steps(Condition(X, c.target, 0.1))   # unprepared: computed afresh
    calls = []
    monkeypatch.setattr(pc, "_squared_norm", counting(pc._squared_norm, calls))
    rule = PredictiveCodingRule(0.1, "centered", SettleOptions(method="gauss_seidel", atol=1e-6, max_time=200))
    rule.update(model, X, Y)   # free, +β and −β phases
    assert len(calls) == 2     # edges 1 and 2: the predictions state layers 0 and 1 make
    for got, w in zip(model.curvature_steps(c), want, strict=True):
        assert torch.equal(got, w)
