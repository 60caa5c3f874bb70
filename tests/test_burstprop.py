"""Burstprop (Payeur et al. 2021) against independent answers: the steady state by a hand-written
numpy loop, the update against backprop's gradient by autograd of a plain sigmoid MLP (cosine,
and the error's rate as the teacher shrinks), the published code's update written out in numpy,
and bad input named."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dynets import Condition, SettleOptions, settle
from dynets.models import BurstNetwork, LayeredHopfield
from dynets.rules import Burstprop

SIZES = [5, 7, 6, 3]
TIGHT = SettleOptions(method="gauss_seidel", atol=1e-14, max_time=50)


def network(seed: int = 0, scale: float = 2.0, **kw) -> BurstNetwork:
    """A float64 network, weights scaled up so that the sigmoids work off their linear part."""
    torch.manual_seed(seed)
    model = BurstNetwork(SIZES, **kw).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(scale)
            layer.bias.normal_(0.0, 0.5)
    return model


def batch(seed: int = 1, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, SIZES[0], generator=g, dtype=torch.float64), torch.randint(0, SIZES[-1], (n,), generator=g)


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def by_hand(model: BurstNetwork, x, target, beta, cancel):
    """Events up, bursts down, as the equations read, in numpy."""
    W = [l.weight.detach().numpy() for l in model.layers]
    c = [l.bias.detach().numpy() for l in model.layers]
    B = [b.detach().numpy() for b in model.feedback_weights()]
    e, a = [], x.numpy()
    for w, b in zip(W, c):
        a = sigmoid(a @ w.T + b)
        e.append(a)
    p_bar = model.p_baseline
    p = [None] * len(W)
    p[-1] = p_bar * (1 + beta * (1 - e[-1]) * (target.numpy() - e[-1]))
    for l in reversed(range(len(W) - 1)):
        baseline = (p_bar if l == len(W) - 2 else 0.5) if cancel else 0.0
        p[l] = sigmoid((1 - e[l]) * (((p[l + 1] - baseline) * e[l + 1]) @ B[l]))
    return [s for pair in zip(e, p) for s in pair]


@pytest.mark.parametrize("cancel", [True, False])
@pytest.mark.parametrize("beta", [0.0, 0.6])
def test_the_steady_state_is_the_hand_written_loop(beta, cancel):
    model, (x, y) = network(cancel=cancel), batch()
    condition = model.prepare(Condition(x, model.target(y)).nudged(beta))
    expected = by_hand(model, x, model.target(y), beta, cancel)
    eq = settle(model, condition, options=TIGHT)
    assert eq.converged
    for got, closed, want in zip(eq.state, model.feedforward(condition), expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(closed.detach().numpy(), want, rtol=1e-12, atol=1e-13)
    flow = settle(model, condition, options=SettleOptions(method="fast_euler", step_size=0.5, atol=1e-12, max_time=400))
    for got, want in zip(flow.state, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-10)


def backprop(model: BurstNetwork, x, y) -> dict[str, torch.Tensor]:
    """∂L/∂θ by autograd of a plain sigmoid MLP with the same weights, L = mean ½‖e_N − t‖²."""
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters() if n.startswith("layers")}
    e = x
    for l in range(len(model.layers)):
        e = torch.sigmoid(e @ params[f"layers.{l}.weight"].T + params[f"layers.{l}.bias"])
    loss = 0.5 * (e - torch.nn.functional.one_hot(y, SIZES[-1]).double()).pow(2).sum(1).mean()
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def relative_errors(model, x, y, beta) -> dict[str, float]:
    update, exact = Burstprop(beta=beta, settle=TIGHT).update(model, x, y), backprop(model, x, y)
    return {n: ((update.grads[n] - g).norm() / g.norm()).item() for n, g in exact.items()}


def test_with_symmetric_feedback_the_update_is_backprops_gradient():
    """B = W of the layer above, cancellation, a small teacher: cosine >= 0.99 per layer, float64."""
    model, (x, y) = network(feedback_mode="tied"), batch()
    update, exact = Burstprop(beta=0.05, settle=TIGHT).update(model, x, y), backprop(model, x, y)
    assert set(update.grads) == set(exact)
    for name, g in exact.items():
        cos = torch.nn.functional.cosine_similarity(update.grads[name].flatten(), g.flatten(), 0).item()
        assert cos >= 0.99, (name, cos)
        assert abs(update.grads[name].norm() / g.norm() - 1) < 0.01, name   # normalized: the gradient's scale too


def test_the_error_falls_as_the_teacher_squared():
    """Hidden layers: p = σ(u) about u = 0, where σ'' = 0, so the error is O(β²) (slope 2 over
    four β); the output's burst change is linear in β, so its update is exact at every β."""
    model, (x, y) = network(feedback_mode="tied", scale=3.0), batch()
    betas = [1.6, 0.8, 0.4, 0.2]
    errors = [relative_errors(model, x, y, beta) for beta in betas]
    for name in errors[0]:
        values = [e[name] for e in errors]
        if name.startswith(f"layers.{len(SIZES) - 2}."):
            assert max(values) < 1e-10, (name, values)
            continue
        slope = np.polyfit(np.log(betas), np.log(values), 1)[0]
        assert 1.8 < slope < 2.2, (name, values, slope)
        assert values[-1] > 1e-8   # far above rounding: the fit measures the nonlinearity, not noise


def published_update(model: BurstNetwork, x, y) -> list[np.ndarray]:
    """grad_weight of jordan-g/Burstprop's layers.py (recurrent_input=False), its equations in
    numpy: p_t = p̄((t − e)(1 − e) + 1) at the output, p = σ(b_above·B (1 − e)) below; the
    feedback passed down is b·B; grad = −(b_t − b)ᵀ·input summed over the batch."""
    W = [l.weight.detach().numpy() for l in model.layers]
    c = [l.bias.detach().numpy() for l in model.layers]
    B = [b.detach().numpy() for b in model.feedback_weights()]
    inputs, e = [], x.numpy()
    for w, b in zip(W, c):
        inputs.append(e)
        e = sigmoid(e @ w.T + b)
    events = inputs[1:] + [e]
    t = np.eye(SIZES[-1])[y.numpy()]
    p_bar, grads = model.p_baseline, [None] * len(W)
    b, b_t = p_bar * e, p_bar * ((t - e) * (1 - e) + 1) * e
    grads[-1] = -(b_t - b).T @ inputs[-1]
    for l in reversed(range(len(W) - 1)):
        fb, fb_t, e = b @ B[l], b_t @ B[l], events[l]
        b, b_t = sigmoid(fb * (1 - e)) * e, sigmoid(fb_t * (1 - e)) * e
        grads[l] = -(b_t - b).T @ inputs[l]
    return grads


def test_without_cancellation_it_is_the_published_codes_update():
    model, (x, y) = network(cancel=False, scale=1.0), batch()
    update = Burstprop(beta=1.0, normalize=False, settle=TIGHT).update(model, x, y)
    for l, want in enumerate(published_update(model, x, y)):
        np.testing.assert_allclose(update.grads[f"layers.{l}.weight"].numpy() * len(x), want, rtol=1e-10, atol=1e-12)


def test_feedback_weights_train_with_the_layer_above_only_when_learned():
    (x, y) = batch()
    learned = Burstprop(settle=TIGHT).update(network(feedback_mode="learned"), x, y).grads
    for l in range(len(SIZES) - 2):
        assert torch.equal(learned[f"feedback.{l}"], learned[f"layers.{l + 1}.weight"])
    fixed = network(feedback_mode="random")
    assert not any(p.requires_grad for _, p in fixed.named_feedback())
    assert not any(n.startswith("feedback") for n in Burstprop(settle=TIGHT).update(fixed, x, y).grads)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match=r"Burstprop needs a model with .*capability Bursting.*LayeredHopfield has none"):
        Burstprop().update(LayeredHopfield([5, 4, 3]).double(), *batch())
    with pytest.raises(ValueError, match="unknown feedback_mode 'symmetric'; valid: random, tied, learned"):
        BurstNetwork(SIZES, feedback_mode="symmetric")
    with pytest.raises(ValueError, match="0 < p_baseline < 1"):
        BurstNetwork(SIZES, p_baseline=1.2)
    with pytest.raises(ValueError, match=r"beta=5.0 with p_baseline=0.2 .* above 1; use \|beta\| <= 4"):
        Burstprop(beta=5.0).update(network(), *batch())
    with pytest.raises(ValueError, match="beta must be > 0"):
        Burstprop(beta=0.0)


def test_noise_on_the_events_drive_is_a_shifted_bias():
    """ξ on e_1's drive, the same for every sample, settles like the model whose c_1 is c_1 + ξ."""
    model, (x, y) = network(), batch()
    xi = torch.linspace(-0.5, 0.5, SIZES[1], dtype=torch.float64)
    noisy = settle(model, model.prepare(Condition(x, noise={0: xi.expand(len(x), -1)})), options=TIGHT).state
    with torch.no_grad():
        model.layers[0].bias.add_(xi)
    shifted = settle(model, model.prepare(Condition(x)), options=TIGHT).state
    for a, b in zip(noisy, shifted):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    assert not torch.allclose(noisy[0], torch.sigmoid(model.layers[0](x) - xi))   # ξ moved the state


def test_backprop_on_a_net_with_learned_feedback_leaves_the_feedback_alone():
    """rule=backprop on BurstNetwork(feedback_mode=learned): the feedback weights B are trainable
    but not in the feed-forward loss, so they get no gradient; the forward weights get the
    plain MLP's gradient by autograd."""
    from dynets.rules import Backprop
    model, (x, y) = network(feedback_mode="learned"), batch()
    grads, exact = Backprop().update(model, x, y).grads, backprop(model, x, y)
    assert set(grads) == set(exact)
    for name, g in exact.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-12, atol=1e-14)
