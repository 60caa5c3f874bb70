"""Image data: the CIFAR python batches and the published training augmentation.

:func:`read_cifar` decodes the pickle batches of CIFAR-10 and CIFAR-100 (Krizhevsky 2009,
https://www.cs.toronto.edu/~kriz/cifar.html); :class:`CropFlip` is the augmentation of the
published convolutional EP code (Laborieux et al. 2021, main.py of Laborieux-Axel/Equilibrium-Propagation):
random horizontal flip and random 32×32 crop of the image padded by 4 pixels (edge padding).
:func:`cifar10` and :func:`cifar100` build the datasets.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import Dataset, from_arrays

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
# name: (the subfolder its archive unpacks to, the archive, training batches, test batches, label key)
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", [f"data_batch_{i}" for i in range(1, 6)],
                ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], ["test"], b"fine_labels"),
}
# Per-channel mean and 3× the standard deviation of the CIFAR-10 training images: the
# normalisation of the published convolutional EP code (Laborieux et al. 2021, main.py).
PUBLISHED_MEAN = (0.4914, 0.4822, 0.4465)
PUBLISHED_STD = (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)


def _folder(path: str | None, name: str) -> Path:
    """``path`` itself or its standard subfolder, whichever holds the batches; an error naming them otherwise."""
    subfolder, archive, train, test, _ = CIFAR_FILES[name]
    expected = ", ".join(train + test)
    where = f"download the python version from {CIFAR_URL} and unpack it (tar xzf {archive})"
    if path is None:
        raise ValueError(f"data={name} needs data.path=<the folder holding {expected} "
                         f"(or its {subfolder} subfolder)>; {where}")
    for folder in (Path(path), Path(path) / subfolder):
        if all((folder / f).is_file() for f in train + test):
            return folder
    raise FileNotFoundError(f"data.path={path}: expected the CIFAR python batches {expected} there or in "
                            f"{Path(path) / subfolder}; {where}")


def _batch(file: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(images (n, 3, 32, 32) uint8, labels (n,))`` of one pickle batch; its rows are channel-major."""
    with open(file, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    if b"data" not in batch or label_key not in batch:
        raise ValueError(f"{file}: not a CIFAR python batch (keys {sorted(batch)}, expected b'data' and {label_key})")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{file}: b'data' has shape {data.shape}, expected (n, 3072)")
    return data.reshape(-1, 3, 32, 32), np.asarray(batch[label_key])


def read_cifar(path: str | None, name: str = "cifar10") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The CIFAR python batches in ``path`` (or its ``cifar-10-batches-py`` / ``cifar-100-python`` subfolder).

    Args:
        path: the folder.
        name: ``cifar10`` (``data_batch_1..5``, ``test_batch``, key ``b"labels"``) or ``cifar100``
            (``train``, ``test``, key ``b"fine_labels"``).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images uint8 ``(n, 3, 32, 32)`` (pixel ``[c, i, j]`` is
        column ``c·1024 + i·32 + j`` of a batch's ``b"data"``) and their labels.

    Raises:
        ValueError: no ``path``, or a file that is not a CIFAR batch.
        FileNotFoundError: the folder lacks a batch; the message names the files and where to get them.
    """
    folder = _folder(path, name)
    _, _, train, test, key = CIFAR_FILES[name]
    parts = []
    for files in (train, test):
        images, labels = zip(*(_batch(folder / f, key) for f in files))
        parts += [np.concatenate(images), np.concatenate(labels)]
    return tuple(parts)


@dataclass(frozen=True)
class CropFlip:
    """Random crop of the edge-padded image and random horizontal flip, per sample (Laborieux et al. 2021).

    Args:
        shape: ``(C, H, W)`` of one image; a batch of any shape with that many elements per sample
            is viewed as images and returned in its own shape.
        padding: pixels added on each side (edge values repeated) before the H×W crop.
        flip: flip each image left-right with probability 1/2.
    """

    shape: tuple[int, int, int]
    padding: int = 4
    flip: bool = True

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x`` augmented, each sample its own crop and flip.

        Args:
            x: ``(n, ...)`` a batch, ``C·H·W`` elements per sample.
            generator: where the offsets and flips are drawn (torch's global generator if ``None``).
        """
        n, (c, h, w), p = len(x), self.shape, self.padding
        device = generator.device if generator is not None else torch.device("cpu")
        images = x.reshape(n, c, h, w)
        if p:
            padded = F.pad(images, (p, p, p, p), mode="replicate")
            top, left = (torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=device).to(x.device)
                         for _ in range(2))
            rows = (top + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (left + torch.arange(w, device=x.device))[:, None, None, :]
            images = padded[torch.arange(n, device=x.device)[:, None, None, None],
                            torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
        if self.flip:
            flipped = torch.rand(n, generator=generator, device=device).to(x.device) < 0.5
            images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
        return images.reshape(x.shape)


def _cifar(name: str, path: str | None, val_fraction: float, seed: int, normalize: bool, augment: bool) -> Dataset:
    """A CIFAR dataset (:func:`dynets.data.cifar.read_cifar`): pixels / 255, optionally normalised, official test split."""
    x, y, x_test, y_test = read_cifar(path, name)
    scale = lambda images: images / np.float32(255)
    if normalize:
        mean, std = (np.asarray(v, dtype=np.float32)[:, None, None] for v in (PUBLISHED_MEAN, PUBLISHED_STD))
        scale = lambda images: (images / np.float32(255) - mean) / std
    data = from_arrays(scale(x), y, name=name, val_fraction=val_fraction, seed=seed, x_test=scale(x_test),
                       y_test=y_test)
    if augment:
        data = replace(data, train=replace(data.train, augment=CropFlip(data.sample_shape)))
    return data


def cifar10(path: str | None = None, *, val_fraction: float = 0.1, seed: int = 0, normalize: bool = False,
            augment: bool = False) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009): ``(3, 32, 32)`` colour images in [0, 1], 10 classes, from the python
    batches (``data_batch_1..5``, ``test_batch``) in ``path`` or its ``cifar-10-batches-py`` subfolder.

    Args:
        path: the folder holding the batches (https://www.cs.toronto.edu/~kriz/cifar.html, python version).
        val_fraction: part of the 50000 training images carved off for validation, a stratified
            split drawn from ``torch.Generator().manual_seed(seed)``; test is the official 10000.
        seed: the seed of that split.
        normalize: subtract the per-channel mean and divide by 3× the standard deviation, the
            constants of the published convolutional EP code (Laborieux et al. 2021).
        augment: the published augmentation on the training batches only (random crop of the image
            padded by 4 edge pixels, random horizontal flip: :class:`dynets.data.cifar.CropFlip`),
            drawn from the training loop's seeded generator.

    Raises:
        ValueError: no ``path``.
        FileNotFoundError: a batch is missing (the message names the files and where to get them).
    """
    return _cifar("cifar10", path, val_fraction, seed, normalize, augment)


def cifar100(path: str | None = None, *, val_fraction: float = 0.1, seed: int = 0, normalize: bool = False,
             augment: bool = False) -> Dataset:
    """CIFAR-100 (Krizhevsky 2009), its 100 fine labels, from ``train`` and ``test`` in ``path`` or its
    ``cifar-100-python`` subfolder; otherwise as :func:`cifar10` (``normalize`` uses the same constants).

    Args:
        path: the folder holding the batches.
        val_fraction: part of the 50000 training images carved off for validation.
        seed: the seed of that split.
        normalize: the published per-channel normalisation, as :func:`cifar10`.
        augment: the published crop-and-flip augmentation on the training batches, as :func:`cifar10`.
    """
    return _cifar("cifar100", path, val_fraction, seed, normalize, augment)


