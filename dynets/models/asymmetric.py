"""Layered network with separate bottom-up and top-down weights: a vector field with no
energy (Scellier, Goyal, Binas, Mesnard & Bengio 2018, "Generalization of equilibrium
propagation to vector field dynamics")."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..phases import State
from .hopfield import ACTIVATIONS, Layered

FEEDBACK = ("random", "tied", "learned")


class OwnFeedback:
    """The feedback pathway B of a net with separate top-down weights, shared by
    :class:`Asymmetric` and :class:`~dynets.models.conv_asymmetric.ConvAsymmetric`: tied to the
    forward weights (no weights of its own), a fixed random draw (buffers ``feedback_k`` that no
    optimizer sees) or a parameter list ``feedback`` (learned). A net gives :meth:`tied_feedback`,
    its forward weights in B's layout, and draws B once with :meth:`draw_feedback`."""

    feedback_mode: str

    def tied_feedback(self) -> list[torch.Tensor]:
        """The forward weights in B's layout: what B is under ``tied`` feedback."""
        raise NotImplementedError

    def draw_feedback(self, shapes: list[tuple[int, ...]], fan: Callable[[tuple[int, ...]], int],
                      scale: float, seed: int | None) -> None:
        """Draw B_l ~ U(±scale/√fan(shape)) for each shape (in order, from a generator seeded by
        ``seed``, or torch's default one) and register it as ``feedback_mode`` says.

        Args:
            shapes: the shape of each B_l, bottom first.
            fan: the number of units each feedback unit reads, from B_l's shape.
            scale: the bound's scale (1: ``nn.Linear``'s init for that fan).
            seed: the seed of the draw; ``None``: torch's default generator.
        """
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        draws = [(2 * torch.rand(shape, generator=generator) - 1) * scale / math.sqrt(fan(shape)) for shape in shapes]
        if self.feedback_mode == "learned":
            self.feedback = nn.ParameterList(nn.Parameter(b) for b in draws)
        else:
            for k, b in enumerate(draws):
                self.register_buffer(f"feedback_{k}", b)

    @property
    def learns_feedback(self) -> bool:
        return self.feedback_mode == "learned"

    @property
    def own_feedback(self) -> bool:
        """Whether B is weights of its own (``random`` or ``learned``), not the forward weights (``tied``)."""
        return self.feedback_mode != "tied"

    def feedback_weights(self) -> list[torch.Tensor]:
        """[B_1, ..., B_{L−1}]: B_l carries layer l+1 down to hidden layer l."""
        tied = self.tied_feedback()
        if self.feedback_mode == "tied":
            return tied
        if self.feedback_mode == "learned":
            return list(self.feedback)
        return [getattr(self, f"feedback_{k}") for k in range(len(tied))]

    def feedback_angles(self) -> list[float]:
        """Angle in degrees between each B_l and the forward weight in its layout (0 for tied feedback)."""
        out = []
        for b, w in zip(self.feedback_weights(), self.tied_feedback()):
            cos = (b * w).sum() / (b.norm() * w.norm())
            out.append(math.degrees(math.acos(max(-1.0, min(1.0, cos.item())))))
        return out


class Asymmetric(OwnFeedback, Layered):
    r"""Layered leaky network whose feedback pathway is its own set of weights:

        ds_l/dt = −s_l + ρ(u_l),   u_l = W_{l−1} s_{l−1} + b_l + B_l s_{l+1},   s_0 = x,
        u_L = W_{L−1} s_{L−1} + b_L − β·∂C/∂s_L          (the read-out layer, nudged),

    with W_l (``layers[l].weight``, bottom-up, n_{l+1}×n_l) and B_l (``feedback[l-1]``,
    top-down into hidden layer l, n_l×n_{l+1}). With B_l = W_lᵀ this is exactly
    :class:`~dynets.models.LayeredHopfield` (both share :class:`~dynets.models.hopfield.Layered`'s
    flow and Gauss–Seidel blocks, which read B from :meth:`top_down`); otherwise there is no energy, the Jacobian is
    not symmetric, and the flow may spiral or oscillate: :func:`dynets.settle` then reports
    ``converged=False`` and the rules leave those samples out.

    Args:
        sizes: ``[in_features, hidden..., out_features]``.
        feedback_mode: ``tied`` (B_l = W_lᵀ, no parameter of its own: LayeredHopfield),
            ``random`` (a fixed random B, a buffer no optimizer sees: feedback alignment)
            or ``learned`` (B is a parameter, trained by the rules that learn feedback:
            Kolen–Pollack, weight mirrors, difference target propagation).
        activation: ``hard_sigmoid``, ``sigmoid`` or ``tanh`` (as LayeredHopfield).
        feedback_scale: B is drawn U(±scale/√n_{l+1}) (nn.Linear's init of a layer
            mapping n_{l+1} units to n_l, for scale 1).
        seed: seed of the draw of B (its own generator), ``None``: drawn from torch's
            default generator like the forward weights.
    """

    def __init__(self, sizes: list[int], feedback_mode: str = "random", activation: str = "hard_sigmoid",
                 feedback_scale: float = 1.0, seed: int | None = None) -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
            raise ValueError(f"sizes must list >= 2 positive layer sizes, got {list(sizes)}")
        if feedback_mode not in FEEDBACK:
            raise ValueError(f"unknown feedback_mode {feedback_mode!r}; valid: {', '.join(FEEDBACK)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        self.sizes, self.feedback_mode, self.activation = [int(n) for n in sizes], feedback_mode, activation
        self.act = ACTIVATIONS[activation]
        self.in_features, self.out_features = self.sizes[0], self.sizes[-1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.sizes, self.sizes[1:]))
        if feedback_mode != "tied":
            shapes = [(a, b) for a, b in zip(self.sizes[1:-1], self.sizes[2:])]
            self.draw_feedback(shapes, lambda shape: shape[1], feedback_scale, seed)

    def tied_feedback(self) -> list[torch.Tensor]:
        """[W_1ᵀ, ..., W_{L−1}ᵀ]: B_l (n_l × n_{l+1}) under tied feedback."""
        return [layer.weight.t() for layer in self.layers[1:]]

    def set_feedback(self, weights: list[torch.Tensor]) -> None:
        """Set B (learned or random feedback); each must have B_l's shape, named in the error."""
        own = self.feedback_weights()
        if self.feedback_mode == "tied" or len(weights) != len(own):
            raise ValueError(f"set_feedback needs {len(own)} matrices for feedback_mode={self.feedback_mode!r} "
                             f"(tied feedback has none of its own); got {len(weights)}")
        for l, (b, new) in enumerate(zip(own, weights), start=1):
            if new.shape != b.shape:
                raise ValueError(f"feedback into hidden layer {l} has shape {tuple(new.shape)}, but the forward "
                                 f"layers {l} ({self.sizes[l]} units) and {l + 1} ({self.sizes[l + 1]} units) "
                                 f"need ({self.sizes[l]}, {self.sizes[l + 1]})")
            with torch.no_grad():
                b.copy_(new)

    def top_down(self) -> list[torch.Tensor]:
        """B_lᵀ, contiguous: the matrix that right-multiplies s_{l+1} in u_l."""
        return [b.t().contiguous() for b in self.feedback_weights()]

    def hebbian_difference(self, a: State, b: State, x: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """EP's phase difference: −scale·⟨a_{l+1}a_lᵀ − b_{l+1}b_lᵀ⟩ for W_l (a_0 = b_0 = x),
        −scale·⟨a_l − b_l⟩ for the biases and, for learned feedback, −scale·⟨a_l a_{l+1}ᵀ −
        b_l b_{l+1}ᵀ⟩ for B_l. With tied feedback it is LayeredHopfield's ∂F/∂θ difference."""
        s = -scale / x.shape[0]
        lower_a, lower_b = (x,) + tuple(a[:-1]), (x,) + tuple(b[:-1])
        grads = {}
        for l, (ua, la, ub, lb) in enumerate(zip(a, lower_a, b, lower_b)):
            grads[f"layers.{l}.weight"] = (ua.T @ la - ub.T @ lb) * s
            grads[f"layers.{l}.bias"] = (ua - ub).sum(0) * s
        if self.learns_feedback:
            for l in range(len(a) - 1):
                grads[f"feedback.{l}"] = (a[l].T @ a[l + 1] - b[l].T @ b[l + 1]) * s
        return grads

    def delta_rule(self, a: State, b: State, pre: State, x: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """The forward weights' local update from a postsynaptic activity difference:
        −scale·⟨(a_{l+1} − b_{l+1}) pre_lᵀ⟩ for W_l (pre_0 = x), −scale·⟨a_{l+1} − b_{l+1}⟩ for b_l."""
        s = -scale / x.shape[0]
        grads = {}
        for l, (ua, ub, p) in enumerate(zip(a, b, (x,) + tuple(pre[:-1]))):
            d = (ua - ub) * s
            grads[f"layers.{l}.weight"], grads[f"layers.{l}.bias"] = d.T @ p, d.sum(0)
        return grads

    def mirror_update(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"feedback.<l>": the update of W_{l+1} in grads, transposed}`` (Kolen–Pollack)."""
        return {f"feedback.{l}": grads[f"layers.{l + 1}.weight"].T for l in range(len(self.layers) - 1)}

    def mirror_sleep(self, sigma: float, samples: int, generator: torch.Generator) -> list[torch.Tensor]:
        """One weight-mirror sleep: per B_l, the estimate ⟨ξ (W_{l+1} ξ)ᵀ⟩/σ² of W_{l+1}ᵀ from
        ``samples`` noise patterns ξ ~ N(0, σ²I) of hidden layer l+1, drawn by ``generator``."""
        out = []
        for layer in self.layers[1:]:
            w = layer.weight.detach()
            xi = torch.randn(samples, w.shape[1], generator=generator, dtype=w.dtype).to(w.device).mul_(sigma)
            current = xi @ w.T   # the postsynaptic currents the noise causes
            out.append(xi.T @ current / (samples * sigma ** 2))
        return out
