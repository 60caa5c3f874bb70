"""Associative memory: the flow against autograd of its energy, Gauss–Seidel against
torchdiffeq, Hebbian storage against the outer products by hand, unlearning that raises
recall, the stop rule, bad input, reproducible dreams."""
import csv
import itertools
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynets import Condition, SettleOptions, settle
from dynets.rules.base import generators, write_grads
from dynets.data import patterns
from dynets.models.memory import AssociativeMemory, DenseAssociativeMemory, check_patterns, noisy_cues, overlaps
from dynets.studies.recall import write
from dynets.sampling import sample
from dynets.rules.memory import HebbianSleep, HebbianStorage, RecallMonitor, dream_outer

ROOT = Path(__file__).resolve().parents[1]

TIGHT = SettleOptions(method="fast_euler", step_size=0.05, atol=1e-10, max_time=500.0)


def stored(n, p, seed=0, gain=100.0, groups=1):
    """An AssociativeMemory holding p random patterns, stored by the rule and SGD(lr = 1)."""
    xi = patterns(p, n, seed=seed)
    model = AssociativeMemory(n, gain=gain, groups=groups)
    step(HebbianStorage(), model, xi)
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    return model, xi


def step(rule, model, xi):
    """The rule's update written to p.grad (an optimizer step applies it); its metrics."""
    update = rule.update(model, xi)
    write_grads(model, update.grads)
    return update.metrics


def random_models():
    g = torch.Generator().manual_seed(3)
    hop = AssociativeMemory(7, gain=1.5, groups=3).double()
    with torch.no_grad():
        hop.weight.copy_(torch.randn(7, 7, generator=g, dtype=torch.float64))   # not symmetric: C symmetrises it
    xi = torch.randint(0, 2, (4, 7), generator=g).double() * 2 - 1
    dense = [DenseAssociativeMemory(xi, degree=d, function=f, gain=1.5, groups=2).double()
             for d, f in ((3, "rectified"), (4, "power"))]
    return [hop, *dense]


@pytest.mark.parametrize("model", random_models(), ids=["hopfield", "dense3_rectified", "dense4_power"])
def test_vector_field_is_tanh_of_the_autograd_drive_and_fixed_points_are_stationary(model):
    """ds/dt = tanh(γ(∂Φ/∂s + ξ)) − s with ∂Φ/∂s by autograd; at a fixed point ∂F/∂s = 0."""
    g = torch.Generator().manual_seed(0)
    noise = {1: 0.3 * torch.randn(5, model.sizes[1], generator=g, dtype=torch.float64)}
    c = Condition(batch_size=5, noise=noise)
    s = (torch.rand(5, model.n, generator=g, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    drive = torch.autograd.grad(model.primitive(s).sum(), s)[0] + model._noise(c)
    got = model.output(model.vector_field(torch.tensor(0.0), model.split(s), c))
    torch.testing.assert_close(got, torch.tanh(model.gain * drive) - s, rtol=1e-12, atol=1e-12)
    eq = TIGHT(model, c, init=model.split(s.detach()))
    assert eq.converged
    state = tuple(t.clone().requires_grad_() for t in eq.state)
    force = torch.autograd.grad(model.total_energy(state, c).sum(), state)
    assert max(f.abs().max().item() for f in force) < 1e-8


def test_energy_never_increases_along_the_flow():
    model = random_models()[0]
    c = Condition(batch_size=6)
    init = model.split(torch.rand(6, model.n, dtype=torch.float64) * 2 - 1)
    eq = SettleOptions(method="fast_euler", step_size=0.02, atol=1e-8, max_time=40, check_every=1)(model, c, init, record=True)
    energies = torch.stack([model.total_energy(s, c) for _, s in eq.trajectory])
    assert len(energies) > 50 and (energies[1:] - energies[:-1]).max() <= 1e-12


def test_coupling_is_symmetric_with_zero_diagonal_whatever_w():
    model = random_models()[0]
    c = model.coupling().detach()
    w = model.weight.detach()
    torch.testing.assert_close(c, c.T)
    assert (c.diagonal() == 0).all()
    i, j = 1, 4
    assert c[i, j] == 0.5 * (w[i, j] + w[j, i])


@pytest.mark.parametrize("method,groups", [("gauss_seidel", 1), ("gauss_seidel", 4), ("gauss_seidel", 30),
                                           ("dopri5", 4), ("euler", 4)])
def test_gauss_seidel_blocks_reach_the_fixed_points_of_the_flow(method, groups):
    """From the same noisy cues, the block sweeps (asynchronous for one unit per group)
    and torchdiffeq reach the fixed point the fast Euler flow reaches."""
    model, xi = stored(30, 3, gain=5.0, groups=groups)
    model.double()
    cues = noisy_cues(xi.double(), 0.1, torch.Generator().manual_seed(1))
    c = Condition(batch_size=3)
    ref = TIGHT(model, c, init=model.split(cues))
    opts = {"gauss_seidel": dict(step_size=1.0), "dopri5": dict(step_size=1.0, solver_rtol=1e-10, solver_atol=1e-12),
            "euler": dict(step_size=0.2)}[method]
    eq = settle(model, c, model.split(cues), method=method, atol=1e-9, max_time=2000, **opts)
    assert eq.converged and ref.converged
    torch.testing.assert_close(model.output(eq.state), model.output(ref.state), rtol=0, atol=1e-7)
    assert (overlaps(model.output(ref.state), xi.double()) == 1).all()   # a nontrivial fixed point: the pattern


def test_one_unit_groups_sweep_is_asynchronous_descent():
    """With one unit per group, every half-step of a sweep lowers (never raises) E."""
    model = AssociativeMemory(7, gain=1.5, groups=7).double()
    model.load_state_dict(random_models()[0].state_dict())
    c = Condition(batch_size=4)
    state = list(model.split(torch.rand(4, 7, dtype=torch.float64) * 2 - 1))
    for _ in range(3):
        for (layer,), g in model.blocks(c):
            before = model.energy(tuple(state), c)
            state[layer] = g(tuple(state))[0]
            assert (model.energy(tuple(state), c) <= before + 1e-12).all()


def test_hebbian_weights_are_the_outer_products_by_hand():
    model, xi = stored(9, 4)
    n = 9
    by_hand = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            if i != j:
                by_hand[i, j] = sum(xi[mu, i] * xi[mu, j] for mu in range(4)) / n
    torch.testing.assert_close(model.weight.detach(), by_hand)
    torch.testing.assert_close(model.coupling().detach(), by_hand)


def test_unlearning_leaves_out_the_dreams_that_did_not_settle():
    """A budget too short for some dreams: the unlearning term is Σ s*sᵀ over the dreams that
    reached the tolerance only (the same draws, settled by hand), and the others are counted."""
    model, xi = stored(12, 3)
    short = SettleOptions(method="fast_euler", step_size=0.5, atol=1e-3, max_time=8.0)
    rule = HebbianSleep(dreams=40, settle=short, seed=2)
    states, metrics = rule.dream(model)
    start = torch.randint(0, 2, (40, 12), generator=torch.Generator().manual_seed(2)).to(model.weight) * 2 - 1
    end = short(model, Condition(batch_size=40), init=model.split(start))
    ok = end.residual <= end.tolerance
    assert 0 < metrics["unconverged_dreams"] == int((~ok).sum()) < 40
    torch.testing.assert_close(dream_outer(states), dream_outer(model.output(end.state)[ok]))


def test_storage_and_unlearning_grads_are_energy_gradients():
    """HebbianStorage's update = (2/N) Σ ∂E/∂W(ξ); HebbianSleep's = −2 Σ ∂E/∂W(s*)."""
    model, xi = stored(12, 3)
    c = Condition(batch_size=3)
    with torch.enable_grad():
        dE = torch.autograd.grad(model.energy(model.split(xi), c).sum(), model.weight)[0]
    torch.testing.assert_close(HebbianStorage().update(model, xi).grads["weight"], 2 / 12 * dE)
    rule = HebbianSleep(dreams=5, seed=1)
    states, _ = rule.dream(model)
    with torch.enable_grad():
        dE = torch.autograd.grad(model.energy(model.split(states), Condition(batch_size=5)).sum(), model.weight)[0]
    torch.testing.assert_close(dream_outer(states), -2 * dE)


def test_stored_patterns_are_fixed_points_at_low_load_but_not_at_high_load():
    low, xi = stored(100, 5)
    assert RecallMonitor()(low, xi)["stable"] == 1.0
    high, xi = stored(100, 30)
    assert RecallMonitor()(high, xi)["stable"] < 0.5


def unlearn(model, xi, rule, calls, epsilon):
    optimizer = torch.optim.SGD(model.parameters(), lr=epsilon)
    for _ in range(calls):
        step(rule, model, xi)
        optimizer.step()
    return RecallMonitor(seed=7)(model, xi)   # other cues than the rule's monitor saw


def test_unlearning_raises_recall_at_alpha_0_3_and_the_stop_rule_keeps_it():
    """N = 100, α = 0.3: storage alone recalls almost nothing; sleep with the stop rule
    recalls nearly all, and keeps doing so when run far past the point where unlearning
    without a stop destroys the memory (third run)."""
    model, xi = stored(100, 30)
    assert RecallMonitor(seed=7)(model, xi)["recall"] <= 0.2
    rule = HebbianSleep(dreams=100, seed=0)
    assert unlearn(model, xi, rule, 300, 1e-4)["recall"] >= 0.9
    assert rule.stopped == "complete"
    reckless, xi = stored(100, 30)
    assert unlearn(reckless, xi, HebbianSleep(dreams=100, patience=None, drop=1 - 1e-9), 300, 1e-4)["recall"] <= 0.1


def test_over_unlearning_stops_and_says_so(caplog):
    """No plateau stop: past its best, unlearning starts destroying the memory; the drop
    rule halts it while most patterns are still recalled, warns, and writes no gradient."""
    model, xi = stored(100, 30)
    rule = HebbianSleep(dreams=100, patience=None, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    with caplog.at_level(logging.WARNING, logger="dynets"):
        for _ in range(200):
            metrics = step(rule, model, xi)
            optimizer.step()
            if rule.stopped:
                break
    assert rule.stopped == "destroying" and metrics["stopped"] == 1.0
    assert model.weight.grad is None
    assert "stopped unlearning" in caplog.text and "fell from" in caplog.text
    assert rule.best["recall"] - metrics["recall"] > rule.drop
    assert RecallMonitor(seed=7)(model, xi)["recall"] >= 0.5


def test_a_plateau_stops_unlearning_after_patience_measurements_and_then_no_gradient_is_written(caplog):
    """W held fixed (no optimizer step), so every measurement equals the first: measured at
    calls 0, 2, 4 (monitor_every = 2), the third is the second without improvement
    (patience = 2): calls 0–3 dream and write, call 4 on writes nothing and draws nothing."""
    model, xi = stored(100, 30)   # high load: not every pattern recalled, so no "complete" stop
    rule = HebbianSleep(dreams=8, monitor_every=2, patience=2, seed=0)
    with caplog.at_level(logging.INFO, logger="dynets"):
        for call in range(7):
            update = rule.update(model, xi)
            if call == 3:
                assert rule.stopped is None and update.metrics["stopped"] == 0.0 and update.grads["weight"].abs().sum() > 0
                drawn = rule.generator.get_state()
    assert rule.stopped == "plateau" and update.metrics["stopped"] == 1.0 and update.grads == {}
    assert torch.equal(rule.generator.get_state(), drawn)
    assert "have not improved in 2 measurements" in caplog.text


def test_a_perfect_memory_is_not_unlearned():
    """Low load: storage alone already recalls every pattern, so sleep stops at once and
    W is untouched (unlearning there would erode the memories the dreams fall into)."""
    model, xi = stored(100, 5)
    before = model.weight.detach().clone()
    rule = HebbianSleep(dreams=100, seed=0)
    assert unlearn(model, xi, rule, 20, 1e-4)["recall"] == 1.0
    assert rule.stopped == "complete" and model.weight.grad is None and torch.equal(model.weight, before)


def test_dreams_are_reproducible_from_the_seed_and_checkpointed():
    model, _ = stored(40, 4)
    a, b, c = HebbianSleep(dreams=8, seed=5), HebbianSleep(dreams=8, seed=5), HebbianSleep(dreams=8, seed=6)
    assert torch.equal(a.dream(model)[0], b.dream(model)[0])
    assert not torch.equal(a.dream(model)[0], c.dream(model)[0])
    assert generators(a) == {"generator": a.generator}


def test_dense_memory_recalls_where_hebbian_storage_fails():
    xi = patterns(50, 100, seed=0)
    assert RecallMonitor()(DenseAssociativeMemory(xi, degree=3, gain=100.0), xi)["recall"] == 1.0
    model, xi = stored(100, 50)
    assert RecallMonitor()(model, xi)["recall"] == 0.0


def test_dense_degree_two_power_is_hopfield_with_the_diagonal_kept():
    xi = patterns(6, 20, seed=2).double()
    dense = DenseAssociativeMemory(xi, degree=2, function="power").double()
    s = torch.rand(3, 20, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(dense.primitive(s), 0.5 * ((s @ (xi.T @ xi / 20)) * s).sum(1))


@pytest.mark.parametrize("bad,message", [
    (torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]), "2\\*x - 1"),
    (torch.tensor([[0.5, 1.0, -1.0]]), "±1"),
    (torch.ones(2, 4), "shape"),
])
def test_patterns_that_are_not_pm1_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        check_patterns(bad, 3)
    if bad.shape[1] == 3:
        with pytest.raises(ValueError, match=message):
            DenseAssociativeMemory(bad)
        with pytest.raises(ValueError, match=message):
            HebbianStorage().update(AssociativeMemory(3), bad)


@pytest.mark.parametrize("make,message", [
    (lambda: AssociativeMemory(5, groups=6), "groups"),
    (lambda: AssociativeMemory(5, gain=0.0), "gain"),
    (lambda: DenseAssociativeMemory(torch.ones(2, 4), function="cubic"), "valid: power, rectified"),
    (lambda: DenseAssociativeMemory(torch.ones(2, 4), degree=1), "degree"),
    (lambda: HebbianSleep(drop=1.5), "drop"),
    (lambda: settle(AssociativeMemory(4), Condition(torch.ones(2, 4))), "takes no input"),
])
def test_bad_options_are_loud(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_recall_table_is_the_mean_over_seeds(tmp_path):
    rows = [{"variant": "a", "alpha": 0.1, "seed": s, "recall": r, "stable": 1.0} for s, r in enumerate((0.5, 1.0))]
    rows += [{"variant": "b", "alpha": 0.1, "seed": 0, "recall": 0.25, "stable": 1.0, "dreams": 300},
             {"variant": "b", "alpha": 0.1, "seed": 1, "recall": 0.25, "stable": 1.0, "dreams": 100}]
    paths = write(rows, tmp_path, "t")
    assert "| 0.1 | 0.75 | 0.25 | 200 |" in paths["md"].read_text()
    assert len(paths["csv"].read_text().splitlines()) == 5 and paths["png"].stat().st_size > 0


@pytest.mark.slow
def test_recall_script_writes_the_study(tmp_path):
    """The hydra entry point end to end on a small memory: storage fails at α = 0.3 where
    sleep and the dense memory recall, and every sleep run says why it stopped."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "recall.py"), f"hydra.run.dir={tmp_path}", "n=60",
                          "alphas=[0.3]", "seeds=[0]", "epsilon=1.6e-4"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {r["variant"]: r for r in csv.DictReader((tmp_path / "recall.csv").open())}
    assert float(rows["hebbian"]["recall"]) <= 0.2
    assert float(rows["hebbian + sleep"]["recall"]) >= 0.9 and rows["hebbian + sleep"]["stopped"] != "max_calls"
    assert float(rows["dense (n=3)"]["recall"]) == 1.0
    assert (tmp_path / "recall.png").exists() and "| 0.3 |" in (tmp_path / "recall.md").read_text()


def test_gibbs_chains_sample_the_boltzmann_distribution_of_the_memory():
    """Glauber sweeps over ±1 units at temperature T: the chains' histogram matches
    exp(−E/T)/Z by enumeration of the 2⁴ states (E = −½ sᵀCs − ξ·s)."""
    model = AssociativeMemory(4, groups=4).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0, .8, -.5, .3], [.8, 0, .4, -.2], [-.5, .4, 0, .6], [.3, -.2, .6, 0]]))
    chains, g = 20000, torch.Generator().manual_seed(0)
    xi = torch.tensor([[0.3, -0.2, 0.0, 0.1]], dtype=torch.float64)
    c = Condition(batch_size=chains, generator=g, noise={l: xi[:, l:l + 1].expand(chains, 1) for l in range(4)})
    init = model.split(torch.randint(0, 2, (chains, 4), generator=g).double() * 2 - 1)
    end = sample(model, c, init, method="gibbs", sweeps=30, temperature=0.7)
    states = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=4)), dtype=torch.float64)
    energy = -0.5 * ((states @ model.coupling().detach()) * states).sum(1) - states @ xi[0]
    exact = torch.softmax(-energy / 0.7, 0)
    codes = ((model.output(end.state) > 0).long() * torch.tensor([8, 4, 2, 1])).sum(1)
    empirical = torch.bincount(codes, minlength=16).double() / chains
    assert (empirical - exact).abs().max() < 0.01


def test_gibbs_needs_one_unit_per_group():
    with pytest.raises(ValueError, match="groups=n"):
        AssociativeMemory(4, groups=2).gibbs_blocks(Condition(batch_size=1))
