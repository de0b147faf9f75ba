"""Solving channel-count problems (:class:`falcon_milp.channels.ChannelProblem`).

- ``"highs"``: the exact MILP of :mod:`..formulations.channels` by HiGHS branch-and-bound; the
  bound is HiGHS's dual bound in value units. Proven optimal when HiGHS says so at rel_gap 0.
  The greedy counts are computed first and returned instead when HiGHS stops (time limit)
  with a worse incumbent, so the result is never below the greedy one.
- ``"greedy"``: from every channel kept, drop the channel whose value per unit of the budgets
  it frees (summed relative to each violated budget) is smallest until every budget holds: the
  FLOP-normalised global ranking deployment tools use. No bound (``inf``).

Every returned count vector passes :func:`check_counts` in exact arithmetic; if HiGHS's
feasibility tolerance lets a budget be broken by rounding, the same greedy step repairs it and
the status is ``feasible`` (never ``optimal``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..channels import ChannelProblem, check_counts
from ..exceptions import CertificateError, SolverOptionError
from ..formulations.channels import LINEARIZATIONS, channel_spec, counts_from_values
from ..validation import choice, fraction, integer, real
from .highs import solve_spec

__all__ = ["CHANNEL_SOLVERS", "ChannelResult", "solve_channels"]

CHANNEL_SOLVERS = ("highs", "greedy")
OPTIMAL_GAP = 1e-9


@dataclass
class ChannelResult:
    """``counts``: kept channels per group (None without a solution); ``value``: sum_g V_g(k_g);
    ``bound``: proven upper bound on the optimum (inf if none); ``gap`` = (bound - value) /
    max(|value|, 1e-12); ``status``: optimal / feasible / infeasible / no_solution; ``usage``:
    exact use of every resource (as floats)."""

    counts: np.ndarray | None
    value: float
    bound: float
    gap: float
    status: str
    solver: str
    runtime_s: float
    usage: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _marginal(problem: ChannelProblem, counts: np.ndarray, rows: list[str]) -> np.ndarray:
    """(G,) decrease of sum_r u_r / B_r when each group drops one channel (rows: the resources)."""
    k = counts.astype(np.float64)
    out = np.zeros(problem.n_groups)
    for r in rows:
        res = problem.resources[r]
        d = res.lin.copy()
        # d/dk_g of c k_g k_h = c k_h; a self-product c k_g^2 drops by c (2 k_g - 1)
        same = res.pair_g == res.pair_h
        np.add.at(d, res.pair_g[~same], res.pair_coef[~same] * k[res.pair_h[~same]])
        np.add.at(d, res.pair_h[~same], res.pair_coef[~same] * k[res.pair_g[~same]])
        np.add.at(d, res.pair_g[same], res.pair_coef[same] * (2 * k[res.pair_g[same]] - 1))
        b = problem.budgets[r]
        out += d / (b if b > 0 else 1.0)
    return out


def _step_down(problem: ChannelProblem, g: int, k: int) -> int:
    """Channels group g drops to reach its next smaller allowed count (0: none below)."""
    r = problem.round_to
    below = (k - 1) // r * r if r > 1 else k - 1
    return k - below if below >= max(int(problem.min_keep[g]), 1 if r > 1 else 0) else 0


def _drop_until_feasible(problem: ChannelProblem, counts: np.ndarray) -> tuple[np.ndarray, int]:
    """Drop the cheapest channel (value lost per budget freed) until the exact check passes.

    A budget more than 1e-9 over in float64 is violated without the exact sum; every other
    point is decided by the exact check, so a point exactly on a budget is kept."""
    counts = counts.astype(np.int64).copy()
    dropped = 0
    while True:
        # clearly over in float64: drop without the exact sum; otherwise the exact check decides
        violated = [r for r, b in problem.budgets.items()
                    if math.isfinite(b) and problem.resources[r].value(counts) > b * (1 + 1e-9) + 1e-300]
        if not violated:
            chk = check_counts(problem, counts)
            if chk.feasible:
                return counts, dropped
            violated = chk.violated()
        freed = _marginal(problem, counts, violated)
        step = np.array([_step_down(problem, g, int(counts[g])) for g in range(problem.n_groups)])
        ok = (step > 0) & (freed > 0)        # step > 0: the group is above its smallest allowed count
        if not ok.any():
            return counts, dropped
        loss = np.array([problem.values[g][counts[g] - step[g]:counts[g]].sum() if step[g] > 0 else np.inf
                         for g in range(problem.n_groups)])
        ratio = np.where(ok, loss / np.where(freed > 0, freed * np.maximum(step, 1), 1.0), np.inf)
        g = int(np.argmin(ratio))
        counts[g] -= step[g]
        dropped += int(step[g])


def _result(problem: ChannelProblem, counts: np.ndarray | None, bound: float, solver: str, start: float,
            proven: bool, extra: dict[str, Any]) -> ChannelResult:
    if counts is None:
        return ChannelResult(None, -math.inf, bound, math.inf, extra.pop("status", "no_solution"), solver,
                             time.perf_counter() - start, {}, extra)
    chk = check_counts(problem, counts)
    if not chk.feasible:
        return ChannelResult(None, -math.inf, bound, math.inf, "no_solution", solver,
                             time.perf_counter() - start, {}, {**extra, "reason": "no count vector "
                                                               f"within {chk.violated()}"})
    value = problem.value(counts)
    tol = 1e-9 * max(abs(value), 1.0)
    if bound < value - tol:
        raise CertificateError(f"{solver}: upper bound {bound!r} is below the counts' value {value!r}")
    bound = max(bound, value)
    gap = (bound - value) / max(abs(value), 1e-12) if math.isfinite(bound) else math.inf
    status = "optimal" if proven and gap <= OPTIMAL_GAP else "feasible"
    usage = {r: float(u) for r, u in chk.usage.items()}
    return ChannelResult(counts, value, bound, gap, status, solver, time.perf_counter() - start, usage, extra)


def solve_channels(problem: ChannelProblem, *, solver: str = "highs", time_limit: float | None = None,
                   rel_gap: float = 0.0, threads: int | None = None,
                   linearization: str = "choice") -> ChannelResult:
    """Choose the kept count of every group maximising the kept value under every budget
    (``linearization``: the MILP's form, ``choice`` or ``binary``; both exact)."""
    if not isinstance(problem, ChannelProblem):
        raise SolverOptionError(f"`problem` must be a ChannelProblem; got {type(problem).__name__}")
    choice(solver, "solver", CHANNEL_SOLVERS, SolverOptionError)
    real(time_limit, "time_limit", strict=True, unit="seconds", error=SolverOptionError, optional=True)
    fraction(rel_gap, "rel_gap", SolverOptionError, optional=False, below_one=True)
    choice(linearization, "linearization", LINEARIZATIONS, SolverOptionError)
    integer(threads, "threads", 1, SolverOptionError, optional=True)
    start = time.perf_counter()
    smallest = np.array([problem.options(g)[0] for g in range(problem.n_groups)], dtype=np.int64)
    low = check_counts(problem, smallest)
    if not low.feasible:
        return _result(problem, None, -math.inf, solver, start, True,
                       {"status": "infeasible", "reason": f"the smallest counts already break {low.violated()}"})
    if solver == "greedy":
        counts, dropped = _drop_until_feasible(problem, problem.sizes.copy())
        return _result(problem, counts, math.inf, solver, start, False, {"dropped": dropped})
    greedy, _ = _drop_until_feasible(problem, problem.sizes.copy())
    spec = channel_spec(problem, linearization)
    remaining = None if time_limit is None else max(1e-3, time_limit - (time.perf_counter() - start))
    run = solve_spec(spec, time_limit=remaining, rel_gap=rel_gap, threads=threads)
    scale = spec.notes["objective_scale"]
    extra: dict[str, Any] = {"linearization": linearization, "n_cols": spec.n_cols, "n_rows": spec.n_rows, "products": spec.notes["products"],
                             "highs_status": run.status, "termination": run.termination,
                             "solve_s": run.solve_s}
    bound = run.bound / scale if math.isfinite(run.bound) else math.inf
    greedy_ok = check_counts(problem, greedy).feasible
    if run.values is None:
        if run.termination == "infeasible" and not greedy_ok:
            extra["status"] = "infeasible"
            return _result(problem, None, bound, "highs", start, False, extra)
        extra["incumbent"] = "greedy"
        return _result(problem, greedy if greedy_ok else None, bound, "highs", start, False, extra)
    counts = counts_from_values(problem, spec, run.values)
    counts, dropped = _drop_until_feasible(problem, counts)
    extra["repaired"] = dropped
    proven = run.termination == "optimal" and rel_gap <= OPTIMAL_GAP and dropped == 0
    extra["incumbent"] = "milp"
    if greedy_ok and problem.value(greedy) > problem.value(counts):
        counts, extra["incumbent"] = greedy, "greedy"   # HiGHS stopped early with a worse point
    return _result(problem, counts, bound, "highs", start, proven, extra)
