"""Speed and memory of one-shot FALCON on a ResNet20-sized network (268,336 prunable weights).

Random weights (seeded) and CIFAR-shaped random inputs with random labels: CIFAR-10 is not
available on this machine, and the time and memory of the pruning loop do not depend on the
data values (only on n, p, the layer structure and the number of DFO iterations, which is
reported). Run:

    .venv/bin/python benchmarks/bench_prune_speed.py                  # n = 1000, FLOPs 30%
    .venv/bin/python benchmarks/bench_prune_speed.py --n-grads 500 --flops-fraction 0.2 --json out.json

Prints a Markdown table of the time per phase and the peak resident memory of the process
(``ru_maxrss``, which includes the Python interpreter and torch itself).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time


PROCEDURES = {"paper": {"val_fraction": 0.0, "layer_scales": "none", "step": "lipschitz", "lam2_rel": 1e-2,
                        "update_steps": 1.0, "safeguard": False, "patience": 5},
              "default": {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-grads", type=int, default=1000)
    parser.add_argument("--flops-fraction", type=float, default=0.3)
    parser.add_argument("--nnz-fraction", type=float, default=None)
    parser.add_argument("--solver", default="fast")
    parser.add_argument("--method", default="falcon")
    parser.add_argument("--procedure", choices=("paper", "default"), default="paper",
                        help="paper: one ridge, step 1/L, Euclidean projection, full backsolve, no "
                             "validation referee (the timed figure in the README); default: prune_model's "
                             "defaults (referee, layer-scale search, ridge grid)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also write the record as JSON")
    args = parser.parse_args(argv)

    import torch

    from falcon_milp.torch.architectures import build_model
    from falcon_milp.torch.prune import prune_model

    torch.set_num_threads(args.threads)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build_model("resnet20", seed=args.seed).eval()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.n_grads, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.n_grads,), generator=gen)
    t0 = time.perf_counter()
    rep = prune_model(model, (x, y), args.flops_fraction, args.nnz_fraction, args.method, args.solver,
                      n_grads=args.n_grads, seed=args.seed, **PROCEDURES[args.procedure])
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    record = {
        "network": "resnet20 (random weights, seed %d)" % args.seed,
        "data": "random CIFAR-shaped inputs (3x32x32), random labels",
        "prunable_weights": rep.dense_nnz, "dense_macs": rep.dense_flops,
        "n_grads": rep.n_grads, "method": args.method, "solver": args.solver,
        "flops_fraction": args.flops_fraction, "nnz_fraction": args.nnz_fraction,
        "kept_flops_fraction": rep.kept_flops_fraction, "kept_nnz_fraction": rep.kept_nnz_fraction,
        "within_budgets": rep.within_budgets, "dfo_iterations": rep.dfo_iterations,
        "n_projections": rep.n_projections, "backsolve_iterations": rep.backsolve_iterations,
        "objective_before": rep.objective_before, "objective_after": rep.objective_after,
        "times_s": rep.times, "wall_s": wall,
        "peak_rss_gib": peak_kib / 2**20, "rss_before_gib": rss_start / 2**20,
        "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(f"one-shot {args.method} on ResNet20 ({rep.dense_nnz:,} weights), n = {rep.n_grads}, "
          f"FLOPs {args.flops_fraction:.0%}, solver {args.solver}, {args.threads} threads")
    print()
    print("| phase | seconds |")
    print("|---|---:|")
    for k, v in rep.times.items():
        if k != "total":
            print(f"| {k} | {v:.2f} |")
    print(f"| **total (prune_model)** | **{rep.times['total']:.2f}** |")
    print()
    print(f"DFO iterations {rep.dfo_iterations}, projections {rep.n_projections}, backsolve PCG "
          f"iterations {rep.backsolve_iterations}; kept FLOPs {rep.kept_flops_fraction:.4f}, NNZ "
          f"{rep.kept_nnz_fraction:.4f}; Q {rep.objective_before:.4g} -> {rep.objective_after:.4g}")
    print(f"peak RSS {record['peak_rss_gib']:.2f} GiB (process, incl. torch; "
          f"{record['rss_before_gib']:.2f} GiB before the model was built)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
