"""Rules check capabilities, not classes: a model without a capability a rule needs is refused
with an error that names that capability (and only the missing ones)."""
import inspect

import pytest
import torch
from torch import nn

import dynets.rules as rules
from dynets import capabilities as caps
from dynets.models import BoltzmannMachine, DynamicalModel, Helmholtz, LayeredHopfield
from dynets.rules.base import Rule


class Leaky(DynamicalModel):
    """ds/dt = tanh(Wx) − s: dynamics and nothing else."""

    in_features, out_features = 4, 2

    def __init__(self):
        super().__init__()
        self.w = nn.Linear(4, 2)

    def dynamics(self, condition):
        return lambda t, s: (torch.tanh(self.w(condition.x)) - s[0],)

    def init_state(self, condition):
        return (condition.x.new_zeros(condition.batch, 2),)


def needing() -> list[type]:
    """The exported rules that need more than dynamics, constructed with their defaults."""
    classes = [getattr(rules, n) for n in rules.__all__]
    return [c for c in classes if inspect.isclass(c) and issubclass(c, Rule) and not inspect.isabstract(c)
            and set(c.needs) != {caps.Dynamical}]


def test_most_rules_declare_what_they_need():
    assert len(needing()) >= 12   # EP, CHL, PC, Backprop, the five feedback rules, Boltzmann, wake-sleep, memory


@pytest.mark.parametrize("rule_class", needing(), ids=lambda c: c.__name__)
def test_a_rule_given_a_model_without_its_capabilities_names_each(rule_class):
    rule = rule_class()
    with pytest.raises(TypeError) as err:
        rule.check_model(Leaky())
    message = str(err.value)
    assert message.startswith(f"{rule_class.__name__} needs a model with ") and message.endswith("Leaky has none")
    for capability in rule_class.needs:
        assert f"(capability {capability.__name__}: " in message
        assert caps.summary(capability) in message


def test_only_the_missing_capabilities_are_named():
    with pytest.raises(TypeError) as err:
        rules.BoltzmannLearning().check_model(Helmholtz([4, 3]))   # Gibbs blocks, but no bipartite fields
    assert "capability Bipartite" in str(err.value) and "GibbsBlocked" not in str(err.value)
    with pytest.raises(TypeError) as err:
        rules.WakeSleep().check_model(BoltzmannMachine([4, 3]))   # no recognition pathway, no prior
    assert "capability Recognition" in str(err.value) and "capability Dreams" in str(err.value)
    assert "GibbsBlocked" not in str(err.value)


def test_interleaved_sleep_asks_its_wake_rule():
    with pytest.raises(TypeError, match="EquilibriumPropagation needs a model with an energy"):
        rules.SleepInterleaved(rules.EquilibriumPropagation()).check_model(Leaky())
    rules.SleepInterleaved(rules.EquilibriumPropagation()).check_model(LayeredHopfield([4, 3, 2]))


def test_a_method_is_what_declares_a_capability():
    """The check reads methods, not ancestry: the same class with a method added has the capability."""
    class Decoding(Leaky):
        code_layer = 0

        def decode(self, code):
            return code @ self.w.weight

    assert not isinstance(Leaky(), caps.Decoder) and isinstance(Decoding(), caps.Decoder)
    assert caps.provides(Decoding, caps.Decoder) and not caps.provides(Leaky, caps.Decoder)
    assert caps.code_layer(Decoding()) == 0 and caps.code_layer(Leaky()) == -1
