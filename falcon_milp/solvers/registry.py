"""Solver registry and the one ``solve`` entry point.

Each solver is a function ``f(instance, *, time_limit, rel_gap, threads, **options) ->
RawSolution`` living in its own module, imported only when used (so importing falcon_milp
pulls in neither pyomo nor highspy). ``solve`` validates the options, times the call
and hands the raw answer to :func:`falcon_milp.certificate.finish` (exact mask check, objective,
gap and status from the certificate alone).
"""
from __future__ import annotations

import importlib
import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..certificate import RawSolution, finish
from ..exceptions import SolverOptionError, SolverRegistrationError, SolverUnavailableError, UnknownSolverError
from ..instance import PruningInstance
from ..result import SolveResult
from ..validation import integer, real


@dataclass(frozen=True)
class SolverSpec:
    name: str
    target: str | Callable[..., RawSolution]   # "module:function" (imported lazily) or the function
    exact: bool            # proves optimality; default rel_gap 0
    description: str
    flop_aware: bool = True
    max_weights: int | None = None   # larger instances raise SolverUnavailableError
    requires: tuple[str, ...] = ()   # modules that must import for the solver to be available

    def load(self) -> Callable[..., RawSolution]:
        """The solver function (imports its module and the ``requires`` modules; ImportError if missing)."""
        for module in self.requires:
            importlib.import_module(module)
        if callable(self.target):
            return self.target
        module, func = self.target.split(":")
        try:
            return getattr(importlib.import_module(module), func)
        except AttributeError:     # as `from module import func` does
            raise ImportError(f"cannot import name {func!r} from {module!r}") from None


_HIGHS = ("highspy", "pyomo.environ")
_SPECS = [
    SolverSpec("highs-ilp", "falcon_milp.solvers.highs:solve_ilp", True,
               "per-weight ILP by HiGHS branch-and-bound (Pyomo up to 50k nonzeros, highspy above)", max_weights=2_000_000,
               requires=_HIGHS),
    SolverSpec("highs-lp", "falcon_milp.solvers.highs:solve_lp", False,
               "LP relaxation by HiGHS simplex (highspy); mask = its integral part", max_weights=2_000_000,
               requires=("highspy",)),
    SolverSpec("highs-compact", "falcon_milp.solvers.highs:solve_compact", True,
               "compact per-layer MILP (one integer count per layer) by HiGHS (Pyomo up to 50k nonzeros, highspy above)",
               requires=_HIGHS),
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
"""Every registered solver by name (built-in first, then :func:`register_solver` order)."""


def _unavailable(spec: SolverSpec) -> str | None:
    """Why ``spec`` cannot run here (its module or a required backend fails to import), or None."""
    try:
        spec.load()
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def solver_names() -> list[str]:
    """Names of the registered solvers that can run here, in registry order.

    An availability check for real: each solver's module and the backends it needs (highspy,
    Pyomo for the HiGHS solvers) are imported; a solver whose imports fail is left out.
    """
    return [name for name, spec in REGISTRY.items() if _unavailable(spec) is None]


def get_solver(name: str) -> SolverSpec:
    """The spec of solver ``name``; UnknownSolverError if not registered, SolverUnavailableError
    if its module or backend cannot be imported here (only this solver's imports are tried)."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise UnknownSolverError(f"`solver` must be one of {', '.join(solver_names())}; got {name!r}")
    spec = REGISTRY[name]
    why = _unavailable(spec)
    if why is not None:
        raise SolverUnavailableError(f"solver '{name}' is not available here ({why})")
    return spec


def register_solver(name: str, func_or_target: str | Callable[..., RawSolution], *, exact: bool,
                    description: str, flop_aware: bool = True, max_weights: int | None = None,
                    requires: tuple[str, ...] = ()) -> SolverSpec:
    """Add a solver to :data:`REGISTRY` so that :func:`solve`, the CLI and the bench can use it.

    ``func_or_target``: the solver function ``f(instance, *, time_limit, rel_gap, threads,
    **options) -> RawSolution``, or ``"module:function"`` imported on first use. ``exact``:
    it proves optimality (``rel_gap`` defaults to 0); ``flop_aware=False`` marks baselines
    that may break the FLOP budget; ``max_weights``: larger instances are refused;
    ``requires``: modules that must import for it to be available. A name already
    registered is refused (SolverRegistrationError). Returns the new spec.
    """
    if not isinstance(name, str) or not name or name != name.strip() or any(c.isspace() or c == "," for c in name):
        raise SolverRegistrationError(f"`name` must be a non-empty string without spaces or commas; got {name!r}")
    if name in REGISTRY:
        raise SolverRegistrationError(f"`name` {name!r} is already registered; choose another name")
    if isinstance(func_or_target, str):
        module, sep, func = func_or_target.partition(":")
        if not sep or not module or not func or ":" in func:
            raise SolverRegistrationError(
                f"`func_or_target` must be a function or 'module:function'; got {func_or_target!r}")
    elif callable(func_or_target):
        try:
            params = inspect.signature(func_or_target).parameters
        except (TypeError, ValueError):
            params = None
        if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            missing = [k for k in ("time_limit", "rel_gap", "threads") if k not in params]
            if missing:
                raise SolverRegistrationError(
                    f"`func_or_target` must accept the keyword `{missing[0]}` (solve() passes "
                    "time_limit, rel_gap and threads)")
    else:
        raise SolverRegistrationError(
            f"`func_or_target` must be a function or 'module:function'; got {type(func_or_target).__name__}")
    for flag, value in (("exact", exact), ("flop_aware", flop_aware)):
        if not isinstance(value, bool):
            raise SolverRegistrationError(f"`{flag}` must be True or False; got {value!r}")
    if not isinstance(description, str) or not description.strip():
        raise SolverRegistrationError(f"`description` must be a non-empty string; got {description!r}")
    if max_weights is not None and (isinstance(max_weights, bool) or not isinstance(max_weights, int)
                                    or max_weights < 1):
        raise SolverRegistrationError(f"`max_weights` must be None or an integer >= 1; got {max_weights!r}")
    if isinstance(requires, str) or not all(isinstance(m, str) and m for m in requires):
        raise SolverRegistrationError(f"`requires` must be a tuple of module names; got {requires!r}")
    spec = SolverSpec(name, func_or_target, exact, description, flop_aware, max_weights, tuple(requires))
    REGISTRY[name] = spec
    return spec


def _check_extra_options(spec: SolverSpec, func: Callable[..., Any], options: dict[str, Any]) -> None:
    """Unknown keyword options -> SolverOptionError listing the accepted ones (from the signature).

    A solver taking ``**options`` checks them itself (the HiGHS solvers do).
    """
    if not options:
        return
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in list(params.items())[1:]
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in options:
        if key not in accepted:
            raise SolverOptionError(f"unknown option `{key}` for solver '{spec.name}'; it accepts: "
                                    + ", ".join(f"`{n}`" for n in accepted))


def _check_options(time_limit: Any, rel_gap: Any, threads: Any) -> None:
    """The options every solver takes (None = the default)."""
    real(time_limit, "time_limit", strict=True, unit="seconds", error=SolverOptionError, optional=True)
    real(rel_gap, "rel_gap", error=SolverOptionError, optional=True)
    if threads is not None:
        integer(threads, "threads", 1, error=SolverOptionError)


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
    _check_extra_options(spec, func, options)
    start = time.perf_counter()
    raw = func(instance, time_limit=time_limit, rel_gap=gap_target, threads=threads, **options)
    runtime = time.perf_counter() - start
    used = {"time_limit": time_limit, "rel_gap": gap_target, "threads": threads, **options}
    return finish(instance, spec.name, raw, runtime, used)
