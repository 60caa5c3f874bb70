"""The conv nets' optimised paths (issue 20 item 6, issue 22 item 1) against the plain ones and independent
answers: the fused Gauss–Seidel sweeps (dynets.models.fused.CoupledSweeps) against the plain sweep over the
blocks (steppers.GaussSeidel), the same states, residuals and steps bit for bit in float64, in every kind of
phase, and the convolutions they leave out really left out; EP's update against float64."""
import itertools

import pytest
import torch

from dynets import Condition, SettleOptions
from dynets.costs import CrossEntropy
from dynets.models import ConvAsymmetric, ConvHopfield, ConvPredictiveCoding
from dynets.studies.bench_references import CONV_NET
from dynets.models.fused import CoupledSweeps
from dynets.rules import PredictiveCodingRule
from dynets.steppers import STEPPERS, GaussSeidel

from test_fused import assert_identical, plain_and_fused

ARCHS = {   # "deep": an odd layer under a max-pooled convolution, whose g reads the layer itself
    "max": dict(in_size=6, channels=[1, 2], kernels=[3], strides=[1], paddings=[1], pools=["max"], fc=[4, 3]),
    "avg": dict(in_size=6, channels=[1, 2], kernels=[3], strides=[1], paddings=[1], pools=["avg"], fc=[3]),
    "two": dict(in_size=6, channels=[1, 3, 2], kernels=[3, 2], strides=[1, 2], paddings=[1, 0], pools=["max", "none"],
                fc=[3]),
    "deep": dict(in_size=16, channels=[1, 2, 3, 2], kernels=[3, 3, 3], strides=[1, 1, 1], paddings=[1, 1, 1],
                 pools=["max", "max", "max"], fc=[3]),
}
CPU = torch.device("cpu")


def problem(arch, softmax=False, activation="hard_sigmoid", model_class=ConvHopfield, **kw):
    torch.manual_seed(0)
    model = model_class(**ARCHS[arch], activation=activation, **({"softmax": True} if softmax else {}), **kw).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    x = torch.rand(8, 1, ARCHS[arch]["in_size"], ARCHS[arch]["in_size"], dtype=torch.float64)
    return model, x, torch.arange(8) % 3


def phases(model, x, y):
    """Free, nudged ±β and a large anti-nudge (squared error or, with softmax, cross-entropy), noise on
    every layer, and (without softmax) the output clamped."""
    cost = CrossEntropy() if model.softmax else None
    c = model.prepare(Condition(x, model.target(y), **({"cost": cost} if cost else {})))
    noise = {l: 0.1 * torch.randn(x.shape[0], *shape, dtype=x.dtype) for l, shape in enumerate(model.shapes)}
    out = [c, *(c.nudged(b) for b in (0.5, -0.5, -2.0)),
           Condition(x, c.target, 0.5, **({"cost": cost} if cost else {}), noise=noise, constants=c.constants)]
    return out + ([] if model.softmax else [c.clamped({-1: c.target})])


@pytest.mark.parametrize("arch, softmax, activation", [
    *itertools.product(list(ARCHS), [False, True], ["hard_sigmoid"]), ("max", False, "tanh"), ("deep", True, "tanh")])
def test_conv_sweeps_are_the_plain_sweeps(arch, softmax, activation):
    model, x, y = problem(arch, softmax, activation)
    for phase, dt in itertools.product(phases(model, x, y), [1.0, 0.7]):
        assert isinstance(STEPPERS["gauss_seidel"](model, phase, "off", CPU), CoupledSweeps)
        free = plain_and_fused(model, phases(model, x, y)[0])[0]
        assert_identical(*plain_and_fused(model, phase, free.state, dt))


@pytest.mark.parametrize("feedback", ["random", "tied"])
def test_conv_asymmetric_takes_the_same_sweeps(feedback):
    model, x, y = problem("deep", model_class=ConvAsymmetric, feedback_mode=feedback)
    for phase in phases(model, x, y)[:3]:
        assert_identical(*plain_and_fused(model, phase))


def convolutions(model):
    """The couplings of ``model`` whose convolution (``("conv", k)``) or transposed convolution
    (``("transpose", k)``) runs, in order: a forward hook on each nn.Conv2d, a wrapper on each adjoint."""
    calls = []
    for k, c in enumerate(model.couplings[:-1]):
        c.conv.register_forward_hook(lambda *_, k=k: calls.append(("conv", k)))
        c._transpose = lambda e, k=k, f=c._transpose: (calls.append(("transpose", k)), f(e))[1]
    return calls


@pytest.mark.parametrize("arch, again", [("two", []), ("deep", [("conv", 1), ("conv", 2), ("transpose", 2)] * 2)])
def test_a_residual_check_convolves_only_under_the_layers_that_read_themselves(arch, again):
    """settle checks the residual at the state one step before a check and at the check; the MNIST CNN's
    layout ("two": conv-pool, conv, dense) then convolves nothing, where the plain loop convolved the odd
    layer's input again for each. In "deep" layer 1 sits under a max-pooled convolution (coupling 2),
    whose arg-max moves with it: its g is evaluated again at each of the two states, as the plain loop does."""
    model, x, y = problem(arch)
    c = model.prepare(Condition(x, model.target(y), 0.5))
    stepper, plain = STEPPERS["gauss_seidel"](model, c, "off", CPU), GaussSeidel(model, c, "off", CPU)
    with torch.no_grad():   # as in settle: a layer's linearisation is kept only outside autograd
        before = stepper.step(model.init_state(c), stepper.start(model.init_state(c)), 1.0)
        now = stepper.step(*before, 1.0)
        calls = convolutions(model)
        got = [stepper.residual(*before), stepper.residual(*now)]
        assert calls == again
        for state, residual in zip((before[0], now[0]), got):
            for a, b in zip(residual, plain.residual(state, plain.start(state)), strict=True):
                assert torch.equal(a, b)


def test_the_first_couplings_ep_update_is_one_product_and_accurate_in_float32():
    """The first coupling reads x in both phases: ∂⟨g_0(x), a_1 − b_1⟩/∂θ is one product, routed through
    the arg-max of the convolution of x that ``prepare`` made for the drive (two products, each convolving
    x again, before). The two products subtracted lost 3.5 % of the weight's update to cancellation in
    float32 on the MNIST CNN (states 1e-3 apart); now within 1e-5 of float64."""
    torch.manual_seed(0)
    model = ConvHopfield(**CONV_NET)
    x = torch.rand(32, 1, 28, 28)
    a = tuple(torch.rand(32, *shape) for shape in model.shapes)
    b = tuple(s + 1e-3 * torch.randn_like(s) for s in a)
    calls = []
    hook = model.couplings[0].conv.register_forward_hook(lambda *_: calls.append(1))
    got = model.param_grad_difference(a, b, model.prepare(Condition(x)))
    assert len(calls) == 1   # prepare's
    hook.remove()
    exact = model.double()
    want = exact.param_grad_difference(*(tuple(s.double() for s in z) for z in (a, b)), exact.prepare(Condition(x.double())))
    for name in ("couplings.0.conv.weight", "couplings.0.conv.bias"):
        assert (got[name].double() - want[name]).norm() <= 1e-5 * want[name].norm(), name


def test_a_conv_pc_sweep_convolves_each_layer_once_and_a_check_not_at_all():
    """The plain Gauss–Seidel sweep of ConvPredictiveCoding: each block's force used to linearise the
    couplings it touches anew, so a sweep convolved f(v_1) twice (once for each block) and a residual
    check once more; the linearisation is kept while v_1 is unchanged. The same states as the forces
    computed afresh."""
    torch.manual_seed(0)
    model = ConvPredictiveCoding(**ARCHS["deep"]).double()
    x, y = torch.rand(8, 1, 16, 16, dtype=torch.float64), torch.arange(8) % 3
    c = model.prepare(Condition(x, model.target(y), 0.5))
    stepper, calls = GaussSeidel(model, c, "off", CPU), []
    model.layers[1].conv.register_forward_hook(lambda *_: calls.append(1))   # max-pooled: f(v_1)'s
    with torch.no_grad():
        state = model.init_state(c)
        carry = stepper.start(state)
        calls.clear()
        for _ in range(3):
            state, carry = stepper.step(state, carry, 1.0)
        assert len(calls) == 3
        residual = stepper.residual(state, carry)
        assert len(calls) == 3
        afresh = GaussSeidel(model, c, "off", CPU)   # its own forces: nothing kept
        for got, want in zip(residual, afresh.residual(state, afresh.start(state)), strict=True):
            assert torch.equal(got, want)


def test_the_phases_of_a_conv_pc_step_share_the_couplings_norms(monkeypatch):
    """‖∂g_k/∂a‖₂² (30 power iterations of a convolution and its transpose) sizes every Gauss–Seidel
    phase's steps; a prepared batch computes it once for all its phases, with the same steps."""
    import dynets.models.conv_pc as conv_pc
    torch.manual_seed(0)
    model = ConvPredictiveCoding(**ARCHS["two"])
    x, y = torch.rand(8, 1, 6, 6), torch.arange(8) % 3
    c = model.prepare(Condition(x, model.target(y), 0.1))
    want = model.curvature_steps(Condition(x, c.target, 0.1))   # unprepared: computed afresh
    calls = []
    monkeypatch.setattr(conv_pc, "coupling_squared_norm", lambda *a, f=conv_pc.coupling_squared_norm: (calls.append(1), f(*a))[1])
    rule = PredictiveCodingRule(0.1, "centered", SettleOptions(method="gauss_seidel", atol=1e-5, max_time=400))
    rule.update(model, x, y)   # free, +β and −β phases
    assert len(calls) == 2     # couplings 1 and 2: the predictions state layers 0 and 1 make
    for got, w in zip(model.curvature_steps(c), want, strict=True):
        assert torch.equal(got, w)


def test_conv_pc_gradients_convolve_each_coupling_input_once():
    """param_grads: each coupling's prediction and its parameter product share one convolution (the error
    and autograd's forward each convolved it before), the first coupling's none (the prepared batch's); the
    closed form equals autograd of F."""
    torch.manual_seed(0)
    model = ConvPredictiveCoding(**ARCHS["two"]).double()
    x, y = torch.rand(8, 1, 6, 6, dtype=torch.float64), torch.arange(8) % 3
    c = model.prepare(Condition(x, model.target(y), 0.5))
    with torch.no_grad():
        state = tuple(s + 0.1 * torch.randn_like(s) for s in model.init_state(c))
    calls = []
    for k in (0, 1):
        model.layers[k].conv.register_forward_hook(lambda *_, k=k: calls.append(k))
    got = model.param_grads(state, c)
    assert calls == [1]
    params = dict(model.named_parameters())
    want = torch.autograd.grad(model.energy(state, c).sum() / 8, list(params.values()))
    for (name, _), w in zip(params.items(), want, strict=True):
        torch.testing.assert_close(got[name], w, rtol=1e-10, atol=1e-12)
