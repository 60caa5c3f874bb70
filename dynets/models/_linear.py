"""``s Wᵀ + b`` in the operand layout the CPU's GEMM runs fastest for the layer's width.

MKL computes ``s @ Wᵀ`` with few output columns (a 10-way read-out) slowly: at batch 128,
512 → 10 takes 115 µs with Wᵀ contiguous and 57 µs with ``torch.nn.functional.linear``'s
transposed view, but 33 µs as ``(W sᵀ)ᵀ``, the same products with the wide dimension on the
GEMM's columns (1 thread, `scripts/bench.py`'s machine). A settle evaluates the read-out at
every sweep, so this is the largest per-sweep cost of the 784-512-10 nets. Wide layers keep
the contiguous Wᵀ (as fast or faster there). The value is the same up to float rounding.
"""
from __future__ import annotations

from typing import Callable

import torch

NARROW = 16   # output widths at or below this take the transposed product


def bottom_up(weight: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(bias, s) -> s Wᵀ + bias`` for a (n_out, n_in) ``weight``, its layout chosen once
    (``bias``: (n_out,) or (batch, n_out); ``s``: (batch, n_in)); the result is contiguous.

    Args:
        weight: the layer's weight, (n_out, n_in).
    """
    if weight.shape[0] > NARROW:
        wt = weight.t().contiguous()
        return lambda bias, s: torch.addmm(bias, s, wt)

    return lambda bias, s: _transposed(s, weight, bias)


def linear(s: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``torch.nn.functional.linear(s, weight, bias)``, by the transposed product when the
    output is narrow (``s``: (batch, n_in)).

    Args:
        s: the input, (batch, n_in).
        weight: (n_out, n_in).
        bias: (n_out,).
    """
    if weight.shape[0] > NARROW or s.dim() != 2:
        return torch.nn.functional.linear(s, weight, bias)
    return _transposed(s, weight, bias)


def _transposed(s: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(W sᵀ + b)ᵀ, contiguous; ``bias`` (n_out,) or (batch, n_out)."""
    column = bias.t() if bias.dim() == 2 else bias.unsqueeze(1)
    return torch.addmm(column, weight, s.t()).t().contiguous()
