"""Asymmetric feedback against independent answers: LayeredHopfield and EP (tied feedback),
implicit differentiation (FA with B = Wᵀ), Kolen–Pollack's geometric decay, the expected
mirror update, the closed-form minimum of DTP's reconstruction loss, a limit cycle."""
import math

import pytest
import torch

from dynets import Condition, SettleOptions, UnconvergedError
from dynets.data import digits
from dynets.models import LayeredHopfield
from dynets.models.asymmetric import Asymmetric
from dynets.rules import EquilibriumPropagation, ImplicitDifferentiation, write_grads
from dynets.rules.dtp import DifferenceTargetPropagation, difference_targets
from dynets.rules.feedback import FeedbackAlignment, KolenPollack, VectorFieldEP, WeightMirror
from dynets.app.fit import fit
from dynets import diagnostics

TIGHT = SettleOptions(method="fast_euler", atol=1e-12, max_time=3000, check_every=1)
SIZES = [6, 9, 7, 3]


def problem(feedback="learned", activation="sigmoid", batch=5, seed=0):
    torch.manual_seed(seed)
    model = Asymmetric(SIZES, feedback, activation, seed=seed).double()
    x = torch.rand(batch, SIZES[0], dtype=torch.float64)
    return model, x, torch.randint(0, SIZES[-1], (batch,))


def mirrored(model):
    model.set_feedback([layer.weight.detach().t() for layer in model.layers[1:]])
    return model


@pytest.mark.parametrize("activation", ["hard_sigmoid", "sigmoid", "tanh"])
def test_tied_feedback_is_exactly_layered_hopfield(activation):
    model, x, y = problem("tied", activation)
    hopfield = LayeredHopfield(SIZES, activation).double()
    hopfield.load_state_dict(model.state_dict())
    noise = {1: torch.randn(len(x), SIZES[2], dtype=torch.float64)}
    c = model.prepare(Condition(x, model.target(y), 0.7, noise=noise))
    s = tuple(torch.rand(len(x), n, dtype=torch.float64) for n in SIZES[1:])
    for got, want in zip(model.vector_field(None, s, c), hopfield.vector_field(None, s, c), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    for (_, g), (_, h) in zip(model.blocks(c), hopfield.blocks(c), strict=True):
        for got, want in zip(g(s), h(s), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_tied_vector_field_ep_gives_eps_update():
    model, x, y = problem("tied")
    hopfield = LayeredHopfield(SIZES, "sigmoid").double()
    hopfield.load_state_dict(model.state_dict())
    ours = VectorFieldEP(0.2, "centered", TIGHT).update(model, x, y).grads
    ep = EquilibriumPropagation(0.2, "centered", TIGHT).update(hopfield, x, y).grads
    assert ours.keys() == ep.keys() == dict(model.named_parameters()).keys()
    for name in ours:
        torch.testing.assert_close(ours[name], ep[name], rtol=1e-9, atol=1e-12, msg=name)


def test_feedback_alignment_with_mirrored_feedback_is_the_exact_gradient():
    """With B = Wᵀ the nudge's response is ρ′ times the adjoint, so FA's update tends to
    implicit differentiation's gradient of the asymmetric net's W as β → 0 (O(β²) centered)."""
    model, x, y = problem("learned")
    mirrored(model)
    errors = fa_errors_from_the_exact_gradient(model, x, y)
    assert errors[1] < 1e-4 and errors[1] < errors[0] / 3, errors


def fa_errors_from_the_exact_gradient(model, x, y, betas=(0.02, 0.01)) -> list[float]:
    """FA's distance from implicit differentiation's gradient at each β: |norm ratio − 1| + 1 − cosine."""
    ref = ImplicitDifferentiation(TIGHT, adjoint_tol=1e-13, adjoint_max_steps=100000)
    errors = []
    for beta in betas:
        a = diagnostics.alignment(model, FeedbackAlignment(beta, settle=TIGHT), ref, x, y)
        errors.append(abs(a["all"]["norm_ratio"] - 1) + 1 - a["all"]["cosine"])
    return errors


def test_random_feedback_is_not_the_gradient_but_forward_weights_align_with_it():
    """Feedback alignment: W_lᵀ turns toward the fixed random B_l while training (below 60°)."""
    torch.manual_seed(0)
    data = digits().flat()
    model = Asymmetric([64, 256, 10], "random", "sigmoid", seed=0)
    before = model.feedback_angles()[0]
    rule = FeedbackAlignment(0.5, settle=SettleOptions(method="gauss_seidel", step_size=1.0, max_time=400))
    fit(model, rule, data, torch.optim.Adam(model.parameters(), lr=5e-3), epochs=6, batch_size=32)
    assert before > 80 and model.feedback_angles()[0] < 60, (before, model.feedback_angles())


def test_kolen_pollack_shrinks_the_mismatch_by_one_minus_lr_decay_per_sgd_step():
    model, x, y = problem("learned")
    lr, decay = 0.1, 0.3
    gap = lambda: [layer.weight.detach().t() - b.detach() for layer, b in zip(model.layers[1:], model.feedback)]
    before = gap()
    write_grads(model, KolenPollack(0.1, decay=decay, settle=TIGHT).update(model, x, y).grads)
    torch.optim.SGD(model.parameters(), lr=lr).step()
    for new, old in zip(gap(), before, strict=True):
        torch.testing.assert_close(new, (1 - lr * decay) * old, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("coupled", [False, True])
def test_kolen_pollack_under_adamw_shrinks_the_mismatch_by_one_minus_lr_decay_per_step(coupled):
    """With decay=0 and AdamW's decoupled decay, W and B get identical Adam moments, so
    identical steps: W_lᵀ − B_l shrinks by exactly (1 − lr·λ) per step whatever δ is. Adam with
    the decay in the gradient (``coupled``, the setting that collapsed on digits) does not."""
    model, x, y = problem("learned")
    lr, decay, steps = 0.01, 0.5, 4
    gap = lambda: [layer.weight.detach().t() - b.detach() for layer, b in zip(model.layers[1:], model.feedback)]
    before = gap()
    if coupled:
        rule, optimizer = KolenPollack(0.1, decay=decay, settle=TIGHT), torch.optim.Adam(model.parameters(), lr=lr)
    else:
        rule, optimizer = KolenPollack(0.1, settle=TIGHT), torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
    for _ in range(steps):
        write_grads(model, rule.update(model, x, y).grads)
        optimizer.step()
    errors = [((new - (1 - lr * decay) ** steps * old).norm() / old.norm()).item()
              for new, old in zip(gap(), before, strict=True)]
    if coupled:
        assert min(errors) > 1e-3, errors
    else:
        assert max(errors) < 1e-12, errors


@pytest.mark.parametrize("decay, optimizer, warns", [
    (1e-2, lambda p: torch.optim.Adam(p), True),                       # decay in Adam's gradient
    (0.0, lambda p: torch.optim.Adam(p), True),                        # nothing shrinks W − Bᵀ
    (0.0, lambda p: torch.optim.Adam(p, weight_decay=0.1), True),      # coupled decay: not equal steps
    (0.0, lambda p: torch.optim.AdamW(p, weight_decay=0.1), False),
    (1e-2, lambda p: torch.optim.SGD(p, lr=0.1), False),
    (0.0, lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-2), False),
])
def test_kolen_pollack_warns_about_an_optimizer_that_keeps_b_from_mirroring_w(decay, optimizer, warns, recwarn):
    model, _, _ = problem("learned")
    KolenPollack(decay=decay).check_optimizer(optimizer(model.parameters()))
    assert any("KolenPollack" in str(w.message) for w in recwarn.list) == warns


def test_weight_mirror_sleep_update_is_b_minus_w_transpose_on_average_and_lowers_the_angle():
    model, _, _ = problem("learned")
    rule = WeightMirror(samples=400_000, sigma=0.5, seed=0)
    for (name, g), b, layer in zip(rule.sleep_grads(model).items(), model.feedback, model.layers[1:]):
        want = b.detach() - layer.weight.detach().t()
        # each entry averages 4e5 products whose spread is ‖W row‖: 5 standard errors
        bound = 5 * layer.weight.norm(dim=1).max().item() / math.sqrt(rule.samples)
        assert (g - want).abs().max() < bound, name
    short = WeightMirror(samples=500, seed=1)
    before = model.feedback_angles()
    optimizer = torch.optim.SGD(model.feedback.parameters(), lr=0.2)
    for _ in range(20):
        for name, g in short.sleep_grads(model).items():
            model.get_parameter(name).grad = g
        optimizer.step()
    assert min(before) > 60 and max(model.feedback_angles()) < 15, (before, model.feedback_angles())


def test_weight_mirror_pretrain_mirrors_w_before_the_first_wake_step_and_only_once():
    model, x, y = problem("learned")
    rule = WeightMirror(samples=20_000, sigma=0.5, seed=0, pretrain=20, settle=TIGHT)
    before = model.feedback_angles()
    grads = rule.update(model, x, y).grads
    pretrained = [b.detach().clone() for b in model.feedback]
    # 20 sleeps of 2e4 patterns: B within a few degrees of Wᵀ (the sleep estimate's definition)
    assert min(before) > 60 and max(model.feedback_angles()) < 3, (before, model.feedback_angles())
    wake = WeightMirror(samples=10, seed=1, settle=TIGHT).update(model, x, y).grads   # B as pre-trained
    for name, g in wake.items():
        if not name.startswith("feedback."):
            torch.testing.assert_close(grads[name], g, rtol=1e-9, atol=1e-12)
    rule.update(model, x, y)
    assert all(torch.equal(a, b) for a, b in zip(pretrained, model.feedback))   # not pre-trained again
    resumed = WeightMirror(pretrain=20)
    resumed.load_state_dict(rule.state_dict())
    assert resumed.pretrained


def test_difference_correction_returns_the_free_state_when_the_output_target_is_the_output():
    model, x, y = problem("learned")
    c = model.prepare(Condition(x))
    free = TIGHT(model, c).state
    same = difference_targets(model, free, c, free[-1])
    assert all(torch.equal(a, b) for a, b in zip(same, free))
    moved = difference_targets(model, free, c, free[-1] + 0.1)
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(moved, free))


def test_sweep_targets_and_updates_by_hand_on_one_hidden_layer():
    """Sizes 4-5-3, nudge ±β: the output target ĥ_2 = h_2 ∓ β(h_2 − y), the hidden target
    ĥ_1 = h_1 + σ(W_0x + b_0 + Bĥ_2) − σ(W_0x + b_0 + Bh_2) (the bottom-up drive plus the top-down
    one, counted once), and the forward updates −⟨(ĥ⁺ − ĥ⁻) preᵀ⟩/(2β) of each layer."""
    torch.manual_seed(0)
    model, beta = Asymmetric([4, 5, 3], "learned", "sigmoid", seed=0).double(), 0.3
    x, y = torch.rand(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    h1, h2 = TIGHT(model, model.prepare(Condition(x))).state
    W0, b0, B = model.layers[0].weight.detach(), model.layers[0].bias.detach(), model.feedback[0].detach()
    targets = {}
    for sign in (1, -1):
        top = h2 - sign * beta * (h2 - model.target(y))
        targets[sign] = (h1 + torch.sigmoid(x @ W0.T + b0 + top @ B.T) - torch.sigmoid(x @ W0.T + b0 + h2 @ B.T), top)
        got = difference_targets(model, (h1, h2), model.prepare(Condition(x)), top)
        for a, b in zip(got, targets[sign], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    update = DifferenceTargetPropagation(beta, targets="sweep", settle=TIGHT).update(model, x, y)
    for l, pre in enumerate((x, h1)):
        d = (targets[1][l] - targets[-1][l]) / (2 * beta * len(x))
        torch.testing.assert_close(update.grads[f"layers.{l}.weight"], -d.T @ pre, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(update.grads[f"layers.{l}.bias"], -d.sum(0), rtol=1e-12, atol=1e-14)
    # the feedback's loss comes back with the update, the one the feedback gradient is of
    c = model.prepare(Condition(x, model.target(y)))
    loss, _ = DifferenceTargetPropagation(beta, targets="sweep", settle=TIGHT).reconstruction(model, c, (h1, h2), x)
    assert update.metrics["drl_loss"] == pytest.approx(loss, rel=1e-9)


def test_reconstruction_loss_falls_to_the_damped_gauss_newton_minimum():
    """One hidden layer, one input repeated: for small σ the loss is ‖D₀BM − I‖² + λ‖D₀B‖²
    (M = D₁W, D = ρ′ at the free state), whose minimum is n − Σ sᵢ²/(sᵢ² + λ), sᵢ the
    singular values of M. Training B by the rule's gradient reaches it."""
    torch.manual_seed(0)
    model = Asymmetric([4, 6, 3], "learned", "tanh", seed=0).double()
    x = torch.rand(1, 4, dtype=torch.float64).repeat(2000, 1)
    rule = DifferenceTargetPropagation(sigma=1e-3, reg=0.5, seed=0)
    c = model.prepare(Condition(x))
    free = TIGHT(model, c).state
    first, _ = rule.reconstruction(model, c, free, x)
    optimizer = torch.optim.Adam(model.feedback.parameters(), lr=0.05)
    for _ in range(300):
        loss, grads = rule.reconstruction(model, c, free, x)
        model.feedback[0].grad = grads["feedback.0"]
        optimizer.step()
    u = model.drives(free, c)
    d0, d1 = (1 - torch.tanh(u[0][0]) ** 2), (1 - torch.tanh(u[1][0]) ** 2)
    s = torch.linalg.svdvals(d1[:, None] * model.layers[1].weight.detach())
    minimum = 6 - (s ** 2 / (s ** 2 + rule.reg)).sum().item()
    # the free state moves with B (the loop), so re-settle before the final measurement
    final, _ = rule.reconstruction(model, c, TIGHT(model, c).state, x)
    assert first > 1.3 * minimum and final == pytest.approx(minimum, rel=0.03), (first, final, minimum)


def oscillator():
    """Hidden pair fed back through a rotation: the rest point is an unstable spiral and
    tanh bounds it: a limit cycle (residual ≈ 1.2 forever)."""
    model = Asymmetric([1, 2, 2], "learned", "tanh").double()
    with torch.no_grad():
        model.layers[0].weight.zero_()
        model.layers[0].bias.fill_(0.1)
        model.layers[1].weight.copy_(3 * torch.eye(2))
        model.layers[1].bias.zero_()
    model.set_feedback([3 * torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)])
    return model


def test_oscillating_dynamics_are_reported_and_never_learned_from():
    """An error by default; allowed, the samples are dropped and counted, and no update is learned."""
    model, opts = oscillator(), SettleOptions(method="fast_euler", step_size=0.1, atol=1e-6, max_time=100)
    x, y = torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    eq = opts(model, Condition(x))
    assert not eq.converged and eq.converged_fraction == 0.0 and eq.residual.min() > 0.5
    with pytest.raises(UnconvergedError, match="free phase left 4 of 4 samples"):
        FeedbackAlignment(0.1, settle=opts).update(model, x, y)
    for rule in (FeedbackAlignment(0.1, settle=opts, allow_unconverged=True),
                 DifferenceTargetPropagation(0.1, settle=opts, allow_unconverged=True)):
        update = rule.update(model, x, y)
        metrics = update.metrics
        assert metrics["unconverged"] == 4 and metrics["converged"] == 0.0 and metrics["unconverged_updates"] == 1.0
        assert all(n in update.grads and not update.grads[n].any() for n, _ in model.named_parameters()
                   if n.startswith("layers."))


def test_bad_feedback_shapes_name_both_layers():
    model = Asymmetric([5, 4, 3], "learned")
    with pytest.raises(ValueError, match=r"layers 1 \(4 units\) and 2 \(3 units\)"):
        model.set_feedback([torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="random, tied, learned"):
        Asymmetric([5, 4, 3], "symmetric")


@pytest.mark.parametrize("rule", [KolenPollack(), WeightMirror(), DifferenceTargetPropagation()])
@pytest.mark.parametrize("feedback", ["random", "tied"])
def test_a_rule_that_learns_feedback_names_the_option_to_set(rule, feedback):
    model = Asymmetric([5, 4, 3], feedback)
    with pytest.raises(ValueError, match="set feedback_mode='learned'"):
        rule.update(model, torch.rand(2, 5), torch.tensor([0, 1]))
