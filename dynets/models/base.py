"""Abstract model interfaces: a dynamical system, and one that descends an energy."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from ..types import Condition, State, VectorField


class DynamicalModel(nn.Module, ABC):
    """A network whose state follows ds/dt = f(s; condition).

    Subclasses implement :meth:`dynamics`, which may precompute what is constant
    during a settle (e.g. the input drive W₀x) and returns the vector field.
    """

    in_features: int
    out_features: int

    @abstractmethod
    def dynamics(self, condition: Condition) -> VectorField:
        """The vector field ``f(t, state) -> ds/dt`` for this condition."""

    @abstractmethod
    def init_state(self, condition: Condition) -> State:
        """The rest state settles start from (zeros of the right shapes)."""

    def vector_field(self, t: torch.Tensor, state: State, condition: Condition) -> State:
        """ds/dt at ``state`` under ``condition``."""
        return self.dynamics(condition)(t, state)

    def output(self, state: State) -> torch.Tensor:
        """``(batch, out_features)`` read-out: the last layer."""
        return state[-1]

    def cost(self, state: State, target: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` C = ½‖output − target‖²."""
        return 0.5 * (self.output(state) - target).pow(2).sum(1)

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """One-hot ``(batch, out_features)`` target of integer labels ``y``."""
        if y.min() < 0 or y.max() >= self.out_features:
            raise ValueError(
                f"labels must lie in 0..{self.out_features - 1} (the output layer has "
                f"{self.out_features} units); got range {int(y.min())}..{int(y.max())}"
            )
        return nn.functional.one_hot(y, self.out_features).to(self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def check_input(self, x: torch.Tensor) -> None:
        """Raise if ``x`` is not ``(batch, in_features)``."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"input of shape {tuple(x.shape)} does not match the model: it expects "
                f"(batch, {self.in_features}) (input layer size {self.in_features})"
            )


class EnergyModel(DynamicalModel):
    """A model whose fixed points are the stationary points of an energy E.

    The nudged total energy is F = E + β·C with the cost C(s, target) of :meth:`cost`.
    """

    @abstractmethod
    def energy(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch,)`` energy E(s; x) of each sample (without the cost)."""

    def total_energy(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch,)`` F = E + β·C."""
        total = self.energy(state, condition)
        if condition.beta != 0.0:
            total = total + condition.beta * self.cost(state, condition.target)
        return total

    def param_grads(self, state: State, condition: Condition) -> tuple[torch.Tensor, ...]:
        """∂F/∂θ at a (detached) state, batch mean, in ``parameters()`` order: one
        backward through F, none through the settle. Models override it in closed form."""
        with torch.enable_grad():
            total = self.total_energy(state, condition).mean()
            return torch.autograd.grad(total, list(self.parameters()))

    def param_grad_difference(self, a: State, b: State, condition: Condition,
                              scale: float = 1.0) -> tuple[torch.Tensor, ...]:
        """scale·[∂F/∂θ(a) − ∂F/∂θ(b)] for two states under the same input x (C, the only
        β-dependent part of F, does not depend on θ). Models may override it in closed form."""
        return tuple((ga - gb) * scale for ga, gb in zip(self.param_grads(a, condition), self.param_grads(b, condition)))
