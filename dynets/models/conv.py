r"""A Hopfield network whose layers are coupled by any :mod:`~dynets.couplings` (dense,
convolutional, pooled, a user's module), and the convolutional net of Laborieux et al.
(2021), "Scaling equilibrium propagation to deep ConvNets by drastically reducing its
gradient estimator bias" (their ``P_CNN``)."""
from __future__ import annotations

from dataclasses import replace
from math import prod
from typing import Callable

import torch
from torch import nn

from ..costs import CrossEntropy, SquaredError
from ..couplings import Coupling, InputDrive, check_chain, conv_couplings
from ..phases import Block, Condition, State, VectorField, by_layer
from .base import DynamicalModel, EnergyModel
from .fused import CoupledSweeps
from .hopfield import ACTIVATIONS


class CoupledLayered(DynamicalModel):
    r"""The layered flow of couplings g_l (layer l to l+1, s_0 = x clamped):

        ds_l/dt = ρ(u_l) − s_l,   u_l = g_{l−1}(s_{l−1}) + D_l(s_l)[s_{l+1}],

    with D_l the top-down map of coupling l (:meth:`linearize`): the coupling's adjoint
    (∂g_l/∂s_l)ᵀ in :class:`CoupledHopfield`, where u_l = ∂Φ/∂s_l; a feedback map of its
    own in :class:`~dynets.models.conv_asymmetric.ConvAsymmetric`. The top layer is nudged
    by −β·∂C/∂s_L (or, with ``softmax``, through the read-out). The flow and the Gauss–Seidel
    blocks are this class's.

    Args:
        couplings: the maps from the input to the first layer, then layer to layer; each
            one's ``out_shape`` is the next one's ``in_shape``.
        activation: one of ``hard_sigmoid`` (ρ = clip(·, 0, 1)), ``hard_sigmoid_half_slope`` (clip(·/2, 0, 1),
            the published code's ``my_hard_sig``), ``sigmoid``, ``tanh``.
        softmax: the last coupling is a read-out outside the flow's state (cross-entropy cost).
    """

    def __init__(self, couplings: list[Coupling], activation: str = "hard_sigmoid", softmax: bool = False) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if len(couplings) < 1 + bool(softmax):
            raise ValueError(f"need at least {1 + bool(softmax)} coupling(s) (softmax={softmax}), got {len(couplings)}")
        check_chain(list(couplings))
        self.couplings = nn.ModuleList(couplings)
        self.activation, self.act, self.softmax = activation, ACTIVATIONS[activation], bool(softmax)
        self.n_energy = len(couplings) - self.softmax   # couplings inside Φ; one state layer each
        self.shapes = [tuple(c.out_shape) for c in couplings[:self.n_energy]]
        self.in_features, self.out_features = prod(self.in_shape), prod(self.out_shape)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.couplings[0].in_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.couplings[-1].out_shape)

    def init_state(self, condition: Condition) -> State:
        return tuple(condition.x.new_zeros(condition.batch, *shape) for shape in self.shapes)

    def check_condition(self, condition: Condition) -> None:
        """Also: a softmax read-out nudged by a cost needs the cross-entropy (the free phase, β = 0,
        reads no cost) and cannot be clamped."""
        super().check_condition(condition)
        if not self.softmax:
            return
        if condition.beta != 0.0 and not isinstance(condition.cost, CrossEntropy):
            raise ValueError(f"{type(self).__name__} with softmax=true reads out logits through a softmax: it "
                             f"needs the cross-entropy cost (rule.cost=cross_entropy), got {condition.cost}")
        if any(k % self.n_energy == self.n_energy - 1 for k in condition.clamp):
            raise ValueError(f"{type(self).__name__} with softmax=true keeps its read-out outside the state, so it "
                             "cannot be clamped to the target (as CHL does): use softmax=false")

    def output(self, state: State) -> torch.Tensor:
        """The top layer, or with ``softmax`` the logits g_L(s_L)."""
        return self.couplings[-1](state[-1]) if self.softmax else state[-1]

    def prepare(self, condition: Condition) -> Condition:
        """``condition`` with the input drive g_0(x), constant during a settle, computed once, and
        the first coupling's parameter product at x from the same convolution (:class:`InputDrive`)."""
        self.check_condition(condition)
        with torch.no_grad():
            return replace(condition, constants=InputDrive(*self.couplings[0].param_linearize(condition.x), {}))

    def _drive_fn(self, condition: Condition) -> Callable[..., list[torch.Tensor]]:
        """``u(s, layers, self_term=True)``: ∂Φ_β/∂s_l (+ noise) of ``layers``. The input drive
        comes from ``prepare`` (outside autograd); each coupling is linearised once at a state
        tensor and reused while that tensor is unchanged (a max-pool's conv of s_l serves both
        the drive of s_{l+1} and the adjoint into s_l). ``self_term=False`` leaves out the
        top layer's −β·s_L (squared error), for its exact update."""
        self.check_condition(condition)
        shared = isinstance(condition.constants, InputDrive) and not torch.is_grad_enabled()
        first = condition.constants.drive if shared else self.couplings[0](condition.x)
        noise = by_layer(condition.noise, self.init_state(condition), "noise") if condition.noise else {}
        beta, top, cost, y = condition.beta, self.n_energy - 1, condition.cost, condition.target
        linear = self._linearizer()

        def u(state: State, layers, self_term: bool = True) -> list[torch.Tensor]:
            out = []
            for l in layers:
                base = first if l == 0 else linear(l, state[l - 1])[0]
                ul = base
                if l < top:
                    ul = ul + linear(l + 1, state[l])[1](state[l + 1])
                elif beta != 0.0 and self.softmax:
                    o, vjp = linear(l + 1, state[l])
                    ul = ul - beta * vjp(cost.grad(o, y))
                elif beta != 0.0:   # −β·∂C/∂s_L; without self term (squared error): +β·y only
                    ul = ul - beta * cost.grad(state[l], y) if self_term else ul + beta * y
                if l in noise:
                    ul = ul + noise[l]
                out.append(ul.clone() if ul is base else ul)   # fresh: callers apply ρ in place
            return out

        return u

    def linearize(self, k: int, s: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Coupling k at ``s``: (g_k(s), e ↦ D_k e), D_k its top-down map (here its adjoint)."""
        return self.couplings[k].linearize(s)

    def _linearizer(self) -> Callable[[int, torch.Tensor], tuple]:
        """``linear(k, s)``: coupling k's (g(s), adjoint at s), cached under ``no_grad`` while
        ``s`` is the same, unmodified tensor (a Gauss–Seidel half-sweep leaves the other
        block's layers untouched)."""
        cache: dict[int, tuple] = {}

        def linear(k: int, s: torch.Tensor) -> tuple:
            if torch.is_grad_enabled():
                return self.linearize(k, s)
            hit = cache.get(k)
            if hit is None or hit[0] is not s or hit[1] != s._version:
                hit = cache[k] = (s, s._version, *self.linearize(k, s))
            return hit[2:]

        return linear

    def dynamics(self, condition: Condition) -> VectorField:
        u, rho_ = self._drive_fn(condition), self.act.rho_

        def f(t: torch.Tensor, state: State) -> State:
            return tuple(rho_(ul) - s for ul, s in zip(u(state, range(len(state))), state))

        return f

    def blocks(self, condition: Condition) -> list[Block]:
        """Gauss–Seidel blocks: the even layers, then the odd ones (layer l couples only to
        l ± 1). Same fixed points as the flow. Where the coupling above a layer is affine in it
        (dense, a convolution unpooled or average-pooled), g = ρ(∂Φ/∂s_l) is the exact
        minimiser of F over the layer given the rest, and for a top layer nudged with the
        squared error g is the prox of :class:`~dynets.models.LayeredHopfield`. Under a
        max-pooling (or a nonlinear module) the drive into s_l depends on s_l through the
        arg-max, and g is the fixed-point update ρ(∂Φ/∂s_l) at the current s_l (the flow's
        step at Δt = 1, as the published code iterates); so is a top layer nudged through a
        softmax read-out, which has no closed-form minimiser."""
        u, act, top, beta = self._drive_fn(condition), self.act, self.n_energy - 1, condition.beta
        exact = beta != 0.0 and not self.softmax and isinstance(condition.cost, SquaredError)

        def block(first: int) -> Block:
            layers = range(first, self.n_energy, 2)

            def g(state: State) -> list[torch.Tensor]:
                drives = u(state, layers, self_term=not exact)
                if not (exact and top in layers):
                    return [act.rho_(ul) for ul in drives]
                c = drives.pop()   # the top layer comes last
                solved = act.prox(c, beta)   # None where the block is not convex (smooth ρ)
                plain = c.add_(state[top], alpha=-beta) if solved is None else None
                return [act.rho_(ul) for ul in drives] + [act.rho_(plain) if solved is None else solved]

            return tuple(layers), g

        return [block(0), block(1)]

    def sweeps(self, condition: Condition) -> CoupledSweeps | None:
        """The sweeps of :meth:`blocks`, bit for bit, with no convolution at a residual check
        but where a layer reads itself (capability :class:`~dynets.capabilities.Sweeps`;
        :class:`~dynets.models.fused.CoupledSweeps`); ``None`` for a subclass with blocks or
        drives of its own."""
        own = type(self).blocks is CoupledLayered.blocks and type(self)._drive_fn is CoupledLayered._drive_fn
        return CoupledSweeps(self, condition) if own else None


class CoupledHopfield(CoupledLayered, EnergyModel):
    r"""The layered energy of couplings g_l (layer l to l+1, s_0 = x clamped):

        E(s) = Σ_l Σ_i G(s_{l,i}) − Φ(s),   Φ(s) = Σ_l ⟨g_l(s_l), s_{l+1}⟩,

    in the primitive-function form of :class:`~dynets.models.LayeredHopfield`:
    ds_l/dt = ρ(∂Φ_β/∂s_l) − s_l, Φ_β = Φ − β·C, with the drive

        ∂Φ/∂s_l = g_{l−1}(s_{l−1}) + (∂g_l/∂s_l)ᵀ s_{l+1}

    from each coupling's forward map and adjoint (autograd in a settle only for a user's
    module). States are ``(batch, *shape)``: feature maps ``(batch, C, H, W)`` after a
    convolution, vectors after a dense coupling.

    With ``softmax`` the last coupling is the read-out, outside the energy (Laborieux et al.
    2021): the state stops at the last hidden layer, the output is o = g_L(s_L) (the logits,
    which :class:`~dynets.costs.CrossEntropy` passes through a softmax), and the nudge acts
    on s_L through it, −β·(∂g_L/∂s_L)ᵀ ∂C/∂o. The read-out's parameters are not in E: EP
    gives them the direct gradient ∂C/∂θ (see :meth:`param_grad_difference`).

    Args:
        couplings: the maps from the input to the first layer, then layer to layer; each
            one's ``out_shape`` is the next one's ``in_shape``.
        activation: one of ``hard_sigmoid`` (ρ = clip(·, 0, 1)), ``sigmoid``, ``tanh``.
        softmax: the last coupling is a read-out outside the energy (cross-entropy cost).
    """

    def primitive(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch,)`` Φ(s; x) = Σ_l ⟨g_l(s_l), s_{l+1}⟩."""
        below = (condition.x,) + tuple(state[:-1])
        return sum((c(b) * s).flatten(1).sum(1) for c, b, s in zip(self.couplings, below, state))

    def energy(self, state: State, condition: Condition) -> torch.Tensor:
        """E = Σ G(s) − Φ(s) (the noise term is added by ``total_energy``)."""
        return sum(self.act.G(s).flatten(1).sum(1) for s in state) - self.primitive(state, condition)

    def param_grad_difference(self, a: State, b: State, condition: Condition,
                              scale: float = 1.0) -> dict[str, torch.Tensor]:
        """scale·[∂E/∂θ(a) − ∂E/∂θ(b)], batch mean, from each coupling's Hebbian term
        ∂⟨g_l(s_l), s_{l+1}⟩/∂θ (:meth:`~dynets.couplings.Coupling.param_vjp`). With
        ``softmax`` the read-out's parameters, outside E, get ½[∂C/∂θ(a) + ∂C/∂θ(b)]: for
        centered EP (β, −β) this is the published [β·∂C/∂θ(a) + β·∂C/∂θ(b)]/(2β); for a
        one-sided pair it is O(β) from ∂C/∂θ at the free state, as the rule itself. The first
        coupling reads x in both states, and ⟨g_0(x), a_1⟩ − ⟨g_0(x), b_1⟩ = ⟨g_0(x), a_1 − b_1⟩:
        one vector–Jacobian product there, from the arg-max the prepared drive came from (no
        convolution of x). Outside autograd: nothing here is differentiated."""
        k, x = -scale / condition.batch, condition.x
        prepared = isinstance(condition.constants, InputDrive)
        first = condition.constants.param_vjp if prepared else lambda e: self.couplings[0].param_vjp(x, e)
        with torch.no_grad():
            grads = [g.mul_(k) for g in first(a[0] - b[0])]
            for c, sa, ta, sb, tb in zip(self.couplings[1:], a[:-1], a[1:], b[:-1], b[1:]):
                grads += [ga.sub_(gb).mul_(k) for ga, gb in zip(c.param_vjp(sa, ta), c.param_vjp(sb, tb))]
            if self.softmax:
                r, cost, y = self.couplings[-1], condition.cost, condition.target
                ends = [r.param_vjp(s[-1], cost.grad(r(s[-1]), y)) for s in (a, b)]
                grads += [ga.add_(gb).mul_(0.5 / condition.batch) for ga, gb in zip(*ends)]
        return self.named_grads(grads)


class ConvHopfield(CoupledHopfield):
    """The convolutional EP network of Laborieux et al. (2021), ``P_CNN``: convolutions
    (each optionally followed by 2×2, stride-2 max- or average-pooling), then dense layers,
    with the energy of :class:`CoupledHopfield`. Its parameters are in the published order
    (each ``nn.Conv2d``'s weight and bias, then each ``nn.Linear``'s), so published weights
    load by order.

    Args:
        in_size: the input images' side (square images).
        channels: the input's channels, then each convolution's output channels.
        kernels: each convolution's kernel size.
        strides: each convolution's stride.
        paddings: each convolution's zero padding.
        pools: each convolution's pooling, ``max``, ``avg`` or ``none``.
        fc: the dense layers' sizes after the convolutions, the classes last.
        activation: one of ``hard_sigmoid``, ``hard_sigmoid_half_slope``, ``sigmoid``, ``tanh``.
        softmax: the last dense layer is a softmax read-out outside the energy.
    """

    def __init__(self, in_size: int, channels: list[int], kernels: list[int], strides: list[int],
                 paddings: list[int], pools: list[str], fc: list[int], activation: str = "hard_sigmoid",
                 softmax: bool = False) -> None:
        couplings = conv_couplings(in_size, channels, kernels, strides, paddings, pools, fc)
        super().__init__(couplings, activation, softmax)
        self.in_size, self.channels, self.fc = int(in_size), list(channels), list(fc)
