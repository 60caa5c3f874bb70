"""Models: networks that own parameters and define ds/dt."""
from .asymmetric import Asymmetric
from .base import DynamicalModel, EnergyModel
from .boltzmann import BoltzmannMachine
from .burstprop import BurstNetwork
from .conv import ConvHopfield
from .conv_asymmetric import ConvAsymmetric
from .conv_pc import ConvPredictiveCoding
from .dendritic import DendriticMicrocircuit
from .helmholtz import Helmholtz
from .hopfield import ACTIVATIONS, LayeredHopfield
from .memory import AssociativeMemory, DenseAssociativeMemory
from .pc import PredictiveCoding
from .rate_rnn import RateRNN
from .readback import ReadBackHopfield

__all__ = ["DynamicalModel", "EnergyModel", "LayeredHopfield", "ACTIVATIONS", "PredictiveCoding", "Helmholtz",
           "BoltzmannMachine", "AssociativeMemory", "DenseAssociativeMemory", "Asymmetric", "ReadBackHopfield",
           "ConvHopfield", "ConvPredictiveCoding", "ConvAsymmetric", "DendriticMicrocircuit",
           "BurstNetwork", "RateRNN"]
