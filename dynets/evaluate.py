"""Evaluations of a model at its free equilibrium that read no label (for :func:`dynets.app.fit`
and the studies): the settled state of a batch and the model's reconstruction of its input."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .capabilities import Reconstructs, code_layer, describe
from .data import Split
from .phases import Condition, State
from .settle import SettleOptions


@torch.no_grad()
def settled(model, x: torch.Tensor, settle: SettleOptions, batch_size: int = 1000) -> tuple[State, torch.Tensor]:
    """The free equilibrium of ``model`` with ``x`` ``(n, *in_shape)`` clamped, in batches: its
    state (each layer ``(n, *shape)``) and the model's reconstruction of ``x`` (``x``'s shape; its
    ``reconstruct``, capability :class:`~dynets.capabilities.Reconstructs`)."""
    if not isinstance(model, Reconstructs):
        raise TypeError(f"{type(model).__name__} does not reconstruct its input: it has no {describe(Reconstructs)}")
    layers, recon = [], []
    for xb in x.split(batch_size):
        condition = model.prepare(Condition(xb))
        state = settle(model, condition).state
        layers.append(state)
        recon.append(model.reconstruct(state, condition))
    return tuple(torch.cat(parts) for parts in zip(*layers)), torch.cat(recon)


def pick_layer(model, state: State, layer: int | None) -> torch.Tensor:
    """Layer ``layer`` of a settled state (``None``: the model's ``code_layer``, else the top);
    a layer that does not exist is an error naming those that do."""
    index = code_layer(model) if layer is None else layer
    if not -len(state) <= index < len(state):
        sizes = ", ".join(f"{l}: {s[0].numel()} units" + (f" of shape {tuple(s.shape[1:])}" if s.dim() > 2 else "")
                          for l, s in enumerate(state))
        raise ValueError(f"probe layer {index} does not exist: {type(model).__name__}'s settled state has layers "
                         f"0..{len(state) - 1} (or -{len(state)}..-1) ({sizes})")
    return state[index]


@dataclass
class ReconstructionError:
    """An evaluation for :func:`dynets.app.fit.fit`: ``reconstruction``, the mean squared error per
    input unit of the model's reconstruction at its free equilibrium (no label is read). Select
    with ``select="val_reconstruction"``, ``goal="minimize"``."""

    settle: SettleOptions
    batch_size: int = 1000

    def __call__(self, model, split: Split) -> dict[str, float]:
        _, recon = settled(model, split.x, self.settle, self.batch_size)
        return {"reconstruction": (recon - split.x).pow(2).mean().item()}
