"""Models: networks that own parameters and define ds/dt."""
from .base import DynamicalModel, EnergyModel
from .hopfield import ACTIVATIONS, LayeredHopfield
from .pc import PredictiveCoding

__all__ = ["DynamicalModel", "EnergyModel", "LayeredHopfield", "ACTIVATIONS", "PredictiveCoding"]
