"""The command-line options that pick a model and its calibration data (``export``, ``prune``, ``sweep``).

Importing this module does not import torch (:func:`load_data` does).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

ARCHS = ("resnet20", "mobilenetv1", "resnet50", "mnist_mlp", "mnist_cnn", "mnist_bn_cnn")  # = ARCHITECTURES keys
BUNDLED_WEIGHTS = ("mnist_mlp", "mnist_cnn", "mnist_bn_cnn")
"""Architectures with trained weights shipped in the package (the MNIST networks)."""


def add_model_options(parser: argparse.ArgumentParser, data_help: str) -> None:
    """The options that pick a model and its calibration data (shared by `export` and `prune`)."""
    parser.add_argument("--arch", required=True, choices=ARCHS, help="architecture name")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="state_dict file (default: the bundled weights of mnist_mlp / mnist_cnn / mnist_bn_cnn)")
    parser.add_argument("--random-init", action="store_true",
                        help="use randomly initialised weights (seeded by --seed) instead of a checkpoint")
    parser.add_argument("--data", metavar="SPEC", help=data_help)


def check_model_args(args: argparse.Namespace) -> None:
    """Refuse contradictory or missing model options (before any loading)."""
    from . import OptionError
    if args.checkpoint and args.random_init:
        raise OptionError("give `--checkpoint` or `--random-init`, not both")
    if not args.checkpoint and not args.random_init and args.arch not in BUNDLED_WEIGHTS:
        raise OptionError(f"`--checkpoint` is required for arch '{args.arch}' (no bundled weights); "
                          "or pass --random-init")


def load_model(args: argparse.Namespace) -> Any:
    """The model ``--arch`` / ``--checkpoint`` / ``--random-init`` (seeded by ``--seed``) name,
    in eval mode (imports torch)."""
    from .architectures import build_model, load_checkpoint, pretrained_path
    model = build_model(args.arch, seed=args.seed)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    elif not args.random_init:
        load_checkpoint(model, pretrained_path(args.arch))
    return model.eval()


def load_data(spec: str | None, arch: str, n: int, seed: int) -> Any:
    """Calibration examples for ``--data SPEC``: 'mnist5k', 'random', or a folder of MNIST / CIFAR-10
    training files (None: the 5k MNIST images for MNIST networks, else no data)."""
    import torch

    from . import OptionError
    from .architectures import ARCHITECTURES
    from .data import load_cifar10, load_mnist, load_mnist_5k, subset

    arch_spec = ARCHITECTURES[arch]
    if spec is None:
        if arch_spec.dataset != "mnist":
            return None
        spec = "mnist5k"
    if n < 1:
        raise OptionError(f"`--n-samples` must be >= 1; got {n}")
    if spec == "mnist5k":
        x, y = load_mnist_5k()
    elif spec == "random":
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((n, *arch_spec.input_shape), generator=gen)
        y = torch.randint(0, arch_spec.num_classes, (n,), generator=gen)
    else:
        root = Path(spec)
        if not root.is_dir():
            raise OptionError(f"`--data` must be 'mnist5k', 'random' or a directory; '{spec}' is neither")
        if any((root / f"train-images-idx3-ubyte{s}").is_file() for s in ("", ".gz")):
            x, y = load_mnist(root, "train")
        elif (root / "data_batch_1").is_file() or (root / "cifar-10-batches-py").is_dir():
            x, y = load_cifar10(root, "train")
        else:
            raise OptionError(f"`--data` directory '{spec}' holds no training data (MNIST "
                              "train-images-idx3-ubyte[.gz] or CIFAR-10 data_batch_*); test sets are "
                              "never used for calibration")
    return subset(x, y, n, seed)
