"""Aggregate benchmark records into rows, tables and a Markdown report.

Rows are one per (instance, solver), in the suite's order then the ``--solvers`` order;
with ``--repeat N`` the runtime is the median of the N repeats (and their minimum is kept),
and repeats must agree on status and mask (else the row is flagged).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .harness import CHECK_RTOL
from .records import ordered
from .suite import BestKnown

GAP_DEFINITIONS = f"""\
The problem is a maximisation: objective = sum of the kept importances (recomputed from the
mask); a bound is a proven upper bound on the optimum.

- **gap** (a solver's own certified gap) = (bound - objective) / max(|objective|, 1e-12),
  from the bound that solver itself proved (inf when it proves none).
- **best known**: L = the largest objective of any feasible mask known for the instance,
  U = the smallest proven upper bound known; each comes from the MANIFEST
  (`instances/MANIFEST`, computed by `scripts/make_suite.py`) combined with the runs of
  this report whose checks all passed. The optimum is proven when U - L <= {1e-9:g} * |U|.
- **gap to best known** = (U - objective) / max(|U|, 1e-12). When the optimum is proven,
  U is the optimum and this is the exact relative gap to the optimum. When it is not, U is
  the best bound, and the value is an upper bound on the true relative gap (U >= optimum, so
  1 - objective/U >= 1 - objective/optimum). Values within {CHECK_RTOL:g} of 0 print as 0.
- The gap to best known is not defined for an infeasible mask (the FLOP-unaware
  `magnitude` baseline breaking the FLOP budget); those rows show the budget violation.
"""


@dataclass
class Row:
    """One (instance, solver) cell of the report, repeats aggregated."""

    key: tuple[int, int]
    instance: str
    family: str
    n_weights: int | None
    solver: str
    status: str
    termination: str | None
    reason: str | None
    objective: float | None
    bound: float | None
    gap: float | None
    gap_to_best: float | None
    runtime_s: float | None        # median over repeats
    runtime_min_s: float | None
    peak_mem_bytes: int | None     # largest over repeats
    violation: dict[str, float] | None
    budgets: dict[str, float | None] | None
    checks: list[str] = field(default_factory=list)
    repeats: int = 1


@dataclass
class InstanceBest:
    """Best-known bounds of one instance after combining the MANIFEST with this run."""

    instance: str
    family: str
    n_weights: int | None
    n_groups: int | None
    budgets: dict[str, float | None] | None
    best: BestKnown
    from_run: bool


def merged_best(records: Sequence[dict[str, Any]]) -> dict[str, InstanceBest]:
    """instance -> best-known bounds from the MANIFEST values carried by the records and
    from this run's checked results (records with a failed check are left out)."""
    out: dict[str, InstanceBest] = {}
    for rec in ordered(records):
        name = rec["instance"]
        cur = out.get(name)
        if cur is None:
            lo, up = rec.get("best_lower"), rec.get("best_upper")
            cur = InstanceBest(name, rec["family"], rec.get("n_weights"), rec.get("n_groups"),
                               rec.get("budgets"),
                               BestKnown(lo, up, tuple(rec.get("best_lower_by") or ()) if lo is not None else (),
                                         tuple(rec.get("best_upper_by") or ()) if up is not None else ()),
                               False)
            out[name] = cur
        if cur.n_weights is None and rec.get("n_weights") is not None:
            cur.n_weights, cur.n_groups, cur.budgets = rec["n_weights"], rec["n_groups"], rec["budgets"]
        if rec["checks"] or rec["status"] in ("skipped", "error", "interrupted"):
            continue
        best = cur.best
        lower, lower_by, upper, upper_by = best.lower, best.lower_by, best.upper, best.upper_by
        obj, bound = rec.get("objective"), rec.get("bound")
        if rec["status"] in ("feasible", "optimal") and obj is not None:
            if lower is None or obj > lower * (1 + CHECK_RTOL) + 1e-300:
                lower, lower_by = obj, (rec["solver"],)
                cur.from_run = True
        if bound is not None:
            if upper is None or bound < upper * (1 - CHECK_RTOL):
                upper, upper_by = bound, (rec["solver"],)
                cur.from_run = True
        cur.best = BestKnown(lower, upper, lower_by, upper_by)
    return out


def _gap_to(objective: float | None, ref: float | None) -> float | None:
    if objective is None or ref is None:
        return None
    g = (ref - objective) / max(abs(ref), 1e-12)
    return 0.0 if abs(g) <= CHECK_RTOL else g


def build_rows(records: Iterable[dict[str, Any]]) -> tuple[list[Row], dict[str, InstanceBest]]:
    """Rows in (instance, solver) order and the merged best-known bounds."""
    recs = ordered(records)
    bests = merged_best(recs)
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for rec in recs:
        groups.setdefault((rec["key"][0], rec["key"][1]), []).append(rec)
    rows = []
    for key, reps in groups.items():
        first = reps[0]
        times = [r["runtime_s"] for r in reps if r.get("runtime_s") is not None]
        mems = [r["peak_mem_bytes"] for r in reps if r.get("peak_mem_bytes") is not None]
        checks = sorted({c for r in reps for c in r["checks"]})
        if len({(r["status"], r.get("mask_sha256")) for r in reps}) > 1:
            checks.append("repeats disagree (status or mask differs between repeats)")
        best = bests[first["instance"]].best
        gtb = _gap_to(first.get("objective"), best.upper) if first["status"] in ("feasible", "optimal") else None
        rows.append(Row(key, first["instance"], first["family"], first.get("n_weights"), first["solver"],
                        first["status"], first.get("termination"), first.get("reason"),
                        first.get("objective"), first.get("bound"), first.get("gap"), gtb,
                        statistics.median(times) if times else None, min(times) if times else None,
                        max(mems) if mems else None, first.get("violation"), first.get("budgets"),
                        checks, len(reps)))
    return rows, bests


# --------------------------------------------------------------------------- formatting
def fmt_num(x: float | None, digits: int = 10) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf"
    return f"{x:.{digits}g}"


def fmt_gap(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.2e}"


def fmt_time(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 100 else f"{x:.0f}"


def fmt_mem(x: int | None) -> str:
    if x is None:
        return "-"
    return f"{x / 2**20:.1f}"


def violation_text(row: Row) -> str:
    """'flops +35.2%' style text for an infeasible row."""
    parts = []
    for name, over in (row.violation or {}).items():
        budget = (row.budgets or {}).get(name)
        if budget:
            parts.append(f"{name} +{100 * over / budget:.3g}%")
        else:
            parts.append(f"{name} +{over:.3g}")
    return ", ".join(parts) or "infeasible"


def cell_gap(row: Row) -> str:
    """Gap-to-best cell: the number, or what the run holds instead."""
    if row.checks and any(not c.startswith("instance digest") for c in row.checks):
        return "CHECK FAILED"
    if row.status == "infeasible":
        return "infeasible (" + violation_text(row) + ")"
    if row.status in ("skipped", "error", "no_solution", "interrupted"):
        return row.status.replace("_", " ")
    return fmt_gap(row.gap_to_best)


def _md_table(header: Sequence[str], lines: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |" for line in lines]
    return "\n".join(out)


def text_table(rows: Sequence[Row]) -> str:
    """The stdout table: one line per (instance, solver)."""
    header = ["instance", "solver", "status", "objective", "bound", "gap", "gap to best", "time s"]
    lines = []
    for r in rows:
        gtb = cell_gap(r) if r.status != "infeasible" else "(" + violation_text(r) + ")"
        lines.append([r.instance, r.solver, r.status, fmt_num(r.objective), fmt_num(r.bound),
                      fmt_gap(r.gap) if r.objective is not None else "-", gtb, fmt_time(r.runtime_s)])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]
    right = {3, 4, 5, 6, 7}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(header), fmt(["-" * w for w in widths])]
    prev = None
    for line, r in zip(lines, rows):
        if prev is not None and r.instance != prev:
            out.append("")
        prev = r.instance
        out.append(fmt(line).rstrip())
    return "\n".join(out)


# --------------------------------------------------------------------------- summaries
@dataclass
class SolverSummary:
    solver: str
    counts: dict[str, int]
    worst_gap: float | None
    worst_instance: str | None
    median_gap: float | None
    worst_own_gap: float | None
    worst_own_instance: str | None
    geomean_time: float | None
    total_time: float
    max_mem: int | None
    n_check_failed: int


STATUS_ORDER = ("optimal", "feasible", "infeasible", "no_solution", "skipped", "error", "interrupted")


def solver_summaries(rows: Sequence[Row], solvers: Sequence[str]) -> list[SolverSummary]:
    out = []
    for s in solvers:
        mine = [r for r in rows if r.solver == s]
        counts = {k: sum(r.status == k for r in mine) for k in STATUS_ORDER}
        gaps = [(r.gap_to_best, r.instance) for r in mine if r.gap_to_best is not None]
        own = [(r.gap, r.instance) for r in mine if r.gap is not None and r.status in ("feasible", "optimal")]
        times = [r.runtime_s for r in mine if r.runtime_s is not None]
        worst = max(gaps, key=lambda t: t[0]) if gaps else (None, None)
        worst_own = max(own, key=lambda t: t[0]) if own else (None, None)
        geo = math.exp(statistics.fmean(math.log(max(t, 1e-6)) for t in times)) if times else None
        mems = [r.peak_mem_bytes for r in mine if r.peak_mem_bytes is not None]
        out.append(SolverSummary(s, counts, worst[0], worst[1],
                                 statistics.median(g for g, _ in gaps) if gaps else None,
                                 worst_own[0], worst_own[1], geo, sum(times),
                                 max(mems) if mems else None, sum(bool(r.checks) for r in mine)))
    return out


def solvers_in(rows: Sequence[Row]) -> list[str]:
    """Solver names of ``rows`` in the order of their first task."""
    seen: dict[str, int] = {}
    for r in rows:
        seen.setdefault(r.solver, r.key[1])
    return sorted(seen, key=seen.get)


def _instances_in(rows: Sequence[Row]) -> list[str]:
    seen: dict[str, int] = {}
    for r in rows:
        seen.setdefault(r.instance, r.key[0])
    return sorted(seen, key=seen.get)


def family_names(rows: Sequence[Row]) -> list[str]:
    """Instance families of ``rows`` in the order of their first task."""
    seen: dict[str, int] = {}
    for r in rows:
        seen.setdefault(r.family, r.key[0])
    return sorted(seen, key=seen.get)


def markdown_report(records: Sequence[dict[str, Any]], meta: dict[str, Any],
                    plots: Sequence[tuple[str, str]] = ()) -> str:
    """The full Markdown report. ``meta``: run settings (suite, solvers, time limit, jobs,
    machine, command, wall time, interrupted ...); ``plots``: (file name, caption) pairs."""
    rows, bests = build_rows(records)
    solvers = list(meta.get("solvers") or solvers_in(rows))
    solvers = [s for s in solvers if any(r.solver == s for r in rows)] or solvers_in(rows)
    instances = _instances_in(rows)
    by_cell = {(r.instance, r.solver): r for r in rows}
    parts: list[str] = []
    title = meta.get("title") or f"Benchmark report: suite `{meta.get('suite', '?')}`"
    parts.append(f"# {title}\n")
    done, planned = len(records), meta.get("n_tasks")
    status_line = f"{done} runs"
    if planned is not None and done < planned:
        status_line += f" of {planned} planned (**interrupted**: the tables cover the runs that finished)"
    settings = [
        ("command", f"`{meta['command']}`" if meta.get("command") else None),
        ("suite", meta.get("suite")),
        ("runs", status_line),
        ("instances", str(len(instances))),
        ("solvers", ", ".join(solvers)),
        ("time limit per run", f"{meta['time_limit']:g} s" if meta.get("time_limit") else "none"),
        ("threads per solver", meta.get("threads")),
        ("executor", meta.get("executor_detail")),
        ("parallel jobs", None if meta.get("executor_detail") else meta.get("jobs")),
        ("repeats", meta.get("repeat")),
        ("wall time of the whole run", f"{meta['wall_s']:.1f} s" if meta.get("wall_s") is not None else None),
        ("machine", meta.get("machine")),
        ("versions", meta.get("versions")),
        ("started", meta.get("started")),
    ]
    parts.append("\n".join(f"- {k}: {v}" for k, v in settings if v not in (None, "")) + "\n")
    if meta.get("notes"):
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in meta["notes"]) + "\n")

    parts.append("## Definitions\n\n" + GAP_DEFINITIONS)
    parts.append(
        "Every run is checked: the mask is re-checked exactly against every budget, the "
        "objective is recomputed from the mask, a feasible objective may not exceed the "
        "solver's own bound nor the best-known upper bound, a bound may not fall below the "
        f"best-known lower bound (relative tolerance {CHECK_RTOL:g}). Runtime is the wall time "
        "of `falcon_milp.solve` (median over repeats); peak memory is the resident-memory "
        "high-water mark during the solve above the resident memory at its start "
        f"(method: {meta.get('mem_method') or 'see records'}).\n")

    failed = [r for r in rows if r.checks]
    parts.append("## Checks\n")
    if failed:
        lines = [[r.instance, r.solver, "; ".join(r.checks)] for r in failed]
        parts.append(f"**{len(failed)} of {len(rows)} (instance, solver) results failed a check:**\n\n"
                     + _md_table(["instance", "solver", "failed checks"], lines, ["l", "l", "l"]) + "\n")
    else:
        parts.append(f"All {len(rows)} (instance, solver) results passed every check.\n")

    parts.append("## Summary per solver\n")
    summ = solver_summaries(rows, solvers)
    lines = []
    for s in summ:
        c = s.counts
        lines.append([f"`{s.solver}`", c["optimal"], c["feasible"], c["infeasible"], c["no_solution"],
                      c["skipped"], c["error"], fmt_gap(s.worst_gap),
                      (s.worst_instance if s.worst_gap else None) or "-", fmt_gap(s.median_gap), fmt_gap(s.worst_own_gap),
                      fmt_time(s.geomean_time), fmt_time(s.total_time), fmt_mem(s.max_mem)])
    parts.append(_md_table(["solver", "optimal", "feasible", "infeasible", "no solution", "skipped", "error",
                            "largest gap to best", "on instance", "median gap to best",
                            "largest own gap", "geo-mean time s", "total time s", "max peak MiB"],
                           lines, ["l"] + ["r"] * 7 + ["l"] + ["r"] * 5) + "\n")
    parts.append("`optimal` = the solver's own bound proves its mask optimal (gap <= 1e-9 or the "
                 "requested relative gap); `feasible` = a feasible mask without such a proof.\n")

    families = family_names(rows)
    parts.append("## Largest gap to best known, per instance family\n")
    lines = []
    for fam in families:
        line = [fam]
        for s in solvers:
            vals = [r.gap_to_best for r in rows if r.family == fam and r.solver == s and r.gap_to_best is not None]
            others = [r for r in rows if r.family == fam and r.solver == s and r.gap_to_best is None]
            cell = fmt_gap(max(vals)) if vals else "-"
            if others:
                kinds = sorted({r.status for r in others})
                cell += f" ({len(others)} {'/'.join(k.replace('_', ' ') for k in kinds)})"
            line.append(cell)
        lines.append(line)
    parts.append(_md_table(["family"] + [f"`{s}`" for s in solvers], lines) + "\n")
    parts.append("In parentheses: runs of that family with no gap (infeasible, skipped, no solution, error).\n")

    parts.append("## Gap to best known, per instance\n")
    lines = [[f"`{i}`"] + [cell_gap(by_cell[(i, s)]) if (i, s) in by_cell else "" for s in solvers]
             for i in instances]
    parts.append(_md_table(["instance"] + [f"`{s}`" for s in solvers], lines) + "\n")

    parts.append("## Runtime (s), per instance\n")
    lines = []
    for i in instances:
        line = [f"`{i}`", fmt_num(bests[i].n_weights, 12)]
        for s in solvers:
            r = by_cell.get((i, s))
            if r is None:
                line.append("")
            elif r.status in ("skipped", "error", "interrupted"):
                line.append(r.status)
            else:
                t = fmt_time(r.runtime_s)
                line.append(t + (" (limit)" if r.termination == "time_limit" else ""))
        lines.append(line)
    parts.append(_md_table(["instance", "weights"] + [f"`{s}`" for s in solvers], lines) + "\n")
    parts.append("`(limit)`: the run stopped at the time limit.\n")

    parts.append("## Instances and best-known bounds\n")
    lines = []
    for i in instances:
        b = bests[i]
        budget_txt = ", ".join(f"{k} {fmt_num(v, 8)}" if v is not None else f"{k} inf"
                               for k, v in (b.budgets or {}).items())
        lines.append([f"`{i}`", b.family, fmt_num(b.n_weights, 12), fmt_num(b.n_groups, 12), budget_txt,
                      fmt_num(b.best.lower, 12), ", ".join(b.best.lower_by) or "-",
                      fmt_num(b.best.upper, 12), ", ".join(b.best.upper_by) or "-",
                      "yes" if b.best.optimal else "no"])
    parts.append(_md_table(["instance", "family", "weights", "groups", "budgets", "best lower", "by",
                            "best upper", "by", "optimum proven"], lines,
                           ["l", "l", "r", "r", "l", "r", "l", "r", "l", "l"]) + "\n")
    parts.append("The `by` columns name the solvers that reached the value (from `instances/MANIFEST`, "
                 "unless a run of this report improved on it; `brute-force` = exact enumeration).\n")

    not_run = [r for r in rows if r.status in ("skipped", "error", "no_solution", "interrupted")]
    if not_run:
        parts.append("## Runs without a result\n")
        lines = [[f"`{r.instance}`", f"`{r.solver}`", r.status, r.reason or "-"] for r in not_run]
        parts.append(_md_table(["instance", "solver", "status", "reason"], lines, ["l", "l", "l", "l"]) + "\n")

    if plots:
        parts.append("## Plots\n")
        for fname, caption in plots:
            parts.append(f"![{caption}]({fname})\n\n*{caption}*\n")

    parts.append("## All results\n")
    lines = []
    for r in rows:
        lines.append([f"`{r.instance}`", f"`{r.solver}`", r.status, r.termination or "-",
                      fmt_num(r.objective), fmt_num(r.bound), fmt_gap(r.gap) if r.objective is not None else "-",
                      cell_gap(r), fmt_time(r.runtime_s), fmt_mem(r.peak_mem_bytes)])
    parts.append(_md_table(["instance", "solver", "status", "termination", "objective", "bound", "gap",
                            "gap to best", "time s", "peak MiB"], lines,
                           ["l", "l", "l", "l", "r", "r", "r", "r", "r", "r"]) + "\n")
    return "\n".join(parts)
