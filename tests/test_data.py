"""Tests for dynets.data: every check compares against an answer computed independently."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from dynets import data

FASHION = Path(data.FASHION_MNIST_PATH)


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> Path:
    """Write ``array`` (uint8) in the IDX format by hand: magic 0,0,8,ndim, big-endian dims, bytes."""
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def decode_idx_gz(path: Path, header: int) -> np.ndarray:
    """Independent decoder for the tests: skip the fixed-size header, read the bytes."""
    return np.frombuffer(gzip.decompress(path.read_bytes())[header:], dtype=np.uint8)


def rows_with_labels(*splits: data.Split) -> np.ndarray:
    """All ``(x, y)`` rows of ``splits`` as one float64 array, for multiset comparisons."""
    return np.concatenate([np.column_stack([s.x.flatten(1).numpy(), s.y.numpy()]) for s in splits])


def same_multiset(a: np.ndarray, b: np.ndarray) -> bool:
    ua, ca = np.unique(a, axis=0, return_counts=True)
    ub, cb = np.unique(b, axis=0, return_counts=True)
    return ua.shape == ub.shape and np.array_equal(ua, ub) and np.array_equal(ca, cb)


@pytest.fixture
def image_pair(tmp_path):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (7, 5, 3), dtype=np.uint8), rng.integers(0, 10, 7, dtype=np.uint8)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, image_pair, compress):
    images, labels = image_pair
    # No .gz suffix on the compressed file: gzip must be recognised by its magic bytes.
    got_images, got_labels = data.idx(
        write_idx(tmp_path / "img", images, compress=compress),
        write_idx(tmp_path / "lab", labels, compress=compress),
    )
    assert got_images.dtype == np.uint8 and np.array_equal(got_images, images)
    assert got_labels.dtype == np.uint8 and np.array_equal(got_labels, labels)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda raw: raw[:-1], "truncated or corrupt"),  # one data byte missing
        (lambda raw: raw + b"\x00", "truncated or corrupt"),  # one byte too many
        (lambda raw: raw[:6], "not a uint8 IDX file"),  # header cut short
        (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], "not a uint8 IDX file"),  # float32 type code
        (lambda raw: b"\x00\x00\x08\x02" + raw[4:], "not a uint8 IDX file"),  # wrong dimension count
        (lambda raw: gzip.compress(raw)[:-20], "gzip"),  # truncated gzip stream
    ],
)
def test_idx_rejects_corrupt_images(tmp_path, image_pair, corrupt, message):
    images, labels = image_pair
    write_idx(tmp_path / "img", images, compress=False)
    (tmp_path / "img").write_bytes(corrupt((tmp_path / "img").read_bytes()))
    with pytest.raises(ValueError, match=message):
        data.idx(tmp_path / "img", write_idx(tmp_path / "lab", labels, compress=False))


def test_idx_rejects_count_mismatch(tmp_path, image_pair):
    images, labels = image_pair
    with pytest.raises(ValueError, match="7 images but .* 6 labels"):
        data.idx(write_idx(tmp_path / "i", images, compress=True), write_idx(tmp_path / "l", labels[:6], compress=True))


def test_mnist_layout_from_written_files(tmp_path):
    rng = np.random.default_rng(2)
    train_x, test_x = rng.integers(0, 256, (40, 28, 28)), rng.integers(0, 256, (9, 28, 28))
    train_y, test_y = np.arange(40) % 10, rng.integers(0, 10, 9)
    for stem, array in [("train-images-idx3-ubyte", train_x), ("train-labels-idx1-ubyte", train_y)]:
        write_idx(tmp_path / f"{stem}.gz", array, compress=True)
    for stem, array in [("t10k-images-idx3-ubyte", test_x), ("t10k-labels-idx1-ubyte", test_y)]:
        write_idx(tmp_path / stem, array, compress=False)  # plain files are found too
    ds = data.mnist(str(tmp_path), val_fraction=0.25)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 9)
    assert (ds.n_features, ds.n_classes) == (784, 10)
    assert torch.equal(ds.test.x, torch.from_numpy((test_x.reshape(9, 1, 28, 28) / 255).astype(np.float32)))
    assert torch.equal(ds.test.y, torch.from_numpy(test_y))
    expected = np.column_stack([train_x.reshape(40, -1) / 255, train_y]).astype(np.float32)
    assert same_multiset(rows_with_labels(ds.train, ds.val), expected)


MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def test_mnist_without_path_says_which_key_and_where_the_files_come_from(tmp_path):
    with pytest.raises(ValueError, match=r"data=mnist needs data\.path=") as err:
        data.mnist()
    assert all(name in str(err.value) for name in MNIST_FILES + ["https://", "torchvision.datasets.MNIST"])
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*https://"):
        data.mnist(str(tmp_path))


def test_mnist_config_without_a_path_fails_with_the_loaders_message():
    """``data=mnist`` composes (path null, not omegaconf's missing value) and instantiating
    it raises the loader's ValueError, not "Missing mandatory value: data.path"."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base=None):
        cfg = compose("train", overrides=["data=mnist"])
    assert cfg.data.path is None
    with pytest.raises(Exception, match=r"data\.path=") as err:
        instantiate(cfg.data)
    assert isinstance(err.value, ValueError) or isinstance(err.value.__cause__, ValueError)


def test_digits_is_a_partition_of_sklearn_digits():
    ds = data.digits()
    raw = load_digits()
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert (len(ds.val), len(ds.test)) == (round(0.1 * 1797), round(0.2 * 1797))
    assert (ds.n_features, ds.n_classes) == (64, 10)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert 0.0 <= split.x.min() and split.x.max() <= 1.0
    # The three splits together are exactly sklearn's rows (as a multiset): no sample
    # lost, none duplicated across splits, pixels scaled by exactly 1/16.
    expected = np.column_stack([raw.data / 16, raw.target]).astype(np.float32)
    assert same_multiset(rows_with_labels(ds.train, ds.val, ds.test), expected)


def test_split_is_stratified():
    y = np.repeat(np.arange(3), [100, 50, 10])
    ds = data.from_arrays(np.arange(160.0)[:, None], y, val_fraction=0.1, test_fraction=0.2)
    counts = np.bincount(ds.test.y.numpy(), minlength=3)
    assert np.all(np.abs(counts - 0.2 * np.array([100, 50, 10])) <= 1), counts
    # Stratifying groups samples by class; the parts must not come out class-sorted, or
    # the first k samples of a split would all be one class.
    for split in (ds.train, ds.val, ds.test):
        assert np.any(np.diff(split.y.numpy()) < 0)


def test_split_is_reproducible_and_seed_dependent():
    x, y = np.arange(200.0)[:, None], np.arange(200) % 4
    a, b, c = (data.from_arrays(x, y, seed=s) for s in (3, 3, 4))
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(a, part).x, getattr(b, part).x)
    assert not torch.equal(a.test.x, c.test.x)


def test_official_test_split_is_kept_in_order():
    x, y = np.arange(20.0)[:, None], np.arange(20) % 2
    ds = data.from_arrays(x, y, val_fraction=0.25, x_test=[[5.0], [-1.0]], y_test=[1, 0])
    assert (len(ds.train), len(ds.val)) == (15, 5)
    assert torch.equal(ds.test.x, torch.tensor([[5.0], [-1.0]])) and torch.equal(ds.test.y, torch.tensor([1, 0]))


def test_non_finite_inputs_are_rejected_with_a_count():
    x = np.ones((10, 3))
    x[0, 0] = x[4, 2] = np.nan
    x[7, 1] = -np.inf
    with pytest.raises(ValueError, match="3 non-finite values.*before training"):
        data.from_arrays(x, np.zeros(10, dtype=int))


@pytest.mark.parametrize(
    "y, message",
    [
        (np.array([0, 1, 2, -1] * 5), "5 negative labels"),
        (np.array([0.0, 1.5] * 10), "integer class labels"),
        (np.array(["a", "b"] * 10), "integer class labels"),
        (np.zeros(19, dtype=int), r"shape \(20,\)"),
        (np.zeros((20, 2), dtype=int), r"shape \(20,\)"),
    ],
)
def test_bad_labels_are_rejected(y, message):
    with pytest.raises(ValueError, match=message):
        data.from_arrays(np.zeros((20, 2)), y)


def test_whole_number_float_labels_are_accepted():
    ds = data.from_arrays(np.zeros((20, 2)), np.arange(20.0) % 5)
    assert ds.n_classes == 5 and ds.train.y.dtype == torch.int64


def test_empty_split_is_rejected():
    with pytest.raises(ValueError, match="val split would be empty"):
        data.from_arrays(np.zeros((4, 2)), [0, 1, 0, 1], val_fraction=0.1)


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 2, 3)), rng.integers(0, 4, 30)
    np.savez(tmp_path / "mine.npz", X=x, y=y)
    ds = data.npz(str(tmp_path / "mine.npz"))
    assert (ds.name, ds.n_features, ds.n_classes) == ("mine", 6, int(y.max()) + 1)
    expected = np.column_stack([x.reshape(30, -1), y]).astype(np.float32)
    assert same_multiset(rows_with_labels(ds.train, ds.val, ds.test), expected)


def test_npz_missing_key_lists_keys_present(tmp_path):
    np.savez(tmp_path / "other.npz", data=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(KeyError, match=r"keys present: \['data', 'labels'\]"):
        data.npz(str(tmp_path / "other.npz"))
    with pytest.raises(FileNotFoundError):
        data.npz(str(tmp_path / "absent.npz"))


def test_patterns_are_seeded_plus_minus_one():
    p = data.patterns(50, 400, seed=5)
    assert p.dtype == torch.float32 and set(p.unique().tolist()) == {-1.0, 1.0}
    assert abs(p.mean().item()) < 0.02  # 20000 fair ±1 draws: std of the mean is 0.007
    assert torch.equal(p, data.patterns(50, 400, seed=5))
    assert not torch.equal(p, data.patterns(50, 400, seed=6))


def test_load_dispatches_and_lists_valid_names():
    assert torch.equal(data.load("digits", seed=1).test.x, data.digits(seed=1).test.x)
    with pytest.raises(ValueError, match="digits.*fashion_mnist.*mnist.*npz"):
        data.load("nope")


def test_batches_cover_every_sample_once_per_epoch():
    n = 50
    split = data.Split(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))
    generator = torch.Generator().manual_seed(0)
    epochs = [list(split.batches(7, shuffle=True, generator=generator)) for _ in range(2)]
    for batches in epochs:
        assert [len(yb) for _, yb in batches] == [7] * 7 + [1]  # last partial batch kept
        assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in batches)  # rows stay paired
        seen = torch.cat([yb for _, yb in batches])
        assert torch.equal(seen.sort().values, torch.arange(n))
        assert not torch.equal(seen, torch.arange(n))  # actually shuffled
    assert not torch.equal(torch.cat([y for _, y in epochs[0]]), torch.cat([y for _, y in epochs[1]]))
    in_order = torch.cat([yb for _, yb in split.batches(7, shuffle=False)])
    assert torch.equal(in_order, torch.arange(n))


def test_fashion_mnist_missing_path_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        data.fashion_mnist(str(tmp_path / "nowhere"))


@pytest.fixture(scope="module")
def fashion():
    if not FASHION.is_dir():
        pytest.skip(f"{FASHION} absent (sudo apt-get install dataset-fashion-mnist)")
    return data.fashion_mnist()


def test_fashion_mnist_sizes_and_official_test_split(fashion):
    n_val = len(fashion.val)
    assert n_val == 6000 and (len(fashion.train), len(fashion.test)) == (60000 - n_val, 10000)
    assert (fashion.n_features, fashion.n_classes) == (784, 10)
    images = decode_idx_gz(FASHION / "t10k-images-idx3-ubyte.gz", 16).reshape(10000, 1, 28, 28)
    labels = decode_idx_gz(FASHION / "t10k-labels-idx1-ubyte.gz", 8)
    assert torch.equal(fashion.test.x, torch.from_numpy(images.astype(np.float32) / 255))
    assert torch.equal(fashion.test.y, torch.from_numpy(labels.astype(np.int64)))
    assert 0.0 <= fashion.train.x.min() and fashion.train.x.max() <= 1.0
