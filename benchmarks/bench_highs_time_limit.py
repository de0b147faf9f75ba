"""Does a time-limited HiGHS solve return on time? Wall time of ``solve()`` against its limit,
with the current HiGHS options ("after") and the options used before (commit 27da94f: the LP
by the dual simplex method; "before"), side by side in one run. The MILP options did not
change (see the ``falcon_milp/solvers/highs.py`` docstring: what was tried did not help), so
their two rows differ only by noise.

    .venv/bin/python benchmarks/bench_highs_time_limit.py                 # all cases
    .venv/bin/python benchmarks/bench_highs_time_limit.py --cases lp-resnet20,ilp-20k-0.5
    .venv/bin/python benchmarks/bench_highs_time_limit.py --variants after --cap 60

Every run is a fresh child process (so one overrun cannot hide another, and a run that
overruns badly is killed at ``--cap`` seconds and reported as ``>cap``). ``wall_s`` is the
wall time of the ``falcon_milp.solve`` call inside the child (model building included);
``over`` = wall_s / limit. Keep runs few: the machine is shared.

Measured (2-CPU machine shared with other jobs, highspy 1.16.0, threads=1), command
``.venv/bin/python benchmarks/bench_highs_time_limit.py --cases
lp-resnet20,ilp-20k-0.5,ilp-20k-3,compact-20k-0.5 --cap 120``:

| case | solver | weights | limit s | variant | wall s | wall / limit | status | termination | gap | HiGHS solve_s |
|---|---|---|---|---|---|---|---|---|---|---|
| lp-resnet20 | highs-lp | 268336 | 10 | before | 45.80 | 4.58 | no_solution | time_limit | inf | 45.68 |
| lp-resnet20 | highs-lp | 268336 | 10 | after | 3.04 | 0.30 | feasible | optimal | 2.03e-05 | 2.90 |
| ilp-20k-0.5 | highs-ilp | 20000 | 0.5 | before | 1.36 | 2.72 | no_solution | time_limit | inf | 1.35 |
| ilp-20k-0.5 | highs-ilp | 20000 | 0.5 | after | 1.41 | 2.82 | no_solution | time_limit | inf | 1.41 |
| ilp-20k-3 | highs-ilp | 20000 | 3 | before | 3.77 | 1.26 | feasible | time_limit | 0.000102 | 3.76 |
| ilp-20k-3 | highs-ilp | 20000 | 3 | after | 3.03 | 1.01 | feasible | time_limit | 0.000102 | 3.02 |
| compact-20k-0.5 | highs-compact | 20000 | 0.5 | before | 0.55 | 1.10 | feasible | time_limit | 0.0028 | 0.53 |
| compact-20k-0.5 | highs-compact | 20000 | 0.5 | after | 0.52 | 1.04 | feasible | time_limit | 0.0028 | 0.50 |

and ``--cases ilp-mnist_cnn-flexrel-f10,ilp-resnet20 --variants before --cap 120`` (the MILP
options in use): MNIST CNN 50.4 s for a 20 s limit (no solution); ResNet20 shape killed at
120 s for a 10 s limit. (With presolve rule 13 off, tried and dropped: 69.3 s, killed at 120 s,
and 11.0 s for ilp-20k-0.5.)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CASES = {
    # name: (solver, instance spec, time limit s)
    "lp-resnet20": ("highs-lp", "arch:resnet20:0.3:0.2", 10.0),
    "ilp-20k-0.5": ("highs-ilp", "layered:20000:20:1", 0.5),
    "ilp-20k-3": ("highs-ilp", "layered:20000:20:1", 3.0),
    "compact-20k-0.5": ("highs-compact", "layered:20000:20:1", 0.5),
    "ilp-mnist_cnn-flexrel-f10": ("highs-ilp", "file:instances/real/mnist_cnn-flexrel-f10.npz", 20.0),
    "ilp-resnet20": ("highs-ilp", "arch:resnet20:0.3:0.2", 10.0),
}


def _instance(spec: str):
    kind, *rest = spec.split(":", 1)[0], *spec.split(":")[1:]
    if kind == "arch":
        from falcon_milp.synthetic import arch_instance
        return arch_instance(rest[0], float(rest[1]), float(rest[2]), seed=0)
    if kind == "layered":
        from falcon_milp.synthetic import random_layered
        return random_layered(int(rest[0]), int(rest[1]), seed=int(rest[2]))
    from falcon_milp.io import load_instance
    return load_instance(spec.split(":", 1)[1])


def _old_options(kind, time_limit, rel_gap, threads):
    """The HiGHS options of commit 27da94f (before this benchmark's changes)."""
    opts = {"output_flag": False, "random_seed": 0, "small_matrix_value": 1e-12}
    if kind == "lp":
        opts.update(presolve="off", solver="simplex")
    else:
        opts.update(mip_rel_gap=float(rel_gap), mip_abs_gap=0.0)
    if time_limit is not None:
        opts["time_limit"] = float(time_limit)
    if threads is not None:
        opts["threads"] = int(threads)
    return opts


def child(case: str, variant: str) -> None:
    from falcon_milp import solve
    from falcon_milp.solvers import highs
    solver, spec, limit = CASES[case]
    inst = _instance(spec)
    import highspy  # noqa: F401  (import cost outside the timed call)
    if variant == "before":
        highs._highs_options = _old_options
    t = time.perf_counter()
    r = solve(inst, solver=solver, time_limit=limit, threads=1, backend="highspy")
    wall = time.perf_counter() - t
    e = r.extra
    print(json.dumps({"wall_s": wall, "status": r.status, "termination": r.termination, "gap": r.gap,
                      "model_s": e.get("model_s"), "solve_s": e.get("solve_s"), "n_weights": inst.n_weights}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--variants", default="before,after")
    ap.add_argument("--cap", type=float, default=120.0, help="kill a run after this many seconds")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    print("| case | solver | weights | limit s | variant | wall s | wall / limit | status | termination | gap "
          "| HiGHS solve_s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        solver, _, limit = CASES[case]
        for variant in args.variants.split(","):
            t = time.perf_counter()
            try:
                out = subprocess.run([sys.executable, __file__, "--child", case, variant], capture_output=True,
                                     text=True, timeout=args.cap)
            except subprocess.TimeoutExpired:
                print(f"| {case} | {solver} | | {limit:g} | {variant} | >{args.cap:g} (killed) "
                      f"| >{args.cap / limit:.1f} | | | | |", flush=True)
                continue
            if out.returncode != 0:
                print(f"| {case} | {solver} | | {limit:g} | {variant} | error after {time.perf_counter() - t:.1f} s "
                      f"| | | | | |  {out.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {case} | {solver} | {r['n_weights']} | {limit:g} | {variant} | {r['wall_s']:.2f} "
                  f"| {r['wall_s'] / limit:.2f} | {r['status']} | {r['termination']} | {r['gap']:.3g} "
                  f"| {r['solve_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
