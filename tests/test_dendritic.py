"""The dendritic microcircuit (Sacramento et al. 2018) against independent answers: the paper's
equations written out by hand, torchdiffeq's flow, the closed-form feed-forward steady state of the
self-predicting network, and backprop's errors of that feed-forward map by autograd."""
from __future__ import annotations

import pytest
import torch
from torchdiffeq import odeint

from dynets import Condition, SettleOptions, settle
from dynets.capabilities import Blocked, Compartments, Lateral, Plastic
from dynets.models import DendriticMicrocircuit
from dynets.studies.dendritic import backprop_errors   # checked against the chain rule by hand in test_dendritic_study

SIZES = [5, 7, 6, 3]
G = dict(g_l=0.1, g_B=1.0, g_A=0.8, g_D=1.0, g_som=0.8, C=2.0)


def microcircuit(seed: int = 0, activation: str = "sigmoid", transposed: bool = False, **kw) -> DendriticMicrocircuit:
    """A float64 microcircuit with random lateral weights (not self-predicting), scaled up so that
    the layers interact; ``transposed``: W_down,k = W_up,k+1ᵀ (the case where v_A is backprop's)."""
    torch.manual_seed(seed)
    model = DendriticMicrocircuit(SIZES, activation=activation, **kw).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
        if transposed:
            for k, down in enumerate(model.down):
                down.weight.copy_(model.up[k + 1].weight.T)
    return model


def batch(seed: int = 1, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, SIZES[0], generator=g, dtype=torch.float64), torch.rand(n, SIZES[-1], generator=g, dtype=torch.float64)


def by_hand(model: DendriticMicrocircuit, state, x, target, beta, phi_out=None):
    """C du/dt of every compartment, as the issue writes the equations (squared-error teacher:
    a conductance β·g_som toward the target); ``phi_out``: the output layer's rate, and that of the
    interneurons which mirror it (default φ)."""
    phi, (g_l, g_B, g_A, g_D, g_som, C) = model.act.f, G.values()
    n, out = model.n, []
    rate = [phi] * (n - 1) + [phi_out or phi]   # of each layer k
    u = [state[2 * k] for k in range(n)]
    for k in range(n):
        v_b = (x if k == 0 else rate[k - 1](u[k - 1])) @ model.up[k].weight.T + model.up[k].bias
        if k == n - 1:
            out.append((-g_l * u[k] + g_B * (v_b - u[k]) + beta * g_som * (target - u[k])) / C)
            break
        u_i = state[2 * k + 1]
        v_a = rate[k + 1](u[k + 1]) @ model.down[k].weight.T + rate[k + 1](u_i) @ model.pi[k].weight.T
        v_i = rate[k](u[k]) @ model.ip[k].weight.T + model.ip[k].bias
        out.append((-g_l * u[k] + g_B * (v_b - u[k]) + g_A * (v_a - u[k])) / C)
        out.append((-g_l * u_i + g_D * (v_i - u_i) + g_som * (u[k + 1] - u_i)) / C)
    return out


@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_the_flow_is_the_papers_equations(beta):
    model, (x, target) = microcircuit(), batch()
    g = torch.Generator().manual_seed(3)
    state = tuple(torch.randn(s.shape, generator=g, dtype=torch.float64) for s in model.init_state(Condition(x)))
    ds = model.dynamics(Condition(x, target, beta=beta))(torch.zeros(()), state)
    for got, want in zip(ds, by_hand(model, state, x, target, beta)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_the_output_layer_may_have_its_own_rate_function():
    """output_activation=linear: the output soma's rate is its potential, in its own layer's
    read-out by W_down and in the interneurons that mirror it; the hidden layers keep φ."""
    model, (x, target) = microcircuit(output_activation="linear"), batch()
    g = torch.Generator().manual_seed(3)
    state = tuple(torch.randn(s.shape, generator=g, dtype=torch.float64) for s in model.init_state(Condition(x)))
    ds = model.dynamics(Condition(x, target, beta=0.7))(torch.zeros(()), state)
    for got, want in zip(ds, by_hand(model, state, x, target, 0.7, phi_out=lambda u: u)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert model.potentials(state, Condition(x))["apical.2"].ne(microcircuit().potentials(state, Condition(x))["apical.2"]).all()


def test_a_capacitance_slows_every_compartment_alike():
    """C du/dt is fixed by the conductances: doubling C halves ds/dt (the time constants double)."""
    (x, target), c = batch(), None
    fast, slow = microcircuit(C=1.0), microcircuit(C=2.0)
    c = Condition(x, target, beta=0.5)
    state = tuple(torch.full_like(s, 0.3) for s in fast.init_state(c))
    for a, b in zip(fast.dynamics(c)(torch.zeros(()), state), slow.dynamics(c)(torch.zeros(()), state)):
        torch.testing.assert_close(a, 2 * b)
    assert slow.time_constants(c) == tuple(2 * t for t in fast.time_constants(c))


def test_it_declares_compartments_blocks_plasticity_and_lateral_weights():
    model = microcircuit()
    assert all(isinstance(model, cap) for cap in (Compartments, Blocked, Plastic, Lateral))
    assert model.compartments() == ("soma.1", "interneuron.1", "soma.2", "interneuron.2", "soma.3")
    names = {n for n, _ in model.named_parameters()}
    assert {"up.0.weight", "up.2.bias", "down.1.weight", "ip.0.weight", "ip.1.bias", "pi.1.weight"} <= names
    assert set(model.lateral_names()) == {n for n in names if n.startswith(("ip.", "pi."))}
    assert not any(p.requires_grad for p in model.down.parameters())
    assert all(p.requires_grad for p in microcircuit(learn_down=True).down.parameters())


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_gauss_seidel_fast_euler_and_dopri5_reach_the_same_fixed_point(beta):
    model, (x, target) = microcircuit(), batch()
    c = Condition(x, target, beta=beta)
    ends = [settle(model, c, method=m, step_size=dt, atol=1e-10, max_time=400, solver_rtol=1e-11, solver_atol=1e-12)
            for m, dt in (("gauss_seidel", 0.5), ("fast_euler", 0.2), ("dopri5", 0.5))]
    assert all(eq.converged for eq in ends)
    for eq in ends[1:]:
        for a, b in zip(eq.state, ends[0].state):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


@pytest.mark.parametrize("method", ["gauss_seidel", "fast_euler"])
def test_small_steps_follow_the_flow_with_its_time_constants(method):
    """At Δt = 1e-3 a Gauss–Seidel sweep (each compartment stepped by Δt/τ) and Euler follow
    dopri5's trajectory of the same flow: the time constants are honoured along the way."""
    model, (x, target) = microcircuit(C=1.5), batch()
    c = Condition(x, target, beta=0.5)
    opts = SettleOptions(method=method, step_size=1e-3, atol=0.0, max_time=1.0, check_every=1)
    path = dict((round(t, 6), s) for t, s in settle(model, c, options=opts, record=True).trajectory)
    times = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    exact = odeint(model.dynamics(c), model.init_state(c), times, method="dopri5", rtol=1e-10, atol=1e-12)
    for i, t in enumerate(times.tolist()[1:], start=1):
        for layer, s in enumerate(path[t]):
            torch.testing.assert_close(s, exact[layer][i], rtol=0, atol=5e-3)


def test_the_self_predicting_free_state_is_feedforward_with_scaled_weights():
    """Closed form by hand: u_k = g_B/(g_l + g_B + g_A)·v_B,k (g_B/(g_l + g_B) at the output),
    the interneurons at the next layer's soma, and no apical potential."""
    model, (x, _) = microcircuit(), batch()
    model.self_predicting_()
    g_l, g_B, g_A = G["g_l"], G["g_B"], G["g_A"]
    r, u = x, []
    for k, up in enumerate(model.up):
        u.append((g_B / (g_l + g_B + (g_A if k < model.n - 1 else 0.0))) * (r @ up.weight.T + up.bias))
        r = model.act.f(u[-1])
    want = [u[0], u[1], u[1], u[2], u[2]]   # u_1, u_I1 = u_2, u_2, u_I2 = u_3, u_3
    c = Condition(x)
    eq = settle(model, c, method="gauss_seidel", step_size=0.5, atol=1e-11, max_time=400)
    for a, b in zip(eq.state, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    for a, b in zip(model.predicted_state(c), want):
        torch.testing.assert_close(a, b)
    assert max(v.abs().max().item() for v in model.apical(eq.state, c)) < 1e-9


def test_self_predicting_weights_are_the_analytic_ones():
    model = microcircuit().self_predicting_()
    g_l, g_B, g_A, g_D = G["g_l"], G["g_B"], G["g_A"], G["g_D"]
    torch.testing.assert_close(model.pi[0].weight, -model.down[0].weight)
    hidden, output = g_B / (g_l + g_B + g_A), g_B / (g_l + g_B)
    torch.testing.assert_close(model.ip[0].weight, model.up[1].weight * hidden * (g_l + g_D) / g_D)
    torch.testing.assert_close(model.ip[1].weight, model.up[2].weight * output * (g_l + g_D) / g_D)
    torch.testing.assert_close(model.ip[1].bias, model.up[2].bias * output * (g_l + g_D) / g_D)


@pytest.mark.parametrize("activation,output", [("sigmoid", None), ("tanh", None), ("sigmoid", "linear")])
def test_a_small_nudge_makes_the_apical_potentials_backprops_errors(activation, output):
    """Self-predicting, W_down = W_upᵀ, β small: v_A,k = −κ_k ∂L/∂r_k to O(β), with
    κ_{N−1} = β g_som (g_l + g_D)/(g_B (g_l + g_D + g_som)), κ_{k−1} = κ_k g_A (g_l + g_D)/(g_B (g_l + g_D + g_som));
    with a linear output the output error is the squared error's u_N − target itself."""
    model, (x, target) = microcircuit(activation=activation, transposed=True, output_activation=output), batch()
    model.self_predicting_()
    g_l, g_B, g_A, g_D, g_som = G["g_l"], G["g_B"], G["g_A"], G["g_D"], G["g_som"]
    errors = backprop_errors(model, x, target)
    for beta in (0.01, 0.02):
        c = Condition(x, target, beta=beta)
        eq = settle(model, c, method="gauss_seidel", step_size=0.5, atol=1e-13, max_time=1000)
        kappa = beta * g_som * (g_l + g_D) / (g_B * (g_l + g_D + g_som))
        for k in reversed(range(model.n - 1)):
            v_a, e = model.apical(eq.state, c)[k].flatten(), -errors[k].flatten()
            assert torch.dot(v_a, e) / (v_a.norm() * e.norm()) >= 0.99
            assert (v_a.norm() / e.norm()).item() == pytest.approx(kappa, rel=2 * beta)
            kappa *= g_A * (g_l + g_D) / (g_B * (g_l + g_D + g_som))


def test_without_a_teacher_the_self_predicting_apical_potentials_vanish_and_with_random_lateral_weights_not():
    model, (x, _) = microcircuit(), batch()
    c = Condition(x)
    before = settle(model, c, method="gauss_seidel", step_size=0.5, atol=1e-11, max_time=400)
    assert min(v.abs().max().item() for v in model.apical(before.state, c)) > 1e-2
    after = settle(model.self_predicting_(), c, method="gauss_seidel", step_size=0.5, atol=1e-11, max_time=400)
    assert max(v.abs().max().item() for v in model.apical(after.state, c)) < 1e-9


@pytest.mark.parametrize("name,value", [("g_l", -0.1), ("g_B", 0.0), ("g_D", 0.0), ("C", 0.0), ("g_A", float("nan")),
                                        ("g_som", -1.0)])
def test_unstable_conductances_are_named_at_construction(name, value):
    with pytest.raises(ValueError, match=f"{name}="):
        DendriticMicrocircuit(SIZES, **{name: value})


def test_it_refuses_what_it_cannot_honour():
    model, (x, target) = microcircuit(), batch()
    with pytest.raises(ValueError, match="negative teacher conductance"):
        settle(model, Condition(x, target, beta=-0.1))
    with pytest.raises(ValueError, match="target: expected"):
        settle(model, Condition(x, target[:, :2], beta=0.1))
    with pytest.raises(ValueError, match="unknown activation 'softmax'; valid"):
        DendriticMicrocircuit(SIZES, activation="softmax")
    with pytest.raises(ValueError, match="unknown output_activation 'soft'; valid"):
        DendriticMicrocircuit(SIZES, output_activation="soft")


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_the_prepared_input_drive_is_the_one_computed_every_sweep(beta):
    """prepare() computes W_up,1 x + b_1 once per batch; the flow and the blocks read it in place of
    recomputing it, and a settle from it is the same to the bit."""
    model, (x, target) = microcircuit(), batch()
    plain, prepared = Condition(x, target, beta=beta), model.prepare(Condition(x, target, beta=beta))
    torch.testing.assert_close(prepared.constants, model.up[0](x), rtol=0, atol=0)
    for method in ("gauss_seidel", "fast_euler"):
        a, b = (settle(model, c, method=method, step_size=0.5, atol=1e-9, max_time=200) for c in (plain, prepared))
        assert a.steps == b.steps
        for sa, sb in zip(a.state, b.state):
            torch.testing.assert_close(sa, sb, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["gauss_seidel", "fast_euler"])
def test_a_step_its_fastest_compartment_cannot_follow_is_named(method):
    """At C = 0.5 the hidden somas' (and interneurons') τ = 0.5/1.9 = 0.26: a step of 1 moves them by 3.8 times their
    distance to g (unstable); a step of 0.5 (1.9 of it) still settles, to the fixed point of an
    adaptive solver."""
    model, (x, target) = microcircuit(C=0.5), batch()
    c = Condition(x, target, beta=0.5)
    with pytest.raises(ValueError, match=r"compartment 'soma.1', whose time constant is 0.263 .the shortest.*step_size < 0.526"):
        settle(model, c, method=method, step_size=1.0, atol=1e-9, max_time=200)
    eq = settle(model, c, method=method, step_size=0.25, atol=1e-10, max_time=400)
    ref = settle(model, c, method="dopri5", step_size=0.5, atol=1e-10, max_time=400, solver_rtol=1e-11, solver_atol=1e-12)
    assert eq.converged and ref.converged
    for a, b in zip(eq.state, ref.state):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)
