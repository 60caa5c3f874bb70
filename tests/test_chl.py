"""Contrastive Hebbian learning against the outer products computed by hand, and learning."""
import pytest
import torch

from dynets import Condition, SettleOptions
from dynets.models import LayeredHopfield
from dynets.rules import ContrastiveHebbian, write_grads

TIGHT = SettleOptions(method="euler", atol=1e-12, max_time=3000, check_every=10)


@pytest.mark.parametrize("activation", ["sigmoid", "hard_sigmoid"])
def test_chl_is_the_difference_of_hand_computed_outer_products(activation):
    """One hidden layer: with the output clamped to y the hidden layer's equilibrium is
    ρ(W₀x + b₀ + W₁ᵀy) in closed form; the free one is settled. The update is
    −[⟨s^c s^cᵀ⟩ − ⟨s^f s^fᵀ⟩] for each weight, −[⟨s^c⟩ − ⟨s^f⟩] for each bias."""
    model = LayeredHopfield([6, 9, 3], activation).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    x, y = torch.rand(5, 6, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0])
    grads = ContrastiveHebbian(TIGHT).update(model, x, y).grads
    target = model.target(y)
    h_f, o_f = TIGHT(model, Condition(x)).state
    w0, b0, w1, b1 = (p.detach() for p in model.parameters())
    h_c = model.act.rho(x @ w0.T + b0 + target @ w1)
    n = len(x)
    want = {"layers.0.weight": -(h_c.T @ x - h_f.T @ x) / n, "layers.0.bias": -(h_c - h_f).mean(0),
            "layers.1.weight": -(target.T @ h_c - o_f.T @ h_f) / n, "layers.1.bias": -(target - o_f).mean(0)}
    assert grads.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(grads[name], want[name], rtol=1e-9, atol=1e-10)


def test_clamped_phase_holds_the_output_at_the_target():
    """Two hidden layers: in the clamped phase the top layer is exactly y and every hidden
    layer is at its fixed point s = ρ(∂Φ/∂s) given it, by torchdiffeq and by Gauss–Seidel."""
    torch.manual_seed(3)
    model = LayeredHopfield([5, 7, 6, 3], "sigmoid").double()
    x, y = torch.rand(4, 5, dtype=torch.float64), torch.tensor([2, 0, 1, 2])
    c = Condition(x, model.target(y)).clamped({-1: model.target(y)})
    for opts in (TIGHT, SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-12, max_time=3000)):
        s = opts(model, c).state
        assert torch.equal(s[-1], model.target(y))
        u = model.drives(s, Condition(x))
        for layer in (0, 1):
            torch.testing.assert_close(model.act.rho(u[layer]), s[layer], rtol=0, atol=1e-10)


def test_chl_learns_digits():
    """64-64-10, 3 epochs of CHL with Adam: > 85 % on held-out digits (chance: 10 %)."""
    import dynets

    torch.manual_seed(0)
    data = dynets.data.digits().flat()
    model = LayeredHopfield([64, 64, 10])
    opts = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-3, max_time=200)
    rule, optimizer = ContrastiveHebbian(opts), torch.optim.Adam(model.parameters(), 2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for x, y in data.train.batches(32, shuffle=True, generator=generator):
            write_grads(model, rule.update(model, x, y).grads)
            optimizer.step()
    out = model.output(opts(model, Condition(data.test.x)).state)
    assert (out.argmax(1) == data.test.y).float().mean() > 0.85
