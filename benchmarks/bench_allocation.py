"""Allocation MILP at ResNet50 shape: 54 layers x 40 kept-count levels, NNZ and FLOP budgets.

Error curves are synthetic stand-ins for layer-reconstruction curves (decreasing in the kept
count, a random curvature per layer, plus wiggles so that they are not convex); uses are the
kept counts and kept count x MACs per weight of the real ResNet50 layers. Each instance is
solved by HiGHS (``solve_allocation``); a reduced copy (first 6 layers, 8 levels) is also
solved by the dynamic program as a cross-check. Writes docs/bench_allocation.md.

    .venv/bin/python benchmarks/bench_allocation.py
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from falcon_milp import AllocationProblem, check_choice, solve_allocation
from falcon_milp.synthetic import layer_table

LEVELS = 40
OUT = Path(__file__).resolve().parent.parent / "docs" / "bench_allocation.md"


def curves(seed: int, levels: int = LEVELS, n_layers: int | None = None):
    rng = np.random.default_rng(seed)
    table = layer_table("resnet50")[:n_layers]
    errors, nnz, flops, labels = [], [], [], []
    for _, n, macs, _ in table:
        k = np.unique(np.round(np.geomspace(max(1, n // 1000), n, levels)))
        frac = k / n
        scale = rng.lognormal(0, 1)
        e = scale * (1 - frac) ** rng.uniform(1.5, 4) + scale * 0.02 * rng.random(k.size) * (1 - frac)
        errors.append(e)
        nnz.append(k)
        flops.append(k * macs)
        labels.append(k)
    return table, errors, nnz, flops, labels


def problem(seed: int, nnz_frac: float, flop_frac: float, levels: int = LEVELS, n_layers: int | None = None):
    table, errors, nnz, flops, labels = curves(seed, levels, n_layers)
    N = sum(r[1] for r in table)
    F = sum(r[1] * r[2] for r in table)
    return AllocationProblem.from_groups(errors, {"nnz": nnz, "flops": flops},
                                         {"nnz": nnz_frac * N, "flops": flop_frac * F},
                                         names=[r[0] for r in table], labels=labels)


def main() -> None:
    t0 = time.perf_counter()
    lines = ["# Allocation MILP benchmark (multiple-choice knapsack, ResNet50 shape)", "",
             "Produced by `benchmarks/bench_allocation.py` (do not edit by hand). Command:", "",
             "    .venv/bin/python benchmarks/bench_allocation.py", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
             f"Python {platform.python_version()}, load average at start {os.getloadavg()[0]:.1f}.", "",
             "54 groups (the ResNet50 layers) x 40 kept-count levels (geometric from n/1000 to n), "
             "synthetic nonconvex error curves (3 seeds), budgets NNZ and FLOPs as fractions of the "
             "dense totals. `time s`: `solve_allocation` wall time (spec build + HiGHS + exact check). "
             "`dp check`: the same curves cut to 6 layers x 8 levels, HiGHS and the dynamic program "
             "agree on the optimum (difference shown).", "",
             "| seed | NNZ | FLOPs | options | status | gap | time s | no-good cuts | dp check |",
             "|---|---|---|---|---|---|---|---|---|"]
    worst = 0.0
    for seed in range(3):
        for nf in (0.1, 0.3):
            for ff in (0.05, 0.1, 0.2):
                p = problem(seed, nf, ff)
                t = time.perf_counter()
                r = solve_allocation(p)
                dt = time.perf_counter() - t
                worst = max(worst, dt)
                assert r.status == "optimal" and check_choice(p, r.choice).feasible, r
                small = problem(seed, nf, ff, levels=8, n_layers=6)
                a, b = solve_allocation(small), solve_allocation(small, solver="dp")
                diff = abs(a.objective - b.objective)
                lines.append(f"| {seed} | {nf:.0%} | {ff:.0%} | {p.n_options} | {r.status} | {r.gap:.1e} | "
                             f"{dt:.2f} | {r.extra['nogood_cuts']} | {diff:.1e} |")
                print(lines[-1], file=sys.stderr)
    lines += ["", f"Slowest solve: {worst:.2f} s. Total benchmark time {time.perf_counter() - t0:.0f} s.", ""]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
