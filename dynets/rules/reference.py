"""Reference gradients every local rule is measured against."""
from __future__ import annotations

import torch

from ..models.base import DynamicalModel
from ..costs import Cost
from ..settle import SettleOptions, residual_norm
from ..steppers import phase_field
from .base import Rule, write_grads


class ImplicitDifferentiation(Rule):
    r"""The exact gradient of L = mean_b C(s*_b) at the free equilibrium f(s*, θ) = 0,
    by the implicit function theorem (recurrent backprop: Almeida 1987, Pineda 1987):

        dL/dθ = wᵀ ∂f/∂θ,   where  (∂f/∂s)ᵀ w = −∂L/∂s.

    w is found by relaxing the adjoint dynamics dw/dτ = (∂f/∂s)ᵀ w + ∂L/∂s, stable
    whenever the forward equilibrium is (same eigenvalues), until
    ‖(∂f/∂s)ᵀ w + ∂L/∂s‖ ≤ adjoint_tol·‖∂L/∂s‖.

    Args:
        settle: free-phase settle options (a tight tolerance gives an exact reference).
        adjoint_step: Δτ of the adjoint relaxation.
        adjoint_tol: relative residual at which the adjoint stops.
        adjoint_max_steps: cap; the ``adjoint_converged`` metric reports whether it was hit.
    """

    def __init__(self, settle: SettleOptions | None = None, adjoint_step: float = 0.5,
                 adjoint_tol: float = 1e-6, adjoint_max_steps: int = 2000, cost: Cost | None = None) -> None:
        super().__init__(settle, cost)
        self.adjoint_step, self.adjoint_tol, self.adjoint_max_steps = adjoint_step, adjoint_tol, adjoint_max_steps

    def grads(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        condition, free, metrics = self.free_phase(model, x, y)
        params = list(model.parameters())
        with torch.enable_grad():
            s = tuple(t.detach().requires_grad_() for t in free.state)
            # Under autograd the model recomputes its batch constants with their graph.
            f = phase_field(model, condition)(torch.tensor(free.t), s)
            loss = model.cost(s, condition).mean()
            g = torch.autograd.grad(loss, s, allow_unused=True, materialize_grads=True)
            w, done, steps = self._adjoint(f, s, g)
            grads = torch.autograd.grad(f, params, grad_outputs=w)
        write_grads(model, model.named_grads(grads))
        metrics.update(adjoint_steps=steps, adjoint_converged=float(done))
        return metrics

    def _adjoint(self, f, s, g):
        w = tuple(torch.zeros_like(gi) for gi in g)
        scale = residual_norm(g).max().item()
        for step in range(self.adjoint_max_steps + 1):
            jtw = torch.autograd.grad(f, s, grad_outputs=w, retain_graph=True)
            r = tuple(a + b for a, b in zip(jtw, g))
            if residual_norm(r).max().item() <= self.adjoint_tol * scale:
                return w, True, step
            w = tuple(wi + self.adjoint_step * ri for wi, ri in zip(w, r))
        return w, False, step


class BackpropThroughTime(Rule):
    """Autograd through ``steps`` Euler steps of size ``step_size`` from the rest state;
    L = mean_b C(s_T). The ``converged`` metric is the fraction of samples whose final
    ‖ds/dt‖ is within the default settle ``atol``. For long unrolls it tends to :class:`ImplicitDifferentiation`.
    Memory grows with ``steps`` (the whole unrolled graph is kept).

    Args:
        steps: number of unrolled steps T.
        step_size: Δt of each Euler step.
    """

    def __init__(self, steps: int = 40, step_size: float = 0.5, cost: Cost | None = None) -> None:
        super().__init__(SettleOptions(method="fast_euler", step_size=step_size, max_time=steps * step_size), cost)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps, self.step_size = steps, step_size

    def grads(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        condition = self.condition(model, x, y)
        with torch.enable_grad():
            f = phase_field(model, condition)
            s = model.init_state(condition)
            for k in range(self.steps):
                s = tuple(si + self.step_size * di for si, di in zip(s, f(torch.tensor(k * self.step_size), s)))
            loss = model.cost(s, condition).mean()
            write_grads(model, model.named_grads(torch.autograd.grad(loss, list(model.parameters()))))
            residual = residual_norm(f(torch.tensor(self.steps * self.step_size), s))
        return {"loss": loss.item(), "accuracy": (model.output(s).argmax(1) == y).float().mean().item(),
                "steps_free": self.steps, "converged": (residual <= self.settle.atol).float().mean().item()}
