"""Rules: turn the equilibria of the phases they need into ``p.grad``."""
from .backprop import Backprop
from .base import Rule, write_grads
from .chl import ContrastiveHebbian
from .ep import EquilibriumPropagation
from .pc import PredictiveCodingRule
from .reference import BackpropThroughTime, ImplicitDifferentiation

__all__ = ["Rule", "Backprop", "ContrastiveHebbian", "EquilibriumPropagation", "PredictiveCodingRule", "ImplicitDifferentiation", "BackpropThroughTime",
           "write_grads"]
