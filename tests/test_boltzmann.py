"""The Boltzmann machine and its learning rule against exact enumeration: Gibbs fields as energy
gaps, the exact likelihood, the sampler's and the rule's free statistics, the update against
autograd of the free energy, learning on bars, and a bit-identical resume of a PCD run."""

import pytest
import torch

from dynets import Condition, settle

from dynets.app.run import checkpoint
from dynets.data import bars
from dynets.likelihood import Likelihood, binary_states, factorised_kl_bits, kl_bits
from dynets.models import boltzmann
from dynets.models.boltzmann import BoltzmannMachine
from dynets.rules.boltzmann import BoltzmannLearning
from dynets.sampling import sample
from dynets.app.fit import fit


def machine(sizes=(3, 2), seed=1, scale=1.0):
    """A double-precision machine with weights and biases ~ N(0, scale²): far from independent units."""
    model = BoltzmannMachine(list(sizes), init_scale=scale, seed=seed).double()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in (model.visible_bias, model.hidden_bias):
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def exact_moments(model):
    """⟨v hᵀ⟩, ⟨v⟩, ⟨h⟩ under p(v, h) ∝ exp(−E(v, h)), summed over all 2^(n_v + n_h) joint states."""
    n_v, n_h = model.sizes
    states = binary_states(n_v + n_h, torch.float64)
    v, h = states[:, :n_v], states[:, n_v:]
    with torch.no_grad():
        p = torch.softmax(-model.energy((v, h)), 0)
    return {"weight": torch.einsum("s,si,sj->ij", p, v, h), "visible_bias": p @ v, "hidden_bias": p @ h}


def energy_gap(model, state, layer, unit):
    """E(unit off) − E(unit on) with everything else held, from the energy itself."""
    off, on = [list(state) for _ in range(2)]
    off[layer], on[layer] = state[layer].clone(), state[layer].clone()
    off[layer][:, unit], on[layer][:, unit] = 0.0, 1.0
    return model.energy(tuple(off)) - model.energy(tuple(on))


def test_gibbs_fields_are_energy_gaps():
    model = machine((4, 3))
    g = torch.Generator().manual_seed(0)
    state = tuple((torch.rand(5, n, generator=g, dtype=torch.float64) < 0.5).double() for n in model.sizes)
    blocks = model.gibbs_blocks(Condition(batch_size=5))
    assert sorted(l for layers, _ in blocks for l in layers) == [0, 1]
    with torch.no_grad():
        for layers, field in blocks:
            for layer, h in zip(layers, field(state)):
                gaps = torch.stack([energy_gap(model, state, layer, u) for u in range(model.sizes[layer])], 1)
                torch.testing.assert_close(h, gaps)


@pytest.mark.parametrize("sizes", [(3, 5), (5, 3)])   # log Z enumerates the visible, then the hidden layer
def test_log_prob_is_exact(sizes):
    model = machine(sizes)
    v = binary_states(sizes[0], torch.float64)
    with torch.no_grad():
        log_p = model.log_prob(v)
        h = binary_states(sizes[1], torch.float64)
        joint = -model.energy((v.repeat_interleave(len(h), 0), h.repeat(len(v), 1))).reshape(len(v), len(h))
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(log_p, joint.logsumexp(1) - joint.logsumexp((0, 1)))


def test_log_partition_in_chunks_equals_one_pass(monkeypatch):
    model = machine((6, 7))
    with torch.no_grad():
        whole = model.log_partition()
        monkeypatch.setattr(boltzmann, "CHUNK_BITS", 2)   # 2^4 prefixes of 2^2 states each
        torch.testing.assert_close(model.log_partition(), whole)


def test_mean_field_flow_is_exact_to_second_order_in_the_weights():
    """The settled mean-field equations m = σ(field(m)) miss the exact marginals by O(W²);
    independent units σ(a), σ(b) (the flow's first step from m = 0) miss them by O(W)."""
    model = machine((4, 3))
    with torch.no_grad():
        model.weight.mul_(0.05)
    m = settle(model, Condition(batch_size=1), method="fast_euler", step_size=0.5, atol=1e-12, max_time=500).state
    exact = exact_moments(model)
    with torch.no_grad():
        naive = (torch.sigmoid(model.visible_bias), torch.sigmoid(model.hidden_bias))
    for name, mf, ind in zip(("visible_bias", "hidden_bias"), m, naive):
        assert (mf[0] - exact[name]).abs().max() < 0.1 * (ind - exact[name]).abs().max(), name


def test_log_partition_of_a_large_machine_is_refused():
    with pytest.raises(ValueError, match="at most 24 units"):
        BoltzmannMachine([25, 30]).log_partition()


def test_gibbs_chains_sample_the_boltzmann_distribution():
    model = machine((3, 2))
    out = sample(model, Condition(batch_size=20000, generator=torch.Generator().manual_seed(0)), sweeps=30)
    v, h = out.state
    measured = {"weight": v.T @ h / len(v), "visible_bias": v.mean(0), "hidden_bias": h.mean(0)}
    for name, value in exact_moments(model).items():   # standard error of each mean <= 0.0035
        torch.testing.assert_close(measured[name], value, atol=0.015, rtol=0)


def test_pcd_free_statistics_match_exact_enumeration():
    """With the weights fixed, the rule's free part (its update plus the data part, known
    exactly) averaged over steps is the model's exact expectation."""
    model = machine((3, 2))
    rule = BoltzmannLearning("pcd", k=1, chains=2000, seed=0)
    x = binary_states(3, torch.float64)
    data = {"weight": -torch.autograd.grad(model.free_energy(x).mean(), model.weight)[0],
            "visible_bias": x.mean(0), "hidden_bias": torch.sigmoid(model.hidden_field(x)).mean(0).detach()}
    for _ in range(20):   # burn-in from the random start
        rule.update(model, x)
    total = {name: 0.0 for name in data}
    for _ in range(40):
        grads = rule.update(model, x).grads
        total = {name: total[name] + grads[name] + data[name] for name, _ in model.named_parameters()}
    for name, value in exact_moments(model).items():
        torch.testing.assert_close(total[name] / 40, value, atol=0.01, rtol=0)


def test_cd1_dream_is_a_reconstruction_of_the_data():
    """CD-1 from v₀ draws h ~ p(h | v₀), then v ~ p(v | h): E[v] = Σ_h p(h | v₀) σ(a + Wh), enumerated."""
    model = machine((3, 4))
    x = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64).expand(40000, -1)
    dream = BoltzmannLearning("cd", k=1, seed=0).dream(model, x)
    h = binary_states(4, torch.float64)
    with torch.no_grad():
        on = torch.sigmoid(model.hidden_field(x[:1]))
        p_h = (h * on + (1 - h) * (1 - on)).prod(1)
        expected = p_h @ torch.sigmoid(model.visible_field(h))
    torch.testing.assert_close(dream.state[0].mean(0), expected, atol=0.01, rtol=0)   # standard error <= 0.0025


@pytest.mark.parametrize("free", ["pcd", "cd"])
def test_update_is_the_free_energy_gradient_difference(free):
    """The update = ∇θ [mean F(data) − mean F(chain's v)] by autograd of F, with the chain's end
    drawn from a copy of the rule's generator (CD: from the data; PCD: from the kept chains)."""
    model, k = machine((4, 3)), 3
    x = (torch.rand(6, 4, generator=torch.Generator().manual_seed(5)) < 0.5).double()
    rule = BoltzmannLearning(free, k=k, chains=8, seed=2)
    start = (x, torch.zeros(6, 3, dtype=torch.float64))
    if free == "pcd":
        rule.update(model, x)   # the chains now hold a state
        start = rule.chain
    copy = torch.Generator().manual_seed(0)
    copy.set_state(rule.generator.get_state())
    v = sample(model, Condition(batch_size=len(start[0]), generator=copy), start, sweeps=k).state[0]
    grads = rule.update(model, x).grads
    objective = model.free_energy(x).mean() - model.free_energy(v).mean()
    expected = torch.autograd.grad(objective, list(model.parameters()))
    for (name, _), e in zip(model.named_parameters(), expected):
        torch.testing.assert_close(grads[name], e, msg=name)
    if free == "pcd":
        torch.testing.assert_close(rule.chain[0], v)


def bars_run(epochs, n_train, run_dir=None, resume_from=None):
    """PCD-1 with 100 chains on bars, 16 hidden units, Adam at 3e-3, batches of 20."""
    data = bars(n_train=n_train, n_val=100, n_test=100)
    model = BoltzmannMachine([16, 16], init_scale=1.0, seed=0)
    rule = BoltzmannLearning("pcd", k=1, chains=100, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(model, rule, data, optimizer, epochs=epochs, batch_size=20, evaluate=Likelihood(data.distribution),
        select="kl_bits", goal="minimize", run_dir=run_dir, resume_from=resume_from)
    return data, model


def test_pcd_lowers_the_bars_kl_well_below_independent_pixels():
    data, model = bars_run(epochs=1, n_train=40000)   # 2000 steps (~2.5 bits measured; from 11 at the start)
    assert factorised_kl_bits(data.distribution) == pytest.approx(8.12, abs=0.01)
    assert kl_bits(model, data.distribution) < 3.5


def test_pcd_run_resumes_bit_identically(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    whole.mkdir(), part.mkdir()
    bars_run(epochs=2, n_train=200, run_dir=whole)
    bars_run(epochs=1, n_train=200, run_dir=part)   # a run killed after its first epoch
    bars_run(epochs=2, n_train=200, run_dir=part, resume_from=part)
    a, b = checkpoint.read(whole / checkpoint.CHECKPOINT), checkpoint.read(part / checkpoint.CHECKPOINT)
    assert a["epoch"] == b["epoch"] == 2
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert all(torch.equal(u, w) for u, w in zip(a["rule"]["chain"], b["rule"]["chain"]))
    for name, states in a["rng"]["generators"].items():   # the chains will go on drawing the same numbers
        assert all(torch.equal(u, w) for u, w in zip(states, b["rng"]["generators"][name])), name


def test_bad_input_is_refused():
    model = BoltzmannMachine([4, 3])
    with pytest.raises(ValueError, match="valid: pcd, cd"):
        BoltzmannLearning("pt")
    with pytest.raises(ValueError, match=r"clamp=\{0: x\}"):
        sample(model, Condition(torch.zeros(2, 4), generator=torch.Generator()))
    with pytest.raises(ValueError, match=r"needs \(batch, 4\)"):
        BoltzmannLearning().update(model, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="n_visible, n_hidden"):
        BoltzmannMachine([4, 3, 2])
