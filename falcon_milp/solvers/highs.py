"""HiGHS solvers: ``highs-ilp`` (per-weight ILP), ``highs-lp`` (its LP relaxation), ``highs-compact``.

(Over 400 lines: about a third is this docstring, the measured reasons behind the backends and
the hard time limits; the process isolation is in :mod:`.isolated`.)

The models come from :mod:`falcon_milp.formulations` as one solver-neutral array description
(:class:`~falcon_milp.formulations.spec.LinearSpec`). Two backends solve the same numbers:

- ``"pyomo"``: render the Pyomo model and solve it with Pyomo's HiGHS interface
  (``pyomo.contrib.solver`` ``"highs"``, ``load_solutions=False``,
  ``raise_exception_on_nonoptimal_result=False``);
- ``"highspy"``: hand the numpy arrays to ``highspy.Highs.passModel`` in one call.

Rule for ``backend="auto"`` (measured with ``benchmarks/bench_highs.py``): the LP always goes
through highspy (its solve is so fast that Pyomo's model building and hand-over dominate at
every size); the MILPs go through Pyomo while the model has at most :data:`PYOMO_MAX_NNZ`
matrix nonzeros, through highspy above (Pyomo adds about 10 us per nonzero).

Options: ``time_limit`` (seconds of wall time for the whole call: model building counts, HiGHS
gets what is left), ``rel_gap`` (HiGHS ``mip_rel_gap``; 0 by default for these exact solvers,
with ``mip_abs_gap = 0`` so only a proven optimum stops the search), ``threads``, and
``backend``. The LP runs HiGHS's interior-point method with crossover and presolve off, so its
solution is basic (see "Time limits" for why not the simplex method).

Time limits (measured with ``benchmarks/bench_highs_time_limit.py``, command and table in its
docstring): the limit covers the whole call; HiGHS gets what model building left. HiGHS checks
its clock only between steps, and on these 2-3-row models with 10^4-10^5 identical columns per
layer some single steps are quadratic in the layer size and never look at the clock:

- the dual simplex method's first iteration (``HEkkDualRow::chooseFinal``, the bound-flipping
  ratio test over every column): 30-55 s on the ResNet20-shaped LP (268,336 weights). The LP
  therefore uses interior point + crossover (2.3 s to optimal there; its time limit is honoured,
  e.g. 0.6 s for a 0.5 s limit);
- in the MILPs (not fixable by options): presolve's parallel-column detection
  (``HPresolve::detectParallelRowsAndCols``, in the MIP presolve and again in the root LP's own
  presolve, which HiGHS switches on itself), and the root randomized rounding
  (``randomizedRounding`` -> conflict analysis) when the limit cut the root LP short. Measured
  overruns: 20,000 weights in 20 layers 1.3 s for a 0.5 s limit; MNIST CNN (46,608 weights)
  50 s for a 20 s limit; ResNet20 shape (268,336) not back after 120 s for a 10 s limit.
  ``presolve="off"`` or switching the parallel rule off (``presolve_rule_off`` bit 13) does not
  help: the root LP presolve still runs and the rounding then overruns more (11 s for 0.5 s).
  The MILP options are therefore unchanged and the limit is made hard from outside: every
  HiGHS run goes to a forked child process (:mod:`.isolated`) killed
  :data:`KILL_GRACE_S` after the call's deadline; the highspy backend streams each improving
  incumbent (with the dual bound of that moment) to the parent, which returns the last one
  after a kill (``extra["killed"]``; the Pyomo backend has no such hook: no solution). Ctrl-C
  reaches the parent within 0.1 s, kills the child and raises KeyboardInterrupt. Measured with
  ``benchmarks/bench_time_limits.py`` (docs/reliability.md). ``extra["solve_s"]`` reports
  HiGHS's own share.

Bounds: MILPs report HiGHS's ``mip_dual_bound``. The LP reports the Lagrangian value
``y.b + sum_j max(0, c_j - (A^T y)_j) * u_j`` at the row duals y >= 0 HiGHS returns: an upper
bound for *any* y >= 0, equal to the LP optimum at the optimal duals, so it stays valid even
for a time-limited LP.

Exactness: every budget row has integer coefficients (scaled by a power of two) and its budget
rounded down to that lattice, so with integer FLOP costs HiGHS decides every row exactly. When a
row cannot be evaluated exactly in doubles (non-integer costs, see
``formulations/resources.md``) and HiGHS's answer fails the exact check, the MILP is solved again
in its exact limb form. Any mask still failing the exact check (a count that is integral only
up to HiGHS's tolerance) is repaired by dropping its least important weights on the violated
rows; ``extra["repaired"]`` counts them. :func:`falcon_milp.solve` re-checks every mask.
"""
from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..certificate import RawSolution
from ..exceptions import SolverOptionError, SolverUnavailableError
from ..formulations import build_spec, counts_to_mask
from ..formulations.spec import LinearSpec, to_pyomo
from ..instance import PruningInstance
from ..result import check_mask
from ..validation import choice
from .isolated import IsolatedRun, can_isolate, run_isolated
from .rounding import repair_mask

log = logging.getLogger(__name__)

PYOMO_MAX_NNZ = 50_000
"""``backend="auto"`` builds MILPs through Pyomo up to this many matrix nonzeros."""

BACKENDS = ("auto", "pyomo", "highspy")
ISOLATE = True
"""Run HiGHS in a child process (hard time limit, Ctrl-C); False runs it in this process."""
KILL_GRACE_S = 0.25
"""The child is killed this long after the call's deadline if HiGHS has not stopped itself."""
OBJECTIVE_TARGET = 1024.0
"""Importances are multiplied by the power of two that brings the largest near this value, so
HiGHS's absolute tolerances (1e-7 on reduced costs, 1e-9 smallest matrix entry) bite less."""
MIN_SLOPE = 1e-11
"""Compact model: epigraph slopes below this (after scaling) are merged into one relaxed cut,
since HiGHS drops matrix entries below its ``small_matrix_value`` (set to 1e-12)."""
LP_INTEGRAL_TOL = 1e-9
"""An LP value z_i >= 1 - 1e-9 counts as kept; values in (1e-9, 1 - 1e-9) are fractional."""

# The one table: HiGHS model status (enum member name) -> our termination value.
# Any status not listed (kObjectiveBound, kInterrupt, future codes ...) becomes "unknown" and is logged.
TERMINATION_OF_STATUS: dict[str, str] = {
    "kOptimal": "optimal",
    "kTimeLimit": "time_limit",
    "kIterationLimit": "iteration_limit",
    "kSolutionLimit": "iteration_limit",
    "kInfeasible": "infeasible",
    "kUnknown": "unknown",
    "kNotset": "error",
    "kLoadError": "error",
    "kModelError": "error",
    "kPresolveError": "error",
    "kSolveError": "error",
    "kPostsolveError": "error",
    "kModelEmpty": "error",
    "kMemoryLimit": "error",
    "kUnbounded": "error",
    "kUnboundedOrInfeasible": "error",
}


def termination_of(status: Any) -> str:
    """Our termination value for a HiGHS model status (enum or its name); unknown codes -> "unknown"."""
    name = getattr(status, "name", None) or str(status).rsplit(".", 1)[-1]
    term = TERMINATION_OF_STATUS.get(name)
    if term is None:
        log.warning("HiGHS returned model status %s, which has no mapping; reporting 'unknown'", status)
        return "unknown"
    return term


# ----------------------------------------------------------------------------- HiGHS plumbing
def _import_highspy():
    try:
        import highspy
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise SolverUnavailableError(f"the HiGHS solvers need `highspy` (pip install highspy); {exc}") from None
    return highspy


_BANNER_LOCK = threading.Lock()
_BANNER_DONE = False


def new_highs():
    """A fresh ``highspy.Highs`` with output off. HiGHS prints a banner to the C stdout when the
    first instance of a process is made; that one is made with fd 1 pointed at /dev/null."""
    global _BANNER_DONE
    highspy = _import_highspy()
    with _BANNER_LOCK:
        if _BANNER_DONE:
            h = highspy.Highs()
        else:
            sys.stdout.flush()
            saved = os.dup(1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
                h = highspy.Highs()
                try:
                    ctypes.CDLL(None).fflush(None)
                except (OSError, AttributeError):  # pragma: no cover - no libc symbols
                    pass
            finally:
                os.dup2(saved, 1)
                os.close(saved)
                os.close(devnull)
            _BANNER_DONE = True
    h.setOptionValue("output_flag", False)
    return h


def _highs_options(kind: str, time_limit: float | None, rel_gap: float, threads: int | None) -> dict[str, Any]:
    opts: dict[str, Any] = {"output_flag": False, "random_seed": 0, "small_matrix_value": 1e-12}
    if kind == "lp":
        opts.update(presolve="off", solver="ipm", run_crossover="on")
    else:
        opts.update(mip_rel_gap=float(rel_gap), mip_abs_gap=0.0)
    if time_limit is not None:
        opts["time_limit"] = float(time_limit)
    if threads is not None:
        opts["threads"] = int(threads)
    return opts


def _prepare_threads(opts: dict[str, Any]) -> None:
    """HiGHS keeps one global thread pool; a different ``threads`` value needs it rebuilt."""
    if "threads" in opts:
        _import_highspy().Highs.resetGlobalScheduler(True)


@dataclass
class HighsRun:
    """What one HiGHS run gave back, whichever backend made it."""

    backend: str
    status: str                   # HiGHS model status name
    termination: str
    values: np.ndarray | None     # column values in spec order, when HiGHS holds a primal solution
    row_duals: np.ndarray | None  # row duals in spec order (LP only)
    objective: float
    bound: float                  # mip_dual_bound (MILP); inf when HiGHS has none
    model_s: float                # building the model (spec arrays, plus the Pyomo model)
    handover_s: float             # passing it to HiGHS
    solve_s: float                # HiGHS run time
    info: dict[str, Any] = field(default_factory=dict)

    def extra(self) -> dict[str, Any]:
        return {"backend": self.backend, "highs_status": self.status, "model_s": self.model_s,
                "handover_s": self.handover_s, "solve_s": self.solve_s, **self.info}


def _is_mip(spec: LinearSpec) -> bool:
    return any(b.integer for b in spec.columns)


def _run_highspy(spec: LinearSpec, opts: dict[str, Any], model_s: float,
                 report: Callable[[Any], None] | None = None) -> HighsRun:
    highspy = _import_highspy()
    t0 = time.perf_counter()
    a = spec.arrays()
    ta = time.perf_counter()
    h = new_highs()
    for key, value in opts.items():
        h.setOptionValue(key, value)
    mip = _is_mip(spec)
    integrality = a["integer"].astype(np.int32)
    status = h.passModel(spec.n_cols, spec.n_rows, int(a["indptr"][-1]), int(highspy.MatrixFormat.kRowwise),
                         int(highspy.ObjSense.kMaximize), 0.0, a["cost"], a["lower"], a["upper"],
                         a["row_lower"], a["row_upper"], a["indptr"][:-1].astype(np.int32),
                         a["indices"].astype(np.int32), a["data"], integrality)
    if status == highspy.HighsStatus.kWarning:
        log.debug("HiGHS accepted the %s model with a warning", spec.kind)
    elif status != highspy.HighsStatus.kOk:
        raise SolverUnavailableError(f"HiGHS rejected the {spec.kind} model ({status})")
    t1 = time.perf_counter()
    _prepare_threads(opts)
    if report is not None and mip:
        def improving(event: Any) -> None:   # each better incumbent, with the dual bound then
            out = event.data_out
            report(Incumbent(np.array(out.mip_solution, dtype=np.float64),
                             float(out.objective_function_value), float(out.mip_dual_bound)))
        h.cbMipImprovingSolution.subscribe(improving)
    h.run()
    t2 = time.perf_counter()
    info = h.getInfo()
    model_status = h.getModelStatus()
    has_primal = info.primal_solution_status == 2
    sol = h.getSolution()
    values = np.asarray(sol.col_value, dtype=np.float64) if has_primal and sol.value_valid else None
    duals = np.asarray(sol.row_dual, dtype=np.float64) if sol.dual_valid and not mip else None
    objective = float(info.objective_function_value) if has_primal else -math.inf
    bound = _mip_bound(info) if mip else math.inf
    extra = {"nodes": int(info.mip_node_count), "simplex_iterations": int(info.simplex_iteration_count)}
    return HighsRun("highspy", model_status.name, termination_of(model_status), values, duals, objective,
                    bound, model_s + (ta - t0), t1 - ta, t2 - t1, extra)


def _mip_bound(info: Any) -> float:
    b = float(info.mip_dual_bound)
    return b if math.isfinite(b) and abs(b) < 1e300 else math.inf


def _run_pyomo(spec: LinearSpec, opts: dict[str, Any], model_s: float) -> HighsRun:
    import pyomo.environ  # noqa: F401  (registers the solver plugins)
    from pyomo.contrib.solver.common.factory import SolverFactory
    from pyomo.contrib.solver.common.results import SolutionStatus

    t0 = time.perf_counter()
    model = to_pyomo(spec, f"falcon_{spec.kind}")
    variables: list[Any] = []
    for block in spec.columns:
        comp = model.component(block.name)
        variables.extend(comp[key] for key in block.index)
    t1 = time.perf_counter()
    opts = dict(opts)
    config: dict[str, Any] = {"load_solutions": False, "raise_exception_on_nonoptimal_result": False}
    if "time_limit" in opts:
        config["time_limit"] = opts.pop("time_limit")
    if "threads" in opts:
        config["threads"] = opts["threads"]
    _prepare_threads(opts)
    opts.pop("threads", None)
    opt = SolverFactory("highs")
    results = opt.solve(model, solver_options=opts, **config)
    t2 = time.perf_counter()
    highs = getattr(opt, "_solver_model", None)  # the highspy.Highs Pyomo drove
    if highs is not None:
        model_status = highs.getModelStatus()
        status_name, term = model_status.name, termination_of(model_status)
        info = highs.getInfo()
        extra = {"nodes": int(info.mip_node_count), "simplex_iterations": int(info.simplex_iteration_count)}
        solve_s = float(highs.getRunTime())
    else:  # pragma: no cover - Pyomo changed its internals
        log.warning("Pyomo's HiGHS interface exposes no HiGHS object; termination unknown")
        status_name, term, extra, solve_s = "unavailable", "unknown", {}, t2 - t1
    values = duals = None
    objective = -math.inf
    if results.solution_status in (SolutionStatus.feasible, SolutionStatus.optimal):
        referenced = _referenced_columns(spec)
        primals = results.solution_loader.get_vars([variables[j] for j in referenced])
        values = np.zeros(spec.n_cols)
        values[referenced] = [primals[variables[j]] for j in referenced]
        objective = float(results.incumbent_objective)
        if not _is_mip(spec):
            try:
                constraints = _constraints_in_order(spec, model)
                dual_map = results.solution_loader.get_duals(constraints)
                duals = np.array([dual_map[c] for c in constraints], dtype=np.float64)
            except Exception as exc:  # no valid duals (e.g. time limit): the caller falls back
                log.debug("no LP duals from Pyomo: %s", exc)
    bound = math.inf
    if _is_mip(spec) and results.objective_bound is not None:
        bound = float(results.objective_bound)
        if not math.isfinite(bound) or abs(bound) >= 1e300:
            bound = math.inf
    return HighsRun("pyomo", status_name, term, values, duals, objective, bound,
                    model_s + (t1 - t0), max(0.0, (t2 - t1) - solve_s), solve_s, extra)


def _referenced_columns(spec: LinearSpec) -> np.ndarray:
    """Columns that appear in the objective or a row (Pyomo hands only those to HiGHS)."""
    used = np.zeros(spec.n_cols, dtype=bool)
    for block in spec.columns:
        used[block.cols] |= block.cost != 0
    for block in spec.rows:
        used[block.indices] = True
    return np.flatnonzero(used)


def _constraints_in_order(spec: LinearSpec, model: Any) -> list[Any]:
    out = []
    for block in spec.rows:
        comp = model.component(block.name)
        out.extend([comp] if block.scalar else [comp[key] for key in block.index])
    return out


@dataclass
class Incumbent:
    """An improving MILP solution reported while HiGHS runs (column values in spec order)."""

    values: np.ndarray
    objective: float
    bound: float


def _run_here(spec: LinearSpec, backend: str, opts: dict[str, Any], model_s: float,
              report: Callable[[Any], None] | None = None) -> HighsRun:
    if backend == "pyomo":
        return _run_pyomo(spec, opts, model_s)
    return _run_highspy(spec, opts, model_s, report)


def fresh_scheduler() -> None:
    """In a forked child: HiGHS's global thread pool was copied from the parent without its
    worker threads (a parent that ran HiGHS itself); rebuild it before any run, or the run
    waits for workers that do not exist."""
    _import_highspy().Highs.resetGlobalScheduler(False)


def run_highs(target: Callable[..., Any], args: tuple, deadline: float | None) -> IsolatedRun:
    """``target(*args, report=...)``, a function that runs HiGHS, in a forked child killed at
    ``deadline`` (:func:`.isolated.run_isolated`, HiGHS's thread pool rebuilt there first); in
    this process where no child can be started or ``ISOLATE`` is False."""
    if not ISOLATE or not can_isolate():
        t = time.perf_counter()
        value = target(*args)
        return IsolatedRun(value, None, False, time.perf_counter() - t)
    return run_isolated(target, args, deadline, child_init=fresh_scheduler)


def _run(spec: LinearSpec, backend: str, opts: dict[str, Any], model_s: float,
         deadline: float | None = None) -> HighsRun:
    """One HiGHS run, in a child process killed at ``deadline + KILL_GRACE_S`` (perf_counter
    seconds) and stopped by Ctrl-C (:mod:`.isolated`); in this process where no child can be
    started (inside a daemonic worker, or ``ISOLATE = False``). After a kill, the last
    incumbent HiGHS reported (highspy backend) comes back with the dual bound of that moment."""
    if backend == "auto":
        backend = "highspy" if spec.kind == "lp" or spec.nnz > PYOMO_MAX_NNZ else "pyomo"
    kill_at = None if deadline is None else deadline + KILL_GRACE_S
    got = run_highs(_run_here, (spec, backend, opts, model_s), kill_at)
    if not got.killed:
        return got.value
    inc: Incumbent | None = got.partial
    log.info("HiGHS did not stop at its time limit; its process was killed after %.1f s", got.seconds)
    bound = inc.bound if inc is not None and math.isfinite(inc.bound) and abs(inc.bound) < 1e300 else math.inf
    return HighsRun(backend, "killed", "time_limit", None if inc is None else inc.values, None,
                    -math.inf if inc is None else inc.objective, bound, model_s, 0.0, got.seconds,
                    {"killed": True})


def solve_spec(spec: LinearSpec, *, time_limit: float | None = None, rel_gap: float = 0.0,
               threads: int | None = None, backend: str = "highspy") -> HighsRun:
    """One HiGHS MILP run of any ``spec`` (the allocation MILP, say) under the same time-limit
    and Ctrl-C handling as the pruning solvers (:func:`_run`)."""
    start = time.perf_counter()
    deadline = None if time_limit is None else start + time_limit
    return _run(spec, backend, _highs_options("mip", time_limit, rel_gap, threads), 0.0, deadline)


# ----------------------------------------------------------------------------- masks
def _repaired(instance: PruningInstance, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The mask passed through :func:`.rounding.repair_mask` (least important weight on a
    violated row first); the number of weights dropped is logged."""
    mask, dropped = repair_mask(instance, mask)
    if dropped:
        log.info("repaired a HiGHS mask: dropped %d weight(s) to pass the exact budget check", dropped)
    return mask, dropped


def _mip_mask(instance: PruningInstance, spec: LinearSpec, values: np.ndarray) -> tuple[np.ndarray, float]:
    """Mask from a MILP solution and the largest distance of an integer column from an integer."""
    if spec.kind == "compact":
        k = values[spec.column_block("k").cols]
        kr = np.rint(k)
        off = float(np.max(np.abs(k - kr))) if k.size else 0.0
        counts = np.clip(kr, 0, instance.group_sizes).astype(np.int64)
        return counts_to_mask(instance, counts), off
    z = values[spec.column_block("z").cols]
    off = float(np.max(np.minimum(z, np.abs(1 - z)))) if z.size else 0.0
    return z >= 0.5, off


# ----------------------------------------------------------------------------- solvers
def _check_options(options: dict[str, Any], solver: str) -> str:
    backend = options.pop("backend", "auto")
    if options:
        raise SolverOptionError(f"unknown option `{sorted(options)[0]}` for {solver}; known: backend")
    return choice(backend, "backend", BACKENDS, SolverOptionError)


def _remaining(time_limit: float | None, start: float) -> float | None:
    if time_limit is None:
        return None
    return max(1e-3, time_limit - (time.perf_counter() - start))


def objective_scale(instance: PruningInstance) -> float:
    """The power of two that brings the largest importance near :data:`OBJECTIVE_TARGET` (exact)."""
    top = float(np.max(instance.importance)) if instance.n_weights else 0.0
    if not top > 0:
        return 1.0
    return 2.0 ** int(np.clip(round(math.log2(OBJECTIVE_TARGET / top)), -200, 200))


def _spec(instance: PruningInstance, kind: str, exact: bool = False) -> LinearSpec:
    return build_spec(instance, kind, exact=exact, objective_scale=objective_scale(instance),
                      min_slope=MIN_SLOPE if kind == "compact" else 0.0)


def _solve_mip(instance: PruningInstance, kind: str, time_limit: float | None, rel_gap: float,
               threads: int | None, backend: str) -> RawSolution:
    start = time.perf_counter()
    deadline = None if time_limit is None else start + time_limit
    spec = _spec(instance, kind)
    run = _run(spec, backend, _highs_options(kind, _remaining(time_limit, start), rel_gap, threads),
               time.perf_counter() - start, deadline)
    extra = run.extra()
    extra.update(n_cols=spec.n_cols, n_rows=spec.n_rows, nnz=spec.nnz)
    bound, termination = run.bound, run.termination
    mask = None
    if run.values is not None and termination != "error":
        mask, off = _mip_mask(instance, spec, run.values)
        extra["max_integrality_violation"] = off
        if spec.notes["inexact_rows"] and not check_mask(instance, mask).feasible:
            # HiGHS's tolerance let through a point that breaks a budget exactly: solve the exact form
            exact_spec = _spec(instance, kind, exact=True)
            t = time.perf_counter()
            run2 = _run(exact_spec, backend,
                        _highs_options(kind, _remaining(time_limit, start), rel_gap, threads), 0.0,
                        deadline)
            extra.update(exact_resolve=True, exact_resolve_s=time.perf_counter() - t,
                         exact_resolve_status=run2.status)
            if run2.values is not None and run2.termination != "error":
                mask, extra["max_integrality_violation"] = _mip_mask(instance, exact_spec, run2.values)
                termination = run2.termination
                bound = min(bound, run2.bound)
        mask, extra["repaired"] = _repaired(instance, mask)
    if termination == "optimal" and rel_gap > 0:
        termination = "gap_limit"
    scale = spec.notes["objective_scale"]
    extra["objective_scale"] = scale
    if kind == "compact":
        extra["relaxed_tails"] = spec.notes["relaxed_tails"]
    return RawSolution(mask, bound / scale, termination, extra)


def solve_ilp(instance: PruningInstance, *, time_limit: float | None = None, rel_gap: float = 0.0,
              threads: int | None = None, **options: Any) -> RawSolution:
    """Per-weight ILP (one binary per weight) with HiGHS branch-and-bound; bound = mip_dual_bound.

    ``backend``: "auto" (Pyomo up to :data:`PYOMO_MAX_NNZ` nonzeros, highspy above), "pyomo" or
    "highspy". A time-limited run returns HiGHS's incumbent (None if it has none) and its bound.
    """
    backend = _check_options(dict(options), "highs-ilp")
    return _solve_mip(instance, "ilp", time_limit, rel_gap, threads, backend)


def solve_compact(instance: PruningInstance, *, time_limit: float | None = None, rel_gap: float = 0.0,
                  threads: int | None = None, **options: Any) -> RawSolution:
    """Compact per-layer MILP (L integer counts + epigraph cuts); the counts k_l (rounded to the
    nearest integer) keep the k_l most important weights of each layer."""
    backend = _check_options(dict(options), "highs-compact")
    return _solve_mip(instance, "compact", time_limit, rel_gap, threads, backend)


def solve_lp(instance: PruningInstance, *, time_limit: float | None = None, rel_gap: float = 0.0,
             threads: int | None = None, **options: Any) -> RawSolution:
    """LP relaxation by interior point + crossover (presolve off), so the solution is basic. Mask: the weights with z_i >= 1 - 1e-9
    (fractional ones dropped, so the mask fits every budget); bound: the Lagrangian value at
    HiGHS's row duals (= the LP optimum at optimal duals, valid for any duals);
    ``extra["n_fractional"]``: entries in (1e-9, 1 - 1e-9), at most the number of rows at a
    basic solution. ``rel_gap`` does not apply to an LP."""
    backend = _check_options(dict(options), "highs-lp")
    start = time.perf_counter()
    deadline = None if time_limit is None else start + time_limit
    spec = _spec(instance, "lp")
    run = _run(spec, backend, _highs_options("lp", _remaining(time_limit, start), rel_gap, threads),
               time.perf_counter() - start, deadline)
    extra = run.extra()
    scale = spec.notes["objective_scale"]
    extra.update(n_cols=spec.n_cols, n_rows=spec.n_rows, nnz=spec.nnz, lp_objective=run.objective / scale,
                 objective_scale=scale)
    arrays = spec.arrays()
    duals = run.row_duals if run.row_duals is not None else np.zeros(spec.n_rows)
    extra["bound_from_duals"] = run.row_duals is not None
    bound = lagrangian_bound(arrays, np.abs(duals)) / scale
    mask = None
    if run.values is not None and run.termination != "error":
        z = run.values[spec.column_block("z").cols]
        extra["n_fractional"] = int(np.count_nonzero((z > LP_INTEGRAL_TOL) & (z < 1 - LP_INTEGRAL_TOL)))
        mask, extra["repaired"] = _repaired(instance, z >= 1 - LP_INTEGRAL_TOL)
        if run.termination != "optimal" and not mask.any():
            mask = None    # a stopped interior point keeps nothing: no solution, not an empty "feasible" mask
    return RawSolution(mask, bound, run.termination, extra)


def lagrangian_bound(arrays: dict[str, np.ndarray], y: np.ndarray) -> float:
    """max c.x s.t. A x <= b, 0 <= x <= u is at most y.b + sum_j max(0, c_j - (A^T y)_j) u_j, any
    y >= 0; returned with a margin that covers the float rounding of its evaluation."""
    y = np.maximum(np.asarray(y, dtype=np.float64), 0.0)
    if np.any(np.isfinite(arrays["row_lower"])) or np.any(arrays["lower"] != 0):
        raise ValueError("lagrangian_bound needs rows A x <= b and columns 0 <= x <= u")
    n = arrays["cost"].size
    counts = np.diff(arrays["indptr"])
    aty = np.bincount(arrays["indices"], weights=arrays["data"] * np.repeat(y, counts), minlength=n)
    reduced = np.maximum(arrays["cost"] - aty, 0.0)
    value = float(np.dot(y, arrays["row_upper"]) + np.dot(reduced, arrays["upper"]))
    # rounding margin: every sum and product above has n + R + 4 roundings at most, each
    # bounded by eps times the magnitudes that enter it
    aty_abs = np.bincount(arrays["indices"], weights=np.abs(arrays["data"]) * np.repeat(y, counts), minlength=n)
    scale = float(np.dot(np.abs(y), np.abs(arrays["row_upper"])) +
                  np.dot(np.abs(arrays["cost"]) + aty_abs, np.abs(arrays["upper"])))
    return value + (n + y.size + 4) * np.finfo(np.float64).eps * scale
