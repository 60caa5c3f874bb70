"""An energy-based autoencoder: a layered Hopfield network whose top layer reads the input back."""
from __future__ import annotations

from dataclasses import replace

import torch

from ..phases import Condition, State
from .hopfield import SymmetricLayered


class ReadBackHopfield(SymmetricLayered):
    r"""A symmetric layered network (:class:`~dynets.models.hopfield.SymmetricLayered`, the energy of
    :class:`~dynets.models.LayeredHopfield`) ``[x, h_1, ..., h_K, x̂]`` whose top
    layer x̂ (the read-back layer, as wide as the input) predicts the input through the
    feedback of the last hidden layer, and whose target is the input itself:

        E(s) = Σ_l Σ_i G(s_{l,i}) − Φ(s),   C = ½‖x̂ − x‖²,   F = E + β·C.

    Trained by EP or CHL with no labels: the free phase settles with x clamped, the nudged
    (or clamped) phase pulls the reconstruction x̂ toward x, and the activity difference
    lowers the reconstruction error through the bottleneck h_K (an energy-based
    autoencoder; Scellier & Bengio 2017's rule with the input as the target). The code is
    the settled h_K (``code_layer``).

    Args:
        sizes: ``[in_features, hidden...]``; the read-back layer of ``in_features`` units is added.
        activation: as :class:`~dynets.models.LayeredHopfield` (``hard_sigmoid``: x̂ in [0, 1], like pixels).
    """

    supervised = False
    code_layer = -2   # the state index of h_K, the last hidden layer

    def __init__(self, sizes: list[int], activation: str = "hard_sigmoid") -> None:
        if len(sizes) < 2:
            raise ValueError(f"sizes must be [in_features, hidden...] with at least one hidden layer, got {list(sizes)}")
        super().__init__([*sizes, sizes[0]], activation)

    def target(self, y: torch.Tensor) -> None:
        """No label target: :meth:`prepare` makes the input the target."""
        return None

    def prepare(self, condition: Condition) -> Condition:
        """The condition with the input as the target of the read-back layer (and the input drive)."""
        if condition.x is not None and condition.target is None:
            condition = replace(condition, target=condition.x)
        return super().prepare(condition)

    def reconstruct(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch, in_features)`` x̂: the read-back layer itself."""
        return state[-1]

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """``(batch, in_features)`` the read-back layer's value ρ(W_K h_K + b_K) driven by a code h_K alone."""
        return self.act.rho(self.layers[-1](code))
