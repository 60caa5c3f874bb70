"""Images keep their shape; the CIFAR python batches; the published crop-and-flip augmentation."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynets import data
from dynets.data.cifar import CropFlip


def test_digits_and_idx_images_keep_their_shape_and_flatten_to_the_old_rows():
    from sklearn.datasets import load_digits
    ds = data.digits()
    assert ds.sample_shape == (1, 8, 8) and ds.n_features == 64
    flat = ds.flat()
    assert flat.sample_shape == (64,) and torch.equal(flat.train.x, ds.train.x.reshape(len(ds.train), 64))
    # pixel [0, i, j] is sklearn's image[i, j] / 16: the row-major flattening of before
    raw = load_digits()
    first = ds.test.x[0, 0].double().numpy()
    assert any(np.array_equal(first, image / 16) for image in raw.images)


def test_shaped_names_both_shapes_when_the_model_does_not_fit():
    ds = data.digits()
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(784,\)"):
        ds.shaped((784,))


def test_from_arrays_keeps_the_shape_it_is_given():
    x, y = np.arange(40.0 * 6).reshape(40, 2, 3), np.arange(40) % 2
    assert data.from_arrays(x, y).sample_shape == (2, 3)
    assert data.from_arrays(x.reshape(40, 6), y).sample_shape == (6,)
    assert data.bars().sample_shape == (16,)   # bars stay a vector of binary units


def write_batch(path, images, labels, key):
    with open(path, "wb") as handle:
        pickle.dump({b"data": images, key: list(labels), b"batch_label": b"synthetic"}, handle)


@pytest.fixture
def cifar10_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {f"data_batch_{i}": 8 for i in range(1, 6)} | {"test_batch": 6}
    written = {}
    for name, n in batches.items():
        images, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)
        labels[:2] = [0, 9]   # every batch names class 9, so n_classes is 10
        write_batch(folder / name, images, labels, b"labels")
        written[name] = (images, labels)
    return tmp_path, written


def test_cifar10_pixels_round_trip_from_the_python_batches(cifar10_folder):
    root, written = cifar10_folder
    ds = data.cifar10(str(root), val_fraction=0.25)   # the parent folder: the subfolder is found
    assert ds.sample_shape == (3, 32, 32) and (ds.n_features, ds.n_classes) == (3072, 10)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 6)
    images, labels = written["test_batch"]
    k, c, i, j = 4, 2, 17, 5
    assert ds.test.x[k, c, i, j].item() == np.float32(images[k, c * 1024 + i * 32 + j]) / np.float32(255)
    assert torch.equal(ds.test.x, torch.from_numpy(images.reshape(6, 3, 32, 32).astype(np.float32) / 255))
    assert torch.equal(ds.test.y, torch.from_numpy(labels))
    train = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    together = torch.cat([ds.train.x, ds.val.x]).reshape(40, -1).numpy()
    assert sorted(map(bytes, (together * 255).round().astype(np.uint8))) == sorted(map(bytes, train))


def test_cifar10_normalize_uses_the_published_constants(cifar10_folder):
    root, _ = cifar10_folder
    raw, normal = data.cifar10(str(root)), data.cifar10(str(root), normalize=True)
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
    std = torch.tensor([3 * 0.2023, 3 * 0.1994, 3 * 0.2010])[:, None, None]
    torch.testing.assert_close(normal.test.x, (raw.test.x - mean) / std)


def test_cifar100_reads_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    for name, n in (("train", 20), ("test", 5)):
        labels = rng.integers(0, 100, n)
        labels[0] = 99
        with open(tmp_path / name, "wb") as handle:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": list(labels),
                         b"coarse_labels": list(labels // 5)}, handle)
        if name == "test":
            expected = labels
    ds = data.cifar100(str(tmp_path), val_fraction=0.2)
    assert ds.n_classes == 100 and torch.equal(ds.test.y, torch.from_numpy(expected))


def test_a_folder_without_the_batches_names_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data_batch_1.*test_batch.*cs\.toronto\.edu"):
        data.cifar10(str(tmp_path))
    with pytest.raises(ValueError, match="data.path"):
        data.cifar10()
    with pytest.raises(FileNotFoundError, match=r"train, test"):
        data.cifar100(str(tmp_path))


def test_a_crop_of_the_padded_image_is_a_shifted_window():
    """Without flips, each output equals the H×W window of the edge-padded image at some offset in 0..2p."""
    x = torch.rand(16, 3, 6, 5)
    out = CropFlip((3, 6, 5), padding=2, flip=False)(x, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    offsets = set()
    for k in range(len(x)):
        hits = [(a, b) for a in range(5) for b in range(5) if torch.equal(out[k], padded[k, :, a:a + 6, b:b + 5])]
        assert hits, k
        offsets.add(hits[0])
    assert len(offsets) > 1


def test_flips_are_torch_flip_and_both_occur():
    x = torch.rand(200, 2, 4, 4)
    out = CropFlip((2, 4, 4), padding=0)(x, torch.Generator().manual_seed(1))
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    assert all(s or f for s, f in zip(same, flipped))
    assert 70 < sum(flipped) < 130 and 70 < sum(same) < 130   # Binomial(200, 1/2): mean 100, sd 7


def test_augmentation_applies_to_training_batches_only_and_is_seeded(cifar10_folder):
    root, _ = cifar10_folder
    ds = data.cifar10(str(root), augment=True)
    assert ds.val.augment is None and ds.test.augment is None
    draw = lambda: [x for x, _ in ds.train.batches(8, shuffle=True, generator=torch.Generator().manual_seed(3))]
    first, again = draw(), draw()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    plain = [x for x, _ in data.cifar10(str(root)).train.batches(8, shuffle=True,
                                                                 generator=torch.Generator().manual_seed(3))]
    assert not all(torch.equal(a, b) for a, b in zip(first, plain))
    flat = ds.flat()   # an MLP's view: augmented as images, returned flat
    x, _ = next(flat.train.batches(8, shuffle=False))
    assert x.shape == (8, 3072)


@pytest.fixture
def fashion_folder(tmp_path):
    """The four Fashion-MNIST IDX files, 60 random 28×28 training and 10 test images."""
    from test_data import write_idx
    rng = np.random.default_rng(0)
    for stem, n in (("train", 60), ("t10k", 10)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress=False)
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10, compress=False)
    return tmp_path


def test_fashion_mnist_augments_only_when_asked(fashion_folder):
    plain = data.fashion_mnist(str(fashion_folder))
    assert plain.train.augment is None
    x, _ = next(plain.train.batches(60, shuffle=False))
    assert torch.equal(x, plain.train.x)


def test_fashion_mnist_augment_is_a_window_of_the_2_pixel_edge_padded_image_or_its_flip(fashion_folder):
    ds = data.fashion_mnist(str(fashion_folder), augment=True)
    assert ds.val.augment is None and ds.test.augment is None
    x, _ = next(ds.train.batches(len(ds.train), shuffle=False, generator=torch.Generator().manual_seed(0)))
    padded = F.pad(ds.train.x, (2, 2, 2, 2), mode="replicate")
    offsets, flips = set(), 0
    for k in range(len(x)):
        windows = {(a, b): padded[k, :, a:a + 28, b:b + 28] for a in range(5) for b in range(5)}
        hits = [(a, b, f) for (a, b), w in windows.items() for f in (0, 1) if torch.equal(x[k], w.flip(-1) if f else w)]
        assert hits, k
        offsets.add(hits[0][:2])
        flips += hits[0][2]
    assert len(offsets) > 5 and 0 < flips < len(x)
