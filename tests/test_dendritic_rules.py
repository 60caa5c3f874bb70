"""The microcircuit's Urbanczik–Senn rules: the plasticity against the outer products by hand, the
steady rule against backprop's gradient (autograd), the online rule against the steady one to first
order in its learning rate, and sleep reaching the self-predicting state, with its stop rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dynets import Condition, SettleOptions, settle
from dynets.models import Asymmetric, DendriticMicrocircuit
from dynets.plasticity import settle_plastic
from dynets.rules import BackpropThroughTime, DendriticSleep, ImplicitDifferentiation, UrbanczikSenn, write_grads
from dynets.studies.dendritic import backprop_errors
from test_dendritic import G, batch, microcircuit

TIGHT = SettleOptions(method="gauss_seidel", step_size=0.5, atol=1e-12, max_time=2000)


def test_the_plasticity_is_the_issues_outer_products():
    model, (x, target) = microcircuit(learn_down=True), batch()
    g = torch.Generator().manual_seed(5)
    c = Condition(x, target, beta=0.5)
    state = tuple(torch.randn(s.shape, generator=g, dtype=torch.float64) for s in model.init_state(c))
    dw = model.plasticity(state, c, model.weights())
    phi, (g_l, g_B, g_A, g_D) = model.act.f, (G["g_l"], G["g_B"], G["g_A"], G["g_D"])
    u1, ui1, u2, ui2, u3 = state
    v_b2 = phi(u1) @ model.up[1].weight.T + model.up[1].bias
    post = phi(u2) - phi(g_B / (g_l + g_B + g_A) * v_b2)
    torch.testing.assert_close(dw["up.1.weight"], post.T @ phi(u1) / len(x))
    v_b3 = phi(u2) @ model.up[2].weight.T + model.up[2].bias
    torch.testing.assert_close(dw["up.2.bias"], (phi(u3) - phi(g_B / (g_l + g_B) * v_b3)).mean(0))
    v_i = phi(u1) @ model.ip[0].weight.T + model.ip[0].bias
    torch.testing.assert_close(dw["ip.0.weight"], (phi(ui1) - phi(g_D / (g_l + g_D) * v_i)).T @ phi(u1) / len(x))
    v_a = phi(u3) @ model.down[1].weight.T + phi(ui2) @ model.pi[1].weight.T
    torch.testing.assert_close(dw["pi.1.weight"], -v_a.T @ phi(ui2) / len(x))
    torch.testing.assert_close(dw["down.0.weight"], (phi(u1) - phi(phi(u2) @ model.down[0].weight.T)).T @ phi(u2) / len(x))


def test_the_steady_rule_writes_minus_the_plasticity_at_the_taught_steady_state():
    model, (x, _) = microcircuit(), batch()
    y = torch.tensor([0, 2, 1, 2])
    rule = UrbanczikSenn(beta=0.5, rates={"ip": 0.5}, settle=TIGHT)
    update = rule.update(model, x, y)
    c = Condition(x, model.target(y), beta=0.5)
    eq = settle(model, c, options=TIGHT)
    dw = model.plasticity(eq.state, c, model.weights())
    assert set(update.grads) == {n for n in dw if n.startswith(("up.", "ip."))}   # pi: rate 0, down: fixed
    for name, grad in update.grads.items():
        torch.testing.assert_close(grad, -(0.5 if name.startswith("ip.") else 1.0) * dw[name], rtol=1e-7, atol=1e-10)


def test_near_the_self_predicting_state_the_forward_update_is_backprops_gradient():
    """With W_down = W_upᵀ and a small teacher, −dW_up,k ∝ ∂L/∂W_up,k of the feed-forward map (autograd)."""
    model, (x, target) = microcircuit(transposed=True), batch(n=8)
    model.self_predicting_()
    c = Condition(x, target, beta=0.01)
    dw = model.plasticity(settle(model, c, options=TIGHT).state, c, model.weights())
    errors = backprop_errors(model, x, target)   # ∂L/∂r_k; ∂L/∂W_up,k = ĝ_k (φ'(u_k)⊙∂L/∂r_k)ᵀ r_{k−1}
    free = model.predicted_state(Condition(x))
    for k in range(model.n - 1):
        u, below = free[2 * k], x if k == 0 else model.act.f(free[2 * k - 2])
        grad = (model.act.df(u, model.act.f(u)) * errors[k]).T @ below
        a, b = -dw[f"up.{k}.weight"].flatten(), grad.flatten()
        assert torch.dot(a, b) / (a.norm() * b.norm()) >= 0.99


def test_plasticity_during_the_settle_is_the_steady_rule_to_first_order_in_its_rate():
    """From the taught steady state, −ΔW/(ηT) − (−dW) = O(η): the error halves with η, and the
    module's parameters are untouched."""
    model, (x, target) = microcircuit(), batch()
    c = Condition(x, target, beta=0.5)
    eq = settle(model, c, options=TIGHT)
    steady = model.plasticity(eq.state, c, model.weights())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    options, errors = SettleOptions(step_size=0.05, atol=0.0, max_time=2.0), []
    for eta in (4e-3, 2e-3, 1e-3, 5e-4):
        end, weights = settle_plastic(model, c, {n: eta for n in steady}, eq.state, options)
        errors.append(max(((weights[n] - before[n]) / (eta * end.t) - steady[n]).abs().max().item() for n in steady))
    slope = np.polyfit(np.log([4e-3, 2e-3, 1e-3, 5e-4]), np.log(errors), 1)[0]
    assert slope == pytest.approx(1.0, abs=0.1) and errors[-1] < 1e-3
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_the_online_rule_from_the_free_state_approaches_the_steady_one():
    model, (x, _) = microcircuit(), batch()
    y = torch.tensor([0, 2, 1, 2])
    steady = UrbanczikSenn(settle=TIGHT).update(model, x, y).grads
    online = UrbanczikSenn(mode="online", eta=1e-4, min_time=100.0,
                           settle=SettleOptions(step_size=0.1, atol=1e-4, max_time=400)).update(model, x, y)
    assert set(online.grads) == set(steady)
    for n, g in steady.items():
        assert torch.dot(g.flatten(), online.grads[n].flatten()) / (g.norm() * online.grads[n].norm()) > 0.99


def apical_norm(model, x) -> float:
    c = Condition(x)
    state = settle(model, c, options=TIGHT).state
    return torch.cat([v.flatten(1) for v in model.apical(state, c)], 1).norm(dim=1).mean().item()


def test_sleep_from_random_lateral_weights_reaches_the_self_predicting_state_and_stops():
    """Only W_IP and W_PI learn; ‖v_A‖ on held-out inputs falls below 5 % of its start, and once the
    stop rule says so the updates are empty. The stop rule's state round-trips."""
    model, (x, _) = microcircuit(), batch(n=32)
    held_out = batch(seed=9, n=32)[0]
    start = apical_norm(model, held_out)
    rule = DendriticSleep(noise=0.05, settle=TIGHT, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    up = model.up[0].weight.detach().clone()
    for _ in range(200):
        update = rule.update(model, x)
        if rule.stopped:
            break
        assert set(update.grads) == set(model.lateral_names())
        write_grads(model, update.grads)
        optimizer.step()
    assert rule.stopped == "complete" and update.grads == {} and update.metrics["stopped"] == 1.0
    assert apical_norm(model, held_out) < 0.05 * start
    assert torch.equal(model.up[0].weight, up)
    again = DendriticSleep()
    again.load_state_dict(rule.state_dict())
    assert again.state_dict() == rule.state_dict()


def test_sleep_on_a_model_without_interneurons_says_what_is_missing():
    with pytest.raises(TypeError, match="capability Lateral"):
        DendriticSleep().update(Asymmetric([4, 3, 2]), torch.rand(2, 4))


@pytest.mark.parametrize("kwargs,message", [({"mode": "batch"}, "unknown mode 'batch'; valid: steady, online"),
                                            ({"rates": {"apical": 1.0}}, r"unknown kinds of weight \['apical'\]"),
                                            ({"beta": 0.0}, "beta and eta must be > 0")])
def test_bad_rule_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UrbanczikSenn(**kwargs)


def test_the_exact_equilibrium_gradient_leaves_out_the_fixed_top_down_weights():
    """ImplicitDifferentiation on a model with frozen parameters (W_down): gradients for the
    trainable ones only, equal to central finite differences of the loss at the equilibrium."""
    model, (x, _) = microcircuit(), batch()
    y = torch.tensor([0, 2, 1, 2])
    grads = ImplicitDifferentiation(TIGHT, adjoint_tol=1e-12).update(model, x, y).grads
    assert set(grads) == {n for n, p in model.named_parameters() if p.requires_grad}

    def loss() -> float:
        c = Condition(x, model.target(y))
        return model.cost(settle(model, c, options=TIGHT).state, c).mean().item()

    for name, index in (("up.0.weight", (2, 3)), ("ip.1.weight", (1, 4)), ("pi.0.weight", (3, 2))):
        p, h = dict(model.named_parameters())[name], 1e-5
        with torch.no_grad():
            p[index] += h
            up = loss()
            p[index] -= 2 * h
            down = loss()
            p[index] += h
        assert grads[name][index].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-10)


# The published code (unibe-cns/le_NeurIPS_code, fig3fig5_dendritic_microcircuits/src/network.py, run with
# float64, its sigmoid, no bias, dt = 0.1 for 40000 steps) on the weights drawn below, the teacher on: (sum,
# sum of |.|) of each soma potential and each Delta it computes one step past the steady state.
PUBLISHED = {
    "soma.1": (0.4898078588837473, 3.9716389201884925),
    "up.0.weight": (-0.09885946529588402, 2.1644195945749023),
    "interneuron.1": (2.3167056955997314, 2.9735236892004835),
    "ip.0.weight": (-0.19271262119524704, 1.1829697212185737),
    "pi.0.weight": (0.5868201933171551, 35.00878409934402),
    "soma.2": (1.648716141048421, 2.9043109988364324),
    "up.1.weight": (0.7892460485015107, 1.1541488795890515),
    "interneuron.2": (-0.6123175531902012, 0.6123175531902012),
    "ip.1.weight": (0.3393412156460782, 0.3393412156460782),
    "pi.1.weight": (-4.071376594669948, 5.918613131778747),
    "soma.3": (0.28065740225767005, 0.8227889425179178),
    "up.2.weight": (0.3546100154100195, 0.3546100154100195),
}
PUBLISHED_CONDUCTANCES = dict(g_l=0.03, g_B=0.1, g_A=0.06, g_D=0.1, g_som=0.06, C=1.0)


def test_steady_state_and_plasticity_match_the_published_code_on_the_same_weights():
    sizes = [5, 7, 6, 3]
    model = DendriticMicrocircuit(sizes, activation="sigmoid", **PUBLISHED_CONDUCTANCES).double()
    rng = np.random.default_rng(2018)
    with torch.no_grad():
        for k in range(model.n):   # the published layer order: W_up, then W_down, W_pi, W_ip of each hidden layer
            model.up[k].weight.copy_(torch.from_numpy(rng.uniform(-1, 1, tuple(model.up[k].weight.shape))))
            model.up[k].bias.zero_()
            if k < model.n - 1:
                for w in (model.down[k].weight, model.pi[k].weight, model.ip[k].weight):
                    w.copy_(torch.from_numpy(rng.uniform(-1, 1, tuple(w.shape))))
                model.ip[k].bias.zero_()
    x, t = (torch.from_numpy(rng.uniform(0, 1, n))[None] for n in (sizes[0], sizes[-1]))
    c = Condition(x, t, beta=1.0)   # the published teacher: g_som (u_target − u_N)
    state = settle(model, c, method="gauss_seidel", step_size=1.0, atol=1e-13, max_time=40000).state
    ours = {**dict(zip(model.compartments(), state)), **model.plasticity(state, c, model.weights())}
    for name, (total, size) in PUBLISHED.items():
        assert ours[name].sum().item() == pytest.approx(total, rel=1e-9, abs=1e-12), name
        assert ours[name].abs().sum().item() == pytest.approx(size, rel=1e-9), name


def test_backprop_through_time_leaves_out_the_fixed_top_down_weights():
    """BPTT through a settle long enough to reach the equilibrium gives ImplicitDifferentiation's gradient,
    for the trainable parameters only."""
    model, (x, _) = microcircuit(), batch()
    y = torch.tensor([0, 2, 1, 2])
    exact = ImplicitDifferentiation(TIGHT, adjoint_tol=1e-12).update(model, x, y).grads
    unrolled = BackpropThroughTime(steps=600, step_size=0.2).update(model, x, y).grads
    assert set(unrolled) == set(exact)
    for name, g in exact.items():
        torch.testing.assert_close(unrolled[name], g, rtol=1e-6, atol=1e-9)


def sleep_run(run_dir, epochs, resume=False):
    """Sleep of a float64 microcircuit with random lateral weights on noisy inputs (SGD), through
    fit with checkpoints: its summary and last checkpoint."""
    from dynets.app import checkpoint
    from dynets.app.fit import fit
    from dynets.data import Dataset, Split
    g = torch.Generator().manual_seed(7)
    x = torch.rand(48, 5, generator=g, dtype=torch.float64)
    data = Dataset("noise", *(Split(x, torch.zeros(48, dtype=torch.long)) for _ in range(3)), 5, 3)
    model = microcircuit(activation="tanh")
    rule = DendriticSleep(noise=0.1, stop=0.01, settle=TIGHT, seed=3)
    summary = fit(model, rule, data, torch.optim.SGD(model.parameters(), lr=0.2), epochs=epochs, batch_size=16,
                  seed=1, run_dir=run_dir, resume_from=run_dir if resume else None)
    summary.pop("wall_time_s")
    return summary, checkpoint.load(run_dir)


def test_the_learned_lateral_state_resumes_bit_identically(tmp_path):
    """Two epochs of sleep, then resumed to four with the rule built anew: the lateral weights, the
    noise's draws and the stop rule's state are the uninterrupted run's, to the bit."""
    sleep_run(tmp_path / "cut", 2)
    resumed, end = sleep_run(tmp_path / "cut", 4, resume=True)
    whole, reference = sleep_run(tmp_path / "whole", 4)
    assert resumed == whole and end["rule"] == reference["rule"] and end["rule"]["first"] is not None
    assert reference["model"]["ip.0.weight"].ne(microcircuit(activation="tanh").ip[0].weight).any()
    for name, value in reference["model"].items():
        assert torch.equal(end["model"][name], value), name
