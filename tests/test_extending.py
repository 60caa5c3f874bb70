"""docs/extending.md's examples run as written, and do what the page says: the new model's EP
update follows the exact gradient, the new rule's update is the Hebbian difference computed by
hand, and each refuses what lacks the capability it needs, naming it."""
import re
from pathlib import Path

import pytest
import torch

import dynets
from dynets.capabilities import Energy, FeedForward, members, provides
from dynets.models import Asymmetric, LayeredHopfield

PAGE = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
MODEL, RULE = re.findall(r"```python\n(.*?)```", PAGE, re.S)


def run(block: str, name: str) -> dict:
    namespace = {"__name__": f"extending_{name}"}
    exec(compile(block, f"docs/extending.md: {name}", "exec"), namespace)
    return namespace


def test_the_new_model_trains_by_ep_along_the_exact_gradient():
    ns = run(MODEL, "a new model")
    assert isinstance(ns["model"], Energy) and not isinstance(ns["model"], FeedForward)
    assert ns["cosine"] > 0.99
    with pytest.raises(TypeError, match=r"Backprop needs a model with a free equilibrium that is a feedforward "
                                        r"pass \(capability FeedForward: a method feedforward\(condition\); "
                                        r"e\.g\. PredictiveCoding, ConvPredictiveCoding\); Tiny has none"):
        dynets.rules.Backprop().check_model(ns["model"])


def test_the_new_rule_writes_the_hebbian_difference_computed_by_hand():
    ns = run(RULE, "a new rule")
    model, rule = LayeredHopfield([6, 5, 3]), ns["SoftClampHebbian"](lam=0.3, settle=ns["rule"].settle)
    x, y = torch.rand(8, 6, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 3
    dynets.rules.write_grads(model, rule.update(model, x, y).grads)
    condition = model.prepare(dynets.Condition(x, model.target(y)))
    free = dynets.settle(model, condition, options=rule.settle).state
    held = free[-1] + 0.3 * (condition.target - free[-1])
    clamped = dynets.settle(model, condition.clamped({-1: held}), free, options=rule.settle).state
    for l, layer in enumerate(model.layers):
        below_c, below_f = (x, x) if l == 0 else (clamped[l - 1], free[l - 1])
        hebb = -(clamped[l].T @ below_c - free[l].T @ below_f) / len(x) / 0.3
        torch.testing.assert_close(layer.weight.grad, hebb, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.bias.grad, -(clamped[l] - free[l]).mean(0) / 0.3, atol=1e-5, rtol=1e-4)
    assert layer.weight.grad.abs().max() > 1e-3   # the clamp moved the net: the check is not of zeros
    with pytest.raises(TypeError, match=r"SoftClampHebbian needs a model with an energy .*capability Energy.*"
                                        r"Asymmetric has none"):
        rule.check_model(Asymmetric([6, 5, 3]))


def test_the_capability_table_lists_every_capability_with_its_members():
    """A capability added to dynets.capabilities without a row in the page's table fails here."""
    import dynets.capabilities as caps
    declared = {name for name, c in vars(caps).items()
                if isinstance(c, type) and getattr(c, "_is_protocol", False) and c.__module__ == caps.__name__}
    rows = dict(re.findall(r"^\| `(\w+)`(?: \(rules\))? \| (.*?) \|", PAGE, re.M))
    assert declared == set(rows), f"table rows {sorted(rows)} vs capabilities {sorted(declared)}"
    for name in declared:
        for member in members(getattr(caps, name)):
            assert f"`{member}" in rows[name], (name, member)
    assert provides(LayeredHopfield, caps.Energy) and not provides(Asymmetric, caps.Energy)
