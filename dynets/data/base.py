"""The containers every loader returns: :class:`Split` and :class:`Dataset`, built and checked by
:func:`from_arrays`; :func:`unlabelled` and :func:`binarised` views."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class Split:
    """One part of a dataset: ``x`` ``(n, *sample_shape)`` float32 inputs (as loaded and scaled), ``y``
    ``(n,)`` int64 class labels, and an optional ``augment(x, generator)`` applied to every batch
    (:class:`dynets.data.cifar.CropFlip` on CIFAR's training split)."""

    x: torch.Tensor
    y: torch.Tensor
    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim < 2 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise ValueError(f"Split needs x (n, *sample_shape) and y (n,), got {self.x.shape} and {self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, *, shuffle: bool,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches of ``batch_size`` rows covering every sample once.

        The last batch is smaller when ``batch_size`` does not divide ``len(self)``
        (kept so that evaluation sees every sample). With ``shuffle`` the order is a
        permutation drawn from ``generator`` (torch's global generator if ``None``); ``augment``,
        if set, draws from the same generator, so a seeded run is reproducible.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for chunk in order.split(batch_size):
            x = self.x[chunk]
            yield (x if self.augment is None else self.augment(x, generator)), self.y[chunk]

    def to(self, device: torch.device | str) -> "Split":
        """The same split on ``device``."""
        return replace(self, x=self.x.to(device), y=self.y.to(device))

    def shaped(self, sample_shape: tuple[int, ...]) -> "Split":
        """The same split with each sample viewed as ``sample_shape``.

        Args:
            sample_shape: the new shape of one sample, with as many elements as the old one.
        """
        return replace(self, x=self.x.reshape(len(self.x), *sample_shape))


@dataclass(frozen=True, eq=False)
class Dataset:
    """Three splits plus the sizes a model is built from, read from the data (``n_classes`` = max label + 1;
    ``n_features``, the number of elements of one sample, the product of :attr:`sample_shape`)."""

    name: str
    train: Split
    val: Split
    test: Split
    n_features: int
    n_classes: int
    distribution: tuple[torch.Tensor, torch.Tensor] | None = None
    """``(images (m, features), probabilities (m,) float64)``: the exact data distribution,
    where it is known (``bars``), for exact likelihood evaluation."""
    labelled: bool = True
    """False for :func:`unlabelled` data: a training loop gives its rule no labels."""

    def __post_init__(self) -> None:
        for part, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            if split.x.shape[1:] != self.train.x.shape[1:] or math.prod(split.x.shape[1:]) != self.n_features:
                raise ValueError(f"{self.name}: {part} samples have shape {tuple(split.x.shape[1:])}, not "
                                 f"{self.sample_shape} ({self.n_features} features)")
            if len(split) and int(split.y.max()) >= self.n_classes:
                raise ValueError(f"{self.name}: {part} split has labels >= n_classes={self.n_classes}")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: ``(C, H, W)`` for images, ``(features,)`` for vectors."""
        return tuple(self.train.x.shape[1:])

    def shaped(self, sample_shape) -> "Dataset":
        """The same data with each sample viewed as ``sample_shape``: an MLP's ``(features,)`` flattens
        images, a conv net's ``(C, H, W)`` keeps them (the app gives every model ``model.in_shape``).

        Args:
            sample_shape: the shape of one sample the model reads (its ``in_shape``).

        Raises:
            ValueError: ``sample_shape`` has another number of elements; the message names both shapes.
        """
        shape = tuple(int(n) for n in sample_shape)
        if math.prod(shape) != self.n_features:
            raise ValueError(f"{self.name}: samples of shape {self.sample_shape} ({self.n_features} values) "
                             f"cannot be viewed as {shape} ({math.prod(shape)} values): the model's input "
                             "layer does not fit the data")
        if shape == self.sample_shape:
            return self
        return replace(self, train=self.train.shaped(shape), val=self.val.shaped(shape),
                       test=self.test.shaped(shape))

    def flat(self) -> "Dataset":
        """The same data with each sample a vector of ``n_features`` values (what an MLP reads)."""
        return self.shaped((self.n_features,))

    def to(self, device: torch.device | str) -> "Dataset":
        """The same dataset with every split on ``device`` (moved once, not per batch)."""
        moved = replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))
        if self.distribution is not None:
            moved = replace(moved, distribution=tuple(t.to(device) for t in self.distribution))
        return moved


def _inputs(x, name: str) -> torch.Tensor:
    """``x`` as ``(n, *sample_shape)`` float32 (``(n,)`` as ``(n, 1)``); raises on non-finite values."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 0 or len(arr) == 0:
        raise ValueError(f"{name}: x must hold at least one sample, got shape {arr.shape}")
    arr = arr.reshape(len(arr), 1) if arr.ndim == 1 else arr
    # Checked here because a single NaN makes every later settle diverge, far from its cause.
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ValueError(f"{name}: x has {bad} non-finite values (NaN or inf, after conversion to float32); "
                         "dynets checks inputs before training - clean or impute them first")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _labels(y, n: int, name: str) -> torch.Tensor:
    """``y`` as ``(n,)`` int64 labels >= 0; whole-number floats are accepted, anything else raises."""
    arr = np.asarray(y)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name}: y must have shape ({n},) to match x, got {arr.shape}")
    whole_floats = arr.dtype.kind == "f" and np.array_equal(arr, np.round(arr))
    if arr.dtype.kind not in "iu" and not whole_floats:
        raise ValueError(f"{name}: y must hold integer class labels, got dtype {arr.dtype} with non-integer values")
    if (arr < 0).any():
        raise ValueError(f"{name}: y has {int((arr < 0).sum())} negative labels; class labels must be >= 0")
    return torch.from_numpy(arr.astype(np.int64))


def _carve(order: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Take ``m`` evenly spaced entries of ``order``; return ``(taken, rest)``."""
    # Spacing len/m >= 1, so the floored positions are distinct and in range.
    picked = ((torch.arange(m, dtype=torch.float64) + 0.5) * len(order) / m).long()
    keep = torch.ones(len(order), dtype=torch.bool)
    keep[picked] = False
    return order[picked], order[keep]


def _split_indices(y: torch.Tensor, fractions: dict[str, float], seed: int, name: str) -> dict[str, torch.Tensor]:
    """Stratified random split of ``range(len(y))`` into ``fractions`` and ``"train"``.

    Each named part gets ``round(f * n)`` indices, carved evenly from the samples grouped
    by class (random order within a class), so every class is represented in proportion
    (within one sample). Within each part the order is the seeded random permutation.
    """
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) >= 1:
        raise ValueError(f"{name}: fractions {fractions} must be >= 0 and sum to < 1")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(len(perm))
    rest = perm[torch.sort(y[perm], stable=True).indices]
    parts = {}
    for part, f in fractions.items():
        parts[part], rest = _carve(rest, round(f * len(y)))
    parts["train"] = rest
    for part, idx in parts.items():
        if len(idx) == 0:
            raise ValueError(f"{name}: the {part} split would be empty ({len(y)} samples, fractions {fractions})")
    return {part: idx[torch.argsort(rank[idx])] for part, idx in parts.items()}


def from_arrays(x, y, *, name: str = "arrays", val_fraction: float = 0.1, test_fraction: float = 0.2,
                seed: int = 0, x_test=None, y_test=None) -> Dataset:
    """A :class:`Dataset` from any arrays.

    Args:
        x: array-like ``(n, *sample_shape)``, kept in that shape as float32 (``(n,)`` becomes ``(n, 1)``).
        y: ``(n,)`` integer class labels >= 0.
        val_fraction: part of ``x`` carved off for validation (``round(f * n)`` samples) by
            a stratified split drawn from ``torch.Generator().manual_seed(seed)``.
        test_fraction: part of ``x`` carved off for the test split, in the same way.
        x_test: inputs of an official test split. If given (with ``y_test``), it is the
            test split (order kept) and ``test_fraction`` is ignored; only validation is
            carved from ``x``.
        y_test: labels of the official test split.

    Raises:
        ValueError: non-finite values in x, labels that are not non-negative integers,
            mismatched lengths or sample shapes, or an empty split.
    """
    xs = _inputs(x, name)
    ys = _labels(y, len(xs), name)
    fractions = {"val": val_fraction}
    if x_test is None:
        fractions["test"] = test_fraction
    parts = {part: Split(xs[idx], ys[idx]) for part, idx in _split_indices(ys, fractions, seed, name).items()}
    if x_test is not None:
        xt = _inputs(x_test, f"{name} (test)")
        parts["test"] = Split(xt, _labels(y_test, len(xt), f"{name} (test)"))
    n_classes = max(int(s.y.max()) for s in parts.values()) + 1
    return Dataset(name, parts["train"], parts["val"], parts["test"], math.prod(xs.shape[1:]), n_classes)


def unlabelled(data: Dataset) -> Dataset:
    """``data`` with every label replaced by 0 and ``labelled`` False: what a self-supervised
    method is trained on (:func:`dynets.app.fit.fit` gives its rule no labels)."""
    blank = lambda s: replace(s, y=torch.zeros_like(s.y))
    return replace(data, train=blank(data.train), val=blank(data.val), test=blank(data.test), labelled=False)


def binarised(data: Dataset, threshold: float = 0.5) -> Dataset:
    """``data`` with inputs x > ``threshold`` as 0/1 (for models of binary units: Helmholtz)."""
    binary = lambda s: replace(s, x=(s.x > threshold).to(s.x.dtype))
    return replace(data, train=binary(data.train), val=binary(data.val), test=binary(data.test))
