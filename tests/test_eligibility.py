"""The free-running rate network and its eligibility-trace rule (Miconi 2017; Fiete & Seung 2006)
against independent answers: the paper's update written as a loop, torchdiffeq on the same
field, the traces as the published code's per-synapse loops, the Fiete–Seung estimate against
autograd through the trial, the paper's criterion by hand; and bad input refused loudly."""
import pytest
import torch
from torchdiffeq import odeint

from dynets import Condition, DivergedError
from dynets.data.dnms import Trials, dnms
from dynets.models import RateRNN
from dynets.rules import EligibilityTrace
from dynets.rules.eligibility import SUPRALINEAR, fiete_seung_trace, miconi_trace, trial_error
from dynets.studies.eligibility import criterion, learn
from dynets.trajectory import run


def small(networks=1, units=8, tau=5.0, dt=1.0, seed=0):
    return RateRNN(units=units, in_features=2, out_features=1, tau=tau, dt=dt, bias=(1.0, -1.0),
                   networks=networks, seed=seed).double()


def series(batch, steps, model, seed=0, kicks=0.3):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(batch, steps, 2, generator=g, dtype=torch.float64)
    xi = torch.randn(batch, steps, model.units, generator=g, dtype=torch.float64)
    return u, xi * (torch.rand(xi.shape, generator=g, dtype=torch.float64) < kicks)


def paper_loop(model, u, xi, x0):
    """The published update, written out: x += dt/tau (-x + J r + win u + modul); biases reset."""
    held = model.free == 0
    x, path = x0.clone(), [x0.clone()]
    for k in range(u.shape[1]):
        r = torch.tanh(x)
        total = torch.einsum("bij,bj->bi", model.weight.expand(len(x), -1, -1) if model.networks == 1
                             else model.weight, r) + torch.einsum("bui,bi->bu", model.input_weight.expand(len(x), -1, -1)
                                                                  if model.networks == 1 else model.input_weight, u[:, k])
        x = x + model.dt / model.tau * (-x + total + xi[:, k])
        x[:, held] = model.held[held]
        path.append(x.clone())
    return torch.stack(path)


@pytest.mark.parametrize("networks", [1, 3])
def test_a_trial_is_the_papers_update_and_torchdiffeqs_euler(networks):
    model = small(networks=networks)
    u, xi = series(3, 25, model)
    x0 = model.trial_start(3, torch.Generator().manual_seed(1))[0]
    condition = Condition(u, noise={0: xi})
    ours = run(model, condition, (x0,), steps=25, dt=1.0).states[0]
    assert torch.allclose(ours, paper_loop(model, u, xi, x0), atol=1e-12)
    t = torch.arange(26, dtype=torch.float64)
    theirs = odeint(model.dynamics(condition), (x0,), t, method="euler")[0]
    assert torch.allclose(ours, theirs, atol=1e-12)
    assert torch.allclose(run(model, condition, (x0,), steps=25, dt=1.0, method="euler").states[0], theirs, atol=1e-12)


def test_the_drive_holds_each_step_for_its_whole_interval():
    """Input and perturbation k act on [t_k, t_k + dt): a solver's mid-step evaluations (rk4 at
    t_k + dt/2) read step k's, not the next one's (Python's round(1.5) = 2 would)."""
    model = small(dt=0.5)
    u, xi = series(2, 6, model, kicks=1.0)
    f = model.dynamics(Condition(u, noise={0: xi}))
    x = (model.trial_start(2, torch.Generator().manual_seed(0))[0],)
    at = lambda t: f(torch.tensor(t, dtype=torch.float64), x)[0]
    assert torch.equal(at(0.5), at(0.75)) and torch.equal(at(0.5), at(0.99))
    assert not torch.allclose(at(0.5), at(1.0)) and not torch.allclose(at(0.5), at(0.25))


def test_the_euler_grid_follows_the_continuous_flow():
    """With no input switching mid-step, Euler at dt = tau/30 (the paper's) stays within O(dt) of
    rk4 at a quarter of the step over a few time constants (before chaos separates them)."""
    model = small(tau=30.0, dt=1.0)
    u = torch.zeros(2, 60, 2, dtype=torch.float64)
    x0 = model.trial_start(2, torch.Generator().manual_seed(2))[0]
    coarse = run(model, Condition(u), (x0,), steps=60, dt=1.0).states[0][-1]
    fine_model = small(tau=30.0, dt=0.25)
    fine = run(fine_model, Condition(torch.zeros(2, 240, 2, dtype=torch.float64)), (x0,), steps=240, dt=0.25,
               method="rk4").states[0][-1]
    gap = (coarse - fine).abs().max().item()
    assert 1e-5 < gap < 0.05 * (x0.abs().max().item() + 1)


def test_the_miconi_trace_is_the_published_loop():
    """net.cpp: incr = rprev(j)·delta_x(i); hebb(j, i) += incr³, with delta_x = x − x_trace taken
    before x_trace = 0.05·x_trace + 0.95·x; here x_trace starts at x(0)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 2, 4, generator=g, dtype=torch.float64)
    r = torch.tanh(x)
    expected = torch.zeros(2, 4, 4, dtype=torch.float64)
    for b in range(2):
        trace = x[0, b].clone()
        for t in range(1, 7):
            delta = x[t, b] - trace
            trace = 0.05 * trace + 0.95 * x[t, b]
            for i in range(4):
                for j in range(4):
                    expected[b, i, j] += (r[t - 1, b, j] * delta[i]) ** 3
    assert torch.allclose(miconi_trace(x, r, 0.05, SUPRALINEAR["cube"]), expected, atol=1e-13)
    square = miconi_trace(x, r, 0.05, SUPRALINEAR["signed_square"])
    assert not torch.allclose(square, expected)


def test_the_fiete_seung_trace_is_perturbation_times_presynaptic_rate():
    g = torch.Generator().manual_seed(1)
    r = torch.rand(6, 2, 3, generator=g, dtype=torch.float64)
    xi = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    expected = torch.zeros(2, 3, 3, dtype=torch.float64)
    for b in range(2):
        for t in range(5):
            for i in range(3):
                for j in range(3):
                    expected[b, i, j] += xi[b, t, i] * r[t, b, j]
    assert torch.allclose(fiete_seung_trace(r, xi), expected, atol=1e-13)


def unrolled_error(model, u, y, x0):
    """The trial error's gradient by autograd through the hand-written loop (no perturbation)."""
    w = model.weight.detach().clone().requires_grad_(True)
    x = x0.clone()
    outs = []
    for k in range(u.shape[1]):
        total = torch.tanh(x) @ w[0].T + u[:, k] @ model.input_weight[0].T
        x = x + model.dt / model.tau * (-x + total) * model.free
        outs.append(torch.tanh(x[:, :1]))
    error = trial_error(torch.stack(outs, 1), y).mean()
    error.backward()
    return error.item(), w.grad[0]


def expected_update(mode, trials, amplitude, rate, seed=5):
    """The rule's update over ``trials`` perturbed runs of one trial (baseline: the unperturbed error)
    and autograd's gradient of the error through the unrolled trial, on the free units' rows."""
    model, steps = small(units=10, tau=5.0), 40
    u = torch.rand(1, steps, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.full((1, steps, 1), float("nan"), dtype=torch.float64)
    y[:, -10:] = 0.5
    x0 = model.trial_start(1, torch.Generator().manual_seed(4))[0]
    error0, gradient = unrolled_error(model, u, y, x0)
    rule = EligibilityTrace(mode=mode, lr=1.0, rate=rate, amplitude=amplitude, max_change=None,
                            scale_by_baseline=False, warmup=0, seed=seed)
    rule.baseline, rule.seen = torch.full((trials, 1), error0), torch.ones(trials, 1, dtype=torch.long)
    model.trial_start = lambda batch, generator: (x0.expand(batch, -1).clone(),)   # the same trial every time
    estimate = rule.update(model, u.expand(trials, -1, -1), y.expand(trials, -1, -1)).grads["weight"][0]
    free = model.free.bool()   # Σ_b (E_b − E0)·e_b: the +gradient direction
    return estimate[free].flatten(), gradient[free].flatten()


def test_the_fiete_seung_update_points_down_the_gradient_in_expectation():
    """E[(E(ξ) − E(0))·Σ_t ξ_t r_tᵀ] ∝ ∂E/∂W to first order in ξ (Fiete & Seung 2006): over 4000
    perturbed runs of the same trial, the rule's update has cosine > 0.98 with autograd's gradient
    through the unrolled trial (measured 0.995-0.998 over three perturbation seeds; 0.92-0.93 from
    100 runs; ±0.35 from one)."""
    estimate, gradient = expected_update("fiete_seung", 4000, amplitude=0.3, rate=0.3)
    assert torch.nn.functional.cosine_similarity(estimate, gradient, dim=0) > 0.98


def test_the_miconi_update_follows_the_gradient_only_with_large_kicks():
    """Miconi's trace reads the perturbation from x − x̄ through a supralinear S, which keeps the
    kicks only where they dominate the fluctuations the recurrent input causes: with kicks of
    0.6 (amplitude 3 at τ = 5) the expected update's cosine with the gradient is 0.76-0.80
    (three seeds), with kicks of 0.06 it is negative (−0.17 to −0.22)."""
    large = torch.nn.functional.cosine_similarity(*expected_update("miconi", 4000, amplitude=3.0, rate=0.05), dim=0)
    small_kicks = torch.nn.functional.cosine_similarity(*expected_update("miconi", 4000, amplitude=0.3, rate=0.3), dim=0)
    assert large > 0.6 and small_kicks < 0.2


def test_the_criterion_by_hand():
    """50 wrong trials then right ones: the first window of 100 with 95 right ends at trial 145."""
    errors = torch.cat([torch.full((50, 1), 2.0), torch.zeros(200, 1)])
    assert criterion(errors) == [145]
    assert criterion(torch.full((300, 2), 1.5)) == [None, None]


def test_the_dnms_trials():
    task = dnms()
    assert task.names == ("AA", "AB", "BA", "BB") and task.x.shape == (4, 1000, 2)
    assert task.x[1, :200, 0].eq(1).all() and task.x[1, 200:400].eq(0).all() and task.x[1, 400:600, 1].eq(1).all()
    assert task.x[:, 600:].eq(0).all() and task.x.sum((1, 2)).eq(400).all()
    scored = ~torch.isnan(task.y)
    assert scored[:, 800:].all() and not scored[:, :800].any()
    assert task.y[:, -1, 0].tolist() == pytest.approx([-0.98, 0.98, 0.98, -0.98])


@pytest.mark.parametrize("mode, lr, amplitude", [("fiete_seung", 0.01, 3.0), ("miconi", 0.1, 16.0)])
def test_a_population_learns_a_fixed_response(mode, lr, amplitude):
    """Learning happens: 2 networks of 30 units, one trial type, output −0.8 over the last 20 of 100
    steps. In 400 trials the error of the last 50 falls below 0.3 of the first 50's (measured:
    0.04 against 0.70-0.90 for fiete_seung, 0.12-0.14 against 0.68-0.76 for miconi)."""
    model = RateRNN(units=30, tau=10.0, bias=(1.0, -1.0), networks=2, seed=0)
    x = torch.zeros(1, 100, 2)
    x[:, :20, 0] = 1.0
    y = torch.full((1, 100, 1), float("nan"))
    y[:, -20:] = -0.8
    rule = EligibilityTrace(mode=mode, lr=lr, rate=0.05, amplitude=amplitude, max_change=3e-3, warmup=5)
    errors = learn(model, rule, Trials(x, y, ("A",), 1.0), 400)
    assert (errors[-50:].mean(0) < 0.3 * errors[:50].mean(0)).all(), (errors[:50].mean(0), errors[-50:].mean(0))


def test_an_unstable_dt_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"dt=60.0 is unstable for tau=30.0.*dt < 60"):
        RateRNN(dt=60.0, tau=30.0)


def test_diverging_dynamics_are_reported_and_not_learned_from():
    model = small(networks=2)
    with torch.no_grad():
        model.weight[1, 3, 0] = float("inf")
    rule = EligibilityTrace(warmup=0)
    before = model.weight.detach().clone()
    u = torch.zeros(2, 20, 2, dtype=torch.float64)
    y = torch.zeros(2, 20, 1, dtype=torch.float64)
    with pytest.raises(DivergedError, match=r"the trajectory diverged: layer 0 is non-finite from step 1 .* samples \[1\]"):
        rule.update(model, u, y, torch.zeros(2))
    assert torch.equal(model.weight.detach().isinf(), before.isinf()) and rule.seen.numel() == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="hebb"), "unknown mode 'hebb'; valid: miconi, fiete_seung"),
    (dict(supralinear="square"), "unknown supralinear 'square'; valid: cube, signed_square"),
    (dict(method="dopri5"), "unknown method 'dopri5'; valid: fast_euler, euler"),
])
def test_bad_options_name_the_valid_ones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EligibilityTrace(**kwargs)


def test_bad_series_are_named():
    model = small(networks=2)
    rule = EligibilityTrace()
    with pytest.raises(ValueError, match=r"the batch must be 2, got 3"):
        rule.update(model, torch.zeros(3, 5, 2), torch.zeros(3, 5, 1))
    with pytest.raises(ValueError, match=r"needs labels y \(the target series .* got y=None"):
        rule.update(model, torch.zeros(2, 5, 2), None)
    with pytest.raises(ValueError, match=r"input series \(batch, steps, 2\)"):
        run(model, Condition(torch.zeros(2, 2)), steps=3, dt=1.0)


def test_the_study_config_builds_the_papers_network_and_the_script_runs(tmp_path):
    """configs/eligibility.yaml composes configs/trial's parts with the published constants, and
    scripts/eligibility.py writes a learning curve of one row per trial."""
    import subprocess
    import sys
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    root = Path(__file__).resolve().parents[1]
    with initialize_config_dir(config_dir=str(root / "configs"), version_base=None):
        cfg = compose("eligibility", overrides=["networks=2"])
    model, rule, task = instantiate(cfg.model), instantiate(cfg.rule), instantiate(cfg.task)
    assert (model.units, model.tau, model.dt, model.networks, task.steps) == (200, 30.0, 1.0, 2, 1000)
    assert model.weight.std().item() == pytest.approx(1.5 / 200 ** 0.5, rel=0.02)
    assert (rule.lr, rule.amplitude, rule.rate, rule.max_change, rule.mode) == (0.1, 16.0, 0.003, 3e-4, "miconi")
    out = subprocess.run([sys.executable, str(root / "scripts" / "eligibility.py"), f"hydra.run.dir={tmp_path}",
                          "networks=2", "trials=3", "model.units=20"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = (tmp_path / "eligibility.csv").read_text().splitlines()
    assert lines[0] == "trial,seed 0,seed 1" and len(lines) == 4 and (tmp_path / "eligibility.png").exists()
