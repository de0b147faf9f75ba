"""Run solvers on suite instances, check every result, and produce one record per run.

A run = (instance, solver, repeat). :func:`run_task` is the worker: it loads the instance
(cached per process), calls :func:`falcon_milp.solve`, re-checks the answer and returns a
record (fields in :data:`falcon_milp.bench.records.FIELDS`). :func:`run_tasks` runs the
tasks in this process (``jobs=1``), in ``jobs`` worker processes or on Dask
(:mod:`falcon_milp.executors`); either way every record's content apart from timings is the
same, because each run depends only on its task.

Checks on every run (failures go to ``record["checks"]``, never silently dropped):

- the mask is re-checked exactly (:func:`falcon_milp.result.check_mask`); a FLOP-aware
  solver must return a feasible mask; the FLOP-unaware ``magnitude`` baseline may break a
  budget, then its status is ``infeasible`` and ``violation`` says by how much;
- the objective is recomputed from the mask (different summation order) and must agree to
  ``CHECK_RTOL``;
- a feasible objective must not exceed the solver's own bound nor the best-known upper
  bound, and the solver's bound must not be below the best-known lower bound (all with
  tolerance ``CHECK_RTOL`` relative);
- a result claimed ``optimal`` must reach the best-known lower bound.

Peak memory is measured in the worker around the solve (:class:`falcon_milp.memory.PeakMemory`):
on Linux the kernel's resident-set high-water mark is reset (``/proc/self/clear_refs``) just
before the solve and read (``VmHWM``) just after, minus the resident size at the start
(``mem_method`` = ``vmhwm-reset``); this counts native allocations (HiGHS) as well as numpy.
Elsewhere the ``ru_maxrss`` growth is used (``ru_maxrss-delta``), which only sees growth above
the process's earlier peak.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..exceptions import FalconError, SolverUnavailableError
from ..executors import ExecutorConfig, execute, one_line, resolve_executor
from ..instance import PruningInstance
from ..memory import PeakMemory
from ..result import check_mask
from ..solvers.registry import get_solver, solve
from .records import RECORD_SCHEMA, jsonable
from .suite import BestKnown, SizeLimit, Suite, SuiteEntry, problem_digest

CHECK_RTOL = 1e-9
"""Relative tolerance of the objective / bound checks (floor 1e-12 absolute)."""


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
    """One run: everything the worker needs, picklable."""

    key: tuple[int, int, int]      # (instance index, solver index, repeat)
    entry: SuiteEntry
    solver: str
    time_limit: float | None
    threads: int | None
    size_limit: SizeLimit | None = None
    suite: str = ""
    run_id: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def make_tasks(suite: Suite, solvers: Sequence[str], *, time_limit: float | None,
               repeat: int = 1, threads: int | None = 1, run_id: str = "") -> list[Task]:
    """All (instance, solver, repeat) runs of a suite in the deterministic order."""
    tasks = []
    for i, entry in enumerate(suite.entries):
        for j, solver in enumerate(solvers):
            for r in range(repeat):
                tasks.append(Task((i, j, r), entry, solver, time_limit, threads,
                                  suite.size_limits.get(solver), suite.name, run_id))
    return tasks


# --------------------------------------------------------------------------- loading
class _InstanceCache:
    """The last instance loaded in this process (tasks come instance by instance)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.value: tuple[PruningInstance, str] | None = None

    def get(self, entry: SuiteEntry) -> tuple[PruningInstance, str, float]:
        if self.name == entry.source and self.value is not None:
            return self.value[0], self.value[1], 0.0
        self.name, self.value = None, None
        t0 = time.perf_counter()
        inst = entry.load()
        digest = problem_digest(inst)
        self.name, self.value = entry.source, (inst, digest)
        return inst, digest, time.perf_counter() - t0


_CACHE = _InstanceCache()


# --------------------------------------------------------------------------- gaps and checks
def _rel(num: float, den: float) -> float:
    return num / max(abs(den), 1e-12)


def gaps_to_best(objective: float | None, best: BestKnown | None) -> tuple[float | None, float | None]:
    """(gap to the best-known upper bound, gap to the best-known lower bound).

    gap_to_best = (U - obj) / max(|U|, 1e-12): U is the proven optimum when lower == upper,
    otherwise the best proven upper bound, so this is never below the true relative gap
    (obj / U <= obj / OPT). gap_to_best_lower = (L - obj) / max(|L|, 1e-12) is never above
    it; it is negative when the run beats the best-known feasible value.
    Values within CHECK_RTOL of 0 are reported as 0.
    """
    if objective is None or best is None:
        return None, None
    out = []
    for ref in (best.upper, best.lower):
        if ref is None:
            out.append(None)
            continue
        g = _rel(ref - objective, ref)
        out.append(0.0 if abs(g) <= CHECK_RTOL else g)
    return out[0], out[1]


def _tol(*values: float) -> float:
    return CHECK_RTOL * max([1e-12] + [abs(v) for v in values if v is not None and math.isfinite(v)])


def check_result(instance: PruningInstance, result: Any, flop_aware: bool,
                 best: BestKnown | None) -> list[str]:
    """Failed checks of one solve result (empty list: all passed). See the module docstring."""
    fails: list[str] = []
    if result.status == "no_solution":
        b = result.bound
        if best is not None and best.lower is not None and math.isfinite(b) and b < best.lower - _tol(b, best.lower):
            fails.append(f"bound {b!r} is below the best-known lower bound {best.lower!r}")
        return fails
    try:
        check = check_mask(instance, result.mask)
    except FalconError as exc:
        return [f"mask rejected: {exc}"]
    if check.feasible and result.status == "infeasible":
        fails.append("status infeasible but the mask is feasible")
    if not check.feasible:
        if result.status != "infeasible":
            fails.append(f"status {result.status} but the mask breaks "
                         f"{', '.join(check.violations(instance.resource_names))}")
        if flop_aware:
            fails.append("a FLOP-aware solver returned an infeasible mask: "
                         + ", ".join(f"{k} over by {v:.6g}" for k, v in
                                     check.violations(instance.resource_names).items()))
    imp = instance.importance
    recomputed = float(np.sum(imp[result.mask], dtype=np.float64))
    if abs(recomputed - result.objective) > _tol(recomputed, result.objective):
        fails.append(f"objective {result.objective!r} differs from the recomputed {recomputed!r}")
    obj, bound = result.objective, result.bound
    if check.feasible:
        if math.isfinite(bound) and obj > bound + _tol(obj, bound):
            fails.append(f"objective {obj!r} exceeds the solver's bound {bound!r}")
        if best is not None and best.upper is not None and obj > best.upper + _tol(obj, best.upper):
            fails.append(f"objective {obj!r} exceeds the best-known upper bound {best.upper!r}")
        if (result.status == "optimal" and best is not None and best.lower is not None
                and obj < best.lower - _tol(obj, best.lower)):
            fails.append(f"claimed optimal but {obj!r} is below the best-known lower bound {best.lower!r}")
    if best is not None and best.lower is not None and math.isfinite(bound) and bound < best.lower - _tol(bound, best.lower):
        fails.append(f"bound {bound!r} is below the best-known lower bound {best.lower!r}")
    return fails


def mask_sha256(mask: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(np.asarray(mask, dtype=bool)).tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- the worker
def _base_record(task: Task) -> dict[str, Any]:
    spec_exact, spec_aware = None, None
    try:
        spec = get_solver(task.solver)
        spec_exact, spec_aware = spec.exact, spec.flop_aware
    except FalconError:
        pass
    best = task.entry.best
    return {
        "schema": RECORD_SCHEMA, "run_id": task.run_id, "key": list(task.key),
        "instance": task.entry.name, "family": task.entry.family,
        "n_weights": task.entry.n_weights, "n_groups": None, "budgets": None, "digest": None,
        "solver": task.solver, "exact": spec_exact, "flop_aware": spec_aware,
        "options": {"time_limit": task.time_limit, "threads": task.threads, **task.options},
        "repeat": task.key[2], "status": "error", "termination": None, "reason": None,
        "objective": None, "bound": None, "gap": None,
        "best_lower": best.lower if best else None, "best_upper": best.upper if best else None,
        "best_lower_by": list(best.lower_by) if best else [],
        "best_upper_by": list(best.upper_by) if best else [],
        "best_optimal": best.optimal if best else False,
        "gap_to_best": None, "gap_to_best_lower": None,
        "n_kept": None, "usage": None, "violation": None, "checks": [], "mask_sha256": None,
        "runtime_s": None, "wall_s": None, "load_s": None, "peak_mem_bytes": None,
        "mem_method": None, "worker_pid": os.getpid(), "extra": {},
    }


def run_task(task: Task) -> dict[str, Any]:
    """Run one task and return its record. Never raises for a solver failure (KeyboardInterrupt
    and SystemExit pass through)."""
    rec = _base_record(task)
    try:
        inst, digest, load_s = _CACHE.get(task.entry)
    except Exception as exc:  # noqa: BLE001 - recorded, not hidden
        rec["reason"] = f"could not load the instance: {one_line(exc)}"
        return rec
    rec.update(n_weights=inst.n_weights, n_groups=inst.n_groups, digest=digest, load_s=load_s,
               budgets={n: (None if not math.isfinite(float(b)) else int(b) if r == 0 else float(b))
                        for r, (n, b) in enumerate(zip(inst.resource_names, inst.budgets))})
    best = task.entry.best
    if best is not None and task.entry.digest is not None and task.entry.digest != digest:
        rec["checks"].append(f"instance digest {digest} differs from the MANIFEST's "
                             f"{task.entry.digest}: best-known bounds not used (regenerate the MANIFEST)")
        best = None
        rec.update(best_lower=None, best_upper=None, best_lower_by=[], best_upper_by=[],
                   best_optimal=False)
    too_big = task.size_limit.refuses(inst.n_weights, inst.n_groups) if task.size_limit else None
    if too_big:
        rec["status"] = "skipped"
        rec["reason"] = f"suite '{task.suite}' gives '{task.solver}' instances of {too_big}"
        return rec
    probe = PeakMemory()
    t0 = time.perf_counter()
    probe.start()
    try:
        result = solve(inst, solver=task.solver, time_limit=task.time_limit, threads=task.threads,
                       **task.options)
    except SolverUnavailableError as exc:
        rec.update(status="skipped", reason=one_line(exc), wall_s=time.perf_counter() - t0)
        return rec
    except Exception as exc:  # noqa: BLE001 - a crashing solver is a result to report
        rec.update(status="error", reason=one_line(exc), wall_s=time.perf_counter() - t0,
                   peak_mem_bytes=probe.peak(), mem_method=probe.method)
        return rec
    peak = probe.peak()
    spec = get_solver(task.solver)
    fails = check_result(inst, result, spec.flop_aware, best)
    wall = time.perf_counter() - t0
    rec.update(status=result.status, termination=result.termination,
               runtime_s=result.runtime_s, wall_s=wall, peak_mem_bytes=peak, mem_method=probe.method,
               bound=result.bound if math.isfinite(result.bound) else None,
               options=jsonable({**result.options, **rec["options"]}),
               extra=jsonable(result.extra))
    rec["checks"].extend(fails)
    if result.status == "no_solution":
        rec["reason"] = ("no feasible mask within the time limit" if result.termination == "time_limit"
                         else f"no feasible mask (termination {result.termination})")
        return rec
    rec.update(objective=result.objective, n_kept=int(result.mask.sum()),
               gap=result.gap if math.isfinite(result.gap) else None,
               usage=jsonable(result.usage), mask_sha256=mask_sha256(result.mask))
    if result.status == "infeasible":
        rec["violation"] = jsonable(result.extra.get("violation")
                                    or check_mask(inst, result.mask).violations(inst.resource_names))
    else:
        rec["gap_to_best"], rec["gap_to_best_lower"] = gaps_to_best(result.objective, best)
    return rec


# --------------------------------------------------------------------------- the runner
def lost_record(task: Task, message: str) -> dict[str, Any]:
    """The record of a task that gave no result (its dask worker died on every try)."""
    rec = _base_record(task)
    rec.update(status="error", reason=f"no result: {message}", worker_pid=None)
    return rec


def run_tasks(tasks: Iterable[Task], jobs: int = 1,
              on_record: Callable[[dict[str, Any]], None] | None = None, *,
              executor: ExecutorConfig | None = None,
              on_start: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run every task; call ``on_record`` as each record arrives (completion order).

    ``executor`` (:mod:`falcon_milp.executors`): ``local`` (this process), ``processes`` (a
    pool of spawned worker processes, one task at a time each) or ``dask``; without it,
    ``jobs=1`` is local and ``jobs>1`` a pool of ``jobs`` processes. Every task gives exactly
    one record (a dask task whose worker kept dying: an ``error`` record, :func:`lost_record`).
    Ctrl-C stops the workers and re-raises KeyboardInterrupt after the records already
    received were handed to ``on_record``; run locally, the run in progress is recorded as
    ``interrupted``.
    """
    tasks = list(tasks)
    if executor is None:
        executor = resolve_executor(None, max(1, jobs))
    records: list[dict[str, Any]] = []

    def take(rec: dict[str, Any]) -> None:
        records.append(rec)
        if on_record is not None:
            on_record(rec)

    def run_here(task: Task) -> dict[str, Any]:
        try:
            return run_task(task)
        except KeyboardInterrupt:     # the run in progress is recorded as interrupted
            rec = _base_record(task)
            rec.update(status="interrupted", reason="stopped by Ctrl-C")
            take(rec)
            raise

    in_process = executor.kind == "local" or (executor.kind == "processes" and
                                               (len(tasks) <= 1 or (executor.workers or 1) <= 1))
    execute(run_here if in_process else run_task, tasks, executor, take, on_lost=lost_record,
            on_start=on_start, name="bench")
    return records
