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

from .model_options import add_model_options, check_model_args, load_model

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
    parser.add_argument("--x-dtype", choices=("float32", "bfloat16", "float16", "float64"), default=None,
                        help="storage of the per-sample gradients X (default: float32 if it takes at most "
                             "half of --max-memory, else bfloat16, else a bfloat16 temporary file)")
    parser.add_argument("--x-path", metavar="FILE", help="keep X in this new file (scratch, deleted after the run)")
    parser.add_argument("--max-memory", metavar="BYTES", default=None,
                        help="memory budget for X, e.g. 20G or 512M (default: what the machine has free)")
    parser.add_argument("--device", default="cpu", help="where the gradients and X live: cpu (default) or cuda")
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
    from .model_options import load_data

    if n < 1:
        raise OptionError(f"`--n-grads` must be >= 1; got {n}")
    if spec is None and ARCHITECTURES[arch].dataset != "mnist":
        raise OptionError(f"arch '{arch}' needs calibration data: pass --data DIR or --data random")
    # the whole training set is the pool: prune_model sets a validation part aside (the referee)
    # and draws the n gradient examples from the rest; random data: n plus a validation part
    pool = n + max(256, n // 4) if spec == "random" else 10**12
    return load_data(spec, arch, pool, seed)


def parse_bytes(text: str | None, name: str = "--max-memory") -> int | None:
    """'20G', '512M', '1.5e9' or '123' -> bytes (K/M/G/T are powers of 1024)."""
    from . import OptionError
    if text is None:
        return None
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units and t[-1:] else ""
    try:
        value = float(t[:-1] if unit else t) * units[unit]
    except ValueError:
        raise OptionError(f"`{name}` must be a size such as 20G, 512M or 1000000; got {text!r}") from None
    if not value >= 1 or value != value or value == float("inf"):
        raise OptionError(f"`{name}` must be at least 1 byte; got {text!r}")
    return int(value)


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

    from ..validation import fraction
    from .options import device_option, new_file_option
    new_file_option(args.x_path, "--x-path")
    device_option(args.device)
    max_memory = parse_bytes(args.max_memory)
    check_model_args(args)
    if args.flops_fraction is None and args.nnz_fraction is None:
        raise OptionError("give `--flops-fraction` and/or `--nnz-fraction`")
    for name in ("flops_fraction", "nnz_fraction"):       # fail before any loading
        fraction(getattr(args, name), name)
    from .masks import save_masks, save_pruned
    from .prune import prune_model

    model = load_model(args)
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
                             normalization=args.normalization, x_dtype=args.x_dtype, x_path=args.x_path,
                             max_memory=max_memory, device=args.device, callback=progress)
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
    if report.x_bytes:
        print(f"  X: {report.x_storage}, {report.x_bytes / 2**30:.2f} GiB; per-sample gradients "
              f"{report.grad_strategy}, {report.grad_examples_per_second:.1f} examples/s on {report.device}")
    print(f"  peak memory {report.peak_memory_bytes / 2**30:.2f} GiB ({report.peak_memory_scope})")
    if acc_before is not None:
        print(f"  test accuracy {acc_before:.4f} -> {acc_after:.4f}")
    phases = ", ".join(f"{k} {v:.2f}s" for k, v in report.times.items() if v >= 0.005)
    print(f"  time: {phases}")
    if args.output:
        print(f"  wrote {args.output}")
    if args.mask_out:
        print(f"  wrote masks to {args.mask_out}")
    return 0
