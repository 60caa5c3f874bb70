"""Representations learned without labels, measured by what they make easy (hydra-free).

A self-supervised method (a model and a rule, trained by :func:`dynets.app.fit.fit` on data
whose labels are replaced by zeros, the epoch selected by the validation reconstruction
error) is measured on the frozen, settled representation of one layer of its state:

- ``reconstruction``: mean squared error per input unit of the model's reconstruction of
  the test inputs (:func:`reconstruct`);
- ``linear``: multinomial logistic regression on the standardised representation, trained on
  the train split, its weight decay selected by validation accuracy, reported on test
  (:func:`linear_probe`);
- ``knn``: k-nearest neighbours by cosine similarity to the train split (:func:`knn_accuracy`).

Labels enter only here, after training: the probes read the train and validation labels to
fit and select, and the test labels only in the final report (:func:`probe`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from ..data import Split

# ---- probes ---------------------------------------------------------------------------------

def standardiser(z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """z ↦ (z − mean) / std with the statistics of ``z`` (std floored at 1e-2: a unit constant on
    train, such as a blank pixel, must not blow up on other data)."""
    mean, std = z.mean(0), z.std(0).clamp_min(1e-2)
    return lambda v: (v - mean) / std


def fit_logistic(z: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float,
                 max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: W, b minimising mean CE(zW + b, y) + ½·wd·‖W‖² by L-BFGS
    from zero (a convex problem: the start draws no random number)."""
    z = z.double()
    W = z.new_zeros(z.shape[1], n_classes, requires_grad=True)
    b = z.new_zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ W + b, y) + 0.5 * weight_decay * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach()


@dataclass(frozen=True)
class LinearProbe:
    """A fitted logistic regression on standardised features, with how it was selected."""

    scale: Callable[[torch.Tensor], torch.Tensor]
    W: torch.Tensor
    b: torch.Tensor
    weight_decay: float
    val_accuracy: float

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """``(n,)`` the predicted labels of the representations ``z`` ``(n, *shape)`` (flattened)."""
        return (self.scale(z.flatten(1)).double() @ self.W + self.b).argmax(1)


def linear_probe(train: Split, val: Split, n_classes: int, weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2),
                 max_iter: int = 200) -> LinearProbe:
    """The logistic regression (on features standardised with the train statistics) whose weight
    decay gives the best validation accuracy (the first of equals). Reads only the train and
    validation labels."""
    scale, best = standardiser(train.x), None
    for wd in weight_decays:
        W, b = fit_logistic(scale(train.x), train.y, n_classes, wd, max_iter)
        fitted = LinearProbe(scale, W, b, wd, 0.0)
        fitted = replace(fitted, val_accuracy=accuracy(fitted.predict(val.x), val.y))
        if best is None or fitted.val_accuracy > best.val_accuracy:
            best = fitted
    return best


def knn_predict(train: Split, z: torch.Tensor, k: int = 10, chunk: int = 1000) -> torch.Tensor:
    """Labels of ``z`` by its ``k`` nearest train neighbours in cosine similarity (features centred
    on the train mean), each voting with its similarity. ``z`` is ``(n, *shape)``, flattened."""
    mean = train.x.mean(0)
    bank = F.normalize(train.x - mean, dim=1)
    n_classes = int(train.y.max()) + 1
    out = []
    for q in z.flatten(1).split(chunk):
        sim, idx = (F.normalize(q - mean, dim=1) @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), n_classes, dtype=sim.dtype).scatter_add_(1, train.y[idx], sim)
        out.append(votes.argmax(1))
    return torch.cat(out)


def accuracy(predicted: torch.Tensor, y: torch.Tensor) -> float:
    return (predicted == y).double().mean().item()
