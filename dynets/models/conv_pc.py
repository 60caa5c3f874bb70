"""Predictive coding on any layered net built from couplings: convolutions, pooling, dense
layers, a user's own modules (Whittington & Bogacz 2017, discriminative; the published
convolutional arguments of Laborieux et al. 2021's ``P_CNN``)."""
from __future__ import annotations

from dataclasses import replace
from math import prod
from typing import Callable, Sequence

import torch
from torch import nn

from ..couplings import Coupling, InputDrive, check_chain, conv_couplings
from ..phases import Block, Condition, State, VectorField, by_layer
from .base import EnergyModel
from .pc import PC_ACTIVATIONS
from .step_bounds import block_curvature, coupling_squared_norm

SWEEP_STEPS = ("bound", "measured")


class CoupledPredictiveCoding(EnergyModel):
    r"""Discriminative predictive coding on a chain of couplings g_0, …, g_{L−1}: value nodes
    v_l of any shape (feature maps, vectors), v_0 = x clamped, state ``(v_1, ..., v_L)``,

        μ_1 = g_0(x),  μ_{l+1} = g_l(f(v_l)),  ε_l = v_l − μ_l,
        E = Σ_l ½‖ε_l‖² (over every unit of a map),  F = E + β·C(v_L, y) − Σ_l ξ_lᵀ v_l,

    and dv/dt = −∂F/∂v, analytic through the couplings' adjoints (no autograd in a settle):

        −∂E/∂v_l = −ε_l + f'(v_l) ⊙ (∂g_l/∂a at a = f(v_l))ᵀ ε_{l+1}.

    As for :class:`~dynets.models.PredictiveCoding`, the free equilibrium (β = 0) is the
    feedforward pass with every error zero (:meth:`init_state` starts there), and a nudge of β
    moves the errors to ≈ −β·∂C/∂μ_l, backprop's, so the PC update tends to the gradient of the
    feedforward net as β → 0. No activation acts on the input x.

    Max-pooling makes F piecewise smooth, with a kink where a window's arg-max ties. A strong
    nudge or a clamped output can push a pooled unit onto one, where F has no stationary point
    and no settle converges (measured on tiny nets with two max-pooled convolutions: Euler and
    Gauss–Seidel stalled at residuals 1e-4–1e-2 for some batches at β = 0.05–0.5 and with the
    output clamped; another batch settled at every |β| ≤ 0.04; with one max-pooling, digits
    trained with every phase settled). Average pooling has no kink.

    Args:
        couplings: the maps between consecutive layers, input first (each one's
            ``out_shape`` the next one's ``in_shape``); the read-out is the last one's output.
        activation: ``tanh``, ``sigmoid``, ``relu``, ``hard_sigmoid``, ``gelu`` or ``linear``.
        sweep_steps: how :meth:`curvature_steps` sizes a Gauss–Seidel step: ``bound`` (a bound
            on every state's curvature, from the weights' norms) or ``measured`` (each sample's
            curvature at the free equilibrium, by power iteration, raised by a quarter).

    Parameters: ``layers.k.*``, the k-th coupling's (which predicts layer k+1 from layer k).
    """

    arrangement = "discriminative"
    is_generative = False

    def __init__(self, couplings: Sequence[Coupling], activation: str = "tanh", sweep_steps: str = "bound") -> None:
        super().__init__()
        if not couplings:
            raise ValueError("a predictive coding net needs at least one coupling")
        if activation not in PC_ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(PC_ACTIVATIONS)}")
        if sweep_steps not in SWEEP_STEPS:
            raise ValueError(f"unknown sweep_steps {sweep_steps!r}; valid: {', '.join(SWEEP_STEPS)} (bound: from the "
                             f"weights' norms, any state; measured: each sample's curvature at the free equilibrium)")
        self.sweep_steps = sweep_steps
        check_chain(list(couplings))
        self.layers = nn.ModuleList(couplings)
        self.activation, self.act = activation, PC_ACTIVATIONS[activation]
        self.in_features, self.out_features = prod(self.in_shape), prod(self.out_shape)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The first coupling's input shape, e.g. ``(1, 8, 8)``."""
        return tuple(self.layers[0].in_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The last coupling's output shape (the read-out's)."""
        return tuple(self.layers[-1].out_shape)

    def prepare(self, condition: Condition) -> Condition:
        """``condition`` with μ_1 = g_0(x) (constant during a settle) computed once for every
        phase of the batch, with the first coupling's parameter product at x from the same
        convolution, and room for the couplings' norms that size the Gauss–Seidel steps (power
        iterations once per batch, not per phase): :class:`~dynets.couplings.InputDrive`."""
        self.check_condition(condition)
        with torch.no_grad():
            return replace(condition, constants=InputDrive(*self.layers[0].param_linearize(condition.x), {}))

    def _mu1(self, condition: Condition) -> torch.Tensor:
        """μ_1: the prepared one outside autograd, recomputed with its graph under autograd."""
        if isinstance(condition.constants, InputDrive) and not torch.is_grad_enabled():
            return condition.constants.drive
        return self.layers[0](condition.x)

    def errors(self, state: State, condition: Condition) -> list[torch.Tensor]:
        """The prediction errors ``[ε_1, ..., ε_L]``, each of its layer's shape."""
        f, v = self.act.f, [condition.x, *state]
        return [v[1] - self._mu1(condition)] + [v[k + 1] - self.layers[k](f(v[k])) for k in range(1, len(state))]

    def reconstruction(self, state: State, condition: Condition) -> torch.Tensor:
        """Refused: the input of a discriminative net is below its errors; nothing predicts it."""
        raise ValueError("a reconstruction needs the generative arrangement and data x in the condition "
                         f"({type(self).__name__} is discriminative: nothing predicts its input)")

    def energy(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch,)`` E = Σ ½‖ε_l‖² over every unit of every layer."""
        return sum(0.5 * e.pow(2).flatten(1).sum(1) for e in self.errors(state, condition))

    def init_state(self, condition: Condition) -> State:
        """The feedforward pass v_1 = g_0(x), v_{l+1} = g_l(f(v_l)): the free equilibrium."""
        v = [self._mu1(condition)]
        for g in self.layers[1:]:
            v.append(g(self.act.f(v[-1])))
        # Copies: the prepared μ_1 must not become a state tensor that a caller may edit.
        return tuple(s if torch.is_grad_enabled() else s.detach().clone() for s in v)

    def feedforward(self, condition: Condition) -> State:
        """The feedforward pass (the free equilibrium); under autograd it carries the graph."""
        return self.init_state(condition)

    def _force(self, condition: Condition) -> Callable[[State, range], list[torch.Tensor]]:
        """``force(state, layers)``: −∂F/∂s_l (noise included) of the given state layers. Each
        coupling is linearised once at a value layer (its prediction and its adjoint share a
        max-pooling's arg-max), and only the couplings those layers touch; outside autograd the
        linearisation is kept while that layer is the same, unmodified tensor (the other block's
        half-sweep and a residual check reuse it)."""
        df, beta, cost, y = self.act.df, condition.beta, condition.cost, condition.target
        mu1 = self._mu1(condition)
        noise = by_layer(condition.noise, self._shapes(condition), "noise")
        keep = self._linearizer()

        def force(state: State, layers: range) -> list[torch.Tensor]:
            v, n, lin, fv = [condition.x, *state], len(state), {}, {}

            def linear(j: int):   # (g_j(f(v_j)), its adjoint), for value layer j >= 1
                if j not in lin:
                    fv[j], lin[j] = keep(j, v[j])
                return lin[j]

            err = lambda j: v[1] - mu1 if j == 1 else v[j] - linear(j - 1)[0]
            out = []
            for l in layers:
                j = l + 1
                d = -err(j)
                if j < n:
                    back = linear(j)[1](err(j + 1))
                    d = d + back * df(v[j], fv[j])
                if l == n - 1 and beta != 0.0:
                    d = d - beta * cost.grad(state[l], y)
                out.append(d + noise[l] if l in noise else d)
            return out

        return force

    def _linearizer(self) -> Callable[[int, torch.Tensor], tuple]:
        """``keep(j, v_j)``: (f(v_j), coupling j linearised at f(v_j)), kept outside autograd while
        ``v_j`` is the same, unmodified tensor (as :class:`~dynets.models.conv.CoupledLayered`'s)."""
        kept: dict[int, tuple] = {}

        def keep(j: int, v: torch.Tensor) -> tuple:
            hit = kept.get(j)
            if torch.is_grad_enabled() or hit is None or hit[0] is not v or hit[1] != v._version:
                fv = self.act.f(v)
                hit = (v, v._version, fv, self.layers[j].linearize(fv))
                kept[j] = hit if not torch.is_grad_enabled() else None
            return hit[2:]

        return keep

    def _shapes(self, condition: Condition) -> State:
        """Uninitialised tensors of the state's shapes (for checking noise)."""
        return tuple(condition.x.new_empty(condition.batch, *g.out_shape) for g in self.layers)

    def dynamics(self, condition: Condition) -> VectorField:
        """ds/dt = −∂F/∂s (noise included), analytic (plain tensor ops: differentiable for the reference rules)."""
        self.check_condition(condition)
        force = self._force(condition)
        return lambda t, state: tuple(force(state, range(len(state))))

    def blocks(self, condition: Condition) -> list[Block]:
        """Gauss–Seidel blocks: the even state layers, then the odd ones (∂F/∂s_l involves only
        s_{l−1}, s_l, s_{l+1}), each layer stepping by :meth:`curvature_steps`, as
        :meth:`dynets.models.pc.PredictiveCoding.blocks` does."""
        self.check_condition(condition)
        force, n, steps = self._force(condition), len(self.layers), self.curvature_steps(condition)

        def block(first: int) -> Block:
            layers = range(first, n, 2)
            g = lambda state: [state[l] + d for l, d in zip(layers, force(state, layers))]
            return tuple(layers), g, tuple(steps[l] for l in layers)

        return [block(0), block(1)]

    def curvature_steps(self, condition: Condition) -> list[torch.Tensor]:
        """Each state layer's Gauss–Seidel step α_l = 2/(μ_l + L_l), from the bounds μ_l = 1
        (+ β·min ∂²C) and L_l = 1 + (sup|f'|·‖J_l‖₂)² (+ β·max ∂²C) of its block Hessian
        I + D J_lᵀ J_l D, J_l = ∂g_l/∂a the coupling above it (as PredictiveCoding's, which
        explains the terms left out). ‖J_l‖₂ is bounded by the linear part of the coupling:
        a dense weight's norm; a convolution's operator norm on its input map, times ½ after
        average-pooling (2×2 average: norm ½) and 1 after max-pooling (a selection).

        With ``sweep_steps="measured"``, (sup|f'|·‖J_l‖₂)² is replaced by 1.25·λ_max(D J_lᵀ J_l D)
        of each sample at the free equilibrium (:func:`block_curvature`; a ``(batch, 1, ...)``
        step), where that is under the bound: the quarter covers the estimate's approach from
        below and the nudge's moving D and arg-max (O(β)), which the bound covers for any state.
        Tanh's slope under 1 and a max-pooling that passes a quarter of the map leave the bound
        4–7 times the curvature once the net has learnt (Fashion-MNIST, the MNIST CNN after 60
        bp steps: conv2's bound 51.7, the samples' λ 7–13), and the sweeps scale with it.

        Raises:
            ValueError: a coupling with no such bound (a user's ``Module``), or a nudged
                phase whose cost declares no curvature.
        """
        n, beta = len(self.layers), condition.beta
        if beta != 0.0 and condition.cost.curvature is None:
            raise ValueError(f"settle=gauss_seidel sizes its steps by the cost's curvature, and "
                             f"{type(condition.cost).__name__} declares none (Cost.curvature): declare it, "
                             f"or use settle=fast_euler")
        steps, measured = [], self._measured(condition) if self.sweep_steps == "measured" else None
        for l in range(n):
            low = high = 1.0
            if l + 1 < n:
                bound = self.act.slope ** 2 * self._squared_norm(l + 1, condition)
                high = high + (torch.minimum(measured[l], bound) if measured is not None else bound)
            if l == n - 1 and beta != 0.0:
                a, b = (beta * c for c in condition.cost.curvature)
                low, high = low + min(a, b), high + max(a, b)
            steps.append(2 / (low + high) if low > 0 else 1 / high)
        w = next(self.parameters())
        return [torch.as_tensor(s, dtype=w.dtype, device=w.device) for s in steps]

    def _squared_norm(self, k: int, condition: Condition) -> torch.Tensor:
        """‖∂g_k/∂a‖₂² (:func:`coupling_squared_norm`), once per batch when ``condition`` is prepared
        (every phase of a rule step sizes its steps by the same weights), else afresh."""
        if not isinstance(condition.constants, InputDrive):
            return coupling_squared_norm(self.layers[k])
        norms = condition.constants.squared_norms
        if k not in norms:
            norms[k] = coupling_squared_norm(self.layers[k])
        return norms[k]

    def _measured(self, condition: Condition) -> list[torch.Tensor]:
        """1.25·λ_max(D J_{l+1}ᵀ J_{l+1} D) per sample at the free equilibrium (the feedforward
        pass, run once for every layer), ``(batch, 1, ...)`` for each layer l below the top: once
        per batch when ``condition`` is prepared, else afresh."""
        norms = condition.constants.squared_norms if isinstance(condition.constants, InputDrive) else {}
        if "measured" not in norms:
            with torch.no_grad():
                free = self.init_state(condition)
                norms["measured"] = [1.25 * block_curvature(c, v, self.act) for c, v in zip(self.layers[1:], free)]
        return norms["measured"]

    def param_grads(self, state: State, condition: Condition) -> dict[str, torch.Tensor]:
        """∂F/∂θ, batch mean, local to each coupling: ∂F/∂θ_k = −⟨(∂g_k/∂θ_k)ᵀ ε_{k+1}⟩ at the
        coupling's own input (a dense layer's −⟨ε f(v)ᵀ⟩; a convolution's the correlation of
        its error, unpooled, with its input's patches), one vector–Jacobian product per coupling
        in closed form (:meth:`~dynets.couplings.Coupling.param_linearize`: the prediction and the
        product share a max-pooling's arg-max; the first coupling's from the prepared batch),
        outside autograd."""
        with torch.no_grad():
            v, mu1 = [condition.x, *state], self._mu1(condition)
            first = condition.constants.param_vjp if isinstance(condition.constants, InputDrive) else \
                (lambda e: self.layers[0].param_vjp(condition.x, e))
            terms = [first(v[1] - mu1)]
            for k in range(1, len(state)):
                mu, vjp = self.layers[k].param_linearize(self.act.f(v[k]))
                terms.append(vjp(v[k + 1] - mu))
        grads = {f"layers.{k}.{name}": g for k, (layer, gk) in enumerate(zip(self.layers, terms))
                 for (name, _), g in zip(layer.named_parameters(), gk, strict=True)}
        scale = -1.0 / condition.batch
        return {name: grads[name].mul_(scale) for name, _ in self.trained_parameters()}


class ConvPredictiveCoding(CoupledPredictiveCoding):
    """:class:`CoupledPredictiveCoding` on a convolutional net given by the published code's
    arguments (``P_CNN`` of Laborieux et al. 2021): convolutions, each followed by a 2×2,
    stride-2 pooling or none, then dense layers; the parameters are in that order, each
    coupling's ``torch.nn.Conv2d`` or ``torch.nn.Linear`` (weight, bias), so published weights
    load by order. The input is ``(channels[0], in_size, in_size)``; the read-out ``(fc[-1],)``.

    Args:
        in_size: the side of the (square) input image.
        channels: the input's channels, then each convolution's output channels.
        kernels: each convolution's (square) kernel size.
        strides: each convolution's stride.
        paddings: each convolution's zero padding.
        pools: after each convolution, ``max``, ``avg`` or ``none``.
        fc: the sizes of the dense layers after the last convolution, the read-out last.
        activation: ``tanh``, ``sigmoid``, ``relu``, ``hard_sigmoid``, ``gelu`` or ``linear``.
        sweep_steps: ``bound`` or ``measured``: :class:`CoupledPredictiveCoding`'s.
    """

    def __init__(self, in_size: int, channels: Sequence[int], kernels: Sequence[int], strides: Sequence[int],
                 paddings: Sequence[int], pools: Sequence[str], fc: Sequence[int], activation: str = "tanh",
                 sweep_steps: str = "bound") -> None:
        super().__init__(conv_couplings(in_size, channels, kernels, strides, paddings, pools, fc), activation, sweep_steps)
