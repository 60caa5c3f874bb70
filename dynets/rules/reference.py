"""Reference gradients every local rule is measured against."""
from __future__ import annotations

import logging

import torch

from ..models.base import DynamicalModel
from ..costs import Cost
from ..settle import SettleOptions, residual_norm
from ..steppers import phase_field
from .base import Rule, Update, readout

log = logging.getLogger("dynets")


class ImplicitDifferentiation(Rule):
    r"""The exact gradient of L = mean_b C(s*_b) at the free equilibrium f(s*, θ) = 0,
    by the implicit function theorem (recurrent backprop: Almeida 1987, Pineda 1987):

        dL/dθ = ∂L/∂θ + wᵀ ∂f/∂θ,   where  (∂f/∂s)ᵀ w = −∂L/∂s,

    ∂L/∂θ the direct term of a read-out outside the dynamics (a softmax layer; else 0).

    The adjoint system is solved by restarted GMRES (Saad & Schultz 1986) on −(∂f/∂s)ᵀ, one
    vector-Jacobian product per iteration, until ‖(∂f/∂s)ᵀ w + ∂L/∂s‖ ≤ adjoint_tol·‖∂L/∂s‖
    (per sample, against the largest sample's ‖∂L/∂s‖). GMRES needs no step size and no
    symmetry (a non-energy flow's Jacobian is not symmetric). The relaxation
    dw/dτ = (∂f/∂s)ᵀ w + ∂L/∂s it replaces diverged once the Jacobian's eigenvalues passed
    2/Δτ (PC with cross-entropy on digits: from the first epoch at Δτ = 0.5, every
    alignment NaN). An adjoint that does not converge is reported (``adjoint_converged`` 0,
    ``adjoint_residual``) and logged as a warning.

    Args:
        settle: free-phase settle options (a tight tolerance gives an exact reference).
        adjoint_tol: relative residual at which the adjoint stops.
        adjoint_max_steps: the most GMRES iterations (one Jacobian product each; every
            restart adds one more, for the true residual).
        adjoint_restart: Krylov vectors kept before a restart.
        allow_unconverged: see :class:`~dynets.rules.base.Rule` (the free phase).
    """

    def __init__(self, settle: SettleOptions | None = None, adjoint_tol: float = 1e-6,
                 adjoint_max_steps: int = 2000, adjoint_restart: int = 100, cost: Cost | None = None,
                 allow_unconverged: bool = False) -> None:
        super().__init__(settle, cost, allow_unconverged)
        if not adjoint_tol > 0 or adjoint_max_steps < 1 or adjoint_restart < 1:
            raise ValueError(f"need adjoint_tol > 0, adjoint_max_steps >= 1 and adjoint_restart >= 1; got "
                             f"{adjoint_tol}, {adjoint_max_steps}, {adjoint_restart}")
        self.adjoint_tol, self.adjoint_max_steps, self.adjoint_restart = adjoint_tol, adjoint_max_steps, adjoint_restart

    def update(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        condition, free, metrics = self.free_phase(model, x, y)
        self.check_converged(metrics, {"free": free})
        named = model.trained_parameters()   # frozen weights have no gradient
        params = [p for _, p in named]
        with torch.enable_grad():
            s = tuple(t.detach().requires_grad_() for t in free.state)
            # Under autograd the model recomputes its batch constants with their graph.
            f = phase_field(model, condition)(torch.tensor(free.t), s)
            loss = model.cost(s, condition).mean()
            # dL/dθ = ∂L/∂θ (a read-out outside the dynamics, e.g. a softmax layer) + wᵀ∂f/∂θ
            g = torch.autograd.grad(loss, (*s, *params), allow_unused=True, materialize_grads=True)
            g, direct = g[:len(s)], g[len(s):]
            w, residual, steps = self._adjoint(f, s, g)
            grads = torch.autograd.grad(f, params, grad_outputs=w, allow_unused=True, materialize_grads=True)
            grads = [a + b for a, b in zip(grads, direct)]
        done = residual <= self.adjoint_tol
        if not done:
            log.warning("ImplicitDifferentiation: the adjoint did not converge in %d steps (relative residual %.3g > "
                        "adjoint_tol=%g): the reference gradient is inexact; raise adjoint_max_steps", steps,
                        residual, self.adjoint_tol)
        metrics.update(adjoint_steps=steps, adjoint_converged=float(done), adjoint_residual=residual)
        return Update({n: g for (n, _), g in zip(named, grads)}, metrics)

    def _adjoint(self, f, s, g) -> tuple[tuple[torch.Tensor, ...], float, int]:
        """w with −(∂f/∂s)ᵀ w = ∂L/∂s, its relative residual (largest sample's, over the
        largest sample's ‖∂L/∂s‖) and the Jacobian products it took."""
        sizes = [t[0].numel() for t in s]
        unpack = lambda v: tuple(p.reshape(t.shape) for p, t in zip(v.split(sizes, 1), s))
        apply = lambda v: -_flat(torch.autograd.grad(f, s, grad_outputs=unpack(v), retain_graph=True))
        b = _flat(g)
        scale = max(b.norm(dim=1).max().item(), torch.finfo(b.dtype).tiny)
        w, residual, steps = gmres(apply, b, self.adjoint_tol * scale, self.adjoint_max_steps, self.adjoint_restart)
        return unpack(w), residual / scale, steps


def _flat(state: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``(batch, n)``: the layers of each sample side by side."""
    return torch.cat([t.flatten(1) for t in state], 1)


def gmres(apply, b: torch.Tensor, tol: float, max_steps: int, restart: int) -> tuple[torch.Tensor, float, int]:
    """Restarted GMRES for A x = b, A = ``apply`` acting on ``(batch, n)`` rows (one system for
    the whole batch; A does not mix rows). Stops when every row's residual ‖b_r − (Ax)_r‖ is
    at most ``tol``, or after ``max_steps`` iterations. Returns x, the largest row of the true
    residual b − Ax (one more product per restart) and the iterations taken."""
    x, r, steps = torch.zeros_like(b), b, 0
    while True:
        worst = r.norm(dim=1).max().item()
        if worst <= tol or steps >= max_steps:
            return x, worst, steps
        m = min(restart, max_steps - steps)
        basis, h, beta = [r / r.norm()], torch.zeros(m + 1, m, dtype=torch.float64), r.norm().item()
        for j in range(m):
            v = apply(basis[j])
            steps += 1
            for i, q in enumerate(basis):   # modified Gram-Schmidt
                h[i, j] = (v * q).sum().item()
                v = v - h[i, j].item() * q
            h[j + 1, j] = v.norm().item()
            e1 = torch.zeros(j + 2, dtype=torch.float64)
            e1[0] = beta
            y = torch.linalg.lstsq(h[:j + 2, :j + 1], e1[:, None]).solution[:, 0]
            # The global residual bounds every row's; a zero new direction means x is exact.
            if (h[:j + 2, :j + 1] @ y - e1).norm().item() <= tol or h[j + 1, j] == 0:
                break
            basis.append(v / h[j + 1, j].item())
        x = x + sum(c * q for c, q in zip(y.tolist(), basis))
        r = b - apply(x)


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

    def update(self, model: DynamicalModel, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        condition = self.condition(model, x, y)
        with torch.enable_grad():
            f = phase_field(model, condition)
            s = model.init_state(condition)
            for k in range(self.steps):
                s = tuple(si + self.step_size * di for si, di in zip(s, f(torch.tensor(k * self.step_size), s)))
            loss = model.cost(s, condition).mean()
            named = model.trained_parameters()   # frozen weights have no gradient
            grads = dict(zip([n for n, _ in named], torch.autograd.grad(loss, [p for _, p in named])))
            residual = residual_norm(f(torch.tensor(self.steps * self.step_size), s))
        return Update(grads, {**readout(model, s, condition, y), "steps_free": self.steps,
                              "converged": (residual <= self.settle.atol).float().mean().item()})
