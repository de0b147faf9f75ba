"""Solving allocation problems (pick one option per group under several budgets).

- ``"highs"``: the multiple-choice knapsack MILP (:mod:`..formulations.multiple_choice`) by
  HiGHS branch-and-bound; lower bound = HiGHS's dual bound mapped back to the error scale.
- ``"dp"``: exact dynamic programming over the Pareto frontier of (resource uses, error) after
  each group, with the uses as exact integers (every float is a dyadic rational); proves the
  optimum by enumeration. Its state count can grow as the product of the options, so it stops
  with :class:`SolverUnavailableError` beyond ``max_states``: a cross-check for small cases.

Every returned choice is checked against every budget in exact arithmetic.
"""
from __future__ import annotations

import math
import time
from fractions import Fraction
from typing import Any

import numpy as np

from ..allocation import AllocationProblem, AllocationResult, check_choice
from ..exceptions import CertificateError, SolverOptionError, SolverUnavailableError
from ..formulations.multiple_choice import choice_from_values, multiple_choice_spec
from ..validation import choice, fraction, integer, real
from .highs import solve_spec

__all__ = ["ALLOCATION_SOLVERS", "solve_allocation"]

ALLOCATION_SOLVERS = ("highs", "dp")
OPTIMAL_GAP = 1e-9
MAX_CUTS = 50


def _gap(objective: float, bound: float) -> float:
    return (objective - bound) / max(abs(objective), 1e-12)


def _certify(problem: AllocationProblem, choice: np.ndarray, bound: float, solver: str, start: float,
             proven: bool, extra: dict[str, Any]) -> AllocationResult:
    check = check_choice(problem, choice)
    if not check.feasible:  # pragma: no cover - every path below re-solves or raises first
        raise CertificateError(f"{solver}: the choice breaks a budget in exact arithmetic")
    objective = problem.objective(choice)
    tol = 1e-9 * max(abs(objective), 1.0)
    if bound > objective + tol:
        raise CertificateError(f"{solver}: lower bound {bound!r} is above the choice's error {objective!r}")
    bound = min(bound, objective)   # above it only by rounding: the choice itself bounds the optimum
    gap = _gap(objective, bound)
    status = "optimal" if proven and gap <= OPTIMAL_GAP else "feasible"
    usage = {r: float(u) for r, u in zip(problem.resource_names, check.usage)}
    return AllocationResult(np.asarray(choice, dtype=np.int64), objective, bound, gap, status, solver,
                            time.perf_counter() - start, usage, extra)


def _no_solution(solver: str, start: float, bound: float, status: str, extra: dict[str, Any]) -> AllocationResult:
    return AllocationResult(None, math.inf, bound, math.inf, status, solver, time.perf_counter() - start, {}, extra)


def _min_use_infeasible(problem: AllocationProblem) -> str | None:
    """The first resource whose budget even the smallest option of every group exceeds."""
    for r, name in enumerate(problem.resource_names):
        low = sum(Fraction(float(problem.usage[r, problem.group(g)].min())) for g in range(problem.n_groups))
        if math.isfinite(problem.budgets[r]) and low > Fraction(float(problem.budgets[r])):
            return name
    return None


def _solve_highs(problem: AllocationProblem, time_limit: float | None, rel_gap: float,
                 threads: int | None, start: float) -> AllocationResult:
    """HiGHS on the MILP; a choice that HiGHS's feasibility tolerance let break a budget in
    exact arithmetic is cut off by a no-good row and the MILP solved again (the cuts remove no
    feasible choice, so each run's dual bound stays a bound of the original problem)."""
    cuts: list[np.ndarray] = []
    extra: dict[str, Any] = {"nogood_cuts": 0}
    bound = -math.inf
    while True:
        spec = multiple_choice_spec(problem, cuts)
        remaining = None if time_limit is None else max(0.0, time_limit - (time.perf_counter() - start))
        run = solve_spec(spec, time_limit=remaining, rel_gap=rel_gap, threads=threads)
        scale, offset = spec.notes["objective_scale"], spec.notes["offset"]
        if not cuts:
            extra.update(fixed_options=spec.notes["fixed"], n_cols=spec.n_cols, n_rows=spec.n_rows)
        extra.update(highs_status=run.status, termination=run.termination,
                     solve_s=extra.get("solve_s", 0.0) + run.solve_s)
        if math.isfinite(run.bound):   # HiGHS bounds the max of -(e - shift) * scale
            bound = max(bound, offset - run.bound / scale)
        if run.values is None or run.termination == "error":
            status = "infeasible" if run.termination == "infeasible" else "no_solution"
            return _no_solution("highs", start, math.inf if status == "infeasible" else bound, status, extra)
        choice = choice_from_values(problem, run.values)
        if check_choice(problem, choice).feasible:
            proven = run.termination == "optimal" and rel_gap <= OPTIMAL_GAP
            return _certify(problem, choice, bound, "highs", start, proven, extra)
        if len(cuts) >= MAX_CUTS or (remaining is not None and remaining <= 0):
            extra["reason"] = f"{len(cuts)} no-good cuts did not give a choice within the budgets"
            return _no_solution("highs", start, bound, "no_solution", extra)
        cuts.append(choice)
        extra["nogood_cuts"] = len(cuts)


def _integer_uses(problem: AllocationProblem, rows: list[int]) -> tuple[list[list[int]], list[int]]:
    """Uses and budgets of ``rows`` as exact integers on a common power-of-two scale per row."""
    uses, caps = [], []
    for r in rows:
        fr = [Fraction(float(u)) for u in problem.usage[r]]
        b = Fraction(float(problem.budgets[r]))
        den = max([f.denominator for f in fr] + [b.denominator])
        uses.append([int(f * den) for f in fr])
        caps.append(int(b * den))
    return uses, caps


def _pareto(err: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Indices of the states no other state dominates (error and every use no larger; ties keep
    the first in (error, uses) order)."""
    order = np.lexsort(tuple(use[:, k] for k in range(use.shape[1] - 1, -1, -1)) + (err,))
    kept: list[int] = []
    kept_use = np.empty((0, use.shape[1]), dtype=use.dtype)
    for i in order:
        u = use[i]
        if kept_use.shape[0] and np.any(np.all(kept_use <= u, axis=1)):
            continue
        kept.append(int(i))
        kept_use = np.vstack([kept_use, u[None, :]])
    return np.array(kept, dtype=np.int64)


def _solve_dp(problem: AllocationProblem, max_states: int, start: float) -> AllocationResult:
    rows = [r for r in range(problem.usage.shape[0]) if math.isfinite(problem.budgets[r])]
    uses, caps = _integer_uses(problem, rows)
    big = any(abs(c) >= 2**62 for c in caps) or any(u >= 2**62 for row in uses for u in row)
    dtype = object if big else np.int64
    use_all = np.array(uses, dtype=dtype).T if rows else np.zeros((problem.n_options, 0), dtype=dtype)
    cap = np.array(caps, dtype=dtype)
    err = np.zeros(1)
    use = np.zeros((1, len(rows)), dtype=dtype)
    parents: list[tuple[np.ndarray, np.ndarray]] = []
    for g in range(problem.n_groups):
        s = problem.group(g)
        J = s.stop - s.start
        new_err = (err[:, None] + problem.errors[s][None, :]).ravel()
        new_use = (use[:, None, :] + use_all[s][None, :, :]).reshape(new_err.size, len(rows))
        parent, option = np.repeat(np.arange(err.size), J), np.tile(np.arange(J), err.size)
        ok = np.all(new_use <= cap, axis=1) if rows else np.ones(new_err.size, dtype=bool)
        if not ok.any():
            return _no_solution("dp", start, math.inf, "infeasible", {"states": 0})
        new_err, new_use, parent, option = new_err[ok], new_use[ok], parent[ok], option[ok]
        keep = _pareto(new_err, new_use) if rows else np.array([int(np.argmin(new_err))])
        if keep.size > max_states:
            raise SolverUnavailableError(f"dp: {keep.size} Pareto states after group {g} exceed "
                                         f"max_states={max_states}; use solver='highs'")
        err, use = new_err[keep], new_use[keep]
        parents.append((parent[keep], option[keep]))
    best = int(np.argmin(err))
    choice = np.empty(problem.n_groups, dtype=np.int64)
    i = best
    for g in range(problem.n_groups - 1, -1, -1):
        par, opt = parents[g]
        choice[g] = opt[i]
        i = par[i]
    objective = problem.objective(choice)
    return _certify(problem, choice, objective, "dp", start, True, {"states": int(err.size)})


def solve_allocation(problem: AllocationProblem, *, solver: str = "highs", time_limit: float | None = None,
                     rel_gap: float = 0.0, threads: int | None = None,
                     max_states: int = 20000) -> AllocationResult:
    """Choose one option per group minimising the error sum under every budget.

    ``solver``: "highs" (MILP, any size; ``time_limit`` seconds and ``rel_gap`` honoured) or
    "dp" (exact enumeration of the Pareto frontier, small cases; ``max_states`` caps it).
    Status: ``optimal`` (proven, gap <= 1e-9), ``feasible`` (a checked choice, gap as proven),
    ``infeasible`` (no choice fits: proven), ``no_solution`` (none found in time).
    """
    if not isinstance(problem, AllocationProblem):
        raise SolverOptionError(f"`problem` must be an AllocationProblem; got {type(problem).__name__}")
    choice(solver, "solver", ALLOCATION_SOLVERS, SolverOptionError)
    real(time_limit, "time_limit", strict=True, unit="seconds", error=SolverOptionError, optional=True)
    fraction(rel_gap, "rel_gap", SolverOptionError, optional=False, below_one=True)
    integer(max_states, "max_states", 1, SolverOptionError)
    start = time.perf_counter()
    short = _min_use_infeasible(problem)
    if short is not None:   # other infeasible cases: HiGHS / the DP prove them
        return _no_solution(solver, start, math.inf, "infeasible", {"reason": f"budget '{short}' is below the "
                                                                    "smallest use of every group"})
    if solver == "dp":
        return _solve_dp(problem, max_states, start)
    return _solve_highs(problem, time_limit, rel_gap, threads, start)
