"""Abstract model interfaces: a dynamical system, and one that descends an energy."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from ..phases import Condition, State, VectorField, batch_shape, by_layer


class DynamicalModel(nn.Module, ABC):
    """A network whose state follows ds/dt = f(s; condition).

    Subclasses implement :meth:`dynamics` (the vector field of a phase) and
    :meth:`init_state`. What is constant for an input batch (e.g. the input drive W₀x)
    may be computed once by :meth:`prepare` and shared by the phases of a rule step.
    Clamps (``condition.clamp``) are applied by :func:`dynets.settle` for every model.

    A layer's state is ``(batch, *shape)``, any shape ``init_state`` gives. The input x is
    ``(batch, *in_shape)`` and the read-out (and the target) ``(batch, *out_shape)``; both
    default to vectors, ``(in_features,)`` and ``(out_features,)``: a model whose input or
    read-out is an image or a feature map sets ``in_shape`` / ``out_shape``.
    """

    in_features: int
    out_features: int
    needs_input: bool = True   # False for models that can run with no input (dreams)
    supervised: bool = True    # False for models that learn without labels (no label layer)

    @abstractmethod
    def dynamics(self, condition: Condition) -> VectorField:
        """The vector field ``f(t, state) -> ds/dt`` for this condition (clamps aside)."""

    @abstractmethod
    def init_state(self, condition: Condition) -> State:
        """The rest state settles start from (zeros of the right shapes)."""

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The shape of one input sample: x is ``(batch, *in_shape)``."""
        return (self.in_features,)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The shape of one sample's read-out and target: ``(batch, *out_shape)``."""
        return (self.out_features,)

    def prepare(self, condition: Condition) -> Condition:
        """``condition`` with this batch's constants computed (``Condition.constants``);
        by default nothing is worth sharing."""
        return condition

    def check_condition(self, condition: Condition) -> None:
        """Raise if this model cannot honour ``condition``: a missing input, an input or a
        target of the wrong shape."""
        target = condition.target
        if target is not None and tuple(target.shape[1:]) != tuple(self.out_shape):
            raise ValueError(f"target: expected {batch_shape(self.out_shape)} (the read-out of "
                             f"{type(self).__name__}), got {tuple(target.shape)}")
        if condition.x is None:
            if self.needs_input:
                raise ValueError(f"{type(self).__name__} needs an input x in every phase (its first layer is "
                                 "clamped to it); a free-running phase with no input needs a generative model")
        else:
            self.check_input(condition.x)

    def vector_field(self, t: torch.Tensor, state: State, condition: Condition) -> State:
        """ds/dt at ``state`` under ``condition`` (clamped layers: 0)."""
        from ..steppers import phase_field   # steppers depends on the model interface, not the reverse
        return phase_field(self, condition)(t, state)

    def output(self, state: State) -> torch.Tensor:
        """``(batch, *out_shape)`` read-out: the last layer."""
        return state[-1]

    def cost(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch,)`` the phase's cost C(read-out, target)."""
        if condition.target is None:
            raise ValueError("the cost needs a target in the condition")
        return condition.cost.value(self.output(state), condition.target)

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """One-hot ``(batch, *out_shape)`` target of integer labels ``y`` (units counted in
        row-major order over ``out_shape``)."""
        if y.min() < 0 or y.max() >= self.out_features:
            raise ValueError(
                f"labels must lie in 0..{self.out_features - 1} (the output layer has "
                f"{self.out_features} units); got range {int(y.min())}..{int(y.max())}"
            )
        return nn.functional.one_hot(y, self.out_features).to(self.dtype).view(len(y), *self.out_shape)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def check_input(self, x: torch.Tensor) -> None:
        """Raise if ``x`` is not ``(batch, *in_shape)``."""
        if tuple(x.shape[1:]) != tuple(self.in_shape):
            flat = " (flatten images for a model with a vector input)" if len(self.in_shape) == 1 and x.dim() > 2 else ""
            raise ValueError(
                f"input of shape {tuple(x.shape)} does not match the model: it expects "
                f"{batch_shape(self.in_shape)} (input layer size {self.in_features}){flat}"
            )

    def trained_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """``(name, parameter)`` of the parameters a gradient is taken for, in ``named_parameters()``
        order: those that require one (fixed feedback or top-down weights do not)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def named_grads(self, grads) -> dict[str, torch.Tensor]:
        """``{name: grad}`` of grads given in ``named_parameters()`` order."""
        names = [name for name, _ in self.named_parameters()]
        return dict(zip(names, grads, strict=True))


class EnergyModel(DynamicalModel):
    """A model whose fixed points are the stationary points of an energy E.

    The nudged total energy is F = E + β·C, C the condition's cost of the read-out.
    A subclass that defines only :meth:`energy` and :meth:`init_state` settles by the
    gradient flow ds/dt = −∂F/∂s, taken by autograd: under ``torch.no_grad``
    (settles) it returns plain tensors, under autograd (the reference rules) it is
    differentiable with respect to the state and the parameters.
    """

    @abstractmethod
    def energy(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch,)`` energy E(s; x) of each sample (without the cost)."""

    def total_energy(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch,)`` F = E + β·C − Σ_l ξ_lᵀ s_l: the noise ξ of the condition is a drive,
        a linear term of the energy (so that ds/dt = −∂F/∂s carries it)."""
        total = self.energy(state, condition)
        if condition.beta != 0.0:
            total = total + condition.beta * self.cost(state, condition)
        for l, xi in by_layer(condition.noise, state, "noise").items():
            total = total - (xi * state[l]).flatten(1).sum(1)
        return total

    def dynamics(self, condition: Condition) -> VectorField:
        """ds/dt = −∂F/∂s, by autograd of :meth:`total_energy` (which holds the noise)."""
        self.check_condition(condition)

        def f(t: torch.Tensor, state: State) -> State:
            differentiable = torch.is_grad_enabled()
            with torch.enable_grad():
                s = tuple(v if differentiable and v.requires_grad else v.detach().requires_grad_() for v in state)
                force = torch.autograd.grad(self.total_energy(s, condition).sum(), s, create_graph=differentiable)
            return tuple(-g for g in force)

        return f

    def param_grads(self, state: State, condition: Condition) -> dict[str, torch.Tensor]:
        """``{name: ∂F/∂θ}`` at a (detached) state, batch mean: one backward through F,
        none through the settle. Models may override it in closed form."""
        named = self.trained_parameters()
        with torch.enable_grad():
            total = self.total_energy(state, condition).mean()
            grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True, materialize_grads=True)
        return {n: g for (n, _), g in zip(named, grads)}

    def param_grad_difference(self, a: State, b: State, condition: Condition,
                              scale: float = 1.0) -> dict[str, torch.Tensor]:
        """``{name: scale·[∂F/∂θ(a) − ∂F/∂θ(b)]}`` for two states under the same input x
        (C, the only β-dependent part of F, does not depend on θ). Models may override it
        in closed form."""
        ga, gb = self.param_grads(a, condition), self.param_grads(b, condition)
        return {n: (ga[n] - gb[n]) * scale for n in ga}

