r"""Couplings between layers: a forward map g(s) and its adjoint (the feedback).

A layered network built from couplings g_l has the primitive Φ = Σ_l ⟨g_l(s_l), s_{l+1}⟩
(Laborieux et al. 2021, "Scaling equilibrium propagation to deep ConvNets"), whose
gradient with respect to a layer is

    ∂Φ/∂s_l = g_{l−1}(s_{l−1}) + (∂g_l/∂s_l)ᵀ s_{l+1},

the forward drive from below plus the adjoint of the coupling above applied to the layer
above. Each coupling gives both, analytically where it can (a dense layer: Wᵀe; a
convolution: the transposed convolution with the same weights; max-pooling: e routed to
the arg-max of each window; average-pooling: e/4 spread over it), and by a vector–Jacobian
product for a user's own module.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from math import prod
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn
from torch.nn import functional as F

POOLS = ("none", "max", "avg")


class Coupling(nn.Module, ABC):
    """A map g from one layer, ``(batch, *in_shape)``, to the next, ``(batch, *out_shape)``.

    ``forward(s)`` is the drive g(s) (with its bias); ``adjoint(s, e)`` is the
    vector–Jacobian product (∂g/∂s at s)ᵀe, without bias; ``linearize(s)`` gives both at
    one s, sharing what they have in common (a max-pooling's arg-max); ``param_vjp(s, e)``
    is ∂⟨g(s), e⟩/∂θ, the learning rules' Hebbian term. The shapes are per sample and
    fixed at construction.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    #: g is affine in s, so its adjoint does not depend on s (dense, a convolution unpooled or
    #: average-pooled); not so for max-pooling (the arg-max at s) or a user's module.
    affine: bool = False

    @abstractmethod
    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """``(batch, *out_shape)`` g(s) of ``s`` ``(batch, *in_shape)``."""

    @abstractmethod
    def adjoint(self, s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``(batch, *in_shape)`` (∂g/∂s at s)ᵀe of ``e`` ``(batch, *out_shape)``."""

    def linearize(self, s: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """``(g(s), e ↦ (∂g/∂s at s)ᵀe)``; a leaf overrides it to share work between the two."""
        return self(s), lambda e: self.adjoint(s, e)

    def tangent(self, s: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``u ↦ (∂g/∂s at s)·u``, the Jacobian–vector product at s (without bias), for
        curvature estimates; by forward-mode autograd unless a leaf gives it in closed form."""
        return lambda u: torch.func.jvp(self, (s,), (u,))[1]

    def param_vjp(self, s: torch.Tensor, e: torch.Tensor) -> list[torch.Tensor]:
        """∂⟨g(s), e⟩/∂θ summed over the batch, one tensor per parameter in ``parameters()``
        order (a Hebbian term: for a dense layer e·sᵀ and Σe). By autograd unless a leaf
        gives it in closed form."""
        params = list(self.parameters())
        with torch.enable_grad():
            return list(torch.autograd.grad((self(s) * e).sum(), params, allow_unused=True, materialize_grads=True))

    def param_linearize(self, s: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], list[torch.Tensor]]]:
        """``(g(s), e ↦ ∂⟨g(s), e⟩/∂θ)``: :meth:`param_vjp` at one s with the forward map; a leaf
        overrides it to share work between the two (a max-pooling's arg-max)."""
        return self(s), lambda e: self.param_vjp(s, e)


class InputDrive(NamedTuple):
    """A layered net's first coupling at the batch's input x, computed once per batch by the
    model's ``prepare`` (``Condition.constants``; fixed while x and the weights are).

    Attributes:
        drive: g_0(x), the input's drive of the first layer (the one large convolution of a settle).
        param_vjp: e ↦ ∂⟨g_0(x), e⟩/∂θ_0 (:meth:`Coupling.param_linearize`: the learning rules'
            term of the first coupling, from the arg-max that gave the drive).
        squared_norms: the couplings' squared norms that size Gauss–Seidel steps, by coupling,
            filled by the first phase that needs them (predictive coding).
    """

    drive: torch.Tensor
    param_vjp: Callable[[torch.Tensor], list[torch.Tensor]]
    squared_norms: dict[int, torch.Tensor]


class Dense(Coupling):
    """g(s) = W·flatten(s) + b, an ``nn.Linear``: the adjoint Wᵀe, reshaped to the input.
    It flattens an input of any shape, so it is also the flatten between a feature map and
    a dense layer.

    Args:
        in_shape: the shape of one input sample, e.g. ``(64, 4, 4)`` or ``(100,)``.
        out_features: the number of output units.
    """

    affine = True

    def __init__(self, in_shape: tuple[int, ...], out_features: int) -> None:
        super().__init__()
        self.in_shape, self.out_shape = tuple(int(n) for n in in_shape), (int(out_features),)
        self.linear = nn.Linear(prod(self.in_shape), int(out_features))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.linear(s.flatten(1))

    def adjoint(self, s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return (e @ self.linear.weight).view(e.shape[0], *self.in_shape)

    def tangent(self, s: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda u: u.flatten(1) @ self.linear.weight.T

    def param_vjp(self, s: torch.Tensor, e: torch.Tensor) -> list[torch.Tensor]:
        return [e.T @ s.flatten(1), e.sum(0)]


def conv_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """The side of a convolution's output map (floor((size + 2p − k)/stride) + 1)."""
    return (size + 2 * padding - kernel) // stride + 1


class Conv(Coupling):
    """g(s) = pool(W ⋆ s + b), an ``nn.Conv2d`` optionally followed by a 2×2, stride-2
    pooling (as the published P_CNN). The adjoint is the transposed convolution with the
    same weights (no bias) of the pooling's adjoint: max-pooling routes e to the arg-max of
    each window of W ⋆ s + b at this s (max-unpooling), average-pooling spreads e/4 over it.

    Args:
        in_shape: ``(channels, height, width)`` of one input sample.
        out_channels: the convolution's output channels.
        kernel: the (square) kernel size.
        stride: the convolution's stride.
        padding: the convolution's zero padding.
        pool: ``none``, ``max`` or ``avg``.
    """

    def __init__(self, in_shape: tuple[int, int, int], out_channels: int, kernel: int, stride: int = 1,
                 padding: int = 0, pool: str = "none") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; valid: {', '.join(POOLS)}")
        if len(in_shape) != 3:
            raise ValueError(f"a convolution's input is (channels, height, width), got {tuple(in_shape)}")
        self.in_shape, self.pool = tuple(int(n) for n in in_shape), pool
        self.conv = nn.Conv2d(self.in_shape[0], int(out_channels), int(kernel), int(stride), int(padding))
        maps = [conv_size(n, int(kernel), int(stride), int(padding)) for n in self.in_shape[1:]]
        if min(maps) < 1:
            raise ValueError(f"a {kernel}x{kernel} kernel (stride {stride}, padding {padding}) does not fit "
                             f"the {self.in_shape[1]}x{self.in_shape[2]} input map")
        if pool != "none" and any(n % 2 for n in maps):
            raise ValueError(f"{pool}-pooling 2x2 with stride 2 does not divide the {maps[0]}x{maps[1]} "
                             f"map of the convolution of the {self.in_shape[1]}x{self.in_shape[2]} input")
        # conv_transpose2d's output_padding: the rows/columns the strided forward skipped.
        self.output_padding = tuple((n + 2 * int(padding) - int(kernel)) % int(stride) for n in self.in_shape[1:])
        self.map_size = tuple(maps)
        side = [n // 2 for n in maps] if pool != "none" else maps
        self.out_shape = (int(out_channels), *side)
        self.affine = pool != "max"

    def _transpose(self, e: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv_transpose2d(e, c.weight, None, c.stride, c.padding, self.output_padding)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.linearize(s)[0] if self.pool == "max" else self._pool(self.conv(s))

    def _pool(self, z: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(z, 2) if self.pool == "avg" else z

    def _unpool_avg(self, e: torch.Tensor) -> torch.Tensor:
        return (0.25 * e).repeat_interleave(2, -2).repeat_interleave(2, -1)

    def adjoint(self, s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if self.pool == "max":
            return self.linearize(s)[1](e)
        return self._transpose(self._unpool_avg(e) if self.pool == "avg" else e)

    def linearize(self, s: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """g(s) and its adjoint at s; with max-pooling, one convolution of s gives both the
        pooled drive and the arg-max indices the adjoint routes through."""
        if self.pool != "max":
            return self(s), lambda e: self.adjoint(s, e)
        out, where = F.max_pool2d(self.conv(s), 2, return_indices=True)
        return out, lambda e: self._transpose(self._unpool_max(e, where))

    def tangent(self, s: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """u ↦ pool'(W ⋆ u): max-pooling picks each window's arg-max of W ⋆ s + b at this s."""
        c = self.conv
        linear = lambda u: F.conv2d(u, c.weight, None, c.stride, c.padding)
        if self.pool != "max":
            return lambda u: self._pool(linear(u))
        out, where = F.max_pool2d(c(s), 2, return_indices=True)
        return lambda u: linear(u).flatten(2).gather(2, where.flatten(2)).view_as(out)

    def _unpool_max(self, e: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return F.max_unpool2d(e, where, 2, output_size=self.map_size)

    def param_vjp(self, s: torch.Tensor, e: torch.Tensor) -> list[torch.Tensor]:
        """The weight's gradient of ⟨W ⋆ s, e'⟩ (e' the pooling's adjoint of e, at s), by
        ``torch.nn.grad.conv2d_weight``; the bias's, Σe' over batch and positions."""
        if self.pool == "max":
            return self.param_linearize(s)[1](e)
        return self._conv_param_vjp(s, self._unpool_avg(e) if self.pool == "avg" else e)

    def param_linearize(self, s: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], list[torch.Tensor]]]:
        """g(s) and :meth:`param_vjp` at s; with max-pooling, one convolution of s gives both the
        pooled output and the arg-max the product routes through."""
        if self.pool != "max":
            return super().param_linearize(s)
        out, where = F.max_pool2d(self.conv(s), 2, return_indices=True)
        return out, lambda e: self._conv_param_vjp(s, self._unpool_max(e, where))

    def _conv_param_vjp(self, s: torch.Tensor, e: torch.Tensor) -> list[torch.Tensor]:
        """∂⟨W ⋆ s + b, e⟩/∂(W, b) of ``e`` on the convolution's output map."""
        c = self.conv
        return [torch.nn.grad.conv2d_weight(s, c.weight.shape, e, c.stride, c.padding), e.sum((0, 2, 3))]


class Module(Coupling):
    """A user's ``nn.Module`` as a coupling: g = the module (its parameters are this
    coupling's), the adjoint a vector–Jacobian product by autograd. The output shape is
    found at construction by running one zero sample through it.

    Args:
        module: maps ``(batch, *in_shape)`` to ``(batch, *out_shape)``.
        in_shape: the shape of one input sample.
    """

    def __init__(self, module: nn.Module, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.module, self.in_shape = module, tuple(int(n) for n in in_shape)
        param = next(module.parameters(), None)
        probe = torch.zeros(1, *self.in_shape, dtype=param.dtype if param is not None else None)
        with torch.no_grad():
            self.out_shape = tuple(module(probe).shape[1:])

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.module(s)

    def adjoint(self, s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.linearize(s)[1](e)

    def linearize(self, s: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """One forward recording the graph; the adjoint differentiates it (keeping its own
        graph when autograd is on, so that a reference rule can differentiate through it)."""
        graph = torch.is_grad_enabled()
        with torch.enable_grad():
            x = s if graph and s.requires_grad else s.detach().requires_grad_()
            out = self.module(x)

        def vjp(e: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                return torch.autograd.grad(out, x, e, retain_graph=True, create_graph=graph)[0]

        return (out if graph else out.detach()), vjp


def check_chain(couplings: list[Coupling]) -> None:
    """Raise if a coupling's output shape is not the next one's input shape, naming both."""
    for l, (a, b) in enumerate(zip(couplings, couplings[1:])):
        if tuple(a.out_shape) != tuple(b.in_shape):
            raise ValueError(f"coupling {l} ({type(a).__name__}) outputs {a.out_shape} per sample but "
                             f"coupling {l + 1} ({type(b).__name__}) takes {b.in_shape}")


def conv_couplings(in_size: int, channels: Sequence[int], kernels: Sequence[int], strides: Sequence[int],
                   paddings: Sequence[int], pools: Sequence[str], fc: Sequence[int]) -> list[Coupling]:
    """The couplings of the published convolutional net (``P_CNN`` of Laborieux et al. 2021): a
    :class:`Conv` per convolution, then a :class:`Dense` per dense layer (the first flattens), so
    that the parameters come in the published order.

    Args:
        in_size: the side of the (square) input image.
        channels: the input's channels, then each convolution's output channels.
        kernels: each convolution's kernel size.
        strides: each convolution's stride.
        paddings: each convolution's zero padding.
        pools: after each convolution, ``max``, ``avg`` or ``none``.
        fc: the dense layers' sizes, the read-out last.

    Raises:
        ValueError: a size that is not a positive whole number (vector data have no ``channels``
            nor ``in_size``), lists of the wrong lengths, or a convolution that does not fit its
            input (the message names the convolution and its input shape).
    """
    n = len(channels) - 1
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in [in_size, *channels, *fc]):
        raise ValueError(f"in_size, channels and fc must be positive whole numbers, got in_size={in_size}, "
                         f"channels={list(channels)}, fc={list(fc)} (a conv net reads (C, H, W) images: vector "
                         f"data have no channels nor in_size)")
    if n < 0:
        raise ValueError(f"channels must list the input's channels, then each convolution's; got {list(channels)}")
    if not fc:
        raise ValueError(f"fc must list at least one dense layer: fc at least the read-out's size (the classes); "
                         f"got {list(fc)}")
    for name, values in (("kernels", kernels), ("strides", strides), ("paddings", paddings), ("pools", pools)):
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries but channels={list(channels)} makes {n} convolutions: "
                             f"{name} must list one value per convolution ({n}), got {list(values)}")
    shape, out = (int(channels[0]), int(in_size), int(in_size)), []
    for k in range(n):
        try:
            out.append(Conv(shape, channels[k + 1], kernels[k], strides[k], paddings[k], pools[k]))
        except ValueError as err:
            raise ValueError(f"convolution {k} (input {shape}): {err}") from None
        shape = out[-1].out_shape
    for size in fc:
        out.append(Dense(shape, size))
        shape = out[-1].out_shape
    return out
