"""The Helmholtz machine and wake-sleep against independent answers: the delta rules by hand and
by autograd, likelihoods that sum to 1, importance sampling converging to the exact value,
dreams distributed as the exact p(x), learning on bars, and loud failures."""
import math

import pytest
import torch

from dynets import Condition, SettleOptions, settle
from dynets.data import bars
from dynets.app.run import checkpoint
from dynets.likelihood import Likelihood, binary_states, factorised_kl_bits, importance_log_prob, kl_bits
from dynets.models import LayeredHopfield
from dynets.models.helmholtz import Helmholtz
from dynets.rules.interleave import SleepInterleaved
from dynets.rules.wake_sleep import WakeSleep
from dynets.rules import write_grads
from dynets.sampling import SampleOptions, Sleep, sample
from dynets.app.fit import fit


def machine(sizes=(3, 2, 1), scale=1.0, seed=0):
    """A float64 machine with random weights, biases and prior (not the zero-bias init)."""
    model = Helmholtz(list(sizes), init_scale=scale, seed=seed).double()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or name == "prior":
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def two_layer():
    """A 3-2 machine with hand-set weights, two data vectors and their causes."""
    model = Helmholtz([3, 2]).double()
    with torch.no_grad():
        model.generative[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]]))
        model.generative[0].bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        model.prior.copy_(torch.tensor([-0.5, 1.5]))
        model.recognition[0].weight.copy_(torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]]))
        model.recognition[0].bias.copy_(torch.tensor([-0.4, 0.7]))
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    h = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    return model, x, h


def sigmoid(a):
    return 1 / (1 + math.exp(-a))


def test_wake_and_sleep_delta_rules_equal_the_formulas_by_hand():
    model, x, h = two_layer()
    G, g, b = model.generative[0].weight.tolist(), model.generative[0].bias.tolist(), model.prior.tolist()
    R, r = model.recognition[0].weight.tolist(), model.recognition[0].bias.tolist()
    want_G, want_g = [[0.0] * 2 for _ in range(3)], [0.0] * 3
    want_R, want_r, want_b = [[0.0] * 3 for _ in range(2)], [0.0] * 2, [0.0] * 2
    for xs, hs in zip(x.tolist(), h.tolist()):   # −(1/B) Σ_b (target − σ(drive)) sourceᵀ, unit by unit
        for i in range(3):
            e = xs[i] - sigmoid(sum(G[i][j] * hs[j] for j in range(2)) + g[i])
            want_g[i] -= e / 2
            for j in range(2):
                want_G[i][j] -= e * hs[j] / 2
        for j in range(2):
            want_b[j] -= (hs[j] - sigmoid(b[j])) / 2
            e = hs[j] - sigmoid(sum(R[j][i] * xs[i] for i in range(3)) + r[j])
            want_r[j] -= e / 2
            for i in range(3):
                want_R[j][i] -= e * xs[i] / 2
    ones = torch.ones(1, 2, dtype=torch.float64)
    wake = WakeSleep.generative_grads(model, [x[None], h[None]], ones)
    sleep = WakeSleep.recognition_grads(model, [x[None], h[None]], ones)
    expected = {"generative.0.weight": want_G, "generative.0.bias": want_g, "prior": want_b,
                "recognition.0.weight": want_R, "recognition.0.bias": want_r}
    for name, want in expected.items():
        got = (wake | sleep)[name]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_weighted_delta_rules_are_the_weighted_log_likelihood_gradients():
    """Reweighted wake-sleep: Σ_i w_i ∇ log p(x, h_i) for G and Σ_i w_i ∇ log q(h_i | x) for R, by autograd."""
    model, k, batch = machine((4, 3, 2)), 5, 6
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(batch, 4, generator=g) < 0.5).double()
    hidden, log_q = model.proposal(x, k, g)
    w = torch.softmax(torch.randn(k, batch, generator=g, dtype=torch.float64), 0)
    layers = [x.expand(k, *x.shape), *hidden]
    got = WakeSleep.generative_grads(model, layers, w) | WakeSleep.recognition_grads(model, layers, w)
    log_q = sum(-torch.nn.functional.binary_cross_entropy_with_logits(r(layers[l]), layers[l + 1], reduction="none").sum(-1)
                for l, r in enumerate(model.recognition))
    objective = -(w * (model.log_joint(x, hidden) + log_q)).sum() / batch
    names, params = zip(*model.named_parameters())
    for name, want in zip(names, torch.autograd.grad(objective, params)):
        torch.testing.assert_close(got[name], want, rtol=1e-10, atol=1e-12)


def test_reweighted_wake_descends_the_k_sample_bound_and_reports_it_in_bits():
    """Bornschein & Bengio 2015: at the rule's own draws h_i ~ q(h | x), G's and the prior's
    update is −∇ of L_k = log (1/k) Σ_i p(x, h_i)/q(h_i | x) (batch mean, by autograd), R's
    wake update is −∇ Σ_i w_i log q(h_i | x) with w = softmax(log p − log q) held fixed, and
    ``loss`` is −L_k in bits."""
    model, k, batch = machine((4, 3, 2)), 5, 6
    x = (torch.rand(batch, 4, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    update = WakeSleep("reweighted", k=k, seed=8).update(model, x)
    hidden, _ = model.proposal(x, k, torch.Generator().manual_seed(8))   # the rule's draws
    layers = [x.expand(k, *x.shape), *hidden]
    log_q = sum(-torch.nn.functional.binary_cross_entropy_with_logits(r(layers[l]), layers[l + 1], reduction="none").sum(-1)
                for l, r in enumerate(model.recognition))
    log_w = model.log_joint(x, hidden) - log_q
    bound = (torch.logsumexp(log_w, 0) - math.log(k)).mean()
    wake_q = (torch.softmax(log_w, 0).detach() * log_q).sum() / batch
    for objective, prefix in ((bound, ("generative.", "prior")), (wake_q, ("recognition.",))):
        names, params = zip(*[(n, p) for n, p in model.named_parameters() if n.startswith(prefix)])
        for name, p, want in zip(names, params, torch.autograd.grad(objective, params, retain_graph=True)):
            torch.testing.assert_close(update.grads[name], -want, rtol=1e-10, atol=1e-12, msg=name)
    assert update.metrics["loss"] == pytest.approx(-bound.item() / math.log(2), rel=1e-12)


def test_wake_writes_only_the_generative_pathway_and_sleep_only_the_recognition_pathway():
    model, data = machine((4, 3, 2)), (torch.rand(8, 4, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    generative = {n for n, _ in model.named_parameters() if not n.startswith("recognition.")}
    wake, _ = WakeSleep(seed=3).wake(model, data)
    sleep, _ = WakeSleep(seed=3).sleep(model, 8)
    assert set(wake) == generative and set(sleep) == {n for n, _ in model.named_parameters()} - generative
    # update() holds the wake update of G and the sleep update of R, from one stream of draws.
    reference, rule = WakeSleep(seed=3), WakeSleep(seed=3)
    grads = rule.update(model, data).grads
    wake, _ = reference.wake(model, data)
    expected = wake | reference.sleep(model, 8)[0]
    assert grads.keys() == expected.keys() == dict(model.named_parameters()).keys()
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], rtol=0, atol=0)


def test_the_update_shares_each_pathways_pass_between_its_metric_and_its_delta_rule():
    """Plain wake-sleep computes G h and R h once for the likelihood metrics and the delta rules:
    the update is, bit for bit, the delta rules with each pass recomputed on the rule's own draws,
    and the metrics are −log₂ p(x, h) and −log₂ q(dreamt causes | dream) from the model's methods."""
    model, x = machine((4, 3, 2)), (torch.rand(6, 4, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    update = WakeSleep(seed=5).update(model, x)
    g, ones = torch.Generator().manual_seed(5), torch.ones(1, 6, dtype=torch.float64)
    hidden, log_q = model.proposal(x, 1, g)   # the rule's draws, in its order: wake, then the dream
    dream = [h[None] for h in Sleep(start="prior", run=SampleOptions("gibbs", sweeps=1)).dream(
        model, Condition(batch_size=6, generator=g)).state]
    expected = WakeSleep.generative_grads(model, [x[None], *hidden], ones) | WakeSleep.recognition_grads(model, dream, ones)
    assert update.grads.keys() == expected.keys()
    for name, want in expected.items():
        assert torch.equal(update.grads[name], want), name
    dream_q = sum(-torch.nn.functional.binary_cross_entropy_with_logits(r(dream[l]), dream[l + 1], reduction="none").sum(-1)
                  for l, r in enumerate(model.recognition))
    assert update.metrics["loss"] == pytest.approx(-(model.log_joint(x, hidden) - log_q).mean().item() / math.log(2), rel=1e-12)
    assert update.metrics["sleep_loss"] == pytest.approx(-dream_q.mean().item() / math.log(2), rel=1e-12)


def test_interleaved_sleep_trains_r_by_the_delta_rule_expected_over_the_model_s_dreams():
    """SleepInterleaved's sleep on a 3-2 machine: R's gradient, the mean over n dreams, against
    its expectation −Σ_{x,h} p(h) p(x | h) (h − σ(Rx + r)) xᵀ enumerated over all 32 joint
    states. The data (all ones, far from the model's p(x)) must not enter it."""
    model, n = two_layer()[0], 200000
    h, x = binary_states(2, torch.float64), binary_states(3, torch.float64)
    G, g, b = model.generative[0].weight.detach(), model.generative[0].bias.detach(), model.prior.detach()
    R, r = model.recognition[0].weight.detach(), model.recognition[0].bias.detach()
    p_h = (torch.sigmoid(b) ** h * torch.sigmoid(-b) ** (1 - h)).prod(1)                      # (4,)
    on = torch.sigmoid(h @ G.T + g)                                                           # (4, 3)
    p_x_h = (on[:, None] ** x * (1 - on[:, None]) ** (1 - x)).prod(2)                          # (4 h, 8 x)
    error = h[:, None] - torch.sigmoid(x @ R.T + r)                                           # (4 h, 8 x, 2)
    joint = (p_h[:, None] * p_x_h)[..., None]
    want_R, want_r = -torch.einsum("hxj,xi->ji", joint * error, x), -(joint * error).sum((0, 1))
    grads = SleepInterleaved(WakeSleep(seed=1), ratio=1.0, seed=2).update(model, torch.ones(n, 3, dtype=torch.float64)).grads
    # sampling error of a mean of n terms bounded by 1: ≤ 0.5/√n ≈ 0.001
    torch.testing.assert_close(grads["recognition.0.weight"], want_R, rtol=0, atol=0.006)
    torch.testing.assert_close(grads["recognition.0.bias"], want_r, rtol=0, atol=0.006)


def test_exact_likelihood_sums_to_one_over_all_visible_vectors():
    for sizes in [(3, 2, 1), (2, 17, 1)]:   # 17 + 1 hidden units: enumerated in several chunks
        model = machine(sizes, scale=0.5)
        log_p = model.log_prob(binary_states(sizes[0], torch.float64))
        assert abs(torch.logsumexp(log_p, 0).item()) < 1e-10


def test_exact_likelihood_matches_brute_force_over_the_joint():
    model = machine((3, 2, 2))
    x, h = binary_states(3, torch.float64), binary_states(4, torch.float64)
    joint = model.log_joint(x, [h[:, None, :2].expand(-1, 8, -1), h[:, None, 2:].expand(-1, 8, -1)])
    torch.testing.assert_close(model.log_prob(x), torch.logsumexp(joint, 0), rtol=1e-12, atol=1e-12)


def test_importance_sampled_log_likelihood_converges_to_the_exact_value():
    model = machine((4, 3, 2))
    x = binary_states(4, torch.float64)
    exact = model.log_prob(x)
    errors = [(importance_log_prob(model, x, k, torch.Generator().manual_seed(k)) - exact).abs().mean().item()
              for k in (1, 100, 10000)]
    assert errors[0] > 3 * errors[1] > 9 * errors[2]   # shrinks ~ 1/√k: ~10x per 100x in k
    assert errors[2] < 0.05   # nats
    # p̂(x) itself is unbiased at k = 1: its mean over many draws is p(x) (a milder proposal, for its variance)
    model = machine((4, 3, 2), scale=0.5)
    estimate = importance_log_prob(model, x.repeat(20000, 1), 1, torch.Generator().manual_seed(0)).exp()
    torch.testing.assert_close(estimate.view(20000, -1).mean(0), model.log_prob(x).exp(), rtol=0.1, atol=0)


def test_one_sweep_from_any_start_is_an_exact_dream():
    model, n = machine((3, 2, 1)), 40000
    exact = model.log_prob(binary_states(3, torch.float64)).exp()
    for start in ("prior", "noise"):
        dream = Sleep(start, SampleOptions(sweeps=1)).dream(model, Condition(batch_size=n, generator=torch.Generator().manual_seed(5)))
        index = (dream.state[0] * torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)).sum(1).long()
        freq = torch.bincount(index, minlength=8).double() / n
        assert (freq - exact).abs().sum() / 2 < 0.015   # total variation; sampling noise ~ 0.004


def test_a_dream_may_clamp_only_the_top_layers():
    model = machine((3, 2, 1))
    condition = Condition(batch_size=4, generator=torch.Generator(), clamp={0: torch.ones(4, 3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="only the top layers"):
        sample(model, condition)
    top = Condition(batch_size=4, generator=torch.Generator(), clamp={-1: torch.ones(4, 1, dtype=torch.float64)})
    assert (sample(model, top).state[-1] == 1).all()


def test_feedback_moves_the_wake_rates_toward_causes_that_explain_the_data():
    """To first order in λ, the fed-back term raises log p(x | m_1) (it is its gradient, passed through σ')."""
    model = machine((5, 4))
    x = (torch.rand(16, 5, generator=torch.Generator().manual_seed(6)) < 0.5).double()
    tight = SettleOptions(method="fast_euler", step_size=0.2, atol=1e-12, max_time=500)

    def explained(feedback):
        model.feedback_gain = feedback
        m = tight(model, Condition(x))
        assert m.converged
        logits = model.generative[0](m.state[0])
        return (x * logits - torch.nn.functional.softplus(logits)).sum(1)

    torch.testing.assert_close(tight(model, Condition(x)).state[0], model.init_state(Condition(x))[0], rtol=0, atol=1e-10)
    assert (explained(0.05) > explained(0.0)).all()


@pytest.mark.parametrize("data", [True, False])
def test_gauss_seidel_blocks_reach_the_flow_s_fixed_point(data):
    model = machine((4, 3, 2))
    model.feedback_gain = 0.5
    x = (torch.rand(6, 4, generator=torch.Generator().manual_seed(7)) < 0.5).double()
    condition = Condition(x) if data else Condition(batch_size=6)
    flow = settle(model, condition, method="euler", step_size=0.2, atol=1e-10, max_time=500)
    blocks = settle(model, condition, method="gauss_seidel", step_size=1.0, atol=1e-10, max_time=500)
    assert flow.converged and blocks.converged
    for a, b in zip(flow.state, blocks.state, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


def test_wake_sleep_lowers_the_bars_kl_well_below_the_independent_pixel_model():
    torch.set_num_threads(1)
    data = bars(n_train=2000, n_val=100, n_test=100)
    model, rule = Helmholtz([16, 8, 1], seed=0), WakeSleep(seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    before = kl_bits(model, data.distribution)
    g = torch.Generator().manual_seed(0)
    for _ in range(1500):
        write_grads(model, rule.update(model, data.train.x[torch.randint(0, 2000, (32,), generator=g)]).grads)
        optimizer.step()
    assert kl_bits(model, data.distribution) < 0.5 * factorised_kl_bits(data.distribution) < before


def test_a_seeded_run_resumes_bit_identically(tmp_path):
    """The rule's generator is checkpointed: 1 epoch + resume to 3 ends where 3 straight epochs do."""
    data = bars(n_train=64, n_val=16, n_test=16)

    def run(run_dir, epochs, resume=False):
        model = Helmholtz([16, 4, 1], seed=1)
        rule = WakeSleep("reweighted", k=3, q_update="both", seed=2)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        fit(model, rule, data, optimizer, epochs=epochs, batch_size=16, evaluate=Likelihood(data.distribution),
            select="kl_bits", goal="minimize", run_dir=run_dir, resume_from=run_dir if resume else None)
        return checkpoint.load(run_dir)["model"]

    for name in ("straight", "resumed"):
        (tmp_path / name).mkdir()
    straight = run(tmp_path / "straight", 3)
    run(tmp_path / "resumed", 1)
    resumed = run(tmp_path / "resumed", 3, resume=True)
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_bad_input_is_refused_clearly():
    with pytest.raises(TypeError, match="WakeSleep needs a model with a recognition pathway .* and a prior over "
                                        "its top layer to dream from .*; LayeredHopfield has none"):
        WakeSleep().check_model(LayeredHopfield([4, 3, 2]))
    with pytest.raises(ValueError, match="binary data"):
        WakeSleep().update(Helmholtz([4, 2]), torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="at most 24"):
        Helmholtz([4, 20, 5]).log_prob(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="valid: plain, reweighted"):
        WakeSleep("sleepy")
    with pytest.raises(ValueError, match="use variant='reweighted'"):
        WakeSleep("plain", k=5)
