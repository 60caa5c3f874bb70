"""diagnostics.alignment against cosines, angles and norm ratios computed by hand."""
import math

import pytest
import torch

from dynets import SettleOptions, diagnostics
from dynets.models import LayeredHopfield
from dynets.rules import EquilibriumPropagation, ImplicitDifferentiation, Rule, Update


class Fixed(Rule):
    """A fake rule that returns given gradients, whatever the batch."""

    def __init__(self, grads):
        super().__init__()
        self.fixed = grads

    def update(self, model, x, y=None):
        return Update({name: torch.tensor(g, dtype=torch.float64) for name, g in self.fixed.items()})


def tiny():
    """LayeredHopfield([3, 2]): parameters layers.0.weight (2, 3) and layers.0.bias (2,)."""
    model = LayeredHopfield([3, 2]).double()
    return model, torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, dtype=torch.long)


def test_compare_measures_angles_and_norms():
    got = diagnostics._compare(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert got["cosine"] == pytest.approx(1 / math.sqrt(2))
    assert got["angle_deg"] == pytest.approx(45.0)
    assert got["norm_ratio"] == pytest.approx(2 / math.sqrt(2))
    assert got["defined"] is True


def test_alignment_of_two_rules_by_hand():
    """Per parameter and for all of them together, against the values by hand; the
    rule's update is compared with the reference's, never with itself."""
    model, x, y = tiny()
    ours = Fixed({"layers.0.weight": [[1, 0, 0], [0, 0, 0]], "layers.0.bias": [0, 2]})
    ref = Fixed({"layers.0.weight": [[1, 1, 0], [0, 0, 0]], "layers.0.bias": [0, -1]})
    got = diagnostics.alignment(model, ours, ref, x, y)
    # weight: (1,0,…)·(1,1,…) = 1, norms 1 and √2.  bias: (0,2)·(0,−1) = −2, norms 2 and 1.
    # all: ours (1,0,0,0,0,0,0,2), ref (1,1,0,0,0,0,0,−1): dot −1, norms √5 and √3.
    want = {"layers.0.weight": (1 / math.sqrt(2), 45.0, 1 / math.sqrt(2)),
            "layers.0.bias": (-1.0, 180.0, 2.0),
            "all": (-1 / math.sqrt(15), math.degrees(math.acos(-1 / math.sqrt(15))), math.sqrt(5 / 3))}
    assert got.keys() == want.keys()
    for name, (cos, angle, ratio) in want.items():
        assert got[name]["defined"] is True
        assert got[name]["cosine"] == pytest.approx(cos, abs=1e-12)
        assert got[name]["angle_deg"] == pytest.approx(angle, abs=1e-9)
        assert got[name]["norm_ratio"] == pytest.approx(ratio, abs=1e-12)


def test_excluded_parameters_leave_the_comparison():
    model, x, y = tiny()
    ours = Fixed({"layers.0.weight": [[1, 0, 0], [0, 0, 0]], "layers.0.bias": [0, 2]})
    ref = Fixed({"layers.0.weight": [[1, 1, 0], [0, 0, 0]], "layers.0.bias": [0, -1]})
    got = diagnostics.alignment(model, ours, ref, x, y, exclude=("layers.0.bias",))
    assert set(got) == {"layers.0.weight", "all"}   # "all" is the weight alone: cosine 1/√2, not −1/√15
    assert got["all"]["cosine"] == pytest.approx(1 / math.sqrt(2), abs=1e-12)


@pytest.mark.parametrize("ours_bias, ref_bias, ratio", [
    ([0.0, 2.0], [0.0, 0.0], math.inf),     # a zero reference
    ([0.0, 0.0], [0.0, -1.0], 0.0),         # a zero update against a nonzero reference
    ([0.0, 0.0], [0.0, 0.0], math.nan),     # both zero
    ([math.nan, 1.0], [0.0, 1.0], math.nan),  # a non-finite update
])
def test_alignment_with_a_zero_or_non_finite_side_is_undefined(ours_bias, ref_bias, ratio):
    """Cosine and angle NaN, ``defined`` False, never 0°; the weights, nonzero on both
    sides, keep a defined angle (90° here)."""
    model, x, y = tiny()
    ours = Fixed({"layers.0.weight": [[1, 0, 0], [0, 0, 0]], "layers.0.bias": ours_bias})
    ref = Fixed({"layers.0.weight": [[0, 1, 0], [0, 0, 0]], "layers.0.bias": ref_bias})
    got = diagnostics.alignment(model, ours, ref, x, y)
    bias = got["layers.0.bias"]
    assert bias["defined"] is False and math.isnan(bias["cosine"]) and math.isnan(bias["angle_deg"])
    assert bias["norm_ratio"] == ratio or (math.isnan(ratio) and math.isnan(bias["norm_ratio"]))
    weight = got["layers.0.weight"]
    assert weight["defined"] is True and weight["cosine"] == 0.0 and weight["angle_deg"] == 90.0


def test_ep_against_the_zero_gradient_of_a_saturated_net_is_undefined():
    """Biases of 5 hold every hard-sigmoid unit at its upper clip, where ρ' = 0: the exact
    gradient is exactly zero. A strong nudge (β = 20) pulls the output off the clip, so EP's
    update is not: the two cannot be aligned, and alignment must not say they are."""
    torch.manual_seed(0)
    model = LayeredHopfield([4, 5, 3]).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.fill_(5.0)
    x, y = torch.rand(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    tight = SettleOptions(method="fast_euler", atol=1e-12, max_time=1000)
    ref = ImplicitDifferentiation(tight)
    assert all((g == 0).all() for g in ref.update(model, x, y).grads.values())
    # Euler at Δt = 0.5 oscillates on the top's curvature 1 + β; Gauss-Seidel's exact top update settles it.
    nudged = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-12, max_time=1000)
    got = diagnostics.alignment(model, EquilibriumPropagation(20.0, "positive", tight, nudged), ref, x, y)["all"]
    assert got["defined"] is False and math.isnan(got["cosine"]) and math.isnan(got["angle_deg"])
    assert got["norm_ratio"] == math.inf


def test_alignment_compares_only_what_the_rule_trains():
    """A rule that trains only the first layer is compared on that layer alone: 'all'
    equals the first layer's numbers, whatever the reference says of the others."""
    torch.manual_seed(0)
    model = LayeredHopfield([4, 3, 2]).double()
    x, y = torch.rand(3, 4, dtype=torch.float64), torch.tensor([0, 1, 1])

    class FirstLayerOnly(Rule):
        def update(self, model, x, y=None):
            return Update({"layers.0.weight": torch.ones(3, 4, dtype=torch.float64)})

    class Everything(Rule):
        def update(self, model, x, y=None):
            return Update({n: torch.full_like(p, 2.0 if n == "layers.0.weight" else -5.0)
                           for n, p in model.named_parameters()})

    got = diagnostics.alignment(model, FirstLayerOnly(), Everything(), x, y)
    assert set(got) == {"layers.0.weight", "all"}
    assert got["all"]["cosine"] == pytest.approx(1.0) and got["all"]["norm_ratio"] == pytest.approx(0.5)
