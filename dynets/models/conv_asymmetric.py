r"""A convolutional network with a feedback pathway of its own: the layered flow of
:class:`~dynets.models.conv.ConvHopfield` with the adjoint of each coupling replaced by a
feedback map with its own weights (Scellier, Goyal, Binas, Mesnard & Bengio 2018, vector
field dynamics; feedback alignment on conv nets as in Akrout et al. 2019)."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.nn import functional as F

from ..couplings import Conv, Coupling, Dense
from ..phases import State
from .asymmetric import FEEDBACK, OwnFeedback
from .conv import ConvHopfield, CoupledLayered


def forward_weight(coupling: Coupling) -> torch.Tensor:
    """The weight W of a dense or convolutional coupling (what its feedback B stands in for)."""
    return coupling.conv.weight if isinstance(coupling, Conv) else coupling.linear.weight


def feedback_linearize(coupling: Coupling, weight: torch.Tensor,
                       s: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(g(s), e ↦ the coupling's adjoint at ``s`` with ``weight`` in place of W): for a
    convolution the transposed convolution with ``weight`` of the pooling's adjoint
    (max-unpooling to the arg-max of the forward W ⋆ s + b, found by the one convolution that
    gives g(s), or e/4 spread), for a dense coupling ``weight``ᵀe."""
    if isinstance(coupling, Dense):
        return coupling(s), lambda e: (e @ weight).view(e.shape[0], *coupling.in_shape)
    c = coupling.conv
    if coupling.pool == "max":
        out, where = F.max_pool2d(c(s), 2, return_indices=True)
        unpool = lambda e: coupling._unpool_max(e, where)
    else:
        out, unpool = coupling(s), (coupling._unpool_avg if coupling.pool == "avg" else (lambda e: e))
    return out, lambda e: F.conv_transpose2d(unpool(e), weight, None, c.stride, c.padding, coupling.output_padding)


def mirror_estimate(coupling: Coupling, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    r"""A weight mirror's sleep estimate of W from ``noise`` ξ ~ N(0, σ²) fired by the lower
    layer (``(samples, *in_shape)``): the Hebbian correlation of ξ with the currents W ξ it
    causes (before any pooling), by the closed form of the coupling's ``param_vjp``, over its
    expectation σ²·(samples)·(the positions each kernel entry sees inside the map, for a
    convolution): unbiased for W."""
    w = forward_weight(coupling).detach()
    if isinstance(coupling, Dense):
        xi = noise.flatten(1)
        return (xi @ w.T).T @ xi / (len(xi) * sigma ** 2)
    c = coupling.conv
    current = F.conv2d(noise, w, None, c.stride, c.padding)
    hebb = torch.nn.grad.conv2d_weight(noise, w.shape, current, c.stride, c.padding)
    ones = lambda t: torch.ones(1, *t.shape[1:], dtype=t.dtype, device=t.device)
    seen = torch.nn.grad.conv2d_weight(ones(noise), w.shape, ones(current), c.stride, c.padding)
    return hebb / (seen * len(noise) * sigma ** 2)


class ConvAsymmetric(OwnFeedback, CoupledLayered):
    r"""The convolutional net of :class:`~dynets.models.ConvHopfield` (same arguments, same
    parameters in the same order, drawn alike) with separate top-down weights:

        ds_l/dt = ρ(u_l) − s_l,   u_l = g_{l−1}(s_{l−1}) + B_l[s_{l+1}],   u_L nudged by −β·∂C/∂s_L,

    where B_l[·] is coupling l's adjoint with its own weight B_l (``feedback[l-1]``, the
    shape of the forward weight W_l): for a convolution the transposed convolution with B_l
    of the pooling's adjoint (max-unpooling at the forward arg-max, recomputed at each
    evaluation, or the average's spread), for a dense coupling B_lᵀe. With B = W
    (``tied``) it is exactly ConvHopfield's flow; otherwise there is no energy and the
    flow may oscillate (``settle`` then reports ``converged=False``). There is no softmax
    read-out (the feedback rules' local updates read the output from the state). Feedback weights are
    compared with W itself (a convolution's adjoint uses W's tensor, transposed by the
    operation): ``feedback_angles`` are 0 for B = W.

    Args:
        in_size: the input images' side (square images).
        channels: the input's channels, then each convolution's output channels.
        kernels: each convolution's kernel size.
        strides: each convolution's stride.
        paddings: each convolution's zero padding.
        pools: each convolution's pooling, ``max``, ``avg`` or ``none``.
        fc: the dense layers' sizes after the convolutions, the classes last.
        feedback_mode: ``tied`` (B = W, ConvHopfield's flow), ``random`` (a fixed random
            B, a buffer: feedback alignment) or ``learned`` (B a parameter: Kolen–Pollack,
            weight mirrors).
        activation: one of ``hard_sigmoid``, ``sigmoid``, ``tanh``.
        feedback_scale: B is drawn U(±scale/√fan), fan the units each feedback unit reads
            (out channels × kernel area; a dense layer's outputs).
        seed: seed of the draw of B (its own generator); ``None``: torch's default generator.
    """

    def __init__(self, in_size: int, channels: list[int], kernels: list[int], strides: list[int],
                 paddings: list[int], pools: list[str], fc: list[int], feedback_mode: str = "random",
                 activation: str = "hard_sigmoid", feedback_scale: float = 1.0, seed: int | None = None) -> None:
        if feedback_mode not in FEEDBACK:
            raise ValueError(f"unknown feedback_mode {feedback_mode!r}; valid: {', '.join(FEEDBACK)}")
        net = ConvHopfield(in_size, channels, kernels, strides, paddings, pools, fc, activation)
        super().__init__(list(net.couplings), activation)
        self.in_size, self.channels, self.fc, self.feedback_mode = net.in_size, net.channels, net.fc, feedback_mode
        if feedback_mode != "tied":
            shapes = [forward_weight(c).shape for c in self.couplings[1:]]
            self.draw_feedback(shapes, lambda shape: shape[0] * math.prod(shape[2:]), feedback_scale, seed)

    def tied_feedback(self) -> list[torch.Tensor]:
        """[W_1, ..., W_{L−1}]: B_l, W_l's shape, under tied feedback."""
        return [forward_weight(c) for c in self.couplings[1:]]

    def set_feedback(self, weights: list[torch.Tensor]) -> None:
        """Set B (learned or random feedback); each must have its forward weight's shape."""
        own = self.feedback_weights()
        if self.feedback_mode == "tied" or len(weights) != len(own):
            raise ValueError(f"set_feedback needs {len(own)} tensors for feedback_mode={self.feedback_mode!r} "
                             f"(tied feedback has none of its own); got {len(weights)}")
        for l, (b, new) in enumerate(zip(own, weights), start=1):
            if new.shape != b.shape:
                raise ValueError(f"feedback of coupling {l} ({type(self.couplings[l]).__name__}) has shape "
                                 f"{tuple(new.shape)}, but its forward weight, whose shape it takes, has "
                                 f"{tuple(b.shape)}")
            with torch.no_grad():
                b.copy_(new)

    def linearize(self, k: int, s: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Coupling k at ``s``: (g_k(s), e ↦ B_k[e]), its adjoint with B_k for W (tied: the adjoint)."""
        coupling = self.couplings[k]
        if k == 0 or not self.own_feedback:
            return coupling.linearize(s)
        return feedback_linearize(coupling, self.feedback_weights()[k - 1], s)

    def _hebbian(self, lower: State, upper: State, scale: float) -> dict[str, torch.Tensor]:
        """scale·Σ ∂⟨g_l(lower_l), upper_l⟩/∂θ by each coupling's closed form, by parameter name."""
        grads = {}
        for l, (c, s, e) in enumerate(zip(self.couplings, lower, upper)):
            for (name, _), g in zip(c.named_parameters(), c.param_vjp(s, e)):
                grads[f"couplings.{l}.{name}"] = g.mul_(scale)
        return grads

    def _weight_name(self, l: int) -> str:
        return f"couplings.{l}." + ("conv.weight" if isinstance(self.couplings[l], Conv) else "linear.weight")

    def hebbian_difference(self, a: State, b: State, x: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """EP's phase difference −scale·⟨∂⟨g_l(a_l), a_{l+1}⟩/∂θ − (same at b)⟩ (a_0 = b_0 = x) for
        the couplings and, for learned feedback, for B_l the correlation of its own map,
        ∂⟨B_l[a_{l+1}], a_l⟩/∂B_l − (same at b): the same closed form as W_l's, the layers'
        roles swapped. With tied feedback it is ConvHopfield's ∂E/∂θ difference."""
        k = -scale / x.shape[0]
        grads = self._hebbian((x,) + tuple(a[:-1]), a, k)
        for name, g in self._hebbian((x,) + tuple(b[:-1]), b, -k).items():
            grads[name].add_(g)
        return {**grads, **(self.mirror_update(grads) if self.learns_feedback else {})}

    def delta_rule(self, a: State, b: State, pre: State, x: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """The couplings' local update from a postsynaptic difference: −scale·⟨∂⟨g_l(pre_l),
        a_{l+1} − b_{l+1}⟩/∂θ⟩ (pre_0 = x; a max-pooling routes it at pre's arg-max)."""
        return self._hebbian((x,) + tuple(pre[:-1]), tuple(u - v for u, v in zip(a, b)), -scale / x.shape[0])

    def mirror_update(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"feedback.<l>": the update of W_{l+1} in grads}``: B has W's shape, so a forward
        weight's update carries onto its feedback as it is (Kolen–Pollack)."""
        return {f"feedback.{l}": grads[self._weight_name(l + 1)].clone() for l in range(len(self.couplings) - 1)}

    def mirror_sleep(self, sigma: float, samples: int, generator: torch.Generator) -> list[torch.Tensor]:
        """One weight-mirror sleep: per feedback B_l, the estimate of W_{l+1} from ``samples``
        noise patterns N(0, σ²) of layer l+1 (:func:`mirror_estimate`), drawn by ``generator``."""
        out = []
        for c in self.couplings[1:]:
            w = forward_weight(c)
            xi = torch.randn(samples, *c.in_shape, generator=generator, dtype=w.dtype).to(w.device).mul_(sigma)
            out.append(mirror_estimate(c, xi, sigma))
        return out
