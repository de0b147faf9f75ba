#!/usr/bin/env python
"""Generate the committed instance suite and its MANIFEST of best-known bounds.

    .venv/bin/python scripts/make_suite.py                 # files + bounds for new/changed instances
    .venv/bin/python scripts/make_suite.py --recompute     # re-run every solver, merge with old bounds
    .venv/bin/python scripts/make_suite.py --recompute --fresh   # ... and forget the old bounds
    .venv/bin/python scripts/make_suite.py --only 'real/*' --recompute
    .venv/bin/python scripts/make_suite.py --check         # verify files and digests, write nothing

What it does, deterministically (fixed seeds, no clock):

1. writes ``instances/tiny/*.npz`` (the cases of ``tests/tiny.py`` plus the extras below) and
   ``instances/small/*.npz`` (generators below); a file whose problem digest is unchanged is
   not rewritten (npz archives carry time stamps);
2. lists every instance: those files, whatever the PyTorch exporter put in
   ``instances/real/``, and the architecture-shaped instances generated at run time
   (``SYNTHETIC`` below, never committed);
3. computes best-known bounds by running the available solvers through the benchmark
   harness (every result checked) plus, for tiny instances, an exact enumeration of the
   per-group kept counts with exact rational budgets. best_lower = the largest feasible
   objective, best_upper = the smallest proven bound; ``lower_by`` / ``upper_by`` list every
   solver that reached them (within 1e-9 relative). Bounds of an instance whose digest did
   not change are kept from the old MANIFEST (both stay valid) and merged with any new ones
   unless ``--fresh``;
4. writes ``instances/MANIFEST`` (JSON Lines, sorted by name; format in instances/README.md).
"""
from __future__ import annotations

import argparse
import fnmatch
import itertools
import math
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from falcon_milp import PruningInstance, load_instance, save_instance  # noqa: E402
from falcon_milp.bench.harness import make_tasks, run_tasks  # noqa: E402
from falcon_milp.bench.suite import (BestKnown, ManifestEntry, SizeLimit, Suite, SuiteEntry,  # noqa: E402
                                     instances_root, parse_synthetic, problem_digest,
                                     read_manifest, synthetic_family, write_manifest)
from falcon_milp.solvers import solver_names  # noqa: E402
from falcon_milp.synthetic import random_layered  # noqa: E402

TOL = 1e-9

# ----------------------------------------------------------------------------- tiny


def _inst(groups, flops, s, f, **kw) -> PruningInstance:
    return PruningInstance.from_groups([np.asarray(g, dtype=float) for g in groups], flops,
                                       max_nnz=s, max_flops=f, **kw)


def tiny_extra() -> dict[str, PruningInstance]:
    """Tiny cases beyond tests/tiny.py (p <= 16)."""
    rng = np.random.default_rng(2024)
    cost = rng.integers(1, 20, size=12).astype(float)
    value = np.round(cost * (1 + 0.3 * rng.standard_normal(12)).clip(0.1), 2)
    return {
        # a 0/1 knapsack: one weight per group, the NNZ budget loose
        "knapsack-singletons": _inst([[v] for v in value], cost.tolist(), 12, float(np.floor(cost.sum() / 3))),
        # greedy by ratio keeps the small high-ratio weight and wastes budget
        "ratio-trap": _inst([[1.0], [10.0]], [1, 10], 2, 10),
        # every importance zero: any feasible mask is optimal, objective 0
        "all-zero": _inst([[0, 0, 0], [0, 0]], [2, 1], 2, 3),
        # float32 importances with exact ties across groups
        "float32-ties": PruningInstance.from_groups(
            [np.array([0.5, 0.25, 0.25], dtype=np.float32), np.array([0.25, 0.5], dtype=np.float32)],
            [3, 2], max_nnz=3, max_flops=7),
        # budgets exactly met by the optimum (no slack)
        "exact-fit": _inst([[4, 3, 2, 1], [6, 5]], [1, 3], 4, 8),
        # two extra resources (bytes and a measured latency per weight)
        "two-extra-resources": _inst([[9, 7, 1], [8, 2], [6, 5, 4]], [2, 1, 1], 6, 8,
                                     extra_resources={"bytes": ([1, 4, 2], 9), "latency": ([0.5, 0.25, 1.0], 2.0)}),
        # many single-weight groups with the same cost: pure top-S inside a budget
        "equal-costs": _inst([[x] for x in (0.9, 0.1, 0.5, 0.7, 0.3, 0.6, 0.2, 0.8)], [2] * 8, 5, 7),
        # the largest allowed size, p = 16, four groups
        "p16": _inst([rng.random(4) ** 2 for _ in range(4)], [16, 4, 4, 1], 9, 50),
    }


def brute_force_counts(inst: PruningInstance) -> float:
    """Exact optimum: enumerate the kept count of every group (inside a group the best k
    weights are the k largest), budgets compared as exact rationals."""
    sorted_groups = [np.sort(g.astype(np.float64))[::-1] for g in inst.importances]
    prefix = [np.concatenate([[0.0], np.cumsum(g)]) for g in sorted_groups]
    costs = [[Fraction(float(c)) for c in inst.costs[l]] for l in range(inst.n_groups)]
    budgets = [Fraction(float(b)) if math.isfinite(float(b)) else None for b in inst.budgets]
    best = -math.inf
    for counts in itertools.product(*[range(int(n) + 1) for n in inst.group_sizes]):
        ok = all(b is None or sum(costs[l][r] * k for l, k in enumerate(counts)) <= b
                 for r, b in enumerate(budgets))
        if ok:
            val = math.fsum(prefix[l][k] for l, k in enumerate(counts))
            best = max(best, val)
    return best


# ----------------------------------------------------------------------------- small


def knapsack(n: int, seed: int, s_frac: float, f_frac: float, strong: bool = False) -> PruningInstance:
    """One weight per group: a 0/1 knapsack on FLOPs (plus a cardinality row).
    Costs uniform in 1..100; values weakly (c * (1 + 0.1 N(0,1))) or strongly (c + 10) correlated."""
    rng = np.random.default_rng(seed)
    c = rng.integers(1, 101, size=n).astype(float)
    if strong:
        v = (c + 10.0) / 100.0
    else:
        v = c * (1 + 0.1 * rng.standard_normal(n)).clip(0.05) / 100.0
    return PruningInstance.from_groups([np.array([x]) for x in v], c.tolist(), max_nnz=int(s_frac * n),
                                       max_flops=float(np.floor(f_frac * c.sum())), names=[f"w{i}" for i in range(n)])


def many_layers(n_layers: int, seed: int, nnz: float, flops: float, ties: bool = False,
                extra_bytes: bool = False) -> PruningInstance:
    """Many tiny layers (1..10 weights), FLOP costs from {1, 4, 16, 64, 256}.
    ``ties``: importances on a grid of 1/8 in float32; ``extra_bytes``: a third resource."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 11, size=n_layers)
    costs = rng.choice([1.0, 4.0, 16.0, 64.0, 256.0], size=n_layers)
    if ties:
        groups = [(np.round(rng.random(n) * 8) / 8).astype(np.float32) for n in sizes]
    else:
        groups = [rng.standard_normal(n) ** 2 for n in sizes]
    p, total = int(sizes.sum()), float((sizes * costs).sum())
    extra = None
    if extra_bytes:
        byts = rng.choice([1.0, 2.0, 4.0], size=n_layers)
        extra = {"bytes": (byts.tolist(), 0.3 * float((sizes * byts).sum()))}
    return PruningInstance.from_groups(groups, costs.tolist(), max_nnz=int(nnz * p), max_flops=flops * total,
                                       extra_resources=extra)


SMALL: dict[str, tuple[Callable[[], PruningInstance], str]] = {
    "layered-1k": (lambda: random_layered(1000, 8, seed=0, nnz_fraction=0.3, flops_fraction=0.2, dtype=np.float64),
                   "falcon_milp.synthetic.random_layered(1000, 8, seed=0, nnz_fraction=0.3, flops_fraction=0.2, dtype=float64)"),
    "layered-3k": (lambda: random_layered(3000, 12, seed=1, nnz_fraction=0.5, flops_fraction=0.3, dtype=np.float64),
                   "falcon_milp.synthetic.random_layered(3000, 12, seed=1, nnz_fraction=0.5, flops_fraction=0.3, dtype=float64)"),
    "layered-10k": (lambda: random_layered(10000, 20, seed=2, nnz_fraction=0.3, flops_fraction=0.2, dtype=np.float32),
                    "falcon_milp.synthetic.random_layered(10000, 20, seed=2, nnz_fraction=0.3, flops_fraction=0.2, dtype=float32)"),
    "layered-10k-flops05": (lambda: random_layered(10000, 30, seed=3, nnz_fraction=0.6, flops_fraction=0.05, dtype=np.float32),
                            "falcon_milp.synthetic.random_layered(10000, 30, seed=3, nnz_fraction=0.6, flops_fraction=0.05, dtype=float32)"),
    "knapsack-300": (lambda: knapsack(300, 0, 1.0, 0.3),
                     "scripts/make_suite.py knapsack(300, seed=0, s_frac=1.0, f_frac=0.3): weakly correlated 0/1 knapsack"),
    "knapsack-2k": (lambda: knapsack(2000, 1, 0.4, 0.3),
                    "scripts/make_suite.py knapsack(2000, seed=1, s_frac=0.4, f_frac=0.3): weakly correlated, both budgets"),
    "knapsack-500-strong": (lambda: knapsack(500, 2, 1.0, 0.5, strong=True),
                            "scripts/make_suite.py knapsack(500, seed=2, s_frac=1.0, f_frac=0.5, strong=True): strongly correlated"),
    "manylayers-1000": (lambda: many_layers(1000, 0, 0.3, 0.2),
                        "scripts/make_suite.py many_layers(1000, seed=0, nnz=0.3, flops=0.2)"),
    "manylayers-400-ties-bytes": (lambda: many_layers(400, 1, 0.4, 0.25, ties=True, extra_bytes=True),
                                  "scripts/make_suite.py many_layers(400, seed=1, nnz=0.4, flops=0.25, ties=True, extra_bytes=True)"),
}

# ----------------------------------------------------------------------------- synthetic (run time)
SYNTHETIC = [
    "synthetic:layered30000x30:nnz0.3:flops0.2:seed0:float32",
    "synthetic:resnet20:nnz0.5:flops0.3:seed0:float32",
    "synthetic:resnet20:nnz0.3:flops0.2:seed0:float32",
    "synthetic:resnet20:nnz0.1:flops0.05:seed0:float32",
    "synthetic:layered1000000x50:nnz0.3:flops0.2:seed0:float32",
    "synthetic:mobilenetv1:nnz0.5:flops0.3:seed0:float32",
    "synthetic:mobilenetv1:nnz0.3:flops0.2:seed0:float32",
    "synthetic:resnet50:nnz0.5:flops0.3:seed0:float32",
    "synthetic:resnet50:nnz0.3:flops0.2:seed0:float32",
]

QUICK = {
    "tiny/both-binding", "tiny/flops-binding", "tiny/fractional-costs", "tiny/extra-resource",
    "tiny/free-layer-ties", "tiny/knapsack-singletons", "tiny/ratio-trap",
    "small/layered-1k", "small/knapsack-300", "small/manylayers-400-ties-bytes",
    "synthetic:resnet20:nnz0.3:flops0.2:seed0:float32",
    "real/mnist_mlp-magnitude-f30", "real/mnist_cnn-obs-f30-n45",
}

# solvers used to compute bounds, and the largest instance each gets (others: no limit)
BOUND_SIZE_LIMITS = {"highs-ilp": SizeLimit(300_000), "highs-lp": SizeLimit(300_000),
                     "highs-compact": SizeLimit(300_000)}


# ----------------------------------------------------------------------------- steps
def tiny_cases() -> dict[str, tuple[PruningInstance, str]]:
    from tiny import tiny_instances  # tests/tiny.py
    out = {k: (v, f"tests/tiny.py tiny_instances()[{k!r}]") for k, v in tiny_instances().items()}
    out.update({k: (v, f"scripts/make_suite.py tiny_extra()[{k!r}]") for k, v in tiny_extra().items()})
    return out


def write_if_changed(inst: PruningInstance, path: Path, check_only: bool) -> str:
    """'same', 'written' or (check mode) 'differs'/'missing'."""
    if path.exists():
        try:
            old = load_instance(path)
            if problem_digest(old) == problem_digest(inst) and old.metadata == inst.metadata:
                return "same"
        except Exception:  # noqa: BLE001 - a broken file is rewritten
            pass
        if check_only:
            return "differs"
    elif check_only:
        return "missing"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_instance(inst, path)
    return "written"


def _provenance_of_real(inst: PruningInstance) -> str:
    meta = inst.metadata or {}
    keys = [k for k in ("model", "dataset", "importance", "budget", "nnz_fraction", "flops_fraction",
                        "source", "script", "seed") if k in meta]
    desc = ", ".join(f"{k}={meta[k]}" for k in keys) if keys else "no metadata"
    return f"exported from a network trained in this repo (instances/real/): {desc}"


def aggregate(records: list[dict], exact: dict[str, float]) -> dict[str, BestKnown]:
    """name -> BestKnown from checked records (and exact enumeration values)."""
    by: dict[str, list[dict]] = {}
    for rec in records:
        by.setdefault(rec["instance"], []).append(rec)
    out = {}
    for name, recs in by.items():
        lows = [(r["objective"], r["solver"]) for r in recs
                if r["status"] in ("feasible", "optimal") and r["objective"] is not None]
        ups = [(r["bound"], r["solver"]) for r in recs if r["bound"] is not None]
        if name in exact:
            lows.append((exact[name], "brute-force"))
            ups.append((exact[name], "brute-force"))
        out[name] = combine(lows, ups, name)
    return out


def combine(lows: list[tuple[float, str]], ups: list[tuple[float, str]], name: str) -> BestKnown:
    lo = max((v for v, _ in lows), default=None)
    up = min((v for v, _ in ups), default=None)
    if lo is not None and up is not None and up < lo:
        if lo - up > TOL * max(abs(lo), 1e-12):
            bad_up = [s for v, s in ups if v < lo - TOL * max(abs(lo), 1e-12)]
            raise SystemExit(f"{name}: bound {up!r} of {bad_up} is below the feasible value {lo!r}: "
                             "a solver's bound is wrong; fix it before writing the MANIFEST")
        up = lo
    lower_by = sorted({s for v, s in lows if lo is not None and v >= lo - TOL * max(abs(lo), 1e-12)})
    upper_by = sorted({s for v, s in ups if up is not None and v <= up + TOL * max(abs(up), 1e-12)})
    return BestKnown(lo, up, tuple(lower_by), tuple(upper_by))


def merge(old: BestKnown, new: BestKnown, name: str) -> BestKnown:
    lows = [(v, s) for b in (old, new) if b.lower is not None for v, s in [(b.lower, x) for x in b.lower_by]]
    ups = [(v, s) for b in (old, new) if b.upper is not None for v, s in [(b.upper, x) for x in b.upper_by]]
    return combine(lows, ups, name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recompute", action="store_true",
                    help="re-run the solvers (on --only, else all) and merge with the old bounds")
    ap.add_argument("--fresh", action="store_true", help="with --recompute: discard the old bounds")
    ap.add_argument("--only", action="append", default=None, metavar="GLOB",
                    help="restrict bound computation to instance names matching GLOB (repeatable)")
    ap.add_argument("--solvers", default=None, help="comma-separated (default: every available solver)")
    ap.add_argument("--time-limit", type=float, default=300.0, help="per solver run (default 300 s)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="verify files and MANIFEST digests; write nothing")
    args = ap.parse_args(argv)
    root = instances_root()
    manifest_path = root / "MANIFEST"
    old = read_manifest(manifest_path)

    # 1. files
    planned: dict[str, tuple[PruningInstance | None, str, str, str]] = {}  # name -> (inst, family, source, provenance)
    status = {}
    for name, (inst, prov) in tiny_cases().items():
        assert inst.n_weights <= 16, name
        rel = f"tiny/{name}.npz"
        status[rel] = write_if_changed(inst, root / rel, args.check)
        planned[f"tiny/{name}"] = (inst, "tiny", rel, prov)
    for name, (build, prov) in SMALL.items():
        inst = build()
        rel = f"small/{name}.npz"
        status[rel] = write_if_changed(inst, root / rel, args.check)
        family = "small/" + name.split("-")[0]
        planned[f"small/{name}"] = (inst, family, rel, prov)
    for path in sorted((root / "real").glob("*.npz")):
        inst = load_instance(path)
        rel = path.relative_to(root).as_posix()
        meta = inst.metadata or {}
        family = "real/" + str(meta.get("arch") or meta.get("dataset") or "unknown").lower()
        planned[rel[:-4]] = (inst, family, rel, _provenance_of_real(inst))
    for spec in SYNTHETIC:
        s = parse_synthetic(spec)
        planned[s.name] = (None, synthetic_family(s), s.name,
                           f"generated at run time: falcon_milp.synthetic "
                           + (f"arch_instance({s.arch!r}, nnz_fraction={s.nnz_fraction:g}, "
                              f"flops_fraction={s.flops_fraction:g}, seed={s.seed}, dtype={s.dtype})"
                              if not s.arch.startswith("layered") else
                              f"random_layered({s.arch[7:].replace('x', ', ')}, seed={s.seed}, "
                              f"nnz_fraction={s.nnz_fraction:g}, flops_fraction={s.flops_fraction:g}, dtype={s.dtype})"))
    stale = [n for n in (root / "tiny").glob("*.npz")] + [n for n in (root / "small").glob("*.npz")]
    stale = [p for p in stale if p.relative_to(root).as_posix()[:-4] not in planned]
    changed = {k: v for k, v in status.items() if v != "same"}
    if args.check:
        problems = [f"{k}: {v}" for k, v in changed.items()] + [f"{p}: not generated by this script" for p in stale]
        digests = {}
        for name, (inst, *_rest) in planned.items():
            if inst is None:
                continue
            digests[name] = problem_digest(inst)
            if name not in old:
                problems.append(f"{name}: no MANIFEST line")
            elif old[name].digest != digests[name]:
                problems.append(f"{name}: MANIFEST digest {old[name].digest} != {digests[name]}")
        for name in old:
            if name not in planned:
                problems.append(f"{name}: in the MANIFEST but not in the suite")
        print("\n".join(problems) if problems else "suite files and MANIFEST digests agree")
        return 1 if problems else 0
    for p in stale:
        print(f"warning: {p} is not generated by this script (left alone)", file=sys.stderr)
    for k, v in changed.items():
        print(f"{v}: {k}")

    # 2. which instances need bounds
    def selected(name: str) -> bool:
        return args.only is None or any(fnmatch.fnmatchcase(name, g) for g in args.only)

    entries: list[SuiteEntry] = []
    digests: dict[str, str] = {}
    for name, (inst, family, source, prov) in planned.items():
        src = source if source.startswith("synthetic:") else str(root / source)
        if inst is not None:
            digests[name] = problem_digest(inst)
        keep = (name in old and not (args.recompute and selected(name))
                and (inst is None or old[name].digest == digests[name]))
        if not keep and selected(name):
            entries.append(SuiteEntry(name, family, src))
        elif not keep:
            print(f"warning: {name} has no valid MANIFEST bounds and is not --only selected", file=sys.stderr)
    solvers = args.solvers.split(",") if args.solvers else solver_names()
    print(f"computing bounds for {len(entries)} instances with {', '.join(solvers)} "
          f"(time limit {args.time_limit:g} s, {args.jobs} jobs)", flush=True)
    suite = Suite("make_suite", tuple(entries), args.time_limit, BOUND_SIZE_LIMITS)
    tasks = make_tasks(suite, solvers, time_limit=args.time_limit, threads=1)
    t0 = time.perf_counter()

    def progress(rec: dict) -> None:
        g = rec.get("gap")
        print(f"  {rec['instance']:<55} {rec['solver']:<18} {rec['status']:<11} "
              f"obj {rec['objective']!s:<22} bound {rec['bound']!s:<22} gap {g!s:<10} "
              f"{(rec['runtime_s'] or 0):.2f}s", flush=True)
    records = run_tasks(tasks, jobs=args.jobs, on_record=progress)
    print(f"solver runs took {time.perf_counter() - t0:.1f} s")
    failed = [r for r in records if r["checks"]]
    for r in failed:
        print(f"CHECK FAILED {r['instance']} {r['solver']}: {r['checks']}", file=sys.stderr)
    if failed:
        return 1
    exact = {name: brute_force_counts(planned[name][0]) for name in planned
             if name.startswith("tiny/") and any(e.name == name for e in entries)}
    new_best = aggregate(records, exact)
    info = {r["instance"]: r for r in records if r.get("n_weights") is not None}

    # 3. the MANIFEST
    out: list[ManifestEntry] = []
    for name, (inst, family, source, prov) in planned.items():
        suites = ["full"] + (["quick"] if name in QUICK else [])
        if name in new_best:
            rec = info[name]
            best = new_best[name]
            if name in old and old[name].digest == rec["digest"] and not args.fresh:
                best = merge(old[name].best, best, name)
            out.append(ManifestEntry(name, family, source, rec["n_weights"], rec["n_groups"],
                                     rec["budgets"], prov, rec["digest"], best, tuple(suites)))
        elif name in old:
            o = old[name]
            out.append(ManifestEntry(name, family, source, o.n_weights, o.n_groups, o.budgets, prov,
                                     o.digest, o.best, tuple(suites)))
    write_manifest(manifest_path, out)
    n_opt = sum(e.best.optimal for e in out)
    print(f"wrote {manifest_path}: {len(out)} instances, optimum proven for {n_opt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
