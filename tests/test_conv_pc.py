"""Predictive coding on convolutional nets against independent answers: autograd of F, the
feedforward conv net written with torch.nn.functional (its pass and backprop's gradient), the
textbook autograd PC (ReferencePC), and the Hessian for the Gauss–Seidel steps."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dynets import Condition, SettleOptions, settle
from dynets.costs import CrossEntropy, SquaredError
from dynets.couplings import Dense, Module
from dynets.models import ConvPredictiveCoding
from dynets.models.base import EnergyModel
from dynets.models.conv_pc import CoupledPredictiveCoding
from dynets.rules import PredictiveCodingRule
from dynets.testing import ReferencePC, grad_mismatch

TIGHT = SettleOptions(method="fast_euler", step_size=0.2, atol=1e-13, max_time=2000, check_every=20)
POOLS = [("max", "max"), ("avg", "none"), ("none", "avg")]


def problem(pools=("max", "max"), activation="tanh", batch=4, seed=0):
    """1×8×8 images, conv 3×3 (2 channels) + pool, conv 3×3 (3 channels) + pool, fc 4, fc 3."""
    torch.manual_seed(seed)
    model = ConvPredictiveCoding(8, [1, 2, 3], [3, 3], [1, 1], [1, 1], list(pools), [4, 3], activation).double()
    x = torch.rand(batch, 1, 8, 8, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (batch,))


def tiny(seed=0, batch=8):
    """The brief's tiny net: 1×6×6, conv 3×3 to 2 channels + max-pool, fc to 3."""
    torch.manual_seed(seed)
    model = ConvPredictiveCoding(6, [1, 2], [3], [1], [0], ["max"], [3]).double()
    return model, torch.rand(batch, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (batch,))


def nudged(model, x, y):
    """A nudged phase with cross-entropy and drive noise on a feature map."""
    noise = {0: torch.randn(len(x), *model.layers[0].out_shape, dtype=torch.float64)}
    return model.prepare(Condition(x, model.target(y), 0.7, cost=CrossEntropy(), noise=noise))


@pytest.mark.parametrize("pools", POOLS)
@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
def test_vector_field_is_minus_the_gradient_of_F(pools, activation):
    model, x, y = problem(pools, activation)
    c = nudged(model, x, y)
    s = tuple(torch.randn_like(t).requires_grad_() for t in model.init_state(c))
    want = torch.autograd.grad(model.total_energy(s, c).sum(), s)
    for got, w in zip(model.vector_field(None, s, c), want, strict=True):
        torch.testing.assert_close(got, -w, rtol=1e-12, atol=1e-12)


def test_a_users_module_coupling_has_the_same_field():
    """A user's nn.Module as a coupling (its adjoint by VJP) gives −∂F/∂v too."""
    torch.manual_seed(1)
    block = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.AvgPool2d(2)).double()
    first = ConvPredictiveCoding(4, [1, 2], [3], [1], [1], ["none"], [1]).double().layers[0]
    model = CoupledPredictiveCoding([first, Module(block, (2, 4, 4)), Dense((3, 2, 2), 3).double()], "tanh")
    x, y = torch.rand(3, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 2, 1])
    c = model.prepare(Condition(x, model.target(y), 0.5))
    s = tuple(torch.randn_like(t).requires_grad_() for t in model.init_state(c))
    want = torch.autograd.grad(model.total_energy(s, c).sum(), s)
    for got, w in zip(model.vector_field(None, s, c), want, strict=True):
        torch.testing.assert_close(got, -w, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="Module coupling has none: use settle=fast_euler"):
        settle(model, c, method="gauss_seidel")


@pytest.mark.parametrize("pools", POOLS)
def test_closed_form_parameter_gradients_match_autograd(pools):
    model, x, y = problem(pools)
    c = nudged(model, x, y)
    s = tuple(torch.randn_like(t) for t in model.init_state(c))
    want, got = EnergyModel.param_grads(model, s, c), model.param_grads(s, c)
    assert got.keys() == want.keys() == dict(model.named_parameters()).keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12)


def feedforward(model, x):
    """The feedforward conv net written out with torch.nn.functional from the model's weights
    (no coupling code): the pre-activations of every layer, tanh between them."""
    a, h = [], x
    for g in model.layers:
        if hasattr(g, "conv"):
            z = F.conv2d(h, g.conv.weight, g.conv.bias, g.conv.stride, g.conv.padding)
            z = {"max": lambda t: F.max_pool2d(t, 2), "avg": lambda t: F.avg_pool2d(t, 2), "none": lambda t: t}[g.pool](z)
        else:
            z = F.linear(h.flatten(1), g.linear.weight, g.linear.bias)
        a.append(z)
        h = torch.tanh(z)
    return a


@pytest.mark.parametrize("pools", POOLS)
def test_free_equilibrium_is_the_feedforward_pass(pools):
    model, x, _ = problem(pools)
    c = model.prepare(Condition(x))
    eq = settle(model, c, tuple(torch.zeros_like(s) for s in model.init_state(c)), options=TIGHT)
    assert eq.converged
    for got, start, want in zip(eq.state, model.init_state(c), feedforward(model, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(start, want, rtol=1e-14, atol=1e-14)
    assert all(e.abs().max() < 1e-10 for e in model.errors(eq.state, c))


def backprop(model, x, y):
    """Backprop's gradient of L = mean_b ½‖out − onehot‖² through :func:`feedforward`."""
    loss = 0.5 * (feedforward(model, x)[-1] - model.target(y)).pow(2).sum(1).mean()
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def flat_update(model, rule, x, y):
    grads = rule.update(model, x, y).grads
    return torch.cat([grads[name].flatten() for name, _ in model.named_parameters()])


@pytest.mark.parametrize("variant,order", [("centered", 2), ("nudged", 1)])
@pytest.mark.parametrize("net", ["tiny", "deep"])
def test_update_tends_to_backprop_at_the_theoretical_rate(variant, order, net):
    """Smaller β than the MLP test's 0.2–0.025: at β = ±0.2 the deep max-pooled net's nudge
    moves pooled units onto an arg-max tie, where F has a kink and no stationary point, and
    the flow chatters (residual 1e-3–1e-2 after 10,000 steps; every β ≤ 0.04 settles)."""
    model, x, y = tiny() if net == "tiny" else problem(batch=8)
    bp = backprop(model, x, y)
    betas = [0.04, 0.02, 0.01, 0.005]
    errors = [(flat_update(model, PredictiveCodingRule(b, variant, TIGHT), x, y) - bp).norm().item() for b in betas]
    slope = np.polyfit(np.log(betas), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.15, (variant, slope, errors)
    assert errors[-1] < 0.05 * bp.norm().item()


@pytest.mark.parametrize("net", ["tiny", "deep"])
def test_update_equals_the_textbook_autograd_pc(net):
    """ReferencePC (autograd of F at every Euler step, recomputing every prediction) run on the
    model's couplings: the same β, Δt and steps give the same update, through both loops."""
    model, x, y = tiny() if net == "tiny" else problem(batch=8)
    reference = ReferencePC(model.layers, beta=0.1, step_size=0.3, steps=15)
    for method in ("fast_euler", "euler"):
        for name, err in grad_mismatch(model, reference, reference.rule(method), x, y).items():
            assert err < 1e-10, (method, name, err)


@pytest.mark.parametrize("phase", ["nudged", "clamped"])
@pytest.mark.parametrize("net", ["tiny", "avg"])
def test_gauss_seidel_reaches_the_fixed_point_of_euler(phase, net):
    """Not on the deep net with two max-poolings: there a phase at β = 0.05 already puts a
    pooled unit on an arg-max tie, where neither Euler nor Gauss–Seidel settles (a kink of F)."""
    model, x, y = tiny(batch=4) if net == "tiny" else problem(("avg", "none"))
    c = model.prepare(Condition(x, model.target(y), 0.5 if phase == "nudged" else 0.0))
    if phase == "clamped":
        c = c.clamped({-1: model.target(y)})
    euler = settle(model, c, method="euler", step_size=0.2, atol=1e-11, max_time=500)
    gs = settle(model, c, method="gauss_seidel", step_size=0.5, atol=1e-11, max_time=500)
    assert euler.converged and gs.converged
    for a, b in zip(euler.state, gs.state, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def stiff_problem(pools, batch):
    """``problem``'s net with its weights ×3, where the curvature bound matters."""
    model, x, y = problem(pools, batch=batch)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model, x, y


@pytest.mark.parametrize("pools", POOLS)
def test_gauss_seidel_steps_stay_below_two_over_each_layers_curvature(pools):
    """α_l·λ_max(∂²F/∂v_l²) < 2 at the free equilibrium (errors zero: the bound's curvature),
    the Hessian by autograd per sample, with the weights ×3; and α_l·λ_max > 0.3 for the
    stiffest sample (the bound is not needlessly loose)."""
    model, x, y = stiff_problem(pools, batch=3)
    c = model.prepare(Condition(x, model.target(y), 0.5, cost=SquaredError()))
    s, steps = model.init_state(c), model.curvature_steps(c)
    for l, step in enumerate(steps):
        stiffest = 0.0
        for b, top in enumerate(block_hessian_tops(model, c, s, l)):
            assert step.item() * top < 2.0, (l, b, step.item(), top)
            stiffest = max(stiffest, step.item() * top)
        assert stiffest > 0.3, (l, stiffest)


@pytest.mark.parametrize("variant", ["nudged", "centered", "clamp"])
def test_every_supervised_variant_is_the_gradient_of_F_at_its_phases(variant):
    """The rule on a conv model is shape-free: its update is Σ_phases w·∂F/∂θ at the phases'
    equilibria, ∂F/∂θ by autograd (EnergyModel.param_grads) at states settled here."""
    model, x, y = tiny()
    rule = PredictiveCodingRule(0.1, variant, TIGHT)
    c = model.prepare(Condition(x, model.target(y)))
    free = settle(model, c, options=TIGHT)
    want = None
    for _, phase, weight in rule.phases(c):
        eq = settle(model, phase, free.state, options=TIGHT)
        g = torch.cat([t.flatten() for t in EnergyModel.param_grads(model, eq.state, c).values()]) * weight
        want = g if want is None else want + g
    torch.testing.assert_close(flat_update(model, rule, x, y), want, rtol=1e-9, atol=1e-11)


def test_bad_architectures_are_named():
    with pytest.raises(ValueError, match="kernels has 1 entries but channels=.* makes 2 convolutions"):
        ConvPredictiveCoding(8, [1, 2, 3], [3], [1, 1], [0, 0], ["max", "max"], [3])
    with pytest.raises(ValueError, match=r"convolution 1 \(input \(2, 4, 4\)\): max-pooling 2x2 .* does not divide the 3x3 map"):
        ConvPredictiveCoding(8, [1, 2, 3], [3, 2], [1, 1], [1, 0], ["max", "max"], [3])
    with pytest.raises(ValueError, match=r"positive whole numbers, got in_size=None, channels=\[None, 2\]"):
        ConvPredictiveCoding(None, [None, 2], [3], [1], [1], ["max"], [3])
    with pytest.raises(ValueError, match="fc at least the read-out"):
        ConvPredictiveCoding(8, [1, 2], [3], [1], [1], ["max"], [])
    with pytest.raises(ValueError, match="unknown activation 'soft'"):
        ConvPredictiveCoding(8, [1, 2], [3], [1], [1], ["max"], [3], "soft")
    model, x, y = tiny()
    with pytest.raises(ValueError, match=r"expects \(batch, 1, 6, 6\)"):
        settle(model, Condition(x.flatten(1)))
    with pytest.raises(ValueError, match="nothing to learn"):
        PredictiveCodingRule(variant="unsupervised").update(model, x, y)


def test_the_config_builds_the_published_net_on_digits():
    """configs/model/conv_pc.yaml: its keys are the constructor's, and on digits it builds a
    net of digits' image shape whose parameters are the convolutions', then the dense layers'
    (weight, bias of each), as the published code orders them."""
    from pathlib import Path
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    import dynets
    from dynets.app.run import build_model, sized
    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        config = OmegaConf.to_container(compose("train", overrides=["model=conv_pc"]))
    model = build_model(sized(config, dynets.data.digits())["model"])
    assert model.in_shape == (1, 8, 8) and model.out_shape == (10,)
    kinds = [(type(m).__name__, tuple(p.shape)) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
             for p in (m.weight, m.bias)]
    assert kinds == [("Conv2d", (16, 1, 3, 3)), ("Conv2d", (16,)), ("Linear", (10, 256)), ("Linear", (10,))]
    assert [tuple(p.shape) for p in model.parameters()] == [s for _, s in kinds]


def block_hessian_tops(model, c, s, l):
    """λ_max(∂²F/∂v_l²) of each sample at state s, by autograd's Hessian."""
    tops = []
    for b in range(c.batch):
        row = model.prepare(Condition(c.x[b:b + 1], c.target[b:b + 1], c.beta, cost=c.cost))

        def total(v):
            state = [t[b:b + 1] for t in s]
            state[l] = v.unsqueeze(0)
            return model.total_energy(tuple(state), row).sum()
        n = s[l][b].numel()
        tops.append(torch.linalg.eigvalsh(torch.autograd.functional.hessian(total, s[l][b]).reshape(n, n)).max().item())
    return tops


@pytest.mark.parametrize("pools", POOLS)
def test_measured_steps_are_each_samples_curvature(pools):
    """sweep_steps=measured: each sample's step α_l = 2/(μ + 1 + 1.25·λ), λ its block curvature at
    the free equilibrium by autograd's Hessian (there the errors are zero, so ∂²F/∂v_l² =
    I + D JᵀJ D exactly): α = 2/(2 + 1.25·(λ_max(∂²F/∂v_l²) − 1)) for a sample under the bound,
    up to 2 % over it (the power iteration approaches λ from below), never a smaller step than
    the bound's."""
    model, x, y = stiff_problem(pools, batch=3)
    c = model.prepare(Condition(x, model.target(y), 0.5, cost=SquaredError()))
    s, bound = model.init_state(c), model.curvature_steps(c)
    model.sweep_steps = "measured"
    measured = model.curvature_steps(model.prepare(c))
    for l, (a, b) in enumerate(zip(measured, bound)):
        steps = a.flatten().expand(c.batch)
        assert (steps >= b - 1e-12).all(), (l, steps, b)
        for step, top in zip(steps.tolist(), block_hessian_tops(model, c, s, l)):
            assert step * top < 2.0, (l, step, top)
            exact = 2 / (2 + 1.25 * (top - 1))
            assert exact * (1 - 1e-9) <= step <= 1.02 * exact or step == pytest.approx(b.item()), (l, step, exact)


def test_measured_steps_reach_the_same_update_in_fewer_sweeps():
    """The measured steps change the path, not the fixed point: the centered update at a tight
    tolerance equals the bound steps' (and backprop's gradient within the O(β²) of the rate test)."""
    model, x, y = stiff_problem(("avg", "none"), batch=4)
    gs = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-12, max_time=5000, check_every=5)
    rule = PredictiveCodingRule(0.01, "centered", gs)
    bound = rule.update(model, x, y)
    model.sweep_steps = "measured"
    measured = rule.update(model, x, y)
    for name, g in bound.grads.items():
        torch.testing.assert_close(measured.grads[name], g, rtol=1e-8, atol=1e-10)
    assert measured.metrics["steps_nudged_+"] < bound.metrics["steps_nudged_+"]


def test_a_bad_sweep_steps_is_named():
    with pytest.raises(ValueError, match="sweep_steps 'exact'.*bound, measured"):
        ConvPredictiveCoding(6, [1, 2], [3], [1], [0], ["max"], [3], sweep_steps="exact")


def test_start_relative_tolerance_gives_a_small_nudges_update():
    """A centered PC update at β 10⁻⁴ (its nudged phases start at residual ~10⁻⁴‖∂C‖): an atol of
    10⁻³ stops them before their first sweep (a zero update); start_rtol 10⁻³ gives backprop's
    gradient (autograd through the feedforward net) at β 10⁻⁴ as at 10⁻²."""
    model, x, y = tiny()
    bp = backprop(model, x, y)
    absolute = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-3, max_time=2000, check_every=5)
    assert flat_update(model, PredictiveCodingRule(1e-4, "centered", absolute), x, y).abs().max() == 0
    relative = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-14, start_rtol=1e-3, max_time=2000,
                             check_every=5)
    for beta in (1e-4, 1e-2):
        update = flat_update(model, PredictiveCodingRule(beta, "centered", relative), x, y)
        assert torch.nn.functional.cosine_similarity(update, bp, dim=0) > 0.999, beta


def test_measured_curvature_of_a_silent_layer_is_zero():
    """A relu layer whose units are all off has D = f'(v) = 0, so D JᵀJ D = 0: its measured curvature is
    0 (the power iteration's vector falls to zero: it divided by that norm, giving NaN steps)."""
    from dynets.models.step_bounds import block_curvature
    model, x, y = problem(("max", "max"), activation="relu", batch=3)
    v = -torch.rand(3, *model.layers[0].out_shape, dtype=torch.float64)
    v[0] = torch.rand_like(v[0])   # one sample with units on: its curvature stays positive
    lam = block_curvature(model.layers[1], v, model.act).flatten()
    assert lam[1:].eq(0).all() and lam[0] > 0, lam
