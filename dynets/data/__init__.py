"""Datasets as ``(x, y)`` tensors: train / validation / test splits, checked on load.

Every loader returns a :class:`Dataset` whose splits hold ``x`` ``(n, *sample_shape)`` float32 (images as
``(C, H, W)``: digits ``(1, 8, 8)``, MNIST ``(1, 28, 28)``, CIFAR ``(3, 32, 32)``; vectors as ``(features,)``)
and ``y`` ``(n,)`` int64 labels in ``0..n_classes-1``; :meth:`Dataset.shaped` views the samples in a model's
``in_shape`` (an MLP flattens images). Non-finite inputs, malformed labels and empty splits are errors raised
before training, never silently clipped or dropped. All randomness comes from seeded ``torch.Generator``s.
"""
from __future__ import annotations

from .base import Dataset, Split, binarised, from_arrays, unlabelled
from .cifar import cifar10, cifar100
from .files import FASHION_MNIST_PATH, digits, fashion_mnist, idx, mnist, npz
from .synthetic import bars, bars_distribution, patterns

__all__ = ["Dataset", "Split", "DATASETS", "FASHION_MNIST_PATH", "bars", "bars_distribution", "binarised",
           "cifar10", "cifar100", "digits", "fashion_mnist", "from_arrays", "idx", "load", "mnist", "npz",
           "patterns", "unlabelled"]

DATASETS = {"digits": digits, "fashion_mnist": fashion_mnist, "mnist": mnist, "npz": npz, "bars": bars,
            "cifar10": cifar10, "cifar100": cifar100}


def load(name: str, **kwargs) -> Dataset:
    """Load the dataset registered as ``name`` in :data:`DATASETS`, passing ``kwargs`` to its loader."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(DATASETS)}")
    return DATASETS[name](**kwargs)
