"""Synthetic data: random patterns for associative memories, and the bars images with their exact
distribution."""
from __future__ import annotations

import torch

from .base import Dataset, Split


def patterns(n_patterns: int, n_units: int, *, seed: int = 0) -> torch.Tensor:
    """Random ±1 patterns ``(n_patterns, n_units)`` float32 (each entry ±1 with probability 1/2), the memories
    stored by an associative (Hopfield) memory; drawn from ``torch.Generator().manual_seed(seed)``."""
    if n_patterns < 1 or n_units < 1:
        raise ValueError(f"need n_patterns >= 1 and n_units >= 1, got {n_patterns} and {n_units}")
    bits = torch.randint(0, 2, (n_patterns, n_units), generator=torch.Generator().manual_seed(seed))
    return bits.to(torch.float32) * 2 - 1


def bars_distribution(size: int = 4, *, p_vertical: float = 2 / 3, p_bar: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact distribution of the bars images (Hinton, Dayan, Frey & Neal 1995): an orientation
    is drawn (vertical with probability ``p_vertical``), then each of the ``size`` bars of that
    orientation is on with probability ``p_bar``.

    Returns:
        ``(images, probs)``: the ``2·2^size − 2`` distinct images ``(m, size²)`` float32 in {0, 1}
        (the blank and the full image arise from both orientations), vertical draws first, and
        their probabilities ``(m,)`` float64.
    """
    if size < 1 or not 0 <= p_vertical <= 1 or not 0 < p_bar < 1:
        raise ValueError(f"need size >= 1, 0 <= p_vertical <= 1, 0 < p_bar < 1; got {size}, {p_vertical}, {p_bar}")
    on = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * size).reshape(-1, size)
    weight = (p_bar ** on * (1 - p_bar) ** (1 - on)).prod(1)
    vertical = on[:, None, :].expand(-1, size, -1).reshape(len(on), -1)     # bar j lights column j
    horizontal = on[:, :, None].expand(-1, -1, size).reshape(len(on), -1)   # bar i lights row i
    probs: dict[tuple, float] = {}
    for images, p in ((vertical, p_vertical), (horizontal, 1 - p_vertical)):
        for image, w in zip(images.tolist(), (p * weight).tolist()):
            probs[tuple(image)] = probs.get(tuple(image), 0.0) + w
    return torch.tensor(list(probs), dtype=torch.float32), torch.tensor(list(probs.values()), dtype=torch.float64)


def bars(size: int = 4, *, p_vertical: float = 2 / 3, p_bar: float = 0.2, n_train: int = 10000,
         n_val: int = 1000, n_test: int = 1000, seed: int = 0) -> Dataset:
    """Samples of :func:`bars_distribution` (the Helmholtz machine's toy, exact likelihood known),
    ``size²`` binary pixels as a flat vector (the visible units of a Boltzmann or Helmholtz machine), drawn from ``torch.Generator().manual_seed(seed)``. The label of an
    image is its orientation (0 vertical, 1 horizontal), which no unsupervised rule reads; the
    exact distribution is ``Dataset.distribution``."""
    images, probs = bars_distribution(size, p_vertical=p_vertical, p_bar=p_bar)
    generator = torch.Generator().manual_seed(seed)
    vertical = 2 ** size   # the first 2^size images are the vertical draws (blank and full included)
    splits = []
    for n in (n_train, n_val, n_test):
        if n < 1:
            raise ValueError(f"bars: every split needs >= 1 sample, got n_train, n_val, n_test = {n_train}, {n_val}, {n_test}")
        pick = torch.multinomial(probs, n, replacement=True, generator=generator)
        splits.append(Split(images[pick], (pick >= vertical).long()))
    return Dataset("bars", *splits, n_features=size * size, n_classes=2, distribution=(images, probs))


