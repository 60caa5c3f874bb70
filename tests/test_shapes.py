"""States of any shape: a model whose layers are feature maps ``(batch, 2, 3, 3)`` settles,
nudges, clamps, takes noise, samples and trains exactly like the same model written on flat
vectors ``(batch, 18)`` (same weights, same generator seeds), and a shape that does not fit
the model is an error naming the layer, the expected and the given shape."""
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import dynets
from dynets import Condition, SettleOptions
from dynets.app.plots import images
from dynets.costs import CrossEntropy
from dynets.data import Split
from dynets.evaluate import pick_layer
from dynets.models import LayeredHopfield
from dynets.models.base import EnergyModel
from dynets.rules import EquilibriumPropagation, ImplicitDifferentiation, NodePerturbation, WeightPerturbation
from dynets.sampling import sample
from dynets.studies.probe import knn_predict

FLAT = [(4,), (18,), (18,)]
GRID = [(1, 2, 2), (2, 3, 3), (2, 3, 3)]
TIGHT = SettleOptions(method="fast_euler", step_size=0.5, atol=1e-11, max_time=2000)
B = 6


class MapHopfield(EnergyModel):
    r"""The Hopfield energy of Scellier & Bengio (2017) on layers of any shape:

        E(s) = Σ_l ½‖s_l‖² − Σ_l ⟨ρ(s_{l+1}), W_l·ρ(s_l) + b_{l+1}⟩,   s_0 = x (no ρ), ρ = σ,

    where W_l·v contracts W_l ``(*shape_{l+1}, *shape_l)`` with v over shape_l. It settles by
    the autograd gradient flow of :class:`EnergyModel`, or by Gauss–Seidel over its layers. The weights are drawn as flat
    matrices from ``seed`` and viewed in the layers' shapes, so the model on ``GRID`` has the
    weights of the one on ``FLAT``, each reshaped.
    """

    def __init__(self, shapes: list[tuple[int, ...]], seed: int = 0, gain: float = 3.0) -> None:
        super().__init__()
        self.shapes = [tuple(s) for s in shapes]
        g = torch.Generator().manual_seed(seed)
        n = [math.prod(s) for s in self.shapes]
        draw = lambda *size: torch.rand(*size, generator=g, dtype=torch.float64) * 2 - 1
        self.weights = nn.ParameterList(nn.Parameter((gain / math.sqrt(a) * draw(b, a)).view(*sb, *sa))
                                        for a, b, sa, sb in zip(n, n[1:], self.shapes, self.shapes[1:]))
        self.biases = nn.ParameterList(nn.Parameter(0.5 * draw(b).view(sb)) for b, sb in zip(n[1:], self.shapes[1:]))
        self.in_features, self.out_features = n[0], n[-1]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.shapes[0]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.shapes[-1]

    def init_state(self, condition):
        return tuple(condition.x.new_zeros(condition.batch, *s) for s in self.shapes[1:])

    def blocks(self, condition):
        """One block per layer, bottom up, each an Euler step of the flow (g = s + ds/dt)."""
        f, t = self.dynamics(condition), torch.zeros(())
        return [((l,), lambda state, l=l: [state[l] + f(t, state)[l]]) for l in range(len(self.shapes) - 1)]

    def energy(self, state, condition):
        rates = [condition.x] + [torch.sigmoid(s) for s in state]
        e = sum(0.5 * s.pow(2).flatten(1).sum(1) for s in state)
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            k = rates[l].dim() - 1   # the dimensions of one sample of layer l
            drive = torch.tensordot(rates[l], w, dims=(list(range(1, k + 1)), list(range(w.dim() - k, w.dim()))))
            e = e - (rates[l + 1] * (drive + b)).flatten(1).sum(1)
        return e


def models(seed: int = 0) -> tuple[MapHopfield, MapHopfield]:
    return MapHopfield(FLAT, seed), MapHopfield(GRID, seed)


def grid(t: torch.Tensor, layer: int) -> torch.Tensor:
    """A flat batch ``(batch, n)`` viewed in the shape of ``GRID[layer]``."""
    return t.reshape(len(t), *GRID[layer])


def flat_state(state) -> tuple[torch.Tensor, ...]:
    return tuple(s.flatten(1) for s in state)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 4, generator=g, dtype=torch.float64)
    y = torch.randint(18, (B,), generator=g)
    return x, y


def step(rule, model, x, y) -> dict[str, torch.Tensor]:
    """The gradients ``rule`` gives on one batch, by parameter name."""
    return {n: g.detach().clone() for n, g in rule.update(model, x, y).grads.items()}


def test_feature_maps_settle_nudge_clamp_and_take_noise_like_flat_vectors():
    """Each phase (free, nudged with squared error and with a cross-entropy over all 18 units,
    a clamped layer, drive noise on both layers) reaches the flat model's equilibrium, by
    dynets' Euler, by Gauss–Seidel over the layers and by torchdiffeq."""
    flat, maps = models()
    x, y = batch()
    g = torch.Generator().manual_seed(1)
    v, xi0, xi1 = (torch.rand(B, 18, generator=g, dtype=torch.float64) for _ in range(3))
    target = flat.target(y)
    phases = [
        ({}, {}),
        ({"target": target, "beta": 0.5}, {"target": grid(target, 2), "beta": 0.5}),
        ({"target": target, "beta": 0.8, "cost": CrossEntropy()},
         {"target": grid(target, 2), "beta": 0.8, "cost": CrossEntropy()}),
        ({"clamp": {0: v}}, {"clamp": {0: grid(v, 1)}}),
        ({"noise": {0: xi0, -1: xi1}}, {"noise": {0: grid(xi0, 1), -1: grid(xi1, 2)}}),
    ]
    for opts in (TIGHT, SettleOptions(method="euler", step_size=0.5, atol=1e-11, max_time=2000),
                 SettleOptions(method="gauss_seidel", step_size=0.5, atol=1e-11, max_time=2000)):
        for flat_kw, grid_kw in phases:
            a = opts(flat, Condition(x, **flat_kw))
            b = opts(maps, Condition(grid(x, 0), **grid_kw))
            assert a.converged and b.converged
            assert [tuple(s.shape) for s in b.state] == [(B, 2, 3, 3)] * 2
            torch.testing.assert_close(flat_state(b.state), a.state, rtol=0, atol=1e-9)
    held = TIGHT(maps, Condition(grid(x, 0), clamp={0: grid(v, 1)})).state[0]
    assert torch.equal(held, grid(v, 1))


def test_feature_maps_train_like_flat_vectors():
    """EP, implicit differentiation, node and weight perturbation (same seeds) give the flat
    model's update, each gradient reshaped; the free phase's loss and accuracy are the same."""
    x, y = batch()
    rules = [lambda: EquilibriumPropagation(0.5, settle=TIGHT),
             lambda: ImplicitDifferentiation(TIGHT, adjoint_tol=1e-12),
             lambda: NodePerturbation(sigma=0.05, n_probes=3, seed=4, settle=TIGHT),
             lambda: WeightPerturbation(sigma=0.05, n_probes=2, seed=4, settle=TIGHT)]
    for make in rules:
        flat, maps = models()
        rule_flat, rule_grid = make(), make()
        update_flat, update_grid = rule_flat.update(flat, x, y), rule_grid.update(maps, grid(x, 0), y)
        for key in ("loss", "accuracy"):
            assert update_grid.metrics[key] == pytest.approx(update_flat.metrics[key], rel=1e-9, abs=1e-12)
        a = update_flat.grads
        b = {n: g.reshape(a[n].shape) for n, g in update_grid.grads.items()}
        assert b.keys() == a.keys()
        for n in a:
            assert a[n].abs().max() > 0, (type(rule_flat).__name__, n)
            torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-9)


def test_ep_on_feature_maps_tends_to_the_exact_gradient():
    """EP's centered estimate at small β is the implicit-differentiation gradient up to O(β²)
    (Scellier & Bengio 2017; Laborieux et al. 2021), on 4-D states as on vectors."""
    _, maps = models(seed=2)
    x, y = batch(2)
    exact = step(ImplicitDifferentiation(TIGHT, adjoint_tol=1e-12), maps, grid(x, 0), y)
    ep = step(EquilibriumPropagation(0.01, settle=TIGHT), maps, grid(x, 0), y)
    for n in exact:
        torch.testing.assert_close(ep[n], exact[n], rtol=1e-3, atol=1e-7)


def test_langevin_chain_on_feature_maps_is_the_flat_chain():
    """The same generator draws the same noise per unit: the chains agree, and so does the
    root-mean-square change per unit, counted over all 18 units of a layer."""
    flat, maps = models()
    x, _ = batch()
    runs = []
    for model, xb in ((flat, x), (maps, grid(x, 0))):
        condition = Condition(xb, generator=torch.Generator().manual_seed(3))
        runs.append(sample(model, condition, method="langevin", sweeps=5, temperature=0.1, step_size=0.05,
                           record=True))
    a, b = runs
    torch.testing.assert_close(flat_state(b.state), a.state, rtol=0, atol=1e-12)
    before, after = a.trajectory[-2], a.trajectory[-1]
    rms = torch.sqrt(sum(((p - q) ** 2).sum(1) for p, q in zip(before, after)) / 36)   # 2 layers of 18 units
    torch.testing.assert_close(b.changed, rms, rtol=0, atol=1e-12)


def test_a_shape_that_does_not_fit_the_model_names_layer_expected_and_given():
    _, maps = models()
    x = grid(batch()[0], 0)
    wrong = torch.zeros(B, 18, dtype=torch.float64)
    cases = [
        (Condition(x, clamp={0: wrong}), "clamp of layer 0: expected (batch, 2, 3, 3), got (6, 18)"),
        (Condition(x, noise={-1: wrong}), "noise of layer -1: expected (batch, 2, 3, 3), got (6, 18)"),
        (Condition(x, target=wrong, beta=0.5),
         "target: expected (batch, 2, 3, 3) (the read-out of MapHopfield), got (6, 18)"),
        (Condition(x.flatten(1)), "input of shape (6, 4) does not match the model: it expects (batch, 1, 2, 2)"),
    ]
    for condition, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            dynets.settle(maps, condition)
    with pytest.raises(ValueError, match=re.escape("clamp[0] has shape (5, 2, 3, 3) but the phase has batch 6")):
        Condition(x, clamp={0: torch.zeros(5, 2, 3, 3)})
    dense = LayeredHopfield([4, 5, 3]).double()
    with pytest.raises(ValueError, match=re.escape("it expects (batch, 4) (input layer size 4) (flatten images")):
        dynets.settle(dense, Condition(x))


def test_probes_and_plots_read_feature_maps_as_vectors(tmp_path: Path):
    """pick_layer names each layer's shape; kNN and the image grid flatten a sample's units."""
    _, maps = models()
    x = grid(batch()[0], 0)
    state = TIGHT(maps, Condition(x)).state
    with pytest.raises(ValueError, match=re.escape("(0: 18 units of shape (2, 3, 3), 1: 18 units of shape (2, 3, 3))")):
        pick_layer(maps, state, 2)
    z = pick_layer(maps, state, -1)
    train = Split(z.flatten(1), torch.arange(B) % 2)
    torch.testing.assert_close(knn_predict(train, z, k=3), knn_predict(train, z.flatten(1), k=3), rtol=0, atol=0)
    pictures = torch.rand(4, 1, 5, 7)
    a = images(pictures, tmp_path / "maps.png")
    b = images(pictures.flatten(1), tmp_path / "flat.png", image_shape=(5, 7))
    assert a.read_bytes() == b.read_bytes()
