"""Node and weight perturbation against independent answers: the exact gradient
(implicit differentiation, backprop), the 1/√p law of a single probe, the σ-order of the
antithetic estimate, and what a step leaves in the module's parameters."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from dynets import Condition, SettleOptions, diagnostics
from dynets.models import LayeredHopfield, PredictiveCoding
from dynets.rules import ImplicitDifferentiation, write_grads
from dynets.rules.perturbation import NodePerturbation, WeightPerturbation, drive_to_params

TIGHT = SettleOptions(method="fast_euler", step_size=0.2, atol=1e-12, max_time=3000, check_every=20)
# LayeredHopfield settles stably with twice the step: a third of the steps (fast tests).
QUICK = SettleOptions(method="fast_euler", step_size=0.5, atol=1e-10, max_time=1000, check_every=20)
REF = ImplicitDifferentiation(TIGHT, adjoint_tol=1e-12, adjoint_max_steps=100000)


def problem(kind="hopfield", sizes=(6, 9, 7, 3), batch=4, seed=0):
    torch.manual_seed(seed)
    model = (LayeredHopfield(list(sizes), "sigmoid") if kind == "hopfield" else PredictiveCoding(list(sizes), "tanh")).double()
    x = torch.rand(batch, sizes[0], dtype=torch.float64)
    return model, x, torch.randint(0, sizes[-1], (batch,))


def grads_of(model, rule, x, y):
    grads = rule.update(model, x, y).grads
    return {n: grads[n] for n, _ in model.named_parameters()}


def flat(grads, names=None):
    return torch.cat([grads[n].flatten() for n in (names or grads)])


def cosine(a, b):
    return (a @ b / (a.norm() * b.norm())).item()


def mean_abs_cosine(p):
    """E|cos(z, g)| for z ~ N(0, I_p): the mean cosine of a single probe's estimate (g·z)z
    with g, Γ(p/2)/(√π Γ((p+1)/2)) ≈ √(2/(πp))."""
    return math.exp(math.lgamma(p / 2) - math.lgamma((p + 1) / 2)) / math.sqrt(math.pi)


@pytest.mark.parametrize("kind", ["hopfield", "pc"])
def test_node_perturbation_averages_to_the_exact_gradient(kind):
    model, x, y = problem(kind)
    exact = flat(grads_of(model, REF, x, y))
    settle = QUICK if kind == "hopfield" else TIGHT
    estimate = flat(grads_of(model, NodePerturbation(1e-3, 1500, settle=settle), x, y))
    assert cosine(estimate, exact) >= 0.95
    assert 0.8 < (estimate.norm() / exact.norm()).item() < 1.25


def test_weight_perturbation_averages_to_the_exact_gradient():
    model, x, y = problem(sizes=(3, 4, 2), batch=2)   # 26 weights: 400 probes give cos ≈ 0.97
    exact = flat(grads_of(model, REF, x, y))
    estimate = flat(grads_of(model, WeightPerturbation(1e-3, 400, settle=QUICK), x, y))
    assert cosine(estimate, exact) >= 0.95
    assert 0.8 < (estimate.norm() / exact.norm()).item() < 1.25   # ξ·δL/σ²: E[ξξᵀ] = σ²I


def drive_sensitivities(model, x, y, eps=1e-5):
    """Per-sample ∂C_b/∂ξ by central finite differences: one unit's drive of every sample
    shifted by ±eps at a time (sample b's cost depends on its own drive only)."""
    condition = model.prepare(Condition(x, model.target(y)))
    free = TIGHT(model, condition)
    out = []
    for l, s in enumerate(free.state):
        g = torch.empty_like(s)
        for i in range(s.shape[1]):
            shift = torch.zeros_like(s)
            shift[:, i] = eps
            c = [model.cost(TIGHT(model, Condition(x, model.target(y), noise={l: sign * shift}), init=free.state).state,
                            condition) for sign in (1, -1)]
            g[:, i] = (c[0] - c[1]) / (2 * eps)
        out.append(g)
    return condition, free, tuple(out)


@pytest.mark.parametrize("kind", ["hopfield", "pc"])
def test_drive_sensitivities_map_to_the_exact_weight_gradient(kind):
    """Given the per-sample ∂C_b/∂ξ (finite differences), the local map gives the exact
    batch gradient; on LayeredHopfield it is ⟨g_{l+1} s_lᵀ + s_{l+1} g_lᵀ⟩ computed by hand."""
    model, x, y = problem(kind)
    condition, free, g = drive_sensitivities(model, x, y)
    mapped = drive_to_params(model, condition, free, g)
    exact = grads_of(model, REF, x, y)
    for name in exact:
        torch.testing.assert_close(mapped[name], exact[name], rtol=1e-4, atol=1e-7)   # FD error
    if kind == "hopfield":
        s, B = (x,) + free.state, len(y)
        for l in range(len(model.layers)):
            hand = g[l].T @ s[l] / B   # bottom-up: W_l s_l drives layer l+1
            if l > 0:   # top-down: W_lᵀ s_{l+1} drives layer l
                hand = hand + s[l + 1].T @ g[l - 1] / B
            torch.testing.assert_close(mapped[f"layers.{l}.weight"], hand, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls,units", [(NodePerturbation, "nodes"), (WeightPerturbation, "weights")])
def test_a_single_probe_has_cosine_near_one_over_sqrt_p(cls, units):
    """Mean over 300 draws of a one-probe estimate's cosine with the exact gradient, in the
    space of the perturbed quantities (node perturbation: the drives, whose estimate is the
    bias update of a one-sample batch), against Γ(p/2)/(√π Γ((p+1)/2)) ≈ 0.8/√p."""
    model, x, y = problem(sizes=(5, 12, 8, 4), batch=1)
    exact = grads_of(model, REF, x, y)
    names = [n for n in exact if units == "weights" or n.endswith("bias")]
    p = sum(exact[n].numel() for n in names)
    rule = cls(1e-4, 1, settle=QUICK, seed=3)
    cosines = [cosine(flat(grads_of(model, rule, x, y), names), flat(exact, names)) for _ in range(300)]
    assert np.mean(cosines) == pytest.approx(mean_abs_cosine(p), rel=0.15)
    assert min(cosines) > 0   # δC·ξ points into the gradient's half-space (σ small)


@pytest.mark.parametrize("antithetic,order", [(True, 2), (False, 1)])
def test_the_sigma_dependent_error_shrinks_at_the_theoretical_rate(antithetic, order):
    """For the same directions z (same seed), ĝ(σ) = ĝ(0) + O(σ²) antithetic (the even
    orders of C cancel), + O(σ) one-sided; so ‖ĝ(σ) − ĝ(σ/2)‖ ∝ σ^order, fitted over four σ.
    (ĝ(0) averages to the gradient: the unbiasedness tests.)"""
    model, x, y = problem(batch=2)
    estimate = lambda s: flat(grads_of(model, NodePerturbation(s, 4, antithetic, seed=7, settle=TIGHT), x, y))
    sigmas = [0.2, 0.1, 0.05, 0.025, 0.0125]
    g = [estimate(s) for s in sigmas]
    errors = [(a - b).norm().item() for a, b in zip(g, g[1:])]
    slope = np.polyfit(np.log(sigmas[:-1]), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.15, (slope, errors)


@pytest.mark.parametrize("cls", [NodePerturbation, WeightPerturbation])
def test_perturbation_training_lowers_the_loss(cls):
    torch.manual_seed(0)
    model = LayeredHopfield([8, 12, 3], "sigmoid")
    x = torch.rand(24, 8)
    y = (x[:, :3] - x[:, 3:6]).argmax(1)
    settle = SettleOptions(method="fast_euler", atol=1e-6, max_time=200)
    rule = cls(0.05, 8, settle=settle)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        update = rule.update(model, x, y)
        write_grads(model, update.grads)
        losses.append(update.metrics["loss"])
        optimizer.step()
    assert np.mean(losses[-5:]) < 0.85 * losses[0], losses   # the wrong sign would raise it


def test_a_weight_perturbation_step_leaves_exactly_the_optimizer_step():
    """The perturbed weights go in functionally: after the step each parameter is bit for bit
    the old one plus SGD's −lr·grad (editing p.data by +ξ then −ξ would leave rounding)."""
    model, x, y = problem()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    write_grads(model, WeightPerturbation(0.1, 3, settle=TIGHT).update(model, x, y).grads)
    torch.optim.SGD(model.parameters(), lr=0.3).step()
    for n, p in model.named_parameters():
        assert p.grad.abs().sum() > 0
        assert torch.equal(p.detach(), before[n].add(p.grad, alpha=-0.3)), n


@pytest.mark.parametrize("kwargs,message", [
    ({"sigma": 0.0}, "sigma must be > 0"), ({"sigma": -0.1}, "sigma must be > 0"),
    ({"n_probes": 0}, "n_probes must be an integer >= 1"), ({"n_probes": 2.5}, "n_probes must be an integer >= 1"),
])
@pytest.mark.parametrize("cls", [NodePerturbation, WeightPerturbation])
def test_bad_input_is_a_clear_error(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize("cls,antithetic", [(NodePerturbation, True), (NodePerturbation, False), (WeightPerturbation, True)])
def test_unconverged_perturbed_settles_are_counted_and_left_out(cls, antithetic):
    """PC's free equilibrium is its feedforward pass (converged with no step); a perturbed
    settle cut at one step is not at equilibrium: every one is counted, none is used."""
    model, x, y = problem("pc")
    short = SettleOptions(method="fast_euler", step_size=0.2, atol=1e-12, max_time=0.2)
    rule = cls(0.1, 3, antithetic, settle=short)
    update = rule.update(model, x, y)
    metrics = update.metrics
    assert metrics["converged"] == 1.0
    assert metrics["perturbed_unconverged"] == len(rule.signs) * 3 * (len(y) if cls is NodePerturbation else len(y))
    assert update.grads.keys() == dict(model.named_parameters()).keys()
    assert all(torch.count_nonzero(g) == 0 for g in update.grads.values())


class EverySecondProbeFails:
    """The rule's settle, with the perturbed settles of every second probe reported as not
    converged (residual = inf; their states are the true ones): the free settle (the first
    call) is left alone. Node perturbation settles all probes at once, rows (sign, probe,
    sample): the − sign of probe k fails for sample b where k + b is odd. Weight perturbation
    settles each probe and sign in turn: every settle of an odd probe fails."""

    def __init__(self, options, node, probes, batch):
        self.options, self.node, self.calls = options, node, 0
        fails = (torch.arange(probes)[:, None] + torch.arange(batch)) % 2 == 1
        self.mask = torch.stack([torch.zeros_like(fails), fails]).flatten()

    def __call__(self, model, condition, init=None):
        eq, call = self.options(model, condition, init=init), self.calls
        self.calls += 1
        if call == 0:
            return eq
        fails = self.mask if self.node else torch.full_like(eq.residual, (call - 1) // 2 % 2 == 1, dtype=torch.bool)
        return replace(eq, residual=torch.where(fails, math.inf, eq.residual), converged=False)


@pytest.mark.parametrize("cls,probes", [(NodePerturbation, 10000), (WeightPerturbation, 800)])
def test_half_of_the_probes_unconverged_still_estimate_the_gradient(cls, probes):
    """The failed probes are left out and the estimate averages the usable ones: the same
    scale as the exact gradient (dividing by all K would halve it)."""
    model, x, y = problem(sizes=(3, 4, 2), batch=2)
    exact = flat(grads_of(model, REF, x, y))
    rule = cls(1e-3, probes, settle=QUICK)
    rule.settle = EverySecondProbeFails(QUICK, cls is NodePerturbation, probes, len(y))
    update = rule.update(model, x, y)
    metrics, estimate = update.metrics, flat({n: update.grads[n] for n, _ in model.named_parameters()})
    assert metrics["perturbed_unconverged"] == probes * len(y) // (2 if cls is NodePerturbation else 1)
    assert cosine(estimate, exact) >= 0.9
    assert 0.8 < (estimate.norm() / exact.norm()).item() < 1.25


def test_the_exact_cosine_metric_is_the_alignment_with_implicit_differentiation():
    model, x, y = problem()
    metrics = NodePerturbation(0.01, 5, settle=TIGHT, seed=4, exact_cosine=True).update(model, x, y).metrics
    reference = ImplicitDifferentiation(TIGHT)
    aligned = diagnostics.alignment(model, NodePerturbation(0.01, 5, settle=TIGHT, seed=4), reference, x, y)
    assert metrics["cosine_exact"] == pytest.approx(aligned["all"]["cosine"], abs=1e-9)
    assert 0 < metrics["cosine_exact"] < 1


def test_the_gamma_law_is_the_mean_cosine_of_a_random_direction():
    """The study's theory curve against Monte Carlo: E|z·u|/‖z‖, z ~ N(0, I_p), u a unit vector."""
    from dynets.studies.perturbation_scaling import single_probe_cosine
    z = torch.randn(200000, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for p in (1, 2, 7, 40):
        mc = (z[:, :p].abs()[:, 0] / z[:, :p].norm(dim=1)).mean().item()
        assert single_probe_cosine(p) == pytest.approx(mc, rel=5e-3), p
    assert single_probe_cosine(2) == pytest.approx(2 / math.pi, rel=1e-12)


@pytest.mark.slow
def test_the_study_measures_the_one_over_sqrt_p_law_on_digits():
    """The study's one-probe rows on digits: node perturbation's estimate of the drive
    sensitivities has the Γ-law cosine (within 25 %), for two widths."""
    from dynets.data import digits
    from dynets.studies.perturbation_scaling import cosine_rows
    settle = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-10, max_time=2000)
    rows = cosine_rows(digits().flat(), widths=[8, 64], probes=[1], samples=48, sigma=1e-3, settle=settle,
                       reference=ImplicitDifferentiation(settle, adjoint_tol=1e-8), progress=lambda _: None)
    drives = [r for r in rows if r["space"] == "drives"]
    assert [r["p"] for r in drives] == [18, 74]
    for r in drives:
        assert r["cos_mean"] == pytest.approx(r["cos_theory"], rel=0.25), r


class Recorded:
    """The rule's settle, recording the steps of every settle it runs (the free one first)."""

    def __init__(self, options):
        self.options, self.steps = options, []

    def __call__(self, model, condition, init=None):
        eq = self.options(model, condition, init=init)
        self.steps.append(eq.steps)
        return eq


@pytest.mark.parametrize("cls,settles", [(NodePerturbation, 1), (WeightPerturbation, 2 * 3)])
def test_steps_perturbed_are_the_perturbed_settles_steps(cls, settles):
    """Node perturbation settles its probes in one batch, weight perturbation each probe and sign
    in turn: ``steps_perturbed`` sums the steps of every settle after the free one."""
    model, x, y = problem()
    rule = cls(0.05, 3, settle=QUICK)
    rule.settle = recorded = Recorded(QUICK)
    metrics = rule.update(model, x, y).metrics
    assert len(recorded.steps) == 1 + settles and metrics["steps_free"] == recorded.steps[0]
    assert metrics["steps_perturbed"] == sum(recorded.steps[1:]) > 0


def test_node_perturbation_tiles_the_free_phase_input_drive(monkeypatch):
    """The probes' stacked settle reuses the free phase's input drive W₀x, tiled once per probe
    row: the same update and steps as preparing the stacked batch anew (float64)."""
    import dynets.rules.perturbation as perturbation
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(6, 9, generator=g, dtype=torch.float64), torch.randint(3, (6,), generator=g)
    model = LayeredHopfield([9, 7, 3], "hard_sigmoid").double()
    opts = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-9, max_time=400)
    run = lambda: NodePerturbation(n_probes=5, seed=2, settle=opts).update(model, x, y)
    tiled = run()
    monkeypatch.setattr(perturbation, "_stacked", lambda m, c, rows, noise: m.prepare(
        Condition(perturbation._tile(c.x, rows), perturbation._tile(c.target, rows), cost=c.cost, noise=noise)))
    anew = run()
    assert tiled.metrics["steps_perturbed"] == anew.metrics["steps_perturbed"]
    for name, want in anew.grads.items():
        torch.testing.assert_close(tiled.grads[name], want, rtol=1e-12, atol=1e-14)
