"""Rules: turn the equilibria of the phases they need into ``p.grad``."""
from .base import Rule, write_grads
from .ep import EquilibriumPropagation
from .reference import BackpropThroughTime, ImplicitDifferentiation

__all__ = ["Rule", "EquilibriumPropagation", "ImplicitDifferentiation", "BackpropThroughTime",
           "write_grads"]
