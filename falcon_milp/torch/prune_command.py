"""``falcon-milp prune``: prune a named architecture with FALCON or a baseline, with progress bars.

Loaded by :mod:`falcon_milp.cli`; importing this module does not import torch (``run`` does).

    falcon-milp prune --arch mnist_cnn --flops-fraction 0.2 --method falcon++ --stages 5 \\
        --test-data mnist -o cnn_pruned.pt
    falcon-milp prune --arch resnet20 --random-init --data random --n-grads 1000 \\
        --flops-fraction 0.3 --method falcon --json
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from .commands import BUNDLED_WEIGHTS, add_model_options

METHODS = ("falcon", "falcon++", "layer-reconstruction", "magnitude", "layerwise-magnitude", "ratio-greedy",
           "obs", "nnz-only")
"""= :data:`falcon_milp.torch.prune.METHODS`, here without importing torch (a test checks)."""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``prune`` options to ``parser``."""
    add_model_options(parser, "calibration data: 'mnist5k' (default for MNIST networks), 'random' (Gaussian "
                              "inputs, random labels) or a directory with MNIST train-* IDX files or the "
                              "CIFAR-10 python batches (training split only)")
    parser.add_argument("--flops-fraction", type=float, default=None, metavar="F",
                        help="kept fraction of the dense FLOPs (MACs), in [0, 1]")
    parser.add_argument("--nnz-fraction", type=float, default=None, metavar="F",
                        help="kept fraction of the prunable weights, in [0, 1] (default: no NNZ budget)")
    parser.add_argument("--method", default="falcon", choices=METHODS)
    parser.add_argument("--solver", default="fast", metavar="NAME",
                        help="ILP solver for every projection (fast, exact, highs-compact, ...)")
    parser.add_argument("--n-grads", type=int, default=1000, metavar="N",
                        help="calibration examples for the per-sample gradients (default 1000)")
    parser.add_argument("--lam2-rel", type=float, default=1e-2,
                        help="ridge lam2 as a multiple of the mean diagonal of the Fisher (default 1e-2)")
    parser.add_argument("--stages", type=int, default=10, help="falcon++: number of stages (default 10)")
    parser.add_argument("--normalization", default="fisher", choices=("fisher", "relative", "raw"),
                        help="layer-reconstruction: how layer errors are weighed in the allocation (default fisher)")
    parser.add_argument("--max-iter", type=int, default=100, help="DFO iterations at most (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration subset and random init")
    parser.add_argument("--test-data", metavar="DIR",
                        help="'mnist' (the bundled MNIST test set) or a directory with the t10k IDX files: "
                             "report test accuracy before and after")
    parser.add_argument("-o", "--output", metavar="FILE", help="save the pruned state_dict here")
    parser.add_argument("--mask-out", metavar="FILE",
                        help="save the masks (one bool array per pruned parameter, .npz; see "
                             "falcon_milp.torch.masks.save_masks)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_calibration(spec: str | None, arch: str, n: int, seed: int) -> Any:
    """Calibration data for pruning (``--data`` of ``prune``; the ``sweep`` runs use it too):
    as for `export` (shared loader), but always required."""
    from . import OptionError
    from .architectures import ARCHITECTURES
    from .commands import load_data

    if n < 1:
        raise OptionError(f"`--n-grads` must be >= 1; got {n}")
    if spec is None and ARCHITECTURES[arch].dataset != "mnist":
        raise OptionError(f"arch '{arch}' needs calibration data: pass --data DIR or --data random")
    # the whole training set is the pool: prune_model sets a validation part aside (the referee)
    # and draws the n gradient examples from the rest; random data: n plus a validation part
    pool = n + max(256, n // 4) if spec == "random" else 10**12
    return load_data(spec, arch, pool, seed)


def _accuracy(model: Any, data: Any) -> float:
    import torch
    x, y = data
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, x.shape[0], 1000):
            correct += int((model(x[s:s + 1000]).argmax(1) == y[s:s + 1000]).sum())
    return correct / x.shape[0]


def run(args: argparse.Namespace) -> int:
    """Load the model, prune it, print the report (and save the pruned weights and masks)."""
    from ..io import check_writable
    from . import OptionError

    if args.output:
        check_writable(args.output, "--output")     # output paths first: pruning takes minutes
    if args.mask_out:
        check_writable(args.mask_out, "--mask-out")

    if args.checkpoint and args.random_init:
        raise OptionError("give `--checkpoint` or `--random-init`, not both")
    if args.flops_fraction is None and args.nnz_fraction is None:
        raise OptionError("give `--flops-fraction` and/or `--nnz-fraction`")
    for name in ("flops_fraction", "nnz_fraction"):       # fail before any loading
        value = getattr(args, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise OptionError(f"`{name}` must be in [0, 1]; got {value!r}")
    if not args.checkpoint and not args.random_init and args.arch not in BUNDLED_WEIGHTS:
        raise OptionError(f"`--checkpoint` is required for arch '{args.arch}' (no bundled weights); "
                          "or pass --random-init")
    from .architectures import build_model, load_checkpoint, pretrained_path   # imports torch
    from .masks import save_masks, save_pruned
    from .prune import prune_model

    model = build_model(args.arch, seed=args.seed)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    elif not args.random_init:
        load_checkpoint(model, pretrained_path(args.arch))
    model.eval()
    test = None
    if args.test_data:
        from .data import load_mnist
        test = load_mnist(None if args.test_data == "mnist" else args.test_data, "test")
    calib = load_calibration(args.data, args.arch, args.n_grads, args.seed)
    acc_before = _accuracy(model, test) if test is not None else None

    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(desc=args.method, unit="it", leave=False, dynamic_ncols=True)

    def progress(phase: str, it: int, q: float) -> None:
        if bar is not None:
            bar.set_description(f"{args.method} {phase}", refresh=False)
            bar.set_postfix_str(f"Q={q:.4g}", refresh=False)
            bar.update(1)

    try:
        report = prune_model(model, calib, args.flops_fraction, args.nnz_fraction, args.method,
                             args.solver, n_grads=args.n_grads, lam2_rel=args.lam2_rel,
                             stages=args.stages, max_iter=args.max_iter, seed=args.seed,
                             normalization=args.normalization,
                             callback=progress)
    finally:
        if bar is not None:
            bar.close()
    acc_after = _accuracy(model, test) if test is not None else None
    if args.mask_out:
        save_masks(model, args.mask_out)            # before save_pruned: masks read off the model
    if args.output:
        save_pruned(model, args.output)
    if args.json:
        from ..io import json_safe
        out = report.to_dict()
        out.update({"test_accuracy_before": acc_before, "test_accuracy_after": acc_after,
                    "output": args.output, "mask_out": args.mask_out})
        print(json.dumps(json_safe(out), indent=2, default=str, allow_nan=False))
        return 0
    print(f"{args.arch} {args.method} (solver {args.solver}): kept NNZ {report.kept_nnz:,}/"
          f"{report.dense_nnz:,} ({report.kept_nnz_fraction:.1%}), FLOPs {report.kept_flops:,}/"
          f"{report.dense_flops:,} ({report.kept_flops_fraction:.1%}), within budgets: "
          f"{report.within_budgets}")
    if report.objective_before is not None:
        print(f"  Q: {report.objective_before:.4g} (magnitude start) -> {report.objective_after:.4g}; "
              f"calibration loss {report.loss_before:.4f} -> {report.loss_after:.4f}")
    if report.val_loss_after is not None:
        mag = "" if report.val_loss_magnitude is None else f" (FLOP-aware magnitude {report.val_loss_magnitude:.4f})"
        print(f"  validation ({report.n_val} held-out training examples): loss {report.val_loss_after:.4f}"
              f"{mag}; choice: {report.choice or '-'}"
              + (f"; safeguard fell back to {report.fallback}" if report.fallback else ""))
    if report.bn_recalibrated:
        print(f"  BatchNorm statistics re-estimated in {report.bn_recalibrated} layers")
    if acc_before is not None:
        print(f"  test accuracy {acc_before:.4f} -> {acc_after:.4f}")
    phases = ", ".join(f"{k} {v:.2f}s" for k, v in report.times.items() if v >= 0.005)
    print(f"  time: {phases}")
    if args.output:
        print(f"  wrote {args.output}")
    if args.mask_out:
        print(f"  wrote masks to {args.mask_out}")
    return 0
