"""Backprop through a feedforward pass: the ``bp`` row of the comparison table."""
from __future__ import annotations

import torch

from ..capabilities import FeedForward
from ..models.base import DynamicalModel
from .base import Rule, Update, readout


class Backprop(Rule):
    r"""Plain backprop for a model whose free equilibrium is a feedforward pass
    (``PredictiveCoding``, discriminative: with the output free every error is zero at
    equilibrium, so s_l = W_l f(s_{l−1}) + b_l layer by layer): the update is ∂L/∂θ by
    autograd of L = mean_b C(feedforward(x), y), for the parameters that require a gradient and
    take part in the pass (Rumelhart, Hinton & Williams 1986). No settle: it is the feedforward net of the same
    sizes that every local rule is compared with. The model must have
    ``feedforward(condition) -> State`` (capability :class:`~dynets.capabilities.FeedForward`).
    """

    needs = (FeedForward,)

    def update(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        condition = self.condition(model, x, y)
        with torch.enable_grad():
            state = model.feedforward(condition)
            loss = model.cost(state, condition).mean()
            names, params = zip(*model.trained_parameters())
            # Trained weights outside the feed-forward pass (learned feedback) get no gradient.
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        return Update({n: g for n, g in zip(names, grads) if g is not None}, {**readout(model, state, condition, y), "steps_free": 0, "converged": 1.0})
