"""dynets: continuous-time recurrent networks that settle to equilibria and learn with local rules."""
from . import data, diagnostics, models, rules
from .settle import METHODS, SettleOptions, settle
from .phases import Condition, DivergedError, Equilibrium, State, UnconvergedError

__all__ = ["settle", "SettleOptions", "METHODS", "Condition", "Equilibrium", "State", "DivergedError", "UnconvergedError",
           "models", "rules", "diagnostics", "data"]
__version__ = "0.1.0"
