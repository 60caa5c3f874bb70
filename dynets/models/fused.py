"""Fused Gauss–Seidel sweeps: the one optimised place of the layered models' settle loop.

``settle(method="gauss_seidel")`` runs a model's own sweeps where it declares them (capability
:class:`~dynets.capabilities.Sweeps`) and compiles nothing; they follow the stepper protocol of
:mod:`dynets.steppers` and give the plain :class:`~dynets.steppers.GaussSeidel` sweep over the
model's ``blocks`` bit for bit (same operations on the same operands, in the same order), so the
plain loop stays the specification. What they save is work the plain loop repeats because it
knows nothing of the model:

- :class:`LayeredSweeps`: a layer's g reads only its neighbours, which are in the other block, so
  the g a sweep computed for the odd block is still g at the end of the sweep. A residual check
  then evaluates nothing; the plain loop evaluates the odd block again at every check and at the
  step before it (5 + 3 + 4 evaluations for the 7 + 2 + 3 sweeps of the bench's EP step at
  initialisation, 784-512-10, free + ±β).
- :class:`CoupledSweeps`: the same for nets of couplings (convolutions, pooling): at the MNIST CNN's
  checks the plain loop convolved the odd block's input again.
- :class:`PredictiveCodingSweeps`: f(v_l) and the prediction W f(v_l) + b made from layer l change
  only when layer l does; the plain loop recomputes them for each block and each check (tanh on a
  128×512 layer costs about three 128×512×10 matmuls on CPU).
"""
from __future__ import annotations

import torch

from ..costs import SquaredError
from ..phases import Condition, State, by_layer
from ..steppers import _lerp


class LayeredSweeps:
    """Sweeps of a :class:`~dynets.models.hopfield.Layered` net (even layers, then odd), carrying
    g of both blocks. The top layer reads itself under a nudge it cannot minimise exactly (a cost
    other than the squared error, or a smooth ρ where the block is not convex); its residual is
    then evaluated anew, as the plain loop does.

    Args:
        model: the layered net.
        condition: the phase.
    """

    def __init__(self, model, condition: Condition) -> None:
        self.u, self.act, self.beta = model._drive_fn(condition), model.act, condition.beta
        n = self._depth(model)
        self.top, self.exact = n - 1, condition.beta != 0.0 and isinstance(condition.cost, SquaredError)
        self.clamp = by_layer(condition.clamp, model.init_state(condition), "clamp") if condition.clamp else {}
        self.parts = (range(0, n, 2), range(1, n, 2))
        self.reread: tuple[int, ...] = ()   # odd layers whose g reads the layer itself

    def _depth(self, model) -> int:
        return len(model.layers)

    def g(self, state: State, layers: range) -> tuple[list[torch.Tensor], bool]:
        """g of ``layers`` at ``state`` (Layered.blocks' arithmetic; a clamped layer's g is its
        value), and whether the top layer's g read the top layer itself."""
        drives = self.u(state, layers, self_term=not self.exact)
        rho_, top, out, reads_self = self.act.rho_, self.top, [], False
        for l, ul in zip(layers, drives):
            if l == top and self.beta != 0.0:
                solved = self.act.prox(ul, self.beta) if self.exact else None
                reads_self = solved is None   # the drive has −β·∂C/∂s_L, or gets −β·s_L below
                if solved is None and self.exact:   # not convex: the plain update ρ(c − β·s_L)
                    ul = ul.add_(state[top], alpha=-self.beta)
                out.append(rho_(ul) if solved is None else solved)
            else:
                out.append(rho_(ul))
        return [self.clamp.get(l, gl) for l, gl in zip(layers, out)], reads_self

    def start(self, state: State) -> tuple:
        return self.g(state, self.parts[0])[0], *self.g(state, self.parts[1])

    def step(self, state: State, carry: tuple, dt: float) -> tuple[State, tuple]:
        state = list(state)
        for l, gl in zip(self.parts[0], carry[0]):
            state[l] = _lerp(state[l], gl, dt)
        odd, reads_self = self.g(state, self.parts[1])
        for l, gl in zip(self.parts[1], odd):
            state[l] = _lerp(state[l], gl, dt)
        return tuple(state), (self.g(state, self.parts[0])[0], odd, reads_self)

    def residual(self, state: State, carry: tuple) -> State:
        even, odd, reads_self = carry
        again = [l for l in self.parts[1] if l in self.reread or (reads_self and l == self.top)]
        if again:   # the carried g of these layers is stale: only they are evaluated again
            fresh = dict(zip(again, self.g(state, again)[0]))
            odd = [fresh.get(l, gl) for l, gl in zip(self.parts[1], odd)]
        ds = list(state)
        for layers, g in zip(self.parts, (even, odd)):
            for l, gl in zip(layers, g):
                ds[l] = gl - state[l]
        return tuple(ds)


class CoupledSweeps(LayeredSweeps):
    """Sweeps of a :class:`~dynets.models.conv.CoupledLayered` net (couplings: convolutions,
    pooling, dense, a user's module), as :class:`LayeredSweeps`. Two differences of the plain
    blocks: with a softmax read-out the top layer has no exact update (its nudge reads it through
    the read-out), and a layer under a coupling that is not affine in it (max-pooling, whose
    adjoint routes through the arg-max at the layer, or a user's module) reads itself, so an odd
    one's carried g is stale after its move and is evaluated again at a check. The one
    convolution a coupling makes at a layer serves both blocks (the model's linearisation,
    kept while the layer is unchanged).

    Args:
        model: the coupled net.
        condition: the phase.
    """

    def __init__(self, model, condition: Condition) -> None:
        super().__init__(model, condition)
        self.exact = self.exact and not model.softmax
        self.reread = tuple(l for l in self.parts[1] if l < self.top and not model.couplings[l + 1].affine)

    def _depth(self, model) -> int:
        return model.n_energy


class PredictiveCodingSweeps:
    """Sweeps of a :class:`~dynets.models.PredictiveCoding` net (even state layers, then odd, each
    by its curvature step), keeping f(v_j) and the predictions made from v_j until layer j moves.
    What is kept belongs to one state and travels in the carry with it: a residual check of the
    state before the last step (``settle``'s rate estimate) reads that state's own.

    Args:
        model: the predictive coding net.
        condition: the phase.
    """

    def __init__(self, model, condition: Condition) -> None:
        shapes = model._shapes(condition)
        self.force, self.off, n = model._force(condition), model._offset(condition), len(shapes)
        self.steps = model.curvature_steps(condition)
        self.clamp = by_layer(condition.clamp, shapes, "clamp") if condition.clamp else {}
        self.parts = (range(0, n, 2), range(1, n, 2))
        # the predictions made from each value layer, dropped when it moves
        self.made_from = {j: [k for k, (_, frm, _) in enumerate(model.edges) if frm == j] for j in range(n + self.off)}

    def g(self, state: State, layers: range, kept: dict) -> list[torch.Tensor]:
        """g_l = s_l − ∂F/∂s_l of ``layers`` (a clamped layer's: its value)."""
        g = [state[l] + d for l, d in zip(layers, self.force(state, layers, kept))]
        return [self.clamp.get(l, gl) for l, gl in zip(layers, g)]

    def _moved(self, kept: dict, layers: range) -> None:
        for l in layers:
            kept["f"].pop(l + self.off, None)
            for k in self.made_from[l + self.off]:
                kept["mu"].pop(k, None)

    def start(self, state: State) -> tuple:
        kept = {"f": {}, "mu": {}}
        return self.g(state, self.parts[0], kept), kept

    def step(self, state: State, carry: tuple, dt: float) -> tuple[State, tuple]:
        first, kept = carry
        state, kept = list(state), {"f": dict(kept["f"]), "mu": dict(kept["mu"])}
        for part, g in ((self.parts[0], first), (self.parts[1], None)):
            g = g if g is not None else self.g(state, part, kept)
            for l, gl in zip(part, g):
                state[l] = _lerp(state[l], gl, dt * self.steps[l])
            self._moved(kept, part)
        return tuple(state), (self.g(state, self.parts[0], kept), kept)

    def residual(self, state: State, carry: tuple) -> State:
        first, kept = carry
        ds = list(state)
        for part, g in ((self.parts[0], first), (self.parts[1], self.g(state, self.parts[1], kept))):
            for l, gl in zip(part, g):
                ds[l] = gl - state[l]
        return tuple(ds)
