"""Command-line interface: ``falcon-milp info|solve|allocate|export-model|bench|export|prune|prune-channels|sweep``.

A thin client of the library. Every FalconError (and bad usage) becomes one line on
stderr and exit code 2; no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Sequence

from .exceptions import FalconError

# subcommands that live with their layer: module exposing configure(parser) and run(args) -> int
_PLUGINS = {
    "bench": ("falcon_milp.bench.bench_command", "run every solver on an instance suite; JSONL + report + plots"),
    "export": ("falcon_milp.torch.export_command", "export a pruning instance from a PyTorch model"),
    "prune": ("falcon_milp.torch.prune_command", "prune a PyTorch model with FALCON or a baseline"),
    "prune-channels": ("falcon_milp.torch.prune_channels_command",
                       "prune whole channels (structured) with the exact channel MILP"),
    "sweep": ("falcon_milp.torch.sweep_command", "a grid of pruning runs from a TOML config, on any executor"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _print_json(obj: Any) -> None:
    """Strict JSON on stdout: NaN and infinities become null (JSON has no such numbers)."""
    from .io import json_safe
    print(json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False))


def _cmd_info(args: argparse.Namespace) -> int:
    from .io import load_instance
    inst = load_instance(args.instance)
    summary = inst.summary()
    if args.json:
        _print_json(summary)
        return 0
    print(f"{args.instance}: {summary['n_weights']:,} weights in {summary['n_groups']} groups "
          f"({summary['dtype']}), total importance {summary['total_importance']:.6g}")
    for name, res in summary["resources"].items():
        frac = res["budget"] / res["dense_total"] if res["dense_total"] else float("nan")
        print(f"  {name:>8}: budget {res['budget']:.6g} of dense {res['dense_total']:.6g} ({frac:.1%})")
    if summary["metadata"]:
        print(f"  metadata: {json.dumps(summary['metadata'], default=str)}")
    return 0


def _cmd_solve(args: argparse.Namespace) -> int:
    import numpy as np
    from .io import check_writable, load_instance
    from .solvers import solve
    if args.mask_out:   # np.save appends .npy when missing
        name = args.mask_out if args.mask_out.endswith(".npy") else args.mask_out + ".npy"
        check_writable(name, "--mask-out")
    inst = load_instance(args.instance)
    result = solve(inst, solver=args.solver, time_limit=args.time_limit, rel_gap=args.rel_gap,
                   threads=args.threads)
    if args.mask_out:
        np.save(args.mask_out, result.mask)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(f"{result.solver}: status {result.status} ({result.termination}), objective "
              f"{result.objective:.10g}, bound {result.bound:.10g}, gap {result.gap:.3e}, "
              f"{result.runtime_s:.3f} s")
        print("  usage: " + ", ".join(f"{k} {v:.6g}/{b:.6g}" for (k, v), b in
                                      zip(result.usage.items(), inst.budgets)))
    return 0


def _cmd_allocate(args: argparse.Namespace) -> int:
    from .allocation import load_allocation
    from .solvers.allocation import solve_allocation
    problem = load_allocation(args.problem)
    result = solve_allocation(problem, solver=args.solver, time_limit=args.time_limit, rel_gap=args.rel_gap)
    rows = []
    if result.choice is not None:
        labels = result.labels(problem)
        rows = [{"group": n, "option": int(c), "label": float(l),
                 "error": float(problem.errors[problem.offsets[g] + c])}
                for g, (n, c, l) in enumerate(zip(problem.names, result.choice, labels))]
    if args.json:
        _print_json({"status": result.status, "objective": result.objective, "bound": result.bound,
                     "gap": result.gap, "solver": result.solver, "runtime_s": result.runtime_s,
                     "usage": result.usage, "budgets": dict(zip(problem.resource_names, problem.budgets)),
                     "choice": rows, "extra": result.extra})
        return 0
    print(f"{result.solver}: status {result.status}, error {result.objective:.10g}, bound "
          f"{result.bound:.10g}, gap {result.gap:.3e}, {result.runtime_s:.3f} s")
    if result.usage:
        print("  usage: " + ", ".join(f"{k} {v:.6g}/{b:.6g}" for (k, v), b in
                                      zip(result.usage.items(), problem.budgets)))
    for row in rows:
        print(f"  {row['group']}: option {row['option']} (label {row['label']:g}, error {row['error']:.6g})")
    return 0


def _cmd_export_model(args: argparse.Namespace) -> int:
    from .formulations import build_model, write_model
    from .io import check_writable, load_instance
    check_writable(args.output, "--output")
    inst = load_instance(args.instance)
    model = build_model(inst, args.formulation)
    path = write_model(model, args.output, args.format)
    print(f"wrote {args.formulation} model ({args.format}) to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="falcon-milp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("info", help="summarise an instance file")
    p.add_argument("instance")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (infinite budgets as null)")
    p.set_defaults(func=_cmd_info)

    from .solvers.registry import REGISTRY
    p = sub.add_parser("solve", help="solve an instance file")
    p.add_argument("instance")
    p.add_argument("--solver", default="fast", choices=sorted(REGISTRY), metavar="NAME",
                   help="one of: " + ", ".join(REGISTRY))
    p.add_argument("--time-limit", type=float, default=None, metavar="S")
    p.add_argument("--rel-gap", type=float, default=None, metavar="G",
                   help="relative gap to stop at (default 0 for exact solvers)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON (mask left out; non-finite numbers as null)")
    p.add_argument("--mask-out", metavar="FILE", help="save the mask as a .npy bool array")
    p.set_defaults(func=_cmd_solve)

    p = sub.add_parser("allocate", help="pick one option per group under budgets (allocation .npz file)")
    p.add_argument("problem", help="a file written by falcon_milp.save_allocation")
    p.add_argument("--solver", default="highs", choices=["highs", "dp"])
    p.add_argument("--time-limit", type=float, default=None, metavar="S")
    p.add_argument("--rel-gap", type=float, default=0.0, metavar="G")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_allocate)

    p = sub.add_parser("export-model", help="write a formulation as LP/MPS for other solvers")
    p.add_argument("instance")
    p.add_argument("--formulation", default="ilp", choices=["ilp", "lp", "compact"])
    p.add_argument("--format", default="lp", choices=["lp", "mps"])
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.set_defaults(func=_cmd_export_model)

    for name, (module, help_text) in _PLUGINS.items():
        if importlib.util.find_spec(module) is None:
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text)
        mod.configure(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FalconError as exc:
        print(f"falcon-milp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"falcon-milp {args.command}: interrupted", file=sys.stderr)
        return 130


def _entry() -> Any:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
