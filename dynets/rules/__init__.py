"""Rules: turn the equilibria of the phases they need into an :class:`Update` (gradients by
parameter name, and metrics), which :func:`write_grads` writes to ``p.grad``."""
from .backprop import Backprop
from .base import Rule, Update, write_grads
from .boltzmann import BoltzmannLearning
from .burstprop import Burstprop
from .chl import ContrastiveHebbian
from .dendritic import DendriticSleep, UrbanczikSenn
from .dtp import DifferenceTargetPropagation
from .eligibility import EligibilityTrace
from .ep import EquilibriumPropagation
from .interleave import SleepInterleaved
from .feedback import FeedbackAlignment, KolenPollack, VectorFieldEP, WeightMirror
from .memory import HebbianSleep, HebbianStorage, RecallMonitor
from .pc import PredictiveCodingRule
from .perturbation import NodePerturbation, WeightPerturbation
from .recognition import RecognitionDelta, RecognitionExact, RecognitionNodePerturbation, RecognitionWeightPerturbation
from .reference import BackpropThroughTime, ImplicitDifferentiation
from .wake_sleep import WakeSleep

__all__ = ["Rule", "Update", "Backprop", "ContrastiveHebbian", "EquilibriumPropagation", "PredictiveCodingRule", "ImplicitDifferentiation", "BackpropThroughTime",
           "WakeSleep", "BoltzmannLearning", "HebbianStorage", "HebbianSleep", "RecallMonitor", "NodePerturbation",
           "WeightPerturbation", "VectorFieldEP", "FeedbackAlignment", "KolenPollack", "WeightMirror",
           "DifferenceTargetPropagation", "SleepInterleaved", "RecognitionDelta", "RecognitionExact",
           "RecognitionNodePerturbation", "RecognitionWeightPerturbation", "UrbanczikSenn", "DendriticSleep",
           "Burstprop", "EligibilityTrace", "write_grads"]
