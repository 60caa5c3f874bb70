"""settle(method="conjugate_gradient") against independent answers: the closed-form minimiser of
a linear generative PC net, the fixed point of the plain flow (float64), the Gauss–Newton
curvature by forward-mode autograd of the errors, and the same residual stop test."""
from dataclasses import replace

import pytest
import torch

from dynets import Condition, SettleOptions, settle
from dynets.costs import CrossEntropy, SquaredError
from dynets.models import LayeredHopfield, PredictiveCoding
from dynets.settle import residual_norm

CG = SettleOptions(method="conjugate_gradient", step_size=1.0, atol=1e-10, max_time=200, check_every=2)
FLOW = SettleOptions(method="fast_euler", step_size=0.1, stability=0.9, atol=1e-10, max_time=20000, check_every=50)


def net(sizes, activation="tanh", arrangement="generative", scale=2.0, seed=0, batch=8):
    """A float64 PC net with PyTorch's initial weights ×``scale`` (stiff), and inputs."""
    torch.manual_seed(seed)
    model = PredictiveCoding(sizes, activation, arrangement).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p)) if p is getattr(model, "prior", None) else p.mul_(scale)
    return model, torch.rand(batch, sizes[0], dtype=torch.float64)


def test_a_linear_generative_net_lands_on_the_closed_form_minimiser_in_one_step():
    """F = ½‖x − Wv − b‖² + ½‖v − p‖² is minimised by v* = (I + WᵀW)⁻¹(Wᵀ(x − b) + p); the
    preconditioner is then H itself, so the first step lands there."""
    model, x = net([7, 9], "linear", scale=3.0)
    w, b, prior = model.layers[0].weight, model.layers[0].bias, model.prior
    want = torch.linalg.solve(torch.eye(9, dtype=torch.float64) + w.T @ w, ((x - b) @ w + prior).T).T
    eq = settle(model, model.prepare(Condition(x)), options=replace(CG, max_time=1.0))   # one step at most
    assert eq.converged and eq.steps == 1
    torch.testing.assert_close(eq.state[0], want.detach(), rtol=1e-10, atol=1e-10)


CASES = {
    "generative": lambda m, x: Condition(x),
    "generative, dreams with noise": lambda m, x: Condition(batch_size=len(x), noise={-2: torch.randn(len(x), 5, dtype=x.dtype)}),
    "generative, top clamped": lambda m, x: Condition(x).clamped({-1: torch.randn(len(x), 3, dtype=x.dtype)}),
    "discriminative, nudged": lambda m, x: Condition(x, torch.rand(len(x), 3, dtype=x.dtype), 0.5),
    "discriminative, nudged by -beta": lambda m, x: Condition(x, torch.rand(len(x), 3, dtype=x.dtype), -0.5),
    "discriminative, cross-entropy": lambda m, x: Condition(x, torch.rand(len(x), 3, dtype=x.dtype), 2.0,
                                                            cost=CrossEntropy()),
}


@pytest.mark.parametrize("case", CASES)
def test_it_reaches_the_fixed_point_of_the_plain_flow(case):
    """Stiff tanh nets (weights ×2; nudged by −β, ×1: at ×2 one sample of 8 stalls, its energy
    far from quadratic): the same equilibrium as Euler's flow, in far fewer steps."""
    arrangement = case.split(",")[0]
    model, x = net([8, 6, 5, 3], arrangement=arrangement, scale=1.0 if "-beta" in case else 2.0)
    c = model.prepare(CASES[case](model, x))
    flow, cg = settle(model, c, options=FLOW), settle(model, c, options=CG)
    assert flow.converged and cg.converged
    for a, b in zip(flow.state, cg.state, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-8)
    assert cg.steps < flow.steps / 5, (cg.steps, flow.steps)


@pytest.mark.parametrize("atol", [1e-2, 1e-5])
def test_it_stops_by_the_same_residual_test(atol):
    """The residual reported is ‖ds/dt‖ of the model's own field at the state returned, within
    atol; a run cut short says it did not converge."""
    model, x = net([8, 6, 5, 3])
    c = model.prepare(Condition(x))
    eq = settle(model, c, options=SettleOptions(method="conjugate_gradient", step_size=1.0, atol=atol, check_every=1))
    field = residual_norm(model.dynamics(c)(torch.zeros(()), eq.state))
    torch.testing.assert_close(eq.residual, field, rtol=0, atol=0)
    assert eq.converged and field.max() <= atol
    before = settle(model, c, options=SettleOptions(method="conjugate_gradient", step_size=1.0, atol=atol,
                                                    max_time=eq.steps - 1, check_every=1))
    assert not before.converged and before.residual.max() > atol


@pytest.mark.parametrize("arrangement, beta, cost", [("generative", 0.0, SquaredError()),
                                                     ("discriminative", 0.7, SquaredError()),
                                                     ("discriminative", -0.4, CrossEntropy())])
def test_curvature_is_gauss_newton_by_autograd(arrangement, beta, cost):
    """dᵀHd = Σ_l ‖J_l d‖² (J_l d by forward-mode autograd of the errors) + β·c·‖d_top‖², c the
    cost's curvature bound on β's side (1 for the squared error; 0 for cross-entropy nudged by −β)."""
    model, x = net([8, 6, 5, 3], arrangement=arrangement)
    c = model.prepare(Condition(x, torch.rand(len(x), 3, dtype=x.dtype), beta, cost=cost))
    state = tuple(torch.randn_like(s) for s in model.init_state(c))
    d = tuple(torch.randn_like(s) for s in state)
    jd = torch.func.jvp(lambda *s: tuple(model.errors(s, c)), state, d)[1]
    bound = cost.curvature[0 if beta < 0 else 1]
    want = sum(e.pow(2).sum(1) for e in jd) + beta * bound * d[-1].pow(2).sum(1)
    torch.testing.assert_close(model.curvature(c)(state, d), want, rtol=1e-12, atol=1e-12)


def test_bad_settings_are_errors():
    with pytest.raises(TypeError, match=r"capability Curvature.*LayeredHopfield has none: use fast_euler"):
        settle(LayeredHopfield([4, 3, 2]), Condition(torch.rand(2, 4)), options=CG)
    with pytest.raises(ValueError, match="0 < step_size < 2"):
        SettleOptions(method="conjugate_gradient", step_size=2.0)
    model, x = net([8, 6, 3])
    with pytest.raises(ValueError, match="runs eager: use compile=auto or off"):
        settle(model, Condition(x), method="conjugate_gradient", step_size=1.0, compile="on")
    model, x = net([8, 6, 3], arrangement="discriminative")
    with pytest.raises(ValueError, match="no minimum in the top layer"):
        settle(model, Condition(x, torch.rand(len(x), 3, dtype=x.dtype), -1.5), options=CG)


def test_the_benchs_two_settles_reach_one_equilibrium_at_its_tolerance():
    """scripts/bench.py's genpc line compares settles that stop at the same residual and state: F
    is 1-strongly convex up to the errors' f'' term, so ‖s_cg − s_euler‖ ≤ ‖r_cg‖ + ‖r_euler‖ ≈ 2·atol."""
    from dynets.studies.bench_genpc import CG as BENCH_CG, EULER, bench_genpc
    line = bench_genpc([20, 12], 8, torch.device("cpu"), repeats=1, warmup=0, train_steps=5)
    assert BENCH_CG.atol == EULER.atol and max(line["residual"].values()) <= EULER.atol
    assert line["max_state_difference"] <= 2 * EULER.atol
    assert line["steps_same_residual"]["cg"] < line["steps_same_residual"]["euler"]
