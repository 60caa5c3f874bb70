"""Costs C(output, target) of a read-out: a value per sample and its gradient.

A model adds −β·∂C/∂output to the drive of its read-out layer in a nudged phase; no
model hard-codes a cost. ``Condition(cost=...)`` picks one (default :class:`SquaredError`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Cost(ABC):
    """C(o, y) per sample, and ∂C/∂o. ``curvature``: bounds (low, high) of the eigenvalues of
    ∂²C/∂o² over all o, or ``None`` if unknown (a Gauss–Seidel settle of a nudged
    :class:`~dynets.models.PredictiveCoding` sizes its steps with them)."""

    curvature: tuple[float, float] | None = None

    @abstractmethod
    def value(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` C of each sample; ``output`` and ``target`` are ``(batch, *shape)``."""

    @abstractmethod
    def grad(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(batch, *shape)`` ∂C/∂output."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SquaredError(Cost):
    """C = ½‖o − y‖² (over all units of a sample), ∂C/∂o = o − y, ∂²C/∂o² = I."""

    curvature = (1.0, 1.0)

    def value(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * (output - target).pow(2).flatten(1).sum(1)

    def grad(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return output - target


class CrossEntropy(Cost):
    """Cross-entropy of a softmax read-out, C = −Σ_i y_i log softmax(o)_i, ∂C/∂o = softmax(o) − y
    (for targets that sum to 1, such as one-hot labels). ∂²C/∂o² = diag(p) − ppᵀ (p the
    softmax), whose eigenvalues lie in [0, ½] (Böhning 1992). The softmax runs over all units
    of a sample (a read-out of any shape is one distribution)."""

    curvature = (0.0, 0.5)

    def value(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -(target.flatten(1) * torch.log_softmax(output.flatten(1), 1)).sum(1)

    def grad(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output.flatten(1), 1).view_as(output) - target
