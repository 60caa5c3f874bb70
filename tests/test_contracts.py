"""The engine's contracts for every family: phases (clamps, noise, no input), costs as
objects, name-keyed gradients, and a user's model defined by its energy alone."""
import re

import pytest
import torch
from torch import nn

import dynets
from dynets import Condition, SettleOptions
from dynets.costs import CrossEntropy, SquaredError
from dynets.models import LayeredHopfield
from dynets.models.base import DynamicalModel, EnergyModel
from dynets.rules import ContrastiveHebbian, EquilibriumPropagation, ImplicitDifferentiation, write_grads

TIGHT = SettleOptions(method="fast_euler", atol=1e-12, max_time=3000, check_every=5)


def small(sizes=(5, 7, 6, 3), activation="sigmoid"):
    torch.manual_seed(0)
    model = LayeredHopfield(list(sizes), activation).double()
    x = torch.rand(4, sizes[0], dtype=torch.float64)
    return model, x, torch.tensor([0, 2, 1, 2])


@pytest.mark.parametrize("cost", [SquaredError(), CrossEntropy()])
def test_cost_gradient_is_autograd_of_its_value(cost):
    o, y = torch.randn(6, 4, dtype=torch.float64, requires_grad=True), torch.eye(4, dtype=torch.float64)[[0, 1, 3, 2, 0, 1]]
    torch.testing.assert_close(cost.grad(o, y), torch.autograd.grad(cost.value(o, y).sum(), o)[0], rtol=1e-12, atol=1e-12)


def test_cross_entropy_nudge_is_rho_of_the_autograd_drive():
    """With C = cross-entropy of softmax(s_L) the nudged dynamics are ρ(∂(Φ − βC)/∂s) − s."""
    model, x, y = small()
    c = Condition(x, model.target(y), 0.7, cost=CrossEntropy())
    s = tuple(torch.rand(4, n, dtype=torch.float64, requires_grad=True) for n in model.sizes[1:])
    u = torch.autograd.grad((model.primitive(s, c) - 0.7 * CrossEntropy().value(s[-1], c.target)).sum(), s)
    for got, ui, si in zip(model.vector_field(torch.tensor(0.0), s, c), u, s):
        torch.testing.assert_close(got, model.act.rho(ui) - si, rtol=1e-12, atol=1e-12)


def test_drive_noise_equals_a_shifted_bias():
    """Noise ξ on a layer's drive, the same for every sample, settles like the model whose
    bias of that layer is b + ξ (Euler and Gauss–Seidel)."""
    model, x, _ = small()
    xi = 0.3 * torch.randn(1, 6, dtype=torch.float64)
    shifted = LayeredHopfield(model.sizes, "sigmoid").double()
    shifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        shifted.layers[1].bias += xi[0]
    for opts in (TIGHT, SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-12, max_time=3000)):
        got = opts(model, Condition(x, noise={1: xi.expand(4, 6)})).state
        torch.testing.assert_close(got, opts(shifted, Condition(x)).state, rtol=0, atol=1e-10)


def test_clamped_layer_is_held_and_the_rest_settles_given_it():
    """A hidden layer clamped to v: it stays v; the layers around are at their fixed points given v."""
    model, x, _ = small()
    v = torch.rand(4, 7, dtype=torch.float64)
    for opts in (TIGHT, SettleOptions(method="euler", atol=1e-12, max_time=3000)):
        s = opts(model, Condition(x, clamp={0: v})).state
        assert torch.equal(s[0], v)
        u = model.drives(s, Condition(x))
        for layer in (1, 2):
            torch.testing.assert_close(model.act.rho(u[layer]), s[layer], rtol=0, atol=1e-10)


def test_bad_phases_are_errors():
    model, x, y = small()
    with pytest.raises(ValueError, match="layer 3 does not exist"):
        dynets.settle(model, Condition(x, clamp={3: torch.zeros(4, 3, dtype=torch.float64)}))
    with pytest.raises(ValueError, match=re.escape("clamp of layer 0: expected (batch, 7), got (4, 3)")):
        dynets.settle(model, Condition(x, clamp={0: torch.zeros(4, 3, dtype=torch.float64)}))
    with pytest.raises(ValueError, match="needs a target"):
        Condition(x, beta=0.5)
    with pytest.raises(ValueError, match="needs an input"):
        dynets.settle(model, Condition(batch_size=4))
    with pytest.raises(ValueError, match="batch_size"):
        Condition()


def test_a_rule_writes_only_the_gradients_it_trains():
    """Parameters a rule leaves out keep grad None, and an optimizer (with momentum and
    weight decay) leaves them exactly as they were; an unknown name is an error."""
    model, x, y = small()
    before = model.layers[1].weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), 1e-2, weight_decay=0.1)
    for _ in range(3):
        grads = EquilibriumPropagation(0.1, settle=TIGHT).update(model, x, y).grads
        write_grads(model, {n: g for n, g in grads.items() if n != "layers.1.weight"})
        assert model.layers[1].weight.grad is None
        opt.step()
    assert torch.equal(model.layers[1].weight, before)
    with pytest.raises(KeyError, match="layers.9.weight"):
        write_grads(model, {"layers.9.weight": torch.zeros(1)})


def test_rule_and_model_mismatch_names_the_missing_capability_and_models_that_have_it():
    class Leaky(DynamicalModel):   # a dynamical system with no energy
        in_features, out_features = 5, 3

        def __init__(self):
            super().__init__()
            self.w = nn.Linear(5, 3)

        def dynamics(self, condition):
            return lambda t, s: (torch.tanh(self.w(condition.x)) - s[0],)

        def init_state(self, condition):
            return (condition.x.new_zeros(condition.batch, 3),)

    with pytest.raises(TypeError, match=r"ContrastiveHebbian needs a model with an energy .*capability Energy.*"
                                        r"e\.g\. LayeredHopfield.*; Leaky has none"):
        ContrastiveHebbian().update(Leaky(), torch.rand(2, 5), torch.tensor([0, 1]))


class Tiny(EnergyModel):
    """A user's model in a few lines: Scellier & Bengio's (2017) energy
    E = ½Σ‖s‖² − Σ_l ρ(s_{l+1})ᵀ(W_l ρ(s_l) + b_l) with s_0 = x; the dynamics come from autograd."""

    def __init__(self, sizes):
        super().__init__()
        self.sizes, self.in_features, self.out_features = sizes, sizes[0], sizes[-1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def init_state(self, condition):
        return tuple(condition.x.new_zeros(condition.batch, n) for n in self.sizes[1:])

    def energy(self, state, condition):
        rates = [condition.x] + [torch.sigmoid(s) for s in state]
        coupling = sum((up * layer(down)).sum(1) for layer, down, up in zip(self.layers, rates, rates[1:]))
        return 0.5 * sum((s * s).sum(1) for s in state) - coupling


def test_a_model_defined_by_its_energy_settles_and_trains_by_ep_and_chl():
    """Its settle reaches a stationary point of F; centered EP on it matches the exact
    gradient by implicit differentiation (which needs the autograd flow to be
    differentiable); CHL's update is the autograd Hebbian difference."""
    torch.manual_seed(0)
    model = Tiny([5, 6, 3]).double()
    x, y = torch.rand(4, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    c = Condition(x, model.target(y), 0.3)
    s = tuple(t.requires_grad_() for t in TIGHT(model, c).state)
    assert max(g.abs().max() for g in torch.autograd.grad(model.total_energy(s, c).sum(), s)) < 1e-10
    ref = ImplicitDifferentiation(TIGHT, adjoint_tol=1e-12, adjoint_max_steps=100000)
    cos = dynets.diagnostics.alignment(model, EquilibriumPropagation(1e-3, settle=TIGHT), ref, x, y)["all"]["cosine"]
    assert cos > 0.9999
    grads = ContrastiveHebbian(TIGHT).update(model, x, y).grads
    free = TIGHT(model, Condition(x)).state
    clamped = TIGHT(model, Condition(x, clamp={-1: model.target(y)})).state
    names, params = zip(*model.named_parameters())
    ga = torch.autograd.grad(model.energy(clamped, Condition(x)).mean(), params)
    gb = torch.autograd.grad(model.energy(free, Condition(x)).mean(), params)
    for name, a, b in zip(names, ga, gb, strict=True):
        torch.testing.assert_close(grads[name], a - b, rtol=1e-8, atol=1e-10)


def test_a_model_defined_by_its_energy_learns_digits():
    """The example of docs/results/own_model.md: Tiny trained by EP for two epochs is far above chance (10 %)."""
    data = dynets.data.digits().flat()
    model = Tiny([64, 32, 10])
    rule = EquilibriumPropagation(0.2, settle=SettleOptions(method="fast_euler", step_size=0.5, atol=1e-3, max_time=60))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for epoch in range(2):
        for x, y in data.train.batches(32, shuffle=True, generator=torch.Generator().manual_seed(epoch)):
            write_grads(model, rule.update(model, x, y).grads)
            optimizer.step()
    out = model.output(rule.settle(model, Condition(data.test.x)).state)
    assert (out.argmax(1) == data.test.y).float().mean() > 0.7


def test_noise_enters_the_generic_gradient_flow_once():
    """The autograd flow −∂F/∂s of a model with drive noise ξ differs from the noiseless
    one by exactly ξ (F holds the linear term −ξᵀs once, whatever the model's energy)."""
    for model in (small()[0], Tiny([5, 6, 3]).double()):
        x = torch.rand(4, 5, dtype=torch.float64)
        xi = torch.randn(4, 6 if isinstance(model, Tiny) else 7, dtype=torch.float64)
        s = model.init_state(Condition(x))
        s = tuple(torch.rand_like(v) for v in s)
        with torch.no_grad():
            plain = EnergyModel.dynamics(model, Condition(x))(torch.tensor(0.0), s)
            noisy = EnergyModel.dynamics(model, Condition(x, noise={0: xi}))(torch.tensor(0.0), s)
        torch.testing.assert_close(noisy[0] - plain[0], xi, rtol=0, atol=1e-12)
        torch.testing.assert_close(noisy[1:], plain[1:], rtol=0, atol=0)
