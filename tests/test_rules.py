"""Rules against the exact gradient: EP's β-expansion, implicit differentiation vs finite
differences and vs backprop through a long unroll, hand-computed Hebbian terms."""

import math

import numpy as np
import pytest
import torch

from dynets import Condition, SettleOptions, UnconvergedError, diagnostics
from dynets.models import LayeredHopfield
from dynets.models.base import EnergyModel
from dynets.rules import BackpropThroughTime, EquilibriumPropagation, ImplicitDifferentiation, write_grads

TIGHT = SettleOptions(method="fast_euler", atol=1e-12, max_time=3000, check_every=1)


def problem(activation="sigmoid", sizes=(6, 9, 7, 3), batch=5, scale=2.0):
    model = LayeredHopfield(list(sizes), activation).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    x = torch.rand(batch, sizes[0], dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (batch,))
    return model, x, y


def flat_grads(model, rule, x, y):
    grads = rule.update(model, x, y).grads
    return torch.cat([grads[name].flatten() for name, _ in model.named_parameters()])


@pytest.fixture(scope="module")
def exact():
    torch.manual_seed(1)
    model, x, y = problem()
    ref = ImplicitDifferentiation(TIGHT, adjoint_tol=1e-13, adjoint_max_steps=100000)
    return model, x, y, flat_grads(model, ref, x, y)


@pytest.mark.parametrize("activation", ["sigmoid", "hard_sigmoid"])
def test_centered_ep_aligns_with_exact_gradient(activation):
    model, x, y = problem(activation)
    ref = ImplicitDifferentiation(TIGHT, adjoint_tol=1e-13, adjoint_max_steps=100000)
    a = diagnostics.alignment(model, EquilibriumPropagation(0.01, "centered", TIGHT), ref, x, y)
    assert a["all"]["cosine"] >= 0.999 and abs(a["all"]["norm_ratio"] - 1) < 0.01


@pytest.mark.parametrize("variant,order", [("centered", 2), ("positive", 1), ("negative", 1)])
def test_ep_error_shrinks_at_the_theoretical_rate(exact, variant, order):
    model, x, y, g = exact
    betas = [0.2, 0.1, 0.05, 0.025]
    errors = [(flat_grads(model, EquilibriumPropagation(b, variant, TIGHT), x, y) - g).norm().item() for b in betas]
    slope = np.polyfit(np.log(betas), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.15, (variant, slope, errors)


def loss_at_equilibrium(model, x, y):
    eq = TIGHT(model, Condition(x))
    return model.cost(eq.state, Condition(x, model.target(y))).mean().item()


def test_implicit_gradient_matches_finite_differences(exact):
    model, x, y, g = exact
    direction = [torch.randn_like(p) for p in model.parameters()]
    eps = 1e-5

    def shifted(sign):
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction):
                p.add_(sign * eps * d)
        value = loss_at_equilibrium(model, x, y)
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction):
                p.sub_(sign * eps * d)
        return value

    fd = (shifted(1) - shifted(-1)) / (2 * eps)
    analytic = (g @ torch.cat([d.flatten() for d in direction])).item()
    assert fd == pytest.approx(analytic, rel=1e-5)


def test_implicit_gradient_is_the_limit_of_long_bptt(exact):
    model, x, y, g = exact
    short = flat_grads(model, BackpropThroughTime(steps=5, step_size=0.5), x, y)
    long = flat_grads(model, BackpropThroughTime(steps=400, step_size=0.5), x, y)
    assert (long - g).norm() < 1e-8 * g.norm()
    assert (short - g).norm() > 1e-2 * g.norm()   # a short unroll is not the equilibrium gradient


@pytest.mark.parametrize("activation", ["hard_sigmoid", "sigmoid"])
def test_parameter_gradient_is_the_hebbian_outer_product(activation):
    """∂F/∂W_l = −mean_b s_{l+1} s_lᵀ and ∂F/∂b_l = −mean_b s_{l+1}: by hand, and the
    closed form agrees with autograd of F (the generic EnergyModel path)."""
    model, x, y = problem(activation)
    c = Condition(x, model.target(y), 0.5)
    eq = TIGHT(model, c)
    layers = (x,) + eq.state
    by_hand = []
    for l in range(len(model.layers)):
        by_hand += [-layers[l + 1].T @ layers[l] / len(x), -layers[l + 1].mean(0)]
    autograd = EnergyModel.param_grads(model, eq.state, c)
    for closed, want, auto in zip(model.param_grads(eq.state, c).values(), by_hand, autograd.values(), strict=True):
        torch.testing.assert_close(closed, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(auto, want, rtol=1e-12, atol=1e-12)


def test_ep_step_lowers_the_loss():
    model, x, y = problem("hard_sigmoid", batch=16)
    before = loss_at_equilibrium(model, x, y)
    write_grads(model, EquilibriumPropagation(0.1, "centered", TIGHT).update(model, x, y).grads)
    torch.optim.SGD(model.parameters(), lr=0.05).step()
    assert loss_at_equilibrium(model, x, y) < before


def test_bad_rule_options_list_valid_ones():
    with pytest.raises(ValueError, match="centered"):
        EquilibriumPropagation(0.1, "symmetric")
    with pytest.raises(ValueError, match="beta"):
        EquilibriumPropagation(0.0)


# TensorFloat-32 changes only CUDA matmuls: on CPU a tf32 settle is fp32, so the case
# would compare fp32 with itself and could not fail.
TF32 = pytest.param("tf32", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                     reason="tf32 has no effect on CPU: needs a CUDA device"))


@pytest.mark.parametrize("method,dt", [("fast_euler", 0.5), ("gauss_seidel", 1.0), ("gauss_seidel", 0.5)])
@pytest.mark.parametrize("precision", ["bf16", TF32])
def test_reduced_precision_keeps_ep_aligned(precision, method, dt):
    """EP settled with reduced-precision matmuls stays aligned with the exact fp32
    gradient: cosine ≥ 0.97, and within 0.01 of fp32 EP's own cosine, but not equal to
    it (the precision really changed the arithmetic); the state stays fp32. On the GPU
    when there is one (tf32 needs it)."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = LayeredHopfield([784, 512, 10]).to(device)
    x, y = torch.rand(64, 784, device=device), torch.randint(0, 10, (64,), device=device)
    ref = ImplicitDifferentiation(SettleOptions(method="fast_euler", atol=1e-6, max_time=200))
    cosines = {}
    for p in ("fp32", precision):
        # A fixed budget of 100 steps (atol=0): bf16 can chatter at a residual floor (up to
        # ≈ 2⁻⁸‖s‖), below which a tolerance would never be met.
        opts = SettleOptions(method=method, step_size=dt, atol=0.0, max_time=100 * dt, precision=p)
        ep = EquilibriumPropagation(0.1, "centered", opts, allow_unconverged=True)   # a budget, not a tolerance
        cosines[p] = diagnostics.alignment(model, ep, ref, x, y)["all"]["cosine"]
        assert all(s.dtype == torch.float32 for s in opts(model, Condition(x)).state)
    assert cosines[precision] >= 0.97 and abs(cosines[precision] - cosines["fp32"]) <= 0.01, cosines
    assert cosines[precision] != cosines["fp32"]
    assert torch.get_float32_matmul_precision() == "highest"   # global setting restored


def test_closed_form_phase_difference_matches_autograd():
    """The closed-form Hebbian difference against autograd of F at each state (not the
    generic path, which calls the closed-form param_grads)."""
    model, x, y = problem("hard_sigmoid")
    c = Condition(x, model.target(y))
    a, b = TIGHT(model, c.nudged(0.3)).state, TIGHT(model, c.nudged(-0.3)).state

    def autograd_of_F(state):
        names, params = zip(*model.named_parameters())
        return dict(zip(names, torch.autograd.grad(model.total_energy(state, c).mean(), params)))

    ga, gb = autograd_of_F(a), autograd_of_F(b)
    for scale in (1.0, -1.7):
        closed = model.param_grad_difference(a, b, c, scale)
        assert closed.keys() == ga.keys()
        for name in ga:
            torch.testing.assert_close(closed[name], scale * (ga[name] - gb[name]), rtol=1e-10, atol=1e-12)


def test_reused_condition_reads_the_current_weights():
    """An unprepared condition reused after the weights change (an optimizer step,
    a ``p.data`` edit that does not bump ``_version``, weights swapped in with
    ``functional_call``) settles exactly like a fresh one: no hidden cache."""
    model, x, y = problem("hard_sigmoid")
    c = Condition(x, model.target(y))
    TIGHT(model, c)
    write_grads(model, EquilibriumPropagation(0.1, "centered", TIGHT).update(model, x, y).grads)
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    torch.testing.assert_close(TIGHT(model, c.nudged(0.2)).state, TIGHT(model, Condition(x, model.target(y), 0.2)).state,
                               rtol=0, atol=0)
    model.layers[0].weight.data.mul_(1.5)
    torch.testing.assert_close(TIGHT(model, c).state, TIGHT(model, Condition(x)).state, rtol=0, atol=0)
    swapped = {n: p.detach() * 0.5 for n, p in model.named_parameters()}
    halved = LayeredHopfield(model.sizes).double()
    halved.load_state_dict(swapped)

    class Settled(torch.nn.Module):   # functional_call swaps the weights in for one forward
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, condition):
            return TIGHT(self.net, condition).state

    got = torch.func.functional_call(Settled(), {f"net.{n}": p for n, p in swapped.items()}, (c,))
    torch.testing.assert_close(got, TIGHT(halved, Condition(x)).state, rtol=0, atol=0)


def test_negative_phase_of_a_net_with_no_hidden_layer():
    """LayeredHopfield([20, 5]): the −β phase settled on the condition shared (prepared)
    with the +β phase equals a settle on a fresh condition (the input drive of a one-layer
    net is also its top drive: a memo holding β·y gave the −β phase the +β drive)."""
    torch.manual_seed(0)
    model = LayeredHopfield([20, 5]).double()
    x, y = torch.rand(8, 20, dtype=torch.float64), torch.randint(0, 5, (8,))
    shared = model.prepare(Condition(x, model.target(y)))
    TIGHT(model, shared.nudged(0.5))
    for method in ("fast_euler", "euler", "gauss_seidel"):
        opts = SettleOptions(method=method, step_size=1.0 if method == "gauss_seidel" else 0.5, atol=1e-11, max_time=500)
        got = opts(model, shared.nudged(-0.5)).state
        want = opts(model, Condition(x, model.target(y), -0.5)).state
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


class Quadratic(EnergyModel):
    """E(s) = ½a‖s‖² − bᵀs, two units, x ignored. Free equilibrium s⁰ = b/a; nudged by
    β·½‖s − y‖², ds/dt = −(a + β)(s − s^β) with s^β = (b + βy)/(a + β), so an Euler step of
    Δt multiplies the distance to s^β, and the residual, by 1 − Δt(a + β)."""

    in_features, out_features = 1, 2

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, torch.nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def init_state(self, condition):
        return (torch.zeros(condition.batch, 2, dtype=torch.float64),)

    def energy(self, state, condition):
        return 0.5 * self.a * state[0].pow(2).sum(1) - state[0] @ self.b


def euler_steps_to(start, rate, dt, atol):
    """The fewest Euler steps after which a residual rate·‖start_b‖ that shrinks by
    1 − Δt·rate per step is ≤ atol for every sample b."""
    r0 = rate * start.norm(dim=1)
    return max(0, math.ceil(max(math.log(atol / r) / math.log(1 - dt * rate) for r in r0.tolist())))


def test_nudged_phases_start_from_the_free_equilibrium():
    """EP's nudged phases start at s⁰ (warm start), a distance β‖y − s⁰‖/(a + β) from s^β,
    not at rest (‖s^β‖ away): the steps each takes are those computed by hand from s⁰."""
    a, beta, dt, atol = 1.0, 0.01, 0.5, 1e-8
    model, y = Quadratic(a, [0.3, 0.6]), torch.tensor([0, 1, 1])
    x, target = torch.zeros(3, 1, dtype=torch.float64), model.target(y)
    free = SettleOptions(method="fast_euler", step_size=dt, atol=1e-14, max_time=500)
    nudged = SettleOptions(method="fast_euler", step_size=dt, atol=atol, max_time=500, check_every=1)
    metrics = EquilibriumPropagation(beta, "centered", free, nudged).update(model, x, y).metrics
    s0 = model.b.detach() / a
    for sign, b in (("+", beta), ("-", -beta)):
        s_beta = (s0 + b * target) / (a + b)
        from_free, from_rest = (euler_steps_to(start - s_beta, a + b, dt, atol) for start in (s0, 0 * s_beta))
        assert from_free < from_rest   # the test tells the two apart
        assert metrics[f"steps_nudged_{sign}"] == from_free


def test_adjoint_converged_is_false_at_the_step_cap(exact, caplog):
    """The adjoint that needs N iterations reports adjoint_converged 1.0 with a cap of N, and
    0.0 with a cap of N − 1 or N/4, its gradient visibly off the exact one and a warning
    naming the option."""
    model, x, y, g = exact

    def run(cap):
        rule = ImplicitDifferentiation(TIGHT, adjoint_tol=1e-8, adjoint_max_steps=cap)
        update = rule.update(model, x, y)
        return update.metrics, torch.cat([update.grads[name].flatten() for name, _ in model.named_parameters()])

    enough, _ = run(100000)
    n = enough["adjoint_steps"]
    assert enough["adjoint_converged"] == 1.0 and enough["adjoint_residual"] <= 1e-8 and 1 < n < 100000
    at_cap, _ = run(n)
    assert (at_cap["adjoint_converged"], at_cap["adjoint_steps"]) == (1.0, n)
    assert "did not converge" not in caplog.text
    short, grad = run(n // 4)
    assert (short["adjoint_converged"], short["adjoint_steps"]) == (0.0, n // 4) and short["adjoint_residual"] > 1e-8
    assert (grad - g).norm() > 1e-6 * g.norm()
    assert "adjoint did not converge" in caplog.text and "adjoint_max_steps" in caplog.text
    assert run(n - 1)[0]["adjoint_converged"] == 0.0


def test_adjoint_solves_the_linear_system_where_relaxation_diverges():
    """Issue 18: PC with cross-entropy and large weights, where the adjoint relaxation
    dw/dτ = Jᵀw + g at Δτ = 0.5 diverges (0.5·max|λ(J)| > 2). The adjoint is the solution of
    Jᵀw = −∂L/∂s solved directly (torch.linalg.solve on the explicit Jacobian per sample),
    and its gradient is backprop's through the feedforward pass (the free equilibrium)."""
    from dynets.costs import CrossEntropy
    from dynets.models import PredictiveCoding
    torch.manual_seed(0)
    model = PredictiveCoding([5, 7, 6, 3], "tanh").double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    x, y, cost = torch.randn(4, 5, dtype=torch.float64), torch.randint(0, 3, (4,)), CrossEntropy()
    c = model.prepare(Condition(x, model.target(y), cost=cost))
    s = model.init_state(c)
    one = lambda b: model.dynamics(model.prepare(Condition(x[b:b + 1], c.target[b:b + 1], cost=cost)))
    rows = lambda b: lambda *v: torch.cat(one(b)(None, tuple(t.unsqueeze(0) for t in v)), 1)[0]
    jac = [torch.cat(torch.autograd.functional.jacobian(rows(b), tuple(t[b] for t in s)), 1) for b in range(4)]
    assert max(torch.linalg.eigvals(j).abs().max().item() for j in jac) * 0.5 > 2   # relaxation diverges
    with torch.enable_grad():
        v = tuple(t.detach().requires_grad_() for t in s)
        dl = torch.cat(torch.autograd.grad(model.cost(v, c).mean(), v, materialize_grads=True), 1)
        w = torch.stack([torch.linalg.solve(j.T, -d) for j, d in zip(jac, dl)])
        f = model.dynamics(c)(None, v)
        sizes = [t.shape[1] for t in v]
        want = torch.autograd.grad(f, list(model.parameters()), grad_outputs=tuple(w.split(sizes, 1)))
        backprop = torch.autograd.grad(model.cost(model.feedforward(c), c).mean(), list(model.parameters()))
    rule = ImplicitDifferentiation(TIGHT, cost=cost, adjoint_tol=1e-12)
    update = rule.update(model, x, y)
    assert update.metrics["adjoint_converged"] == 1.0
    for (name, _), a, b in zip(model.named_parameters(), want, backprop, strict=True):
        torch.testing.assert_close(update.grads[name], a, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_ep_converged_counts_the_nudged_phases():
    """A free phase that converges and nudged phases cut short after one step: EP's
    ``converged`` is the least converged fraction of the three phases, here the nudged ones'.
    Such an update is refused (an error naming the option) unless allowed, and then counted."""
    model, x, y = problem("hard_sigmoid")
    one_step = SettleOptions(method="fast_euler", atol=1e-12, max_time=0.5)
    with pytest.raises(UnconvergedError, match=r"nudged_\+ phase left .* rule\.allow_unconverged=true"):
        EquilibriumPropagation(0.1, "centered", TIGHT, one_step).update(model, x, y)
    metrics = EquilibriumPropagation(0.1, "centered", TIGHT, one_step, allow_unconverged=True).update(model, x, y).metrics
    c = Condition(x, model.target(y))
    free = TIGHT(model, c)
    fractions = [one_step(model, c.nudged(b), init=free.state).converged_fraction for b in (0.1, -0.1)]
    assert free.converged and min(fractions) < 1.0
    assert metrics["converged"] == min(fractions) and metrics["unconverged_updates"] == 1.0
    assert EquilibriumPropagation(0.1, "centered", TIGHT, allow_unconverged=True).update(model, x, y).metrics["unconverged_updates"] == 0.0


def _rules_that_settle():
    from dynets.models import Asymmetric, PredictiveCoding
    from dynets.rules import (ContrastiveHebbian, DifferenceTargetPropagation, FeedbackAlignment, KolenPollack,
                              NodePerturbation, PredictiveCodingRule, VectorFieldEP, WeightMirror,
                              WeightPerturbation)
    hopfield, asym = lambda: LayeredHopfield([4, 5, 3], "sigmoid"), lambda: Asymmetric([4, 5, 3], "learned", "sigmoid")
    return [(EquilibriumPropagation, hopfield), (ContrastiveHebbian, hopfield), (ImplicitDifferentiation, hopfield),
            (NodePerturbation, hopfield), (WeightPerturbation, hopfield),
            (PredictiveCodingRule, lambda: PredictiveCoding([4, 5, 3])),
            (FeedbackAlignment, asym), (VectorFieldEP, asym), (KolenPollack, asym), (WeightMirror, asym),
            (DifferenceTargetPropagation, asym)]


@pytest.mark.parametrize("rule_class, model_of", _rules_that_settle(), ids=lambda v: getattr(v, "__name__", ""))
def test_every_rule_refuses_an_update_from_unconverged_phases_unless_allowed(rule_class, model_of):
    """One settle step to a tolerance of 1e-12: some phase does not converge. Refused by
    default (an error naming the option); allowed, an update is returned and counted."""
    torch.manual_seed(0)
    model, x, y = model_of().double(), torch.rand(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    short = SettleOptions(method="fast_euler", atol=1e-12, max_time=0.5)
    with pytest.raises(UnconvergedError, match=r"phase left \d+ of \d+ samples .*rule\.allow_unconverged=true"):
        rule_class(settle=short).update(model, x, y)
    update = rule_class(settle=short, allow_unconverged=True).update(model, x, y)
    assert update.metrics["unconverged_updates"] == 1.0
    assert update.grads
