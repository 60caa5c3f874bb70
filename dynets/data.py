"""Datasets as ``(x, y)`` tensors: train / validation / test splits, checked on load.

Every loader returns a :class:`Dataset` whose splits hold ``x`` ``(n, *sample_shape)`` float32 (images as
``(C, H, W)``: digits ``(1, 8, 8)``, MNIST ``(1, 28, 28)``, CIFAR ``(3, 32, 32)``; vectors as ``(features,)``)
and ``y`` ``(n,)`` int64 labels in ``0..n_classes-1``; :meth:`Dataset.shaped` views the samples in a model's
``in_shape`` (an MLP flattens images). Non-finite inputs, malformed labels and empty splits are errors raised
before training, never silently clipped or dropped. All randomness comes from seeded ``torch.Generator``s.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .images import PUBLISHED_MEAN, PUBLISHED_STD, CropFlip, read_cifar

FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True, eq=False)
class Split:
    """One part of a dataset: ``x`` ``(n, *sample_shape)`` float32 inputs (as loaded and scaled), ``y``
    ``(n,)`` int64 class labels, and an optional ``augment(x, generator)`` applied to every batch
    (:class:`dynets.images.CropFlip` on CIFAR's training split)."""

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


def digits(*, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 samples): ``(1, 8, 8)`` images in [0, 1] (pixel / 16),
    10 classes."""
    from sklearn.datasets import load_digits  # imported here: only this loader needs sklearn

    raw = load_digits()
    return from_arrays((raw.data / 16.0).reshape(-1, 1, 8, 8), raw.target, name="digits",
                       val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Decode one uint8 IDX file with ``ndim`` dimensions, gzip-compressed or plain."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic bytes; the file name need not end in .gz
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from err
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes([0, 0, 0x08, ndim]):
        raise ValueError(f"{path}: not a uint8 IDX file with {ndim} dimensions "
                         f"(magic bytes {raw[:4].hex()}, expected 000008{ndim:02x})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {dims} but the file holds {len(raw) - header} data bytes"
                         " - truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def idx(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX image/label file pair (the MNIST format), each gzip-compressed or plain.

    Returns ``images`` uint8 ``(n, rows, cols)`` and ``labels`` uint8 ``(n,)``. Raises ValueError on a wrong
    magic number, a truncated or corrupt file, or image and label counts that differ.
    """
    images, labels = _read_idx(Path(images_path), 3), _read_idx(Path(labels_path), 1)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    return images, labels


def _find(directory: Path, stem: str, how_to_get: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"looked for {directory / stem}(.gz) and found neither. {how_to_get}")


def _idx_dataset(name: str, path: str, how_to_get: str, val_fraction: float, seed: int) -> Dataset:
    """A dataset from the four MNIST-layout IDX files in ``path``: ``(1, rows, cols)`` images, pixels / 255,
    official test split."""
    found = {part: [_find(Path(path), stem, how_to_get) for stem in stems] for part, stems in _IDX_FILES.items()}
    (x, y), (x_test, y_test) = idx(*found["train"]), idx(*found["test"])
    return from_arrays(x[:, None] / np.float32(255), y, name=name, val_fraction=val_fraction, seed=seed,
                       x_test=x_test[:, None] / np.float32(255), y_test=y_test)


def fashion_mnist(path: str | None = None, *, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): ``(1, 28, 28)`` grey images in [0, 1], 10 classes.

    Reads the IDX files from ``path`` (default where Debian's ``dataset-fashion-mnist``
    package puts them). Test is the official 10000-image t10k split; validation is
    ``val_fraction`` of the 60000 training images.
    """
    how = (f"Install it with `sudo apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_PATH})"
           " or set `data.path=/dir/with/idx/files`.")
    return _idx_dataset("fashion_mnist", path or FASHION_MNIST_PATH, how, val_fraction, seed)


def mnist(path: str | None = None, *, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """MNIST (LeCun et al. 1998) from the four IDX files in ``path``, as :func:`fashion_mnist`.

    There is no default location: no Debian or Ubuntu package ships MNIST (only
    Fashion-MNIST, ``dataset-fashion-mnist``), so a missing ``path`` is a ValueError
    saying where the files come from; a folder without them is a FileNotFoundError.
    """
    need = "a folder with " + ", ".join(f"{stem}.gz" for stems in _IDX_FILES.values() for stem in stems)
    where = ("download them from https://ossci-datasets.s3.amazonaws.com/mnist/ (the mirror torchvision uses; the "
             "original site http://yann.lecun.com/exdb/mnist/ has refused downloads at times), or let "
             "torchvision.datasets.MNIST(root, download=True) put them in root/MNIST/raw. No Debian or Ubuntu "
             "package ships MNIST (dataset-fashion-mnist is Fashion-MNIST: data=fashion_mnist)")
    if path is None:
        raise ValueError(f"data=mnist needs data.path=<{need}> (gzipped or not); {where}.")
    return _idx_dataset("mnist", path, f"data.path must be {need} (gzipped or not); {where}.", val_fraction, seed)


def npz(path: str, *, x_key: str = "X", y_key: str = "y",
        val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Any arrays saved with ``np.savez``: ``x_key`` ``(n, ...)`` inputs, ``y_key`` ``(n,)`` labels.

    Raises:
        FileNotFoundError: no file at ``path``.
        KeyError: a key is absent; the message lists the keys present.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no .npz file at {path}")
    with np.load(path) as arrays:
        missing = [k for k in (x_key, y_key) if k not in arrays.files]
        if missing:
            raise KeyError(f"{path} has no array {missing}; keys present: {sorted(arrays.files)}")
        x, y = arrays[x_key], arrays[y_key]
    return from_arrays(x, y, name=Path(path).stem, val_fraction=val_fraction, test_fraction=test_fraction,
                       seed=seed)


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


def _cifar(name: str, path: str | None, val_fraction: float, seed: int, normalize: bool, augment: bool) -> Dataset:
    """A CIFAR dataset (:func:`dynets.images.read_cifar`): pixels / 255, optionally normalised, official test split."""
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
            padded by 4 edge pixels, random horizontal flip: :class:`dynets.images.CropFlip`),
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


DATASETS = {"digits": digits, "fashion_mnist": fashion_mnist, "mnist": mnist, "npz": npz, "bars": bars,
            "cifar10": cifar10, "cifar100": cifar100}


def load(name: str, **kwargs) -> Dataset:
    """Load the dataset registered as ``name`` in :data:`DATASETS`, passing ``kwargs`` to its loader."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(DATASETS)}")
    return DATASETS[name](**kwargs)


def unlabelled(data: Dataset) -> Dataset:
    """``data`` with every label replaced by 0 and ``labelled`` False: what a self-supervised
    method is trained on (:func:`dynets.app.fit.fit` gives its rule no labels)."""
    blank = lambda s: replace(s, y=torch.zeros_like(s.y))
    return replace(data, train=blank(data.train), val=blank(data.val), test=blank(data.test), labelled=False)


def binarised(data: Dataset, threshold: float = 0.5) -> Dataset:
    """``data`` with inputs x > ``threshold`` as 0/1 (for models of binary units: Helmholtz)."""
    binary = lambda s: replace(s, x=(s.x > threshold).to(s.x.dtype))
    return replace(data, train=binary(data.train), val=binary(data.val), test=binary(data.test))
