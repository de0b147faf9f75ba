"""Where the time of the HiGHS solvers goes: model building vs hand-over vs HiGHS, per backend.

    .venv/bin/python benchmarks/bench_highs.py                      # 1e4 weights, 20 layers
    .venv/bin/python benchmarks/bench_highs.py --weights 20000 --time-limit 60
    .venv/bin/python benchmarks/bench_highs.py --scaling 1000,10000,100000   # build cost only

Main table: one random layered instance (falcon_milp.synthetic.random_layered: CNN-like FLOP
costs, w**2 importances, 30% of the weights, 20% of the FLOPs), each of highs-ilp,
highs-compact, highs-lp through both backends, in one process, one after the other:
model_s = spec arrays (+ Pyomo model), handover_s = passing it to HiGHS, solve_s = HiGHS run,
total_s = the whole solve() call. --scaling times only model + hand-over of the per-weight ILP
(HiGHS stopped after 1 ms) at several sizes, the figure behind PYOMO_MAX_NNZ.
"""
from __future__ import annotations

import argparse
import platform
import time

from falcon_milp import solve
from falcon_milp.synthetic import random_layered


def _import_pyomo() -> float:
    """Import Pyomo and highspy up front so that no row of the table pays for it; returns seconds."""
    t = time.perf_counter()
    import highspy  # noqa: F401
    import pyomo.environ  # noqa: F401
    from pyomo.contrib.solver.common.factory import SolverFactory  # noqa: F401
    return time.perf_counter() - t


def main_table(args: argparse.Namespace) -> None:
    print(f"(one-off import of pyomo + highspy: {_import_pyomo():.2f} s, not in the table)")
    inst = random_layered(args.weights, args.layers, seed=args.seed)
    print(f"instance: random_layered({args.weights}, {args.layers}, seed={args.seed}): "
          f"S = {inst.max_nnz}, F = {inst.max_flops:.6g}; time limit {args.time_limit} s; "
          f"threads {args.threads}; {platform.processor() or platform.machine()}")
    print()
    print("| solver | backend | status | termination | objective | bound | gap | model_s | handover_s "
          "| solve_s | total_s | rows | nnz |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for solver in ("highs-ilp", "highs-compact", "highs-lp"):
        for backend in args.backends.split(","):
            r = solve(inst, solver=solver, time_limit=args.time_limit, threads=args.threads, backend=backend)
            e = r.extra
            print(f"| {solver} | {backend} | {r.status} | {r.termination} | {r.objective:.10g} | {r.bound:.10g} "
                  f"| {r.gap:.2e} | {e['model_s']:.3f} | {e['handover_s']:.3f} | {e['solve_s']:.3f} "
                  f"| {r.runtime_s:.3f} | {e['n_rows']} | {e['nnz']} |", flush=True)


def scaling(args: argparse.Namespace) -> None:
    _import_pyomo()
    print("| weights | backend | model_s | handover_s | (model+handover) us per nonzero |")
    print("|---|---|---|---|---|")
    for p in (int(x) for x in args.scaling.split(",")):
        inst = random_layered(p, args.layers, seed=args.seed)
        for backend in args.backends.split(","):
            r = solve(inst, solver="highs-ilp", time_limit=1e-3, threads=args.threads, backend=backend)
            e = r.extra
            per = (e["model_s"] + e["handover_s"]) / max(1, e["nnz"]) * 1e6
            print(f"| {p} | {backend} | {e['model_s']:.3f} | {e['handover_s']:.3f} | {per:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backends", default="pyomo,highspy")
    ap.add_argument("--scaling", default=None, metavar="P1,P2,...",
                    help="instead of the main table, time model building + hand-over at these sizes")
    args = ap.parse_args()
    if args.scaling:
        scaling(args)
    else:
        main_table(args)


if __name__ == "__main__":
    main()
