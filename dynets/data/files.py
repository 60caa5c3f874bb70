"""Datasets read from files: scikit-learn's digits, the MNIST / Fashion-MNIST IDX files, any ``.npz``."""
from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from .base import Dataset, from_arrays
from .cifar import CropFlip

FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}



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


def fashion_mnist(path: str | None = None, *, val_fraction: float = 0.1, seed: int = 0,
                  augment: bool = False) -> Dataset:
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): ``(1, 28, 28)`` grey images in [0, 1], 10 classes.

    Reads the IDX files from ``path`` (default where Debian's ``dataset-fashion-mnist``
    package puts them). Test is the official 10000-image t10k split; validation is
    ``val_fraction`` of the 60000 training images.

    Args:
        path: the folder holding the four IDX files (gzipped or not).
        val_fraction: part of the 60000 training images carved off for validation.
        seed: the seed of that split.
        augment: random horizontal flip and random 28×28 crop of the image padded by 2 edge pixels
            (:class:`dynets.data.cifar.CropFlip`: the published CIFAR augmentation with half its
            padding) on the training batches only, drawn from the training loop's seeded generator.
            Not offered for MNIST: a flipped digit is another glyph.
    """
    how = (f"Install it with `sudo apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_PATH})"
           " or set `data.path=/dir/with/idx/files`.")
    data = _idx_dataset("fashion_mnist", path or FASHION_MNIST_PATH, how, val_fraction, seed)
    if augment:
        data = replace(data, train=replace(data.train, augment=CropFlip(data.sample_shape, padding=2)))
    return data


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


