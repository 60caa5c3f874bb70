"""settle against closed-form equilibria, non-convergence and divergence."""
import math

import pytest
import torch

import dynets
from dynets import Condition, DivergedError, SettleOptions, settle
from dynets.settle import residual_norm, spectral_radius
from dynets.steppers import phase_field


class Linear(torch.nn.Module):
    """ds/dt = A s + b per layer (one layer per entry of As); equilibrium s* = −A⁻¹b."""

    def __init__(self, As, bs):
        super().__init__()
        self.As, self.bs = As, bs

    def init_state(self, condition):
        return tuple(torch.zeros(condition.x.shape[0], A.shape[0], dtype=A.dtype) for A in self.As)

    def dynamics(self, condition):
        return lambda t, s: tuple(si @ A.T + b for si, A, b in zip(s, self.As, self.bs))


def stable_matrix(n, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return -torch.eye(n, dtype=torch.float64) - 0.1 * m @ m.T   # symmetric, eigenvalues <= -1


@pytest.mark.parametrize("method", ["euler", "fast_euler", "rk4", "midpoint", "dopri5"])
def test_reaches_closed_form_equilibrium(method):
    A, b = stable_matrix(6, 1), torch.randn(4, 6, dtype=torch.float64)
    model = Linear([A], [b])
    eq = settle(model, Condition(torch.zeros(4, 1)), method=method, step_size=0.2, atol=1e-8, max_time=100,
                solver_rtol=1e-10, solver_atol=1e-12)
    exact = -torch.linalg.solve(A, b.T).T
    assert eq.converged and (eq.residual <= 1e-8).all()
    # s − s* = A⁻¹ f(s) and ‖A⁻¹‖ <= 1, so each sample is within its residual of s*.
    assert ((eq.state[0] - exact).norm(dim=1) <= eq.residual + 1e-12).all()


def test_waits_for_the_slowest_sample():
    # ds/dt = −k_b (s − 1): residual after n Euler steps is k_b (1 − k_b dt)^n.
    k = torch.tensor([[2.0], [1.0], [0.05]], dtype=torch.float64)
    model = Linear([], [])
    model.init_state = lambda c: (torch.zeros(3, 1, dtype=torch.float64),)
    model.dynamics = lambda c: (lambda t, s: (-k * (s[0] - 1),))
    dt, tol = 0.25, 1e-6
    eq = settle(model, Condition(torch.zeros(3, 1)), method="fast_euler", step_size=dt, atol=tol,
                max_time=1000, check_every=1)
    slowest = math.ceil(math.log(tol / 0.05) / math.log(1 - 0.05 * dt))
    assert eq.converged and eq.steps == slowest


@pytest.mark.parametrize("method", ["fast_euler", "euler"])
def test_relative_tolerance_scales_with_each_samples_state(method):
    """ds/dt = −k_b (s − c_b) from 0: after n Euler steps s_b = c_b(1 − qᵇⁿ) and the residual
    is k_b c_b qᵇⁿ, q_b = 1 − k_b Δt. The stop rule k_b c_b q_bⁿ ≤ atol + rtol·c_b(1 − q_bⁿ)
    holds from q_bⁿ ≤ (atol + rtol·c_b)/((k_b + rtol)c_b): the settle stops at the first n
    where it holds for every sample, each with the tolerance of its own state."""
    k = torch.tensor([[2.0], [0.2], [1.0]], dtype=torch.float64)
    c = torch.tensor([[100.0], [0.01], [3.0]], dtype=torch.float64)
    model = Linear([], [])
    model.init_state = lambda condition: (torch.zeros(3, 1, dtype=torch.float64),)
    model.dynamics = lambda condition: (lambda t, s: (-k * (s[0] - c),))
    dt, atol, rtol = 0.25, 1e-6, 1e-3

    def by_hand(rtol):
        q, kb, cb = 1 - k[:, 0] * dt, k[:, 0], c[:, 0]
        return max(math.ceil(n) for n in (torch.log((atol + rtol * cb) / ((kb + rtol) * cb)) / torch.log(q)).tolist())

    assert by_hand(rtol) < by_hand(0.0)   # the relative part matters here
    eq = settle(model, Condition(torch.zeros(3, 1)), method=method, step_size=dt, atol=atol, rtol=rtol,
                max_time=1000, check_every=1)
    assert eq.converged and eq.steps == by_hand(rtol)
    torch.testing.assert_close(eq.tolerance, atol + rtol * eq.state[0].abs()[:, 0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", ["fast_euler", "euler"])
def test_start_relative_tolerance_stops_at_a_fraction_of_each_samples_first_residual(method):
    """ds/dt = −k_b (s − c_b) from 0: the residual starts at r_b = k_b c_b and is r_b q_bⁿ after n
    Euler steps (q_b = 1 − k_b Δt). With start_rtol ρ the stop rule r_b q_bⁿ ≤ atol + ρ·r_b holds
    from n_b = log(atol/r_b + ρ)/log q_b, for samples whose starts are 10⁴ apart (as nudges of
    β 10⁻⁴ and 1): the settle stops at the largest n_b, where atol alone waits far longer for
    the large start or stops the small one before its first step."""
    k = torch.tensor([[0.5], [0.5], [1.0]], dtype=torch.float64)
    c = torch.tensor([[1e-4], [1.0], [0.1]], dtype=torch.float64)
    model = Linear([], [])
    model.init_state = lambda condition: (torch.zeros(3, 1, dtype=torch.float64),)
    model.dynamics = lambda condition: (lambda t, s: (-k * (s[0] - c),))
    dt, atol, rho = 0.25, 1e-9, 1e-2
    q, r = 1 - k[:, 0] * dt, k[:, 0] * c[:, 0]
    steps = [math.ceil(n) for n in (torch.log(atol / r + rho) / torch.log(q)).tolist()]
    eq = settle(model, Condition(torch.zeros(3, 1)), method=method, step_size=dt, atol=atol, start_rtol=rho,
                max_time=1000, check_every=1)
    assert eq.converged and eq.steps == max(steps)
    torch.testing.assert_close(eq.tolerance, atol + rho * r, rtol=1e-12, atol=0)
    # the nudged phase's residual at each sample's own scale: ≤ 2ρ of where it started
    assert (eq.residual <= 2 * rho * r).all()


def test_fast_path_matches_torchdiffeq():
    A, b = stable_matrix(5, 2), torch.randn(3, 5, dtype=torch.float64)
    model, c = Linear([A], [b]), Condition(torch.zeros(3, 1))
    fast = settle(model, c, method="fast_euler", step_size=0.1, atol=0, max_time=3.0)
    slow = settle(model, c, method="euler", step_size=0.1, atol=0, max_time=3.0)
    assert fast.steps == slow.steps == 30 and not fast.converged and not slow.converged
    torch.testing.assert_close(fast.state[0], slow.state[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["rk4", "fast_euler"])
def test_reports_non_convergence(method):
    rotation = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)   # orbits, never settles
    model = Linear([rotation], [torch.zeros(2, dtype=torch.float64)])
    model.init_state = lambda c: (torch.ones(2, 2, dtype=torch.float64),)
    eq = settle(model, Condition(torch.zeros(2, 1)), method=method, step_size=0.1, atol=1e-4, max_time=20)
    assert not eq.converged and eq.t == pytest.approx(20) and (eq.residual > 1e-4).all()
    assert eq.converged_fraction == 0.0


def test_raises_on_divergence_naming_the_layer():
    eye = torch.eye(2, dtype=torch.float64)
    model = Linear([-eye, eye], [torch.ones(2, dtype=torch.float64)] * 2)   # layer 1 grows like e^t
    with pytest.raises(DivergedError, match="layer 1"):
        settle(model, Condition(torch.zeros(1, 1)), method="fast_euler", step_size=1.0, atol=1e-4, max_time=5000)


def test_warm_start_from_equilibrium_takes_no_step():
    A, b = stable_matrix(4, 3), torch.randn(2, 4, dtype=torch.float64)
    model, c = Linear([A], [b]), Condition(torch.zeros(2, 1))
    eq = settle(model, c, atol=1e-9, max_time=200, step_size=0.2)
    again = settle(model, c, eq.state, atol=1e-9, max_time=200, step_size=0.2)
    assert eq.steps > 0 and again.steps == 0 and again.converged


def test_warm_start_of_the_wrong_shape_is_an_error():
    A, b = stable_matrix(4, 3), torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)"):
        settle(Linear([A], [b]), Condition(torch.zeros(2, 1)), (torch.zeros(3, 4, dtype=torch.float64),))


def test_bad_options_are_errors():
    with pytest.raises(ValueError, match="dopri5"):
        SettleOptions(method="runge")
    with pytest.raises(ValueError, match="stalls"):
        SettleOptions(method="dopri5", atol=1e-4, solver_rtol=1e-3)
    with pytest.raises(ValueError, match="step_size"):
        SettleOptions(step_size=0)
    with pytest.raises(ValueError, match="0 < ω < 2"):
        SettleOptions(method="gauss_seidel", step_size=2.0)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"start_rtol must be in \[0, 1\)"):
            SettleOptions(start_rtol=bad)
    with pytest.raises(TypeError):
        settle(None, None, options=SettleOptions(), atol=1.0)
    assert "fast_euler" in dynets.METHODS


def hopfield_problem(sizes, scale, batch=64, seed=0):
    from dynets.models import LayeredHopfield

    torch.manual_seed(seed)
    model = LayeredHopfield(sizes)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    x, y = torch.rand(batch, sizes[0]), torch.randint(0, sizes[-1], (batch,))
    return model, Condition(x, model.target(y))


FAST_METHODS = [("fast_euler", 0.5), ("gauss_seidel", 1.0)]


@pytest.mark.parametrize("method,dt", FAST_METHODS)
@pytest.mark.parametrize("sizes,scale,atol", [
    ([784, 512, 10], 1.0, 1e-4), ([784, 512, 10], 3.0, 1e-3), ([64, 256, 10], 2.0, 1e-4),
    ([30, 100, 100, 100, 5], 1.0, 1e-4)])   # strongly coupled nets (scale 3) stall above 1e-4 in fp32
def test_adaptive_stop_is_close_to_the_fewest_steps(sizes, scale, atol, method, dt):
    """Checks placed by the predicted decay stop within 1.2x of checking every step."""
    model, c = hopfield_problem(sizes, scale)
    every = SettleOptions(method=method, step_size=dt, atol=atol, max_time=500, check_every=1)
    sparse = SettleOptions(method=method, step_size=dt, atol=atol, max_time=500, check_every=20)
    free = every(model, c)
    assert free.converged
    for condition, init in ((c, None), (c.nudged(0.5), free.state), (c.nudged(-0.5), free.state)):
        fewest, ours = every(model, condition, init), sparse(model, condition, init)
        assert fewest.converged and ours.converged
        # A phase that leaves its basin (rising residual) and ends on the box's corners
        # (residual exactly 0) has no decay rate to predict: at most check_every late.
        finite = fewest.residual.max().item() == 0.0
        assert fewest.steps <= ours.steps <= (fewest.steps + 20 if finite else 1.2 * fewest.steps)


# Gauss–Seidel follows another path than the flow; a strongly coupled (scale 2) net has
# several minima, and it may end in another one: compare it where the minimum is unique.
@pytest.mark.parametrize("method,dt,scale", [("fast_euler", 0.5, 2.0), ("gauss_seidel", 1.0, 1.0)])
def test_fast_path_and_torchdiffeq_give_the_same_equilibrium_and_ep_update(method, dt, scale):
    from dynets.rules import EquilibriumPropagation

    model, c = hopfield_problem([20, 30, 15, 4], scale, batch=16)
    y = c.target.argmax(1)
    fast = SettleOptions(method=method, step_size=dt, atol=1e-6, max_time=400)
    slow = SettleOptions(method="euler", atol=1e-6, max_time=400)
    a, b = fast(model, c), slow(model, c)
    assert a.converged and b.converged
    for sa, sb in zip(a.state, b.state):
        torch.testing.assert_close(sa, sb, rtol=0, atol=1e-5)
    grads = []
    for opts in (fast, slow):
        update = EquilibriumPropagation(0.2, "centered", opts).update(model, c.x, y)
        grads.append(torch.cat([update.grads[n].flatten() for n, _ in model.named_parameters()]))
    assert (grads[0] - grads[1]).norm() <= 1e-3 * grads[1].norm()


@pytest.mark.slow
@pytest.mark.parametrize("method,dt", FAST_METHODS)
def test_compiled_chunks_match_eager(method, dt, monkeypatch):
    """The compiled step (inductor; forced on CPU here) is really compiled (dynamo
    captures graphs for it, and none for the eager settle) and reaches the same state in
    the same steps as eager, for phases of different β."""
    from torch._dynamo.utils import counters

    from dynets import steppers

    # Compile afresh: a step compiled earlier in this process would capture no new graph.
    monkeypatch.setattr(steppers, "_COMPILED", {})
    torch._dynamo.reset()
    counters.clear()
    model, c = hopfield_problem([64, 48, 10], 1.5, batch=32)
    eager = SettleOptions(method=method, step_size=dt, atol=1e-5, max_time=200, compile="off")
    compiled = SettleOptions(method=method, step_size=dt, atol=1e-5, max_time=200, compile="on")
    conditions = (c, c.nudged(0.5), c.nudged(-0.5))
    eagers = [eager(model, condition) for condition in conditions]
    assert counters["stats"]["unique_graphs"] == 0
    compileds = [compiled(model, condition) for condition in conditions]
    assert counters["stats"]["unique_graphs"] > 0
    for a, b in zip(eagers, compileds):
        assert a.converged and a.steps == b.steps
        for sa, sb in zip(a.state, b.state):
            torch.testing.assert_close(sa, sb, rtol=1e-5, atol=1e-6)


def test_settle_keeps_no_autograd_graph():
    """Even when the caller records gradients, the settle's states carry no graph, so memory
    stays O(batch × units) whatever the number of steps."""
    model, c = hopfield_problem([20, 30, 4], 1.0, batch=8)
    with torch.enable_grad():
        eqs = [SettleOptions(method=m, atol=1e-5, max_time=100)(model, c) for m in ("fast_euler", "gauss_seidel", "euler")]
    for s in sum((eq.state for eq in eqs), ()):
        assert s.grad_fn is None and not s.requires_grad


def interior_linear_problem(sizes, radius, batch=4):
    """A layered net (float64) whose fixed point has every unit near ½, strictly inside
    (0, 1), so that near it the hard-sigmoid dynamics are linear: ds/dt = (M − I)s + c,
    M the symmetric block-tridiagonal coupling (blocks W_l below the diagonal), scaled to
    spectral radius ``radius``. Returns the model, the condition and M."""
    from dynets.models import LayeredHopfield

    torch.manual_seed(1)
    model = LayeredHopfield(sizes).double()
    n = sum(sizes[1:])
    offsets = [0, *torch.tensor(sizes[1:]).cumsum(0).tolist()]
    M = torch.zeros(n, n, dtype=torch.float64)
    for l, layer in enumerate(model.layers[1:], start=1):
        M[offsets[l]:offsets[l + 1], offsets[l - 1]:offsets[l]] = layer.weight.detach()
    M = M + M.T
    M *= radius / torch.linalg.eigvalsh(M).abs().max()
    x_mean = torch.full((sizes[0],), 0.5, dtype=torch.float64)
    with torch.no_grad():
        for l, layer in enumerate(model.layers):
            if l > 0:
                layer.weight.copy_(M[offsets[l]:offsets[l + 1], offsets[l - 1]:offsets[l]])
        model.layers[0].weight.mul_(0.1)
        # Biases that make s = ½ the fixed point at x = x_mean: b = ½ − (M·½ + W₀x_mean on layer 1).
        half = torch.full((n,), 0.5, dtype=torch.float64)
        drive = M @ half
        drive[:sizes[1]] += model.layers[0].weight @ x_mean
        for l, layer in enumerate(model.layers):
            layer.bias.copy_(0.5 - drive[offsets[l]:offsets[l + 1]])
    x = x_mean + 0.05 * torch.randn(batch, sizes[0], dtype=torch.float64)
    return model, Condition(x), M


@pytest.mark.parametrize("sizes", [[6, 12, 8], [5, 10, 9, 7, 4]])
def test_gauss_seidel_contracts_at_the_square_of_the_euler_rate(sizes):
    """Young's theorem for block-tridiagonal (2-cyclic) systems: the red-black sweep's
    error contracts by ρ(M)² per step where the Euler step at Δt = 1 (Jacobi) contracts
    by ρ(M). Measured on the residual's asymptotic decay in the linear regime."""
    radius = 0.8
    model, c, M = interior_linear_problem(sizes, radius)
    rates = {}
    for method in ("fast_euler", "gauss_seidel"):
        eq = settle(model, c, method=method, step_size=1.0, atol=1e-13, max_time=300, check_every=1, record=True)
        assert eq.converged
        inside = torch.cat(eq.state, 1)
        assert ((inside > 0.2) & (inside < 0.8)).all()   # the linear regime: no unit at a clip
        r = torch.stack([residual_norm(model.vector_field(None, s, c)).max() for _, s in eq.trajectory])
        late = r[(r < 1e-6) & (r > 1e-12)]
        rates[method] = (late[1:] / late[:-1]).median().item()
    assert rates["fast_euler"] == pytest.approx(radius, rel=0.02)
    assert rates["gauss_seidel"] == pytest.approx(radius ** 2, rel=0.02)


def test_gauss_seidel_descends_the_energy_where_euler_oscillates():
    """At Δt = 1 each half-sweep minimises E exactly over one parity (hard sigmoid: the
    box-constrained minimum is the clip), so E never increases, even in a strongly
    coupled net where the undamped Euler iteration oscillates and never settles."""
    model, c = hopfield_problem([40, 60, 50, 10], 4.0, batch=16)
    model.double()
    c = Condition(c.x.double())
    euler = settle(model, c, method="fast_euler", step_size=1.0, atol=1e-6, max_time=300)
    gs = settle(model, c, method="gauss_seidel", step_size=1.0, atol=1e-6, max_time=300, check_every=1, record=True)
    assert not euler.converged and gs.converged
    energies = torch.stack([model.energy(s, c) for _, s in gs.trajectory])
    assert (energies[1:] <= energies[:-1] + 1e-9).all()


@pytest.mark.parametrize("beta,dt", [(0.0, 1.0), (0.7, 1.0), (-0.4, 0.6)])
def test_gauss_seidel_reports_the_true_residual_when_it_stops_short(beta, dt):
    """The check assembles ds/dt from the carried even layers and a fresh evaluation of
    the odd ones; it must equal the vector field at the returned state."""
    model, c = hopfield_problem([20, 30, 15, 25, 4], 2.0, batch=8)
    c = c.nudged(beta) if beta else c
    eq = settle(model, c, method="gauss_seidel", step_size=dt, atol=1e-9, max_time=3 * dt)
    truth = residual_norm(model.vector_field(None, eq.state, c))
    assert eq.steps == 3 and not eq.converged and eq.converged_fraction == 0.0
    torch.testing.assert_close(eq.residual, truth, rtol=1e-5, atol=0)


def test_gauss_seidel_needs_a_layered_model():
    A, b = stable_matrix(3, 0), torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="blocks.*fast_euler"):
        settle(Linear([A], [b]), Condition(torch.zeros(2, 1)), method="gauss_seidel")


def test_compile_auto_compiles_on_cuda_only():
    """``compile="auto"`` falls back to the eager step on CPU (inductor measured slower
    there) and wraps it for CUDA devices; ``off`` never compiles. Creating the wrapper
    compiles nothing, so this runs without a GPU."""
    from dynets.steppers import euler_step, gauss_seidel_step, maybe_compiled

    for step in (euler_step, gauss_seidel_step):
        assert maybe_compiled(step, "auto", torch.device("cpu")) is step
        assert maybe_compiled(step, "off", torch.device("cuda")) is step
        wrapped = maybe_compiled(step, "auto", torch.device("cuda"))
        assert wrapped is not step and wrapped is maybe_compiled(step, "on", torch.device("cpu"))


def stiff_matrix(seed):
    """−Q diag(1..10, 100) Qᵀ: symmetric, eigenvalues −1 … −10 and −100 (a clear gap for power iteration)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(11, 11, generator=g, dtype=torch.float64))
    rates = torch.cat([torch.arange(1.0, 11.0, dtype=torch.float64), torch.tensor([100.0], dtype=torch.float64)])
    return -(q * rates) @ q.T


def test_spectral_radius_is_the_largest_eigenvalue_of_the_jacobian():
    A = stiff_matrix(0)
    model = Linear([A], [torch.zeros(11, dtype=torch.float64)])
    state = (torch.zeros(3, 11, dtype=torch.float64),)
    rho = spectral_radius(model.dynamics(None), state)
    exact = torch.linalg.eigvalsh(A).abs().max().item()
    assert abs(rho - exact) < 1e-3 * exact, (rho, exact)


def test_stability_caps_the_euler_step_below_two_over_the_stiffest_rate():
    """ds/dt = A s + b with rates up to 100: a step of 0.1 (> 2/100) blows up; with stability 0.9
    the step is 0.9·2/100 and the settle reaches the closed-form equilibrium."""
    A, b = stiff_matrix(1), torch.randn(2, 11, dtype=torch.float64)
    model = Linear([A], [b])
    c = Condition(torch.zeros(2, 1))
    with pytest.raises(DivergedError):
        settle(model, c, method="fast_euler", step_size=0.1, atol=1e-8, max_time=200)
    for method in ("fast_euler", "euler"):
        eq = settle(model, c, method=method, step_size=0.1, atol=1e-8, max_time=200, stability=0.9)
        assert eq.converged, method
        assert eq.t / eq.steps == pytest.approx(0.9 * 2 / 100, rel=1e-3)
        exact = -torch.linalg.solve(A, b.T).T
        assert ((eq.state[0] - exact).norm(dim=1) <= eq.residual + 1e-12).all()


def test_stability_lets_a_stiff_generative_pc_settle_to_the_fine_step_equilibrium():
    """Generative PC with weights grown 8x (λ_max(WᵀW) ≈ 160): Euler steps of 0.1 do not
    settle; with stability 0.9 they reach the equilibrium that steps of 0.001 reach."""
    from dynets.models import PredictiveCoding
    torch.manual_seed(0)
    model = PredictiveCoding([30, 12], activation="tanh", arrangement="generative").double()
    with torch.no_grad():
        model.layers[0].weight.mul_(8 * (784 / 30) ** 0.5 / 4)
    c = model.prepare(Condition(torch.rand(8, 30, dtype=torch.float64)))
    rho = spectral_radius(phase_field(model, c), model.init_state(c))
    assert rho * 0.1 > 2   # past Euler's limit at step 0.1
    plain = settle(model, c, method="fast_euler", step_size=0.1, atol=1e-6, max_time=60)
    stable = settle(model, c, method="fast_euler", step_size=0.1, atol=1e-6, max_time=60, stability=0.9)
    fine = settle(model, c, method="fast_euler", step_size=1e-3, atol=1e-6, max_time=200)
    assert not plain.converged and stable.converged and fine.converged
    torch.testing.assert_close(stable.state[0], fine.state[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", [dict(method="gauss_seidel", stability=0.5), dict(method="dopri5", stability=0.5),
                                    dict(method="fast_euler", stability=1.0), dict(method="fast_euler", stability=-0.1)])
def test_stability_is_refused_where_it_means_nothing(kwargs):
    with pytest.raises(ValueError, match="stability"):
        SettleOptions(**kwargs)


@pytest.mark.parametrize("method", ["gauss_seidel", "fast_euler"])
def test_a_settle_builds_its_stepper_once(method):
    """One settle asks the model for its blocks (Gauss–Seidel) or its field (Euler) once: building
    a stepper checks the condition and may size steps by power iterations (a merge built it twice)."""
    from dynets.models import LayeredHopfield
    calls = []

    class Counted(LayeredHopfield):
        def blocks(self, condition):
            calls.append("blocks")
            return super().blocks(condition)

        def dynamics(self, condition):
            calls.append("dynamics")
            return super().dynamics(condition)

    torch.manual_seed(0)
    eq = settle(Counted([5, 7, 3]), Condition(torch.rand(4, 5)), method=method, step_size=0.5, atol=1e-6, max_time=100)
    assert eq.converged and calls == ["blocks" if method == "gauss_seidel" else "dynamics"]
