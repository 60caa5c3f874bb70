"""ConvHopfield (the published P_CNN energy): the drive against autograd of Φ, the fixed
points against the published synchronous iteration, EP against implicit differentiation,
and which other rules run on it."""
import numpy as np
import pytest
import torch

from dynets import Condition, SettleOptions
from dynets.costs import CrossEntropy
from dynets.models import ConvHopfield
from dynets.rules import (Backprop, BackpropThroughTime, ContrastiveHebbian, EquilibriumPropagation,
                          ImplicitDifferentiation, NodePerturbation, WeightPerturbation)

TIGHT = SettleOptions(method="fast_euler", atol=1e-12, max_time=3000, check_every=1)
ARCHS = {   # tiny images: 1x6x6 input, one or two convolutions, fc to 3 classes
    "max": dict(in_size=6, channels=[1, 2], kernels=[3], strides=[1], paddings=[1], pools=["max"], fc=[4, 3]),
    "avg": dict(in_size=6, channels=[1, 2], kernels=[3], strides=[1], paddings=[1], pools=["avg"], fc=[3]),
    "two": dict(in_size=6, channels=[1, 3, 2], kernels=[3, 2], strides=[1, 2], paddings=[1, 0], pools=["max", "none"],
                fc=[3]),
}


def problem(arch="max", softmax=False, activation="hard_sigmoid", batch=4, scale=2.0, seed=0):
    torch.manual_seed(seed)
    model = ConvHopfield(**ARCHS[arch], activation=activation, softmax=softmax).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model, torch.rand(batch, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (batch,))


def condition(model, x, y, beta=0.3, **kw):
    cost = CrossEntropy() if model.softmax else None
    return model.prepare(Condition(x, model.target(y), beta, **({"cost": cost} if cost else {}), **kw))


def random_state(model, batch):
    return tuple(torch.rand(batch, *shape, dtype=torch.float64) for shape in model.shapes)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("activation", ["hard_sigmoid", "hard_sigmoid_half_slope", "tanh"])
def test_vector_field_is_rho_of_autograd_drive(arch, softmax, activation):
    """ds/dt = ρ(∂Φ_β/∂s) − s with ∂Φ_β/∂s by autograd of Φ − β·C (noise as a drive)."""
    model, x, y = problem(arch, softmax, activation)
    noise = {0: 0.1 * torch.randn(4, *model.shapes[0], dtype=torch.float64)}
    c = condition(model, x, y, noise=noise)
    s = tuple(t.requires_grad_() for t in random_state(model, 4))
    phi = model.primitive(s, c) - c.beta * model.cost(s, c) + (noise[0] * s[0]).flatten(1).sum(1)
    u = torch.autograd.grad(phi.sum(), s)
    with torch.no_grad():
        got = model.vector_field(torch.tensor(0.0), s, c)
    for g, ui, si in zip(got, u, s, strict=True):
        torch.testing.assert_close(g, model.act.rho(ui) - si, rtol=1e-12, atol=1e-12)


def published_iteration(model, c, steps=3000):
    """The published code's settle: s ← ρ(∂Φ_β/∂s) for all layers at once, ∂Φ_β/∂s by autograd."""
    s = tuple(torch.zeros(c.batch, *shape, dtype=torch.float64) for shape in model.shapes)
    for _ in range(steps):
        with torch.enable_grad():
            s = tuple(t.requires_grad_() for t in s)
            phi = model.primitive(s, c) - c.beta * model.cost(s, c)
            new = tuple(model.act.rho(u).detach() for u in torch.autograd.grad(phi.sum(), s))
        change = max((a - b.detach()).abs().max().item() for a, b in zip(new, s))
        s = new
        if change < 1e-13:
            return s
    pytest.fail(f"the synchronous iteration did not converge (last change {change:.3g})")


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("method", ["fast_euler", "gauss_seidel"])
def test_fixed_point_is_the_published_synchronous_iterations(arch, softmax, method):
    model, x, y = problem(arch, softmax, scale=0.7)   # at 1.0, "max" without softmax cycles with period 2
    c = condition(model, x, y, beta=0.5)
    eq = SettleOptions(method=method, atol=1e-12, max_time=3000, check_every=1)(model, c)
    assert eq.converged
    for got, want in zip(eq.state, published_iteration(model, c), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def flat(model, grads):
    return torch.cat([grads[name].flatten() for name, _ in model.named_parameters()])


@pytest.fixture(scope="module", params=[False, True], ids=["mse", "softmax"])
def exact(request):
    model, x, y = problem("max", request.param, "sigmoid", scale=1.5)
    ref = ImplicitDifferentiation(TIGHT, adjoint_tol=1e-13, adjoint_max_steps=100000, cost=condition(model, x, y).cost)
    return model, x, y, flat(model, ref.update(model, x, y).grads)


def ep(model, beta, variant):
    return EquilibriumPropagation(beta, variant, TIGHT, cost=CrossEntropy() if model.softmax else None)


def test_centered_ep_aligns_with_implicit_differentiation(exact):
    model, x, y, g = exact
    got = flat(model, ep(model, 0.01, "centered").update(model, x, y).grads)
    assert torch.nn.functional.cosine_similarity(got, g, 0) >= 0.999
    assert abs(got.norm() / g.norm() - 1) < 0.01


@pytest.mark.parametrize("variant,order", [("centered", 2), ("positive", 1), ("negative", 1)])
def test_ep_error_shrinks_at_the_theoretical_rate(exact, variant, order):
    model, x, y, g = exact
    betas = [0.2, 0.1, 0.05, 0.025]
    errors = [(flat(model, ep(model, b, variant).update(model, x, y).grads) - g).norm().item() for b in betas]
    slope = np.polyfit(np.log(betas), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.15, (variant, slope, errors)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("softmax", [False, True])
def test_phase_difference_is_autograds(arch, softmax):
    """The closed-form Hebbian difference against autograd of E (and, for the softmax read-out,
    the mean of ∂C/∂θ at the two states) at two random states."""
    model, x, y = problem(arch, softmax)
    c = condition(model, x, y, beta=0.0)
    a, b = random_state(model, 4), random_state(model, 4)
    params = list(model.parameters())
    total = 0.7 * (model.energy(a, c) - model.energy(b, c)).mean()
    if softmax:
        total = total + 0.5 * (model.cost(a, c) + model.cost(b, c)).mean()
    want = torch.autograd.grad(total, params, allow_unused=True, materialize_grads=True)
    got = model.param_grad_difference(a, b, c, scale=0.7)
    for (name, _), w in zip(model.named_parameters(), want, strict=True):
        torch.testing.assert_close(got[name], w, rtol=1e-12, atol=1e-12)


def cosine(model, grads, g):
    return torch.nn.functional.cosine_similarity(flat(model, grads), g, 0).item()


def test_implicit_gradient_matches_finite_differences(exact):
    """The reference itself, with the softmax read-out's direct term: dL/dθ along a direction."""
    model, x, y, g = exact
    direction = [torch.randn_like(p) for p in model.parameters()]
    c = condition(model, x, y, beta=0.0)

    def loss(eps):
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction):
                p.add_(eps * d)
            value = model.cost(TIGHT(model, model.prepare(c)).state, c).mean().item()
            for p, d in zip(model.parameters(), direction):
                p.sub_(eps * d)
        return value

    fd = (loss(1e-5) - loss(-1e-5)) / 2e-5
    assert fd == pytest.approx((g @ torch.cat([d.flatten() for d in direction])).item(), rel=1e-5)


def test_long_bptt_is_the_implicit_gradient(exact):
    model, x, y, g = exact
    got = flat(model, BackpropThroughTime(400, 0.5, cost=condition(model, x, y).cost).update(model, x, y).grads)
    assert (got - g).norm() < 1e-8 * g.norm()


def test_node_perturbation_per_unit_of_the_feature_maps(exact):
    """Noise on every unit of each map; a softmax read-out adds its direct ∂L/∂θ (without it
    the cosine is 0.39)."""
    model, x, y, g = exact
    rule = NodePerturbation(1e-4, 200, settle=TIGHT, cost=condition(model, x, y).cost)
    assert cosine(model, rule.update(model, x, y).grads, g) > 0.9


def test_weight_perturbation(exact):
    model, x, y, g = exact
    settle = SettleOptions(method="gauss_seidel", atol=1e-12, max_time=3000)
    rule = WeightPerturbation(1e-4, 60, settle=settle, cost=condition(model, x, y).cost)
    # about sqrt(probes / weights) = sqrt(60 / 111): 0.57 at this seed, mse and softmax
    assert cosine(model, rule.update(model, x, y).grads, g) > 0.4


def test_chl_on_the_conv_net_and_why_not_with_a_softmax_read_out():
    model, x, y = problem("max", False, "sigmoid", scale=1.5)
    g = flat(model, ImplicitDifferentiation(TIGHT, adjoint_tol=1e-12).update(model, x, y).grads)
    assert cosine(model, ContrastiveHebbian(TIGHT).update(model, x, y).grads, g) > 0.95
    model, x, y = problem("max", True)
    with pytest.raises(ValueError, match="softmax=true keeps its read-out outside the state"):
        ContrastiveHebbian(TIGHT, cost=CrossEntropy()).update(model, x, y)


def test_backprop_says_why_it_cannot_run():
    model, x, y = problem()
    with pytest.raises(TypeError, match="Backprop needs .*FeedForward.*ConvHopfield has none"):
        Backprop().update(model, x, y)


def test_softmax_read_out_needs_the_cross_entropy():
    model, x, y = problem("max", True)
    with pytest.raises(ValueError, match="softmax=true .* needs the cross-entropy cost"):
        EquilibriumPropagation(0.1, settle=TIGHT).update(model, x, y)


@pytest.mark.parametrize("kwargs,message", [
    (dict(pools=["max", "none"]), r"pools must list one value per convolution \(1"),
    (dict(in_size=7), r"convolution 0 \(input \(1, 7, 7\)\): max-pooling 2x2 with stride 2 does not divide the 7x7"),
    (dict(pools=["min"]), "unknown pool 'min'; valid: none, max, avg"),
    (dict(fc=[]), "fc must list at least one dense layer"),
])
def test_bad_architectures_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvHopfield(**{**ARCHS["max"], **kwargs})


def test_a_users_module_as_a_coupling():
    """CoupledHopfield with a user's nonlinear nn.Module between a pooled conv and the read-out:
    the drive is autograd's ∂Φ/∂s (its adjoint by VJP), and centered EP still follows the gradient."""
    from torch import nn
    from dynets.couplings import Conv, Dense, Module
    from dynets.models.conv import CoupledHopfield
    torch.manual_seed(0)
    middle = Module(nn.Sequential(nn.Flatten(), nn.Linear(18, 4), nn.Tanh()), (2, 3, 3))
    model = CoupledHopfield([Conv((1, 6, 6), 2, 3, padding=1, pool="max"), middle, Dense((4,), 3)], "sigmoid").double()
    x, y = torch.rand(4, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (4,))
    c = condition(model, x, y)
    s = tuple(t.requires_grad_() for t in random_state(model, 4))
    u = torch.autograd.grad((model.primitive(s, c) - c.beta * model.cost(s, c)).sum(), s)
    with torch.no_grad():
        for g, ui, si in zip(model.vector_field(torch.tensor(0.0), s, c), u, s, strict=True):
            torch.testing.assert_close(g, model.act.rho(ui) - si, rtol=1e-12, atol=1e-12)
    g = flat(model, ImplicitDifferentiation(TIGHT, adjoint_tol=1e-12).update(model, x, y).grads)
    assert cosine(model, ep(model, 0.01, "centered").update(model, x, y).grads, g) >= 0.999


def test_published_weights_load_by_order():
    """The published P_CNN's synapses (Conv2d then Linear, each weight and bias) copied by order
    give our Φ when Φ is computed the published way: Σ ⟨pool(conv(s_l)), s_{l+1}⟩ + Σ ⟨W s_l + b, s_{l+1}⟩."""
    from torch import nn
    model, x, _ = problem("two")
    synapses = nn.ModuleList([nn.Conv2d(1, 3, 3, 1, 1), nn.Conv2d(3, 2, 2, 2, 0), nn.Linear(2, 3)]).double()
    with torch.no_grad():
        for q, p in zip(synapses.parameters(), model.parameters(), strict=True):
            q.copy_(p)
    s = random_state(model, 4)
    pools = [nn.MaxPool2d(2, 2), nn.Identity()]
    layers = (x,) + s
    phi = sum((pools[l](synapses[l](layers[l])) * layers[l + 1]).sum((1, 2, 3)) for l in range(2))
    phi = phi + (synapses[2](layers[2].flatten(1)) * layers[3]).sum(1)
    torch.testing.assert_close(model.primitive(s, Condition(x)), phi, rtol=1e-12, atol=1e-12)


def test_the_app_evaluates_a_softmax_read_out_on_its_free_phase():
    """fit's default evaluation settles the free phase (β = 0, no cost named): a softmax read-out
    must settle there as under the cross-entropy, whose β·C is then absent (it raised before:
    +experiment=cifar10_ep could not evaluate). Independent answer: the accuracy of the free phase
    settled with the cross-entropy named."""
    from dynets.app.fit import free_phase_metrics
    from dynets.data import Split
    from dynets import settle
    model, x, y = problem("max", True, batch=8)
    metrics = free_phase_metrics(model, Split(x, y), TIGHT)
    eq = settle(model, Condition(x, cost=CrossEntropy()), options=TIGHT)
    assert metrics["accuracy"] == (model.output(eq.state).argmax(1) == y).double().mean().item()
    with pytest.raises(ValueError, match="softmax=true .* needs the cross-entropy cost"):
        settle(model, Condition(x, model.target(y), 0.1), options=TIGHT)
