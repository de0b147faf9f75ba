"""Solver registry and the one ``solve`` entry point.

Each solver is a function ``f(instance, *, time_limit, rel_gap, threads, **options) ->
RawSolution`` living in its own module, imported only when used (so importing falcon_milp
pulls in neither pyomo nor highspy). ``solve`` validates the options, times the call,
re-checks the mask exactly (:func:`falcon_milp.result.check_mask`), recomputes the objective
from the mask and derives gap and status from the certificate alone:

    status = optimal   if the mask is feasible and gap <= max(rel_gap, OPTIMALITY_TOL)
             feasible  if the mask is feasible
             infeasible if it breaks a budget (only FLOP-unaware baselines may return this)
"""
from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..exceptions import SolverOptionError, SolverUnavailableError, UnknownSolverError
from ..instance import PruningInstance
from ..result import SolveResult, check_mask, mask_objective, relative_gap

OPTIMALITY_TOL = 1e-9
"""A result whose certified relative gap is at most this is reported ``optimal``."""


@dataclass
class RawSolution:
    """What a solver function hands back to :func:`solve`."""

    mask: np.ndarray | None
    bound: float = math.inf
    termination: str = "heuristic"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SolverSpec:
    name: str
    target: str            # "module:function", imported lazily
    exact: bool            # proves optimality; default rel_gap 0
    description: str
    flop_aware: bool = True
    max_weights: int | None = None   # larger instances raise SolverUnavailableError

    def load(self) -> Callable[..., RawSolution]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


_SPECS = [
    SolverSpec("highs-ilp", "falcon_milp.solvers.highs:solve_ilp", True,
               "per-weight ILP by HiGHS branch-and-bound (Pyomo up to 50k nonzeros, highspy above)", max_weights=2_000_000),
    SolverSpec("highs-lp", "falcon_milp.solvers.highs:solve_lp", False,
               "LP relaxation by HiGHS simplex (highspy); mask = its integral part", max_weights=2_000_000),
    SolverSpec("highs-compact", "falcon_milp.solvers.highs:solve_compact", True,
               "compact per-layer MILP (one integer count per layer) by HiGHS (Pyomo up to 50k nonzeros, highspy above)"),
    SolverSpec("magnitude", "falcon_milp.solvers.greedy:solve_magnitude", False,
               "global top-S by importance, FLOP-unaware (bound: the NNZ-only optimum)",
               flop_aware=False),
    SolverSpec("ratio-greedy", "falcon_milp.solvers.greedy:solve_ratio_greedy", False,
               "importance/FLOP order, filling both budgets"),
    SolverSpec("falcon-lagrangian", "falcon_milp.solvers.lagrangian:solve_lagrangian", False,
               "the paper's golden-section Lagrangian with reduced-cost rounding, plus its dual bound"),
    SolverSpec("fast", "falcon_milp.solvers.fast:solve_fast", False,
               "exact LP optimum by per-layer binary search, budget-keeping rounding, certified gap"),
    SolverSpec("exact", "falcon_milp.solvers.exact:solve_exact", True,
               "LP-guided core + exact search on layer counts; proves optimality"),
]
REGISTRY: dict[str, SolverSpec] = {s.name: s for s in _SPECS}


def solver_names() -> list[str]:
    """Names of the registered solvers whose module exists in this installation."""
    names = []
    for spec in _SPECS:
        module = spec.target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            names.append(spec.name)
    return names


def get_solver(name: str) -> SolverSpec:
    if name not in REGISTRY or name not in solver_names():
        raise UnknownSolverError(f"`solver` must be one of {', '.join(solver_names())}; got {name!r}")
    return REGISTRY[name]


def _check_options(time_limit: Any, rel_gap: Any, threads: Any) -> None:
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))
                                   or not time_limit > 0 or not math.isfinite(time_limit)):
        raise SolverOptionError(f"`time_limit` must be a finite number of seconds > 0; got {time_limit!r}")
    if rel_gap is not None and (isinstance(rel_gap, bool) or not isinstance(rel_gap, (int, float))
                                or not 0 <= rel_gap < math.inf):
        raise SolverOptionError(f"`rel_gap` must be a finite number >= 0; got {rel_gap!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise SolverOptionError(f"`threads` must be an integer >= 1; got {threads!r}")


def solve(instance: PruningInstance, solver: str = "fast", time_limit: float | None = None,
          rel_gap: float | None = None, threads: int | None = None, **options: Any) -> SolveResult:
    """Solve ``instance`` with the named solver and return a checked :class:`SolveResult`.

    ``rel_gap=None`` means 0 for the exact solvers (highs-ilp, highs-compact, exact): they
    stop only at a proven optimum or the time limit.
    """
    if not isinstance(instance, PruningInstance):
        raise SolverOptionError(f"`instance` must be a PruningInstance; got {type(instance).__name__}")
    spec = get_solver(solver)
    _check_options(time_limit, rel_gap, threads)
    if spec.max_weights is not None and instance.n_weights > spec.max_weights:
        raise SolverUnavailableError(
            f"solver '{solver}' takes at most {spec.max_weights:,} weights; this instance has "
            f"{instance.n_weights:,} (use 'fast' or 'exact')")
    gap_target = 0.0 if rel_gap is None else float(rel_gap)
    func = spec.load()
    start = time.perf_counter()
    raw = func(instance, time_limit=time_limit, rel_gap=gap_target, threads=threads, **options)
    runtime = time.perf_counter() - start
    used = {"time_limit": time_limit, "rel_gap": gap_target, "threads": threads, **options}
    return finish(instance, spec, raw, runtime, used)


def finish(instance: PruningInstance, spec: SolverSpec, raw: RawSolution, runtime: float,
           options: dict[str, Any]) -> SolveResult:
    """Turn a solver's raw output into a checked result (exact budget check, objective, gap)."""
    extra = dict(raw.extra)
    if raw.mask is None:
        return SolveResult(np.zeros(instance.n_weights, dtype=bool), -math.inf, float(raw.bound),
                           math.inf, "no_solution", raw.termination, runtime, spec.name, {},
                           options, extra)
    mask = np.asarray(raw.mask, dtype=bool)
    check = check_mask(instance, mask)
    objective = mask_objective(instance, mask)
    usage = {n: float(u) for n, u in zip(instance.resource_names, check.usage)}
    bound = float(raw.bound)
    gap = relative_gap(objective, bound)
    if not check.feasible:
        status = "infeasible"
        extra["violation"] = check.violations(instance.resource_names)
    elif gap <= max(options.get("rel_gap") or 0.0, OPTIMALITY_TOL):
        status = "optimal"
    else:
        status = "feasible"
    return SolveResult(mask, objective, bound, gap, status, raw.termination, runtime, spec.name,
                       usage, options, extra)
