"""``falcon-milp prune-channels``: structured pruning of a named architecture by the channel MILP.

Loaded by :mod:`falcon_milp.cli`; importing this module does not import torch (``run`` does).

    falcon-milp prune-channels --arch mnist_bn_cnn --flops-fraction 0.3 --test-data mnist -o small.pt
    falcon-milp prune-channels --arch resnet20 --random-init --data random --n-calib 64 \\
        --flops-fraction 0.5 --importance magnitude --round-to 4 --json

The output file holds the architecture, the kept channels of every group and the small model's
state_dict; :func:`falcon_milp.torch.structured.load_channel_pruned` rebuilds the model from it.
"""
from __future__ import annotations

import argparse
import json

from .model_options import add_model_options, check_model_args, load_model

IMPORTANCES = ("taylor", "magnitude")     # = structured.CHANNEL_IMPORTANCES (a test checks)
SOLVERS = ("highs", "greedy")             # = solvers.channels.CHANNEL_SOLVERS


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``prune-channels`` options to ``parser``."""
    add_model_options(parser, "calibration data (Taylor scores, BatchNorm re-estimation): 'mnist5k' "
                              "(default for MNIST networks), 'random' or a directory of training files")
    parser.add_argument("--flops-fraction", type=float, default=None, metavar="F", help="kept fraction of the MACs")
    parser.add_argument("--params-fraction", type=float, default=None, metavar="F",
                        help="kept fraction of the parameters")
    parser.add_argument("--latency-fraction", type=float, default=None, metavar="F",
                        help="kept fraction of the fitted CPU latency (a per-layer table is measured first)")
    parser.add_argument("--importance", default="taylor", choices=IMPORTANCES)
    parser.add_argument("--solver", default="highs", choices=SOLVERS)
    parser.add_argument("--round-to", type=int, default=1, metavar="R", help="kept counts in multiples of R")
    parser.add_argument("--time-limit", type=float, default=60.0, metavar="S", help="MILP time limit (default 60)")
    parser.add_argument("--n-calib", type=int, default=5000, metavar="N", help="calibration examples (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration subset and random init")
    parser.add_argument("--test-data", metavar="DIR", help="'mnist' (bundled test set) or a directory of t10k files")
    parser.add_argument("-o", "--output", metavar="FILE", help="save the pruned model here (torch.save of a dict)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Load the model, prune its channels, print the report (and save the small model)."""
    from ..io import check_writable, json_safe
    from ..validation import fraction, integer, real
    from . import OptionError

    if args.output:
        check_writable(args.output, "--output")
    check_model_args(args)
    if args.flops_fraction is None and args.params_fraction is None and args.latency_fraction is None:
        raise OptionError("give `--flops-fraction`, `--params-fraction` and/or `--latency-fraction`")
    for name in ("flops_fraction", "params_fraction", "latency_fraction"):
        fraction(getattr(args, name), f"--{name.replace('_', '-')}")
    integer(args.round_to, "--round-to", 1)
    integer(args.n_calib, "--n-calib", 1)
    real(args.time_limit, "--time-limit", strict=True, unit="seconds")
    from .architectures import example_input   # imports torch
    from .model_options import load_data
    from .structured import save_channel_pruned, prune_channels
    from .train import evaluate

    model = load_model(args)
    calib = load_data(args.data, args.arch, args.n_calib, args.seed)
    test = None
    if args.test_data:
        from .data import load_mnist
        test = load_mnist(None if args.test_data == "mnist" else args.test_data, "test")
    small, rep = prune_channels(model, example_input(args.arch), flops_fraction=args.flops_fraction,
                                params_fraction=args.params_fraction, latency_fraction=args.latency_fraction,
                                calib=calib, importance=args.importance, solver=args.solver,
                                round_to=args.round_to, time_limit=args.time_limit)
    acc = (evaluate(model, *test), evaluate(small, *test)) if test is not None else (None, None)
    if args.output:
        save_channel_pruned(small, args.arch, rep, args.output)
    if args.json:
        out = dict(vars(rep))
        out.update({"test_accuracy_before": acc[0], "test_accuracy_after": acc[1], "output": args.output})
        print(json.dumps(json_safe(out), indent=2, default=str, allow_nan=False))
        return 0
    print(f"{args.arch}: kept channels {dict(zip(rep.groups, rep.kept))} ({rep.importance}, {rep.solver}: "
          f"{rep.status}, gap {rep.gap:.1e}, {rep.solve_s:.2f} s)")
    print(f"  MACs {rep.flops['counted']:,} / {rep.flops['dense']:,} ({rep.flops_fraction:.1%}), parameters "
          f"{rep.params['counted']:,} / {rep.params['dense']:,}")
    for batch, lat in rep.latency.items():
        print(f"  CPU latency {batch}: {lat['dense_s'] * 1e3:.2f} ms -> {lat['pruned_s'] * 1e3:.2f} ms "
              f"({lat['ratio']:.2f}x)")
    if acc[0] is not None:
        print(f"  test accuracy {acc[0]:.4f} -> {acc[1]:.4f} (one shot)")
    if args.output:
        print(f"  wrote {args.output}")
    return 0
