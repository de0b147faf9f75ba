"""``falcon-milp export``: write the pruning instance of a named architecture and checkpoint.

Loaded by :mod:`falcon_milp.cli`; importing this module does not import torch (``run`` does).

    falcon-milp export --arch mnist_mlp --importance obs --flops-fraction 0.3 -o mlp.npz
    falcon-milp export --arch resnet20 --checkpoint r20.pt --data ~/cifar-10-batches-py \\
        --importance flexrel --delta 0.5 --flops-fraction 0.3 --nnz-fraction 0.5 -o r20.npz
"""
from __future__ import annotations

import argparse
from typing import Any

from .model_options import BUNDLED_WEIGHTS, add_model_options, load_data


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``export`` options to ``parser``."""
    add_model_options(parser, "calibration data for obs/flexrel: 'mnist5k' (default for MNIST networks), "
                              "'random' (Gaussian inputs, random labels), or a directory holding the MNIST "
                              "train-*-idx*-ubyte[.gz] files or the CIFAR-10 python batches")
    parser.add_argument("--n-samples", type=int, default=1000, metavar="N",
                        help="calibration examples drawn from the data (default 1000)")
    parser.add_argument("--importance", default="magnitude", choices=("magnitude", "obs", "flexrel"))
    parser.add_argument("--lam2", type=float, default=1e-4, help="obs: ridge term, H = X^T X + 2*lam2*I (default 1e-4)")
    parser.add_argument("--delta", type=float, default=0.5, help="flexrel: weight of the relevance term")
    parser.add_argument("--flops-fraction", type=float, default=None, metavar="F",
                        help="FLOP budget as a fraction of the dense MACs, in [0, 1] (default: none)")
    parser.add_argument("--nnz-fraction", type=float, default=None, metavar="F",
                        help="nonzero budget as a fraction of the prunable weights, in [0, 1] (default: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration subset and random init")
    parser.add_argument("--float64", action="store_true", help="store importances as float64 (default float32)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="instance file (.npz)")


def run(args: argparse.Namespace) -> int:
    """Build the model, score it, write the instance; print one summary line."""
    from ..io import check_writable

    output = args.output if args.output.endswith(".npz") else args.output + ".npz"   # as save_instance
    check_writable(output, "--output")            # before torch is even imported
    import numpy as np

    from ..io import save_instance
    from . import OptionError
    from .architectures import ARCHITECTURES, build_model, example_input, load_checkpoint, pretrained_path
    from ..validation import fraction
    from .export import export_instance

    fraction(args.flops_fraction, "flops_fraction")
    fraction(args.nnz_fraction, "nnz_fraction")
    if args.checkpoint and args.random_init:
        raise OptionError("give `--checkpoint` or `--random-init`, not both")
    model = build_model(args.arch, seed=args.seed)
    if args.checkpoint:
        source = args.checkpoint
        load_checkpoint(model, source)
    elif args.random_init:
        source = f"random init (seed {args.seed})"
    else:
        if args.arch not in BUNDLED_WEIGHTS:
            raise OptionError(f"`--checkpoint` is required for arch '{args.arch}' (no bundled weights); "
                              "or pass --random-init")
        source = pretrained_path(args.arch)
        load_checkpoint(model, source)
    model.eval()
    data = None
    if args.importance != "magnitude":
        data = load_data(args.data, args.arch, args.n_samples, args.seed)
        if data is None:
            raise OptionError(f"importance '{args.importance}' needs calibration data for arch "
                              f"'{args.arch}': pass --data")
    options: dict[str, Any] = {}
    if args.importance == "obs":
        options["lam2"] = args.lam2
    elif args.importance == "flexrel":
        options["delta"] = args.delta
    inst = export_instance(
        model, example_input(args.arch), args.importance, data,
        nnz_fraction=args.nnz_fraction, flops_fraction=args.flops_fraction,
        importance_options=options, dtype=np.float64 if args.float64 else np.float32,
        metadata={"arch": args.arch, "dataset": ARCHITECTURES[args.arch].dataset, "checkpoint": str(source),
                  "calibration_data": (args.data or "mnist5k") if data is not None else None,
                  "seed": args.seed})
    path = save_instance(inst, args.output)
    nnz_frac = inst.max_nnz / inst.n_weights
    flops_frac = inst.max_flops / inst.total_flops if inst.total_flops else float("nan")
    print(f"wrote {path}: {inst.n_weights:,} weights in {inst.n_groups} groups, importance "
          f"{args.importance}, budgets nnz {inst.max_nnz:,} ({nnz_frac:.1%}), flops "
          f"{inst.max_flops:.6g} ({flops_frac:.1%})")
    return 0
