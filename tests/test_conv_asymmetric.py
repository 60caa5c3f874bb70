"""ConvAsymmetric against independent answers: ConvHopfield and EP (tied feedback), autograd
of its feedback maps and of their correlations (each with its own weight, routed at the
forward arg-max), Kolen–Pollack's geometric decay, the expected mirror estimate, and
feedback alignment learning digits."""
import math

import pytest
import torch
from torch.nn import functional as F

from dynets import Condition, SettleOptions
from dynets.models import ConvAsymmetric, ConvHopfield
from dynets.models.conv_asymmetric import forward_weight, mirror_estimate
from dynets.rules import EquilibriumPropagation, write_grads
from dynets.rules.dtp import DifferenceTargetPropagation
from dynets.rules.feedback import FeedbackAlignment, KolenPollack, VectorFieldEP, WeightMirror
from test_asymmetric import fa_errors_from_the_exact_gradient

TIGHT = SettleOptions(method="fast_euler", atol=1e-12, max_time=3000, check_every=1)
ARCHS = {   # tiny images: 1x6x6, 2 channels, conv 3x3 + pool, fc 3; and conv-to-conv feedback
    "max": dict(in_size=6, channels=[1, 2], kernels=[3], strides=[1], paddings=[1], pools=["max"], fc=[4, 3]),
    "avg": dict(in_size=6, channels=[1, 2], kernels=[3], strides=[1], paddings=[1], pools=["avg"], fc=[3]),
    "conv_max": dict(in_size=6, channels=[1, 2, 2], kernels=[3, 3], strides=[1, 1], paddings=[1, 1],
                     pools=["none", "max"], fc=[3]),
    "stride": dict(in_size=6, channels=[1, 3, 2], kernels=[3, 2], strides=[1, 2], paddings=[1, 0],
                   pools=["max", "none"], fc=[3]),
}


def problem(arch="max", mode="learned", activation="sigmoid", batch=4, scale=1.5, seed=0):
    """The same weights in a ConvHopfield and a ConvAsymmetric (drawn alike by the same seed)."""
    torch.manual_seed(seed)
    hopfield = ConvHopfield(**ARCHS[arch], activation=activation).double()
    torch.manual_seed(seed)
    model = ConvAsymmetric(**ARCHS[arch], feedback_mode=mode, activation=activation, seed=seed).double()
    with torch.no_grad():
        for p, q in zip(model.parameters(), hopfield.parameters()):   # zip stops before any feedback
            p.mul_(scale), q.mul_(scale)
    return model, hopfield, torch.rand(batch, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (batch,))


def random_state(model, batch=4):
    return tuple(torch.rand(batch, *shape, dtype=torch.float64) for shape in model.shapes)


def mirrored(model):
    model.set_feedback([forward_weight(c).detach().clone() for c in model.couplings[1:]])
    return model


def assert_same_flow(model, hopfield, x, y):
    noise = {0: 0.1 * torch.randn(len(x), *model.shapes[0], dtype=torch.float64)}
    c = model.prepare(Condition(x, model.target(y), 0.7, noise=noise))
    s = random_state(model, len(x))
    for got, want in zip(model.vector_field(None, s, c), hopfield.vector_field(None, s, c), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    for (_, g), (_, h) in zip(model.blocks(c), hopfield.blocks(c), strict=True):
        for got, want in zip(g(s), h(s), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    for got, want in zip(TIGHT(model, c).state, TIGHT(hopfield, c).state, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("activation", ["hard_sigmoid", "sigmoid"])
def test_tied_feedback_is_exactly_conv_hopfield(arch, activation):
    """Same field, same Gauss–Seidel blocks, same fixed point as ConvHopfield on the same weights."""
    model, hopfield, x, y = problem(arch, "tied", activation)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in hopfield.named_parameters()]
    assert_same_flow(model, hopfield, x, y)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_feedback_set_to_the_forward_weights_is_the_adjoint(arch):
    """Learned B set to W: angles 0, and the flow (transposed convs with B, unpooled at W's
    arg-max) is ConvHopfield's (the couplings' adjoints)."""
    model, hopfield, x, y = problem(arch, "learned")
    assert min(model.feedback_angles()) > 30
    mirrored(model)
    assert max(model.feedback_angles()) < 1e-5
    assert_same_flow(model, hopfield, x, y)


def own_map(coupling, weight, s):
    """The linear map s' ↦ P(weight ⋆ s') whose adjoint a feedback with ``weight`` is: for a
    convolution, W's pooling pattern at s (the arg-max of W ⋆ s + b, or the average); dense: weight·s'."""
    if not hasattr(coupling, "conv"):
        return lambda t: t.flatten(1) @ weight.T
    c = coupling.conv
    if coupling.pool == "max":
        where = F.max_pool2d(c(s), 2, return_indices=True)[1]
        return lambda t: F.conv2d(t, weight, None, c.stride, c.padding).flatten(2).gather(2, where.flatten(2)).view(where.shape)
    pool = (lambda z: F.avg_pool2d(z, 2)) if coupling.pool == "avg" else (lambda z: z)
    return lambda t: pool(F.conv2d(t, weight, None, c.stride, c.padding))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_feedback_drive_is_autograds_vjp_of_the_own_map(arch):
    """ds_l/dt = ρ(g_{l−1}(s_{l−1}) + ∂⟨own_map_B(s'), s_{l+1}⟩/∂s' at s' = s_l) − s_l, the VJP by autograd."""
    model, _, x, _ = problem(arch, "random")
    s = random_state(model)
    got = model.vector_field(None, s, model.prepare(Condition(x)))
    lower = (x,) + s[:-1]
    for l in range(len(s)):
        u = model.couplings[l](lower[l])
        if l + 1 < len(s):
            t = s[l].clone().requires_grad_()
            own = own_map(model.couplings[l + 1], model.feedback_weights()[l], s[l])
            u = u + torch.autograd.grad((own(t) * s[l + 1]).sum(), t)[0]
        torch.testing.assert_close(got[l], model.act.rho(u) - s[l], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch", ["conv_max", "stride", "max"])
def test_vector_field_ep_hebbian_terms_are_autograd_correlations(arch):
    """VF-EP's phase difference at two random states: each coupling's against autograd of
    ⟨g_l(s_l), s_{l+1}⟩, each feedback's against autograd of ⟨own_map_B(s_l), s_{l+1}⟩ with
    respect to B (its correlation, the layers' roles swapped), both −0.7·(a − b)/batch."""
    model, _, x, _ = problem(arch, "learned")
    a, b = random_state(model), random_state(model)
    got = model.hebbian_difference(a, b, x, scale=0.7)
    params = dict(model.named_parameters())
    total = 0
    for s in (a, b):
        sign, lower = (1 if s is a else -1), (x,) + s[:-1]
        for l, coupling in enumerate(model.couplings):
            total = total + sign * (coupling(lower[l]) * s[l]).sum()
            if l:
                total = total + sign * (own_map(coupling, model.feedback[l - 1], lower[l])(lower[l]) * s[l]).sum()
    want = torch.autograd.grad(-0.7 / len(x) * total, list(params.values()))
    assert got.keys() == params.keys()
    for name, w in zip(params, want):
        torch.testing.assert_close(got[name], w, rtol=1e-12, atol=1e-12, msg=name)


def test_tied_vector_field_ep_gives_eps_update():
    model, hopfield, x, y = problem("conv_max", "tied")
    ours = VectorFieldEP(0.2, "centered", TIGHT).update(model, x, y).grads
    ep = EquilibriumPropagation(0.2, "centered", TIGHT).update(hopfield, x, y).grads
    assert ours.keys() == ep.keys() == dict(model.named_parameters()).keys()
    for name in ours:
        torch.testing.assert_close(ours[name], ep[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("arch", ["conv_max", "stride"])
def test_feedback_alignment_with_b_equal_to_w_is_the_exact_gradient(arch):
    """With B = W the nudge's response is ρ′ times the adjoint, so FA's delta rule on the conv
    net tends to implicit differentiation's gradient as β → 0 (O(β²), centered)."""
    model, _, x, y = problem(arch, "learned")
    mirrored(model)
    errors = fa_errors_from_the_exact_gradient(model, x, y)
    assert errors[1] < 1e-4 and errors[1] < errors[0] / 3, errors


@pytest.mark.parametrize("arch", ["conv_max", "stride"])
def test_kolen_pollack_feedback_update_is_the_forward_delta_rule_and_decays_the_gap(arch):
    """B's update is W's delta rule, −⟨∂⟨g(free_l), (a − b)_{l+1}⟩/∂W⟩/(2β) by autograd (the
    correlation of B's own map, roles swapped), and SGD shrinks W − B by (1 − lr·λ)."""
    model, _, x, y = problem(arch, "learned", scale=0.7)   # at 1.5 the free flow cycles for some samples
    beta, lr, decay = 0.1, 0.1, 0.3
    rule = KolenPollack(beta, decay=decay, settle=TIGHT)
    condition, free, a, b, ok, scale, _ = rule.phases(model, x, y)
    assert ok.all()
    grads = rule.phase_update(model, condition, free.state, a, b, x, scale).grads
    lower = (x,) + free.state[:-1]
    for l, fb in enumerate(model.feedback, start=1):
        coupling = model.couplings[l]
        w = forward_weight(coupling).detach().clone().requires_grad_()
        inner = (own_map(coupling, w, lower[l])(lower[l]) * (a[l] - b[l])).sum()
        want = -scale / len(x) * torch.autograd.grad(inner, w)[0]
        torch.testing.assert_close(grads[f"feedback.{l - 1}"], want + decay * fb.detach(), rtol=1e-10, atol=1e-13)
    gap = lambda: [forward_weight(c).detach() - b.detach() for c, b in zip(model.couplings[1:], model.feedback)]
    before = gap()
    write_grads(model, rule.update(model, x, y).grads)
    torch.optim.SGD(model.parameters(), lr=lr).step()
    for new, old in zip(gap(), before, strict=True):
        torch.testing.assert_close(new, (1 - lr * decay) * old, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("arch", ["conv_max", "stride"])
def test_weight_mirror_estimate_is_unbiased_for_the_forward_weight(arch):
    """E[estimate] = W: the correlation of noise with the currents it causes, over the kernel
    entries' counts of positions inside the (padded) map. Within 5 standard errors of W."""
    model, _, _, _ = problem(arch, "learned")
    coupling, samples, sigma = model.couplings[1], 20000, 0.5
    g = torch.Generator().manual_seed(0)
    runs = torch.stack([mirror_estimate(coupling, sigma * torch.randn(samples, *coupling.in_shape, generator=g,
                                                                         dtype=torch.float64), sigma)
                        for _ in range(8)])
    w = forward_weight(coupling).detach()
    error = (runs.mean(0) - w).abs()
    bound = 5 * runs.std(0) / math.sqrt(len(runs))
    assert (error < bound).all(), (error.max(), bound.min())
    assert (runs.std(0) > 0).all()


def test_weight_mirror_sleep_turns_conv_feedback_toward_w():
    model, _, _, _ = problem("conv_max", "learned")
    rule = WeightMirror(samples=200, seed=1)
    before = model.feedback_angles()
    optimizer = torch.optim.SGD(model.feedback.parameters(), lr=0.2)
    for _ in range(30):
        for name, g in rule.sleep_grads(model).items():
            model.get_parameter(name).grad = g
        optimizer.step()
    assert min(before) > 60 and max(model.feedback_angles()) < 15, (before, model.feedback_angles())


def test_rules_that_cannot_run_say_why():
    model, _, x, y = problem("max", "learned")
    with pytest.raises(TypeError, match="DifferenceTargetPropagation cannot run on ConvAsymmetric: .*dense layers"):
        DifferenceTargetPropagation(settle=TIGHT).update(model, x, y)
    with pytest.raises(TypeError, match="EquilibriumPropagation needs"):
        EquilibriumPropagation(settle=TIGHT).update(model, x, y)
    with pytest.raises(ValueError, match="set feedback_mode='learned'"):
        KolenPollack(settle=TIGHT).update(problem("max", "random")[0], x, y)


def test_bad_feedback_is_named():
    model = ConvAsymmetric(**ARCHS["max"], feedback_mode="learned")
    with pytest.raises(ValueError, match=r"coupling 1 \(Dense\) has shape \(18, 4\), .* has \(4, 18\)"):
        model.set_feedback([torch.zeros(18, 4), torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="random, tied, learned"):
        ConvAsymmetric(**ARCHS["max"], feedback_mode="symmetric")


def test_feedback_alignment_learns_digits_through_random_conv_feedback():
    """FA on a random-feedback conv net (conv 3x3 + max-pool, fc 10) fits 256 digits: its
    free-phase loss falls by half, accuracy leaves chance (10 %) for > 40 %, and the read-out's
    W turns toward its fixed B (feedback alignment's signature)."""
    from dynets.data import digits
    data = digits()
    x, y = data.train.x[:256], data.train.y[:256]
    rule = FeedbackAlignment(0.5, settle=SettleOptions(method="gauss_seidel", step_size=1.0, max_time=100))
    torch.manual_seed(0)
    model = ConvAsymmetric(8, [1, 4], [3], [1], [1], ["max"], [10], "random", "hard_sigmoid", seed=0)
    before, angle = rule.free_phase(model, x, y)[2], model.feedback_angles()[0]
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(80):
        batch = torch.randint(0, 256, (32,))
        write_grads(model, rule.update(model, x[batch], y[batch]).grads)
        optimizer.step()
    after = rule.free_phase(model, x, y)[2]
    assert after["loss"] < 0.5 * before["loss"] and before["accuracy"] < 0.2 < 0.4 < after["accuracy"], (before, after)
    assert model.feedback_angles()[0] < angle - 3, (angle, model.feedback_angles())   # 89.0° -> 83.5°


def test_the_config_builds_conv_hopfields_net_with_random_feedback_on_digits():
    """configs/model/conv_asymmetric.yaml: its keys are the constructor's; on digits it builds
    ConvHopfield's parameters (digits' image shape) and a random B of each forward weight's shape."""
    from pathlib import Path
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    import dynets
    from dynets.app.run import build_model, sized
    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        config = OmegaConf.to_container(compose("train", overrides=["model=conv_asymmetric"]))
    model = build_model(sized(config, dynets.data.digits())["model"])
    assert model.in_shape == (1, 8, 8) and model.out_shape == (10,) and model.feedback_mode == "random"
    assert [c.pool for c in model.couplings[:2]] == ["avg", "avg"]
    assert [tuple(p.shape) for p in model.parameters()] == [(16, 1, 3, 3), (16,), (32, 16, 3, 3), (32,), (10, 128), (10,)]
    assert [tuple(b.shape) for b in model.feedback_weights()] == [(32, 16, 3, 3), (10, 128)]
