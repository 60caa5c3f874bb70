"""Predictive coding networks (Rao & Ballard 1999; Whittington & Bogacz 2017): value
nodes that settle by descending the sum of their squared prediction errors."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, NamedTuple

import torch
from torch import nn

from ..phases import Block, Condition, State, VectorField, by_layer
from .activations import PC_ACTIVATIONS
from .base import EnergyModel
from .fused import PredictiveCodingSweeps
from .pc_curvature import block_preconditioner, directional


ARRANGEMENTS = ("discriminative", "generative")


def _squared_norm(w: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """‖w‖₂², the largest eigenvalue of wᵀw, by power iteration from a fixed start (no global
    random number is drawn), raised by 10 % since the estimate approaches from below."""
    with torch.no_grad():
        v = torch.randn(w.shape[1], generator=torch.Generator().manual_seed(0), dtype=w.dtype).to(w.device)
        for _ in range(iterations):
            v = w.T @ (w @ v)
            v = v / torch.linalg.vector_norm(v)
        return 1.1 * torch.linalg.vector_norm(w @ v) ** 2


class Prepared(NamedTuple):
    """A discriminative batch's constants (``Condition.constants``, from ``prepare``), fixed while the
    weights are: ``prediction`` μ_1 = W_1 x + b_1; ``squared_norms`` ‖W_k‖₂² by edge k, filled by the
    first phase that sizes Gauss–Seidel steps with them (a settle by Euler never needs them)."""

    prediction: torch.Tensor
    squared_norms: dict[int, torch.Tensor]


class PredictiveCoding(EnergyModel):
    r"""Predictive coding network: value nodes v_l, predictions μ_l, errors ε_l = v_l − μ_l,

        E(v) = Σ_l ½‖ε_l‖²,   F = E + β·C(read-out, y) − Σ_l ξ_lᵀ v_l,   dv/dt = −∂F/∂v

    (ξ_l: the condition's drive noise, a linear term). Only the free layers move; the
    clamped ones hold (the data x, and any ``Condition.clamp``).

    ``discriminative`` (Whittington & Bogacz 2017): sizes ``[in, h1, ..., out]``, v_0 = x
    clamped, state ``(v_1, ..., v_L)``, predictions flow up:
    μ_1 = W_1 x + b_1 (no activation on the input), μ_l = W_l f(v_{l−1}) + b_l; the read-out
    is v_L. The free equilibrium (β = 0) is the feedforward pass of
    out = W_L f(… f(W_1 x + b_1) …) + b_L with every error zero, so :meth:`init_state` starts
    there and a free settle has nothing to do. A nudge of β moves the errors to
    ε_l ≈ −β·∂C/∂μ_l, backprop's layer errors (the update then tends to the gradient as β → 0).
    Clamping v_L to the target does not give backprop's errors (see the rule).

    ``generative`` (Rao & Ballard 1999): sizes ``[data, h1, ..., top]``, predictions flow
    down: μ_l = W_l f(v_{l+1}) + b_l for l < L, and the top has a prior μ_L = ``prior``.
    With an input x the bottom is clamped to it and the state is ``(v_1, ..., v_L)``; with
    none (``Condition(batch_size=B)``, dreams) the bottom is free too and the state is
    ``(v_0, ..., v_L)`` (so for clamps and noise, count layers from the top: index −1 is
    always the top). :meth:`init_state` starts at the prior's top-down pass (the free
    equilibrium when there is no input). The read-out is the top layer.

    Args:
        sizes: layer sizes, bottom (the input or the data) first.
        activation: ``tanh``, ``sigmoid``, ``relu``, ``hard_sigmoid``, ``gelu`` or ``linear``.
        arrangement: ``discriminative`` or ``generative``.

    Parameters: ``layers.k`` (an ``nn.Linear``) makes the k-th prediction: of layer k+1
    from layer k (discriminative), of layer k from layer k+1 (generative); ``prior``
    (generative only).
    """

    def __init__(self, sizes: list[int], activation: str = "tanh", arrangement: str = "discriminative") -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
            raise ValueError(f"sizes must list >= 2 positive layer sizes, got {list(sizes)}")
        if activation not in PC_ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(PC_ACTIVATIONS)}")
        if arrangement not in ARRANGEMENTS:
            raise ValueError(f"unknown arrangement {arrangement!r}; valid: {', '.join(ARRANGEMENTS)}")
        self.sizes, self.activation, self.arrangement = [int(n) for n in sizes], activation, arrangement
        self.act = PC_ACTIVATIONS[activation]
        self.in_features, self.out_features = self.sizes[0], self.sizes[-1]
        self.is_generative = arrangement == "generative"
        self.needs_input = not self.is_generative
        L = len(self.sizes) - 1
        # Edges (to, from, f applied to the source), in value-layer indices; layers[k] is edge k.
        if self.is_generative:
            self.edges = [(k, k + 1, True) for k in range(L)]
            self.layers = nn.ModuleList(nn.Linear(self.sizes[k + 1], self.sizes[k]) for k in range(L))
            self.prior = nn.Parameter(torch.zeros(self.sizes[-1]))
        else:
            self.edges = [(k + 1, k, k > 0) for k in range(L)]
            self.layers = nn.ModuleList(nn.Linear(self.sizes[k], self.sizes[k + 1]) for k in range(L))

    def _offset(self, condition: Condition) -> int:
        """Value index of state layer 0: 1 when the bottom is clamped to x, else 0."""
        return 0 if condition.x is None else 1

    def _shapes(self, condition: Condition) -> State:
        """Uninitialised tensors of the state's shapes (for checking clamps and noise)."""
        ref = condition.x if condition.x is not None else self.layers[0].weight
        return tuple(ref.new_empty(condition.batch, n) for n in self.sizes[self._offset(condition):])

    def _values(self, state: State, condition: Condition) -> list[torch.Tensor]:
        return ([condition.x] if condition.x is not None else []) + list(state)

    def prepare(self, condition: Condition) -> Condition:
        """Discriminative: ``condition`` with μ_1 = W_1 x + b_1 (constant during a settle,
        and the one large matmul of a step) computed once for every phase of the batch, and room
        for the weights' norms that size the Gauss–Seidel steps (:class:`Prepared`)."""
        self.check_condition(condition)
        if self.is_generative:
            return condition
        with torch.no_grad():
            return replace(condition, constants=Prepared(self.layers[0](condition.x), {}))

    def _predictor(self, condition: Condition) -> Callable[..., torch.Tensor]:
        """``mu(v, k, fv=None)``: the prediction of edge k from the values v (``fv(j)``, if
        given, returns f(v_j), so that a caller computes each f once); the prepared μ_1 is
        used outside autograd only (under autograd it is recomputed, with its graph)."""
        prepared = isinstance(condition.constants, Prepared) and not torch.is_grad_enabled()
        shared = condition.constants.prediction if prepared else None
        f = self.act.f

        def mu(v: list[torch.Tensor], k: int, fv: Callable | None = None) -> torch.Tensor:
            to, frm, nonlinear = self.edges[k]
            if k == 0 and shared is not None:
                return shared
            if not nonlinear:
                return self.layers[k](v[frm])
            return self.layers[k](fv(frm) if fv is not None else f(v[frm]))

        return mu

    def _errors(self, v: list[torch.Tensor], mu: Callable) -> dict[int, torch.Tensor]:
        """{value index: ε} of every predicted layer."""
        eps = {to: v[to] - mu(v, k) for k, (to, _, _) in enumerate(self.edges)}
        if self.is_generative:
            eps[len(v) - 1] = v[-1] - self.prior
        return eps

    def errors(self, state: State, condition: Condition) -> list[torch.Tensor]:
        """The prediction errors ε_l, bottom first: discriminative ``[ε_1, ..., ε_L]``,
        generative ``[ε_0, ..., ε_L]`` (ε_0 = x − μ_0 when the data is clamped)."""
        eps = self._errors(self._values(state, condition), self._predictor(condition))
        return [eps[l] for l in sorted(eps)]

    def reconstruction(self, state: State, condition: Condition) -> torch.Tensor:
        """Generative: ``(batch,)`` ½‖x − μ_0‖², the error of the data's prediction."""
        if not self.is_generative or condition.x is None:
            raise ValueError("reconstruction needs the generative arrangement and data x in the condition")
        return 0.5 * self.errors(state, condition)[0].pow(2).sum(1)

    def reconstruct(self, state: State, condition: Condition) -> torch.Tensor:
        """Generative: ``(batch, data)`` x̂ = μ_0 = x − ε_0, the top-down prediction of the data x
        (a discriminative net has its input below its errors: nothing reconstructs it)."""
        if not self.is_generative or condition.x is None:
            raise ValueError("a reconstruction needs the generative arrangement and data x in the condition "
                             f"(this net is {self.arrangement})")
        return condition.x - self.errors(state, condition)[0]

    def energy(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch,)`` E = Σ ½‖ε_l‖² (the noise term is added by ``total_energy``)."""
        return sum(0.5 * eps.pow(2).sum(1) for eps in self.errors(state, condition))

    def prior_mean(self) -> torch.Tensor | None:
        """μ_L ``(top,)``, the top layer's learned prior (the generative arrangement), else ``None``
        (capability :class:`~dynets.capabilities.MeanPrior`)."""
        return self.prior if self.is_generative else None

    def init_state(self, condition: Condition) -> State:
        """Discriminative: the feedforward pass (the free equilibrium). Generative: the
        prior's top-down pass v_L = prior, v_l = μ_l (the free equilibrium with no data)."""
        mu, L, off = self._predictor(condition), len(self.sizes) - 1, self._offset(condition)
        if self.is_generative:
            v = [None] * L + [self.prior.expand(condition.batch, -1).clone()]
            for k in reversed(range(off, L)):
                v[k] = mu(v, k)
        else:
            v = [condition.x]
            for k in range(L):
                v.append(mu(v, k))
        # Copies: the prepared μ_1 must not become a state tensor that a caller may edit.
        return tuple(s if torch.is_grad_enabled() else s.detach().clone() for s in v[off:])

    def feedforward(self, condition: Condition) -> State:
        """Discriminative: the feedforward pass v_l = μ_l(v_{l−1}), which is the free
        equilibrium; under autograd it carries the graph (the ``Backprop`` reference)."""
        if self.is_generative:
            raise ValueError("feedforward is the free equilibrium of the discriminative arrangement only")
        return self.init_state(condition)

    def _force(self, condition: Condition) -> Callable[..., list[torch.Tensor]]:
        """``force(state, layers, kept=None)``: −∂F/∂s_l (the noise ξ_l included) for the given state
        layers, −∂E/∂v_l = −ε_l + Σ_{edges k from l} f'(v_l)⊙(ε_{to(k)} W_k), with the top's −β·∂C/∂v_L.
        Only the errors those layers touch are computed (a Gauss–Seidel half-sweep needs half).
        ``kept``: ``{"f": {j: f(v_j)}, "mu": {k: μ_k}}`` kept across calls by a caller that drops
        what a change of value layer j makes stale (:class:`~dynets.models.fused.PredictiveCodingSweeps`);
        without it they are computed afresh in each call."""
        mu, off, df, f = self._predictor(condition), self._offset(condition), self.act.df, self.act.f
        noise = by_layer(condition.noise, self._shapes(condition), "noise")
        out_edges = {frm: (k, to, nonlinear) for k, (to, frm, nonlinear) in enumerate(self.edges)}
        beta, cost, y = condition.beta, condition.cost, condition.target

        def force(state: State, layers: range, kept: dict | None = None) -> list[torch.Tensor]:
            v, top = self._values(state, condition), len(state) - 1
            eps: dict[int, torch.Tensor] = {}
            fvs, mus = (kept["f"], kept["mu"]) if kept is not None else ({}, {})

            def fv(j: int) -> torch.Tensor:
                if j not in fvs:
                    fvs[j] = f(v[j])
                return fvs[j]

            def prediction(k: int) -> torch.Tensor:
                if k not in mus:
                    mus[k] = mu(v, k, fv)
                return mus[k]

            def err(j: int) -> torch.Tensor:
                if j not in eps:
                    eps[j] = v[j] - (self.prior if j == len(v) - 1 and self.is_generative else prediction(self._edge_to(j)))
                return eps[j]

            out = []
            for l in layers:
                j = l + off
                d = -err(j)
                if j in out_edges:
                    k, to, nonlinear = out_edges[j]
                    back = err(to) @ self.layers[k].weight
                    d = d + (back * df(v[j], fv(j)) if nonlinear else back)
                if l == top and beta != 0.0:
                    d = d - beta * cost.grad(state[l], y)
                out.append(d + noise[l] if l in noise else d)
            return out

        return force

    def _edge_to(self, j: int) -> int:
        """The edge whose prediction targets value layer j."""
        return j if self.is_generative else j - 1

    def dynamics(self, condition: Condition) -> VectorField:
        """ds/dt = −∂F/∂s (noise included), analytic (plain tensor ops: differentiable for the reference rules)."""
        self.check_condition(condition)
        force = self._force(condition)
        return lambda t, state: tuple(force(state, range(len(state))))

    def blocks(self, condition: Condition) -> list[Block]:
        """Gauss–Seidel blocks: the even state layers, then the odd ones. ∂F/∂s_l involves
        only s_{l−1}, s_l, s_{l+1}, so layers of one parity are uncoupled given the other.
        A block's g = s_B − ∂F/∂s_B, and each layer's step α_l is sized by its curvature
        (:meth:`curvature_steps`), so a half-sweep s_l ← s_l + Δt·α_l·(g_l − s_l) is a
        gradient step on F over the block (same fixed points as the flow) that converges
        however large the weights. A step of 1 (the plain fixed-point iteration of the
        equilibrium conditions) diverges once a layer's curvature exceeds 2: on 8-6-5-3 tanh
        nets with the weights ×2, the clamped phase failed for 10 seeds of 10.

        Measured on digits (64-256-10, β = 0.1) with the step of 1: 4–9 sweeps a nudged
        phase, where Euler at Δt = 0.5 needs 12–160 steps and stops converging once the
        weights grow (the flow's Euler step must stay below 2/λ_max(∂²F/∂s²))."""
        self.check_condition(condition)
        force, n = self._force(condition), len(self._shapes(condition))
        steps = self.curvature_steps(condition)

        def block(first: int) -> Block:
            layers = range(first, n, 2)
            g = lambda state: [state[l] + d for l, d in zip(layers, force(state, layers))]
            return tuple(layers), g, tuple(steps[l] for l in layers)

        return [block(0), block(1)]

    def sweeps(self, condition: Condition) -> PredictiveCodingSweeps | None:
        """The sweeps of :meth:`blocks`, bit for bit, computing f(v_l) and the predictions made from
        v_l once per move of layer l (capability :class:`~dynets.capabilities.Sweeps`;
        :class:`~dynets.models.fused.PredictiveCodingSweeps`); ``None`` for a subclass with blocks
        of its own."""
        own = type(self).blocks is PredictiveCoding.blocks and type(self)._force is PredictiveCoding._force
        return PredictiveCodingSweeps(self, condition) if own else None

    def curvature_steps(self, condition: Condition) -> list[torch.Tensor]:
        """The Gauss–Seidel step α_l = 2/(μ_l + L_l) of each state layer, from bounds [μ_l, L_l]
        of the eigenvalues of its block Hessian ∂²F/∂v_l² = I + D Wᵀ W D (+ β·∂²C/∂v_L² on
        the top), D = diag f'(v_l), W the weight of the prediction v_l makes:
        μ_l = 1 (+ β·min ∂²C), L_l = 1 + (sup|f'|·‖W‖₂)² (+ β·max ∂²C). The step with the
        best worst-case contraction (L − μ)/(L + μ) of gradient descent on a quadratic with
        these bounds; where μ_l ≤ 0 (a phase nudged by β ≤ −1/max ∂²C) it is 1/L_l.
        The top of a nudged squared error gets 1/(1 + β), its exact minimiser.

        The term −f''(v_l)⊙(ε_{l+1}W) of the Hessian (zero at the free equilibrium, O(β) in a
        nudged phase) is left out; the margin μ_l covers it where the errors stay below
        about 1/sup|f''| (measured: clamped and ±β phases of 8-6-5-3 tanh nets with the
        weights ×3 all converge). ‖W‖₂² comes from 30 power iterations on WᵀW from a fixed
        start, a lower estimate (≥ 0.93 of the exact value measured on random 10×256 to
        784×500 matrices), raised by 10 %."""
        off, top, beta = self._offset(condition), len(self._shapes(condition)) - 1, condition.beta
        out_edges = {frm: (k, nonlinear) for k, (_, frm, nonlinear) in enumerate(self.edges)}
        if beta != 0.0 and condition.cost.curvature is None:
            raise ValueError(f"settle=gauss_seidel sizes its steps by the cost's curvature, and "
                             f"{type(condition.cost).__name__} declares none (Cost.curvature): declare it, "
                             f"or use settle=fast_euler")
        steps = []
        for l in range(top + 1):
            low = high = 1.0   # the layer's own prediction error
            if l + off in out_edges:
                k, nonlinear = out_edges[l + off]
                high = high + (self.act.slope ** 2 if nonlinear else 1.0) * self._squared_norm(k, condition)
            if l == top and beta != 0.0:
                a, b = (beta * c for c in condition.cost.curvature)
                low, high = low + min(a, b), high + max(a, b)
            steps.append(2 / (low + high) if low > 0 else 1 / high)
        w = self.layers[0].weight
        return [torch.as_tensor(s, dtype=w.dtype, device=w.device) for s in steps]

    def _squared_norm(self, k: int, condition: Condition) -> torch.Tensor:
        """‖W_k‖₂² (:func:`_squared_norm`), once per batch when ``condition`` is prepared (every phase
        of a rule step sizes its steps by the same weights), else afresh."""
        if not isinstance(condition.constants, Prepared):
            return _squared_norm(self.layers[k].weight)
        norms = condition.constants.squared_norms
        if k not in norms:
            norms[k] = _squared_norm(self.layers[k].weight)
        return norms[k]

    def curvature(self, condition: Condition) -> Callable[[State, State], torch.Tensor]:
        """``c(state, d) -> (batch,)``: dᵀHd per sample, H = Σ_l J_lᵀJ_l (+ β·∂²C on the top) the
        Gauss–Newton curvature of F (:func:`~dynets.models.pc_curvature.directional`; capability
        :class:`~dynets.capabilities.Curvature`)."""
        return directional(self, condition)

    def preconditioner(self, condition: Condition, state: State) -> Callable[[State], State]:
        """``apply(r)``: r_l·A_l⁻¹ per layer, A_l = I + D̄WᵀWD̄ the block of H with f' at its batch mean
        at ``state`` (:func:`~dynets.models.pc_curvature.block_preconditioner`)."""
        return block_preconditioner(self, condition, state)

    def param_grads(self, state: State, condition: Condition) -> dict[str, torch.Tensor]:
        """∂F/∂θ, batch mean, in closed form (the PC update with its sign flipped):
        ∂F/∂W_k = −⟨ε_{to} f(v_{from})ᵀ⟩, ∂F/∂b_k = −⟨ε_{to}⟩, ∂F/∂prior = −⟨ε_L⟩.
        Outside autograd, so that the prepared μ_1 is reused: under autograd the predictor
        recomputes it (the step's largest matmul, and a graph nobody differentiates)."""
        with torch.no_grad():
            return self._param_grads(state, condition)

    def _param_grads(self, state: State, condition: Condition) -> dict[str, torch.Tensor]:
        v, scale = self._values(state, condition), -1.0 / condition.batch
        eps = self._errors(v, self._predictor(condition))
        grads = {}
        for k, (to, frm, nonlinear) in enumerate(self.edges):
            source = self.act.f(v[frm]) if nonlinear else v[frm]
            grads[f"layers.{k}.weight"] = (eps[to].T @ source).mul_(scale)
            grads[f"layers.{k}.bias"] = eps[to].sum(0).mul_(scale)
        if self.is_generative:
            grads["prior"] = eps[len(v) - 1].sum(0).mul_(scale)
        return grads
