"""Time-limit overshoot of every solver, and Ctrl-C of the CLI, on the ResNet20 and MobileNetV1
shapes (``falcon_milp.synthetic.arch_instance(arch, 0.3, 0.2)``).

    .venv/bin/python benchmarks/bench_time_limits.py                        # limit 5 s
    .venv/bin/python benchmarks/bench_time_limits.py --limit 2 --archs resnet20 --solvers highs-ilp

Each solve runs in a fresh child process (one overrun cannot hide another) killed at ``--cap``
seconds. ``wall`` is the wall time of ``falcon_milp.solve`` inside the child (model building
included); the target is wall <= limit + max(1 s, 10%). Ctrl-C: ``falcon-milp solve`` with
``highs-ilp`` and no time limit on the ResNet20 shape gets SIGINT after 3 s; we measure how long
it takes to exit, its exit code and its stderr. Prints a markdown table (docs/reliability.md).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from falcon_milp import solve
from falcon_milp.synthetic import arch_instance
arch, solver, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
inst = arch_instance(arch, 0.3, 0.2)
t = time.perf_counter()
r = solve(inst, solver, time_limit=limit)
print(json.dumps({"wall": time.perf_counter() - t, "status": r.status, "termination": r.termination,
                  "gap": r.gap if r.gap == r.gap and r.gap != float("inf") else None,
                  "killed": bool(r.extra.get("killed")), "weights": inst.n_weights}))
"""


def one(arch: str, solver: str, limit: float, cap: float) -> dict:
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, arch, solver, str(limit)], capture_output=True,
                             text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return {"wall": None, "status": f">{cap:.0f} s (killed by the benchmark)"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        if "SolverUnavailableError" in last:        # refused up front, with this message
            return {"wall": None, "status": "refused: " + last.split(": ", 1)[-1], "refused": True}
        return {"wall": None, "status": "error: " + last}
    return json.loads(out.stdout.strip().splitlines()[-1])


def ctrl_c(after: float = 3.0) -> dict:
    from falcon_milp import save_instance
    from falcon_milp.synthetic import arch_instance
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r20.npz"
        save_instance(arch_instance("resnet20", 0.3, 0.2), path)
        # SIG_DFL as in a terminal (a background job of a shell inherits SIGINT ignored)
        proc = subprocess.Popen([sys.executable, "-m", "falcon_milp", "solve", str(path), "--solver", "highs-ilp"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(after)
        t = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return {"exit_s": None, "rc": None, "stderr": "not back 60 s after SIGINT"}
        return {"exit_s": time.perf_counter() - t, "rc": proc.returncode, "stderr": err.strip()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=float, default=5.0)
    ap.add_argument("--archs", default="resnet20,mobilenetv1")
    ap.add_argument("--solvers", default=None, help="comma list (default: every registered solver)")
    ap.add_argument("--cap", type=float, default=120.0)
    ap.add_argument("--no-ctrl-c", action="store_true")
    args = ap.parse_args()
    from falcon_milp.solvers import solver_names
    solvers = args.solvers.split(",") if args.solvers else solver_names()
    print(f"command: `{' '.join(['benchmarks/bench_time_limits.py'] + sys.argv[1:])}`, {os.cpu_count()} cores\n")
    print("| shape | solver | weights | limit s | wall s | wall - limit s | within max(1 s, 10%) | status | termination | killed |")
    print("|---|---|---:|---:|---:|---:|---|---|---|---|")
    for arch in args.archs.split(","):
        for s in solvers:
            r = one(arch, s, args.limit, args.cap)
            wall = r.get("wall")
            ok = wall is not None and wall <= args.limit + max(1.0, 0.1 * args.limit)
            print(f"| {arch} | {s} | {r.get('weights', '')} | {args.limit:g} | "
                  f"{'' if wall is None else f'{wall:.2f}'} | {'' if wall is None else f'{wall - args.limit:+.2f}'} | "
                  f"{'refused' if r.get('refused') else 'yes' if ok else 'NO'} | {r['status']} | {r.get('termination', '')} | {r.get('killed', '')} |",
                  flush=True)
    if not args.no_ctrl_c:
        c = ctrl_c()
        print(f"\nCtrl-C: `falcon-milp solve r20.npz --solver highs-ilp` (no limit), SIGINT after 3 s: exit "
              f"{c['rc']} after {c['exit_s'] if c['exit_s'] is None else round(c['exit_s'], 2)} s; stderr: "
              f"`{c['stderr']}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
