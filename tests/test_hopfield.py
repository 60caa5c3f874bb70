"""LayeredHopfield: analytic dynamics against autograd, energy descent, fixed points."""
import pytest
import torch

from dynets import Condition, SettleOptions
from dynets.models import ACTIVATIONS, LayeredHopfield


def net(activation, sizes=(5, 7, 6, 3), scale=1.5):
    model = LayeredHopfield(list(sizes), activation).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def nudged_condition(model, batch=4, beta=0.3):
    x = torch.rand(batch, model.in_features, dtype=torch.float64)
    target = torch.nn.functional.one_hot(torch.randint(0, model.out_features, (batch,)), model.out_features).double()
    return Condition(x, target, beta)


def random_state(model, batch, activation):
    lo = -0.9 if activation == "tanh" else 0.05
    return tuple(lo + (0.95 - lo) * torch.rand(batch, n, dtype=torch.float64) for n in model.sizes[1:])


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_vector_field_is_rho_of_autograd_drive(activation):
    """ds/dt = −s + ρ(∂Φ_β/∂s), with ∂Φ_β/∂s from autograd of Φ − βC."""
    model = net(activation)
    c = nudged_condition(model)
    s = tuple(t.requires_grad_() for t in random_state(model, 4, activation))
    phi = model.primitive(s, c) - c.beta * model.cost(s, c)
    u = torch.autograd.grad(phi.sum(), s)
    expected = tuple(model.act.rho(ui) - si for ui, si in zip(u, s))
    for got, want in zip(model.vector_field(torch.tensor(0.0), s, c), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_smooth_fixed_points_are_stationary_points_of_F(activation):
    model = net(activation)
    c = nudged_condition(model)
    eq = SettleOptions(method="fast_euler", atol=1e-12, max_time=2000)(model, c)
    assert eq.converged
    s = tuple(t.clone().requires_grad_() for t in eq.state)
    grads = torch.autograd.grad(model.total_energy(s, c).sum(), s)
    assert max(g.abs().max().item() for g in grads) < 1e-9


@pytest.mark.parametrize("activation", ["hard_sigmoid", "hard_sigmoid_half_slope"])
def test_hard_sigmoid_fixed_point_is_the_box_kkt_point_of_F(activation):
    """s ∈ [0,1]: ∂F/∂s = 0 inside, ≥ 0 at 0, ≤ 0 at 1 (a minimum of F on the box)."""
    model = net(activation, scale=3.0)
    c = nudged_condition(model, batch=8)
    eq = SettleOptions(method="fast_euler", atol=1e-12, max_time=2000)(model, c)
    assert eq.converged
    s = tuple(t.clone().requires_grad_() for t in eq.state)
    g = torch.cat(torch.autograd.grad(model.total_energy(s, c).sum(), s), 1)
    s = torch.cat(eq.state, 1)
    at0, at1 = s <= 1e-12, s >= 1 - 1e-12
    inside = ~(at0 | at1)
    assert inside.any() and at0.any() and at1.any()   # every case is exercised
    assert g[inside].abs().max() < 1e-9
    assert (g[at0] >= -1e-9).all() and (g[at1] <= 1e-9).all()


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_energy_never_increases_along_a_settle(activation):
    model = net(activation, scale=2.0)
    c = nudged_condition(model, batch=6)
    eq = SettleOptions(method="fast_euler", step_size=0.05, atol=1e-8, max_time=60, check_every=1)(model, c, record=True)
    energies = torch.stack([model.total_energy(s, c) for _, s in eq.trajectory])   # (time, batch)
    assert len(energies) > 50
    assert (energies[1:] - energies[:-1]).max() <= 1e-12
    assert (energies[-1] < energies[0]).all()


def test_half_slope_hard_sigmoid_is_the_published_my_hard_sig_and_G_its_primitive():
    """ρ(u) = (1 + hardtanh(u − 1))/2 (the published code's definition) and G' = ρ⁻¹ = 2s on (0, 1)."""
    act, u = ACTIVATIONS["hard_sigmoid_half_slope"], torch.linspace(-3, 5, 801, dtype=torch.float64)
    want = 0.5 * (1 + torch.nn.functional.hardtanh(u - 1))
    torch.testing.assert_close(act.rho(u), want, rtol=0, atol=1e-15)
    torch.testing.assert_close(act.rho_(u.clone()), want, rtol=0, atol=1e-15)
    s = torch.linspace(0.01, 0.99, 99, dtype=torch.float64, requires_grad=True)
    G_prime, = torch.autograd.grad(act.G(s).sum(), s)
    torch.testing.assert_close(G_prime, 2 * s.detach())
    torch.testing.assert_close(act.rho(G_prime), s.detach())   # ρ(G'(s)) = s: G' inverts ρ on the box


def test_couplings_are_symmetric():
    """∂u_i/∂s_j = ∂u_j/∂s_i for the drives u = ∂Φ/∂s: one W used in both directions."""
    model = net("hard_sigmoid")
    c = Condition(torch.rand(1, model.in_features, dtype=torch.float64))
    splits = model.sizes[1:]

    def flat_drive(v):
        return torch.cat(model.drives(torch.split(v, splits, 1), c), 1)

    J = torch.autograd.functional.jacobian(flat_drive, torch.rand(1, sum(splits), dtype=torch.float64)).squeeze()
    assert (J - J.T).abs().max() < 1e-12 and J.abs().max() > 0.1


def test_bad_input_names_both_sizes():
    model = LayeredHopfield([64, 10, 10])
    with pytest.raises(ValueError, match=r"65.*64|64.*65"):
        model.vector_field(torch.tensor(0.0), model.init_state(Condition(torch.zeros(2, 64))),
                           Condition(torch.zeros(2, 65)))
    with pytest.raises(ValueError, match="hard_sigmoid"):
        LayeredHopfield([4, 2], activation="relu6")
    with pytest.raises(ValueError, match="0..9"):
        model.target(torch.tensor([3, 10]))


@pytest.mark.parametrize("beta", [0.5, 2.0, -0.5, -2.0])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_gauss_seidel_top_block_is_its_exact_minimiser(activation, beta):
    """The top layer's Gauss–Seidel update under a nudge minimises F over the top layer
    given the rest: no point of a fine grid of each top unit's range does better (F is
    separable over the top units given the layer below). tanh at β = −2 is not convex in
    the top layer; its plain update is kept and only F ≤ F(current) is required."""
    model = net(activation)
    c = nudged_condition(model, beta=beta)
    s = random_state(model, 4, activation)
    top = model.blocks(c)[len(model.layers) % 2 == 0][1](s)[-1]   # the block holding the top layer
    lo, hi = (-1.0, 1.0) if activation == "tanh" else (0.0, 1.0)
    grid = torch.linspace(lo + 1e-6, hi - 1e-6, 20001, dtype=torch.float64)

    def F_top(v):   # F with the top layer set to v, per unit: (…, units)
        c_drive = model.layers[-1](s[-2]) + beta * c.target
        return model.act.G(v) + 0.5 * beta * v * v - c_drive * v

    best = F_top(grid[:, None, None]).min(0).values
    if activation == "tanh" and beta == -2.0:
        assert (F_top(top) <= F_top(s[-1]) + 1e-12).all()
    else:
        assert (F_top(top) <= best + 1e-9).all()


@pytest.mark.parametrize("beta", [0.5, 1.0, 1.5, 2.0, -0.5, -1.0, -2.0])
def test_gauss_seidel_nudged_phases_descend_F_and_converge(beta):
    """64-64-10 at init, float64: every sweep lowers F = E + β·C (exact block-coordinate
    descent, the nudged top layer included), and the phase converges within 200 sweeps
    for |β| up to 2 (the plain top update ρ(c − β·s) did not converge for β ≥ 1.5)."""
    torch.manual_seed(0)
    model = LayeredHopfield([64, 64, 10]).double()
    x, y = torch.rand(32, 64, dtype=torch.float64), torch.randint(0, 10, (32,))
    c = model.prepare(Condition(x, model.target(y)))
    opts = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-4, max_time=200, check_every=1)
    free = opts(model, c)
    eq = opts(model, c.nudged(beta), init=free.state, record=True)
    assert eq.converged
    energies = torch.stack([model.total_energy(s, c.nudged(beta)) for _, s in eq.trajectory])
    assert (energies[1:] - energies[:-1]).max() <= 1e-10
