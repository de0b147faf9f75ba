"""The certificate: what a solver hands back (:class:`RawSolution`) and how it becomes a result.

:func:`finish` re-checks the mask exactly (:func:`falcon_milp.result.check_mask`), recomputes
the objective from the mask and derives gap and status from the certificate alone:

    status = optimal   if the mask is feasible and gap <= OPTIMALITY_TOL (proven)
             feasible  if the mask is feasible (termination "gap_limit" when gap <= rel_gap)
             infeasible if it breaks a budget (only FLOP-unaware baselines; gap = inf)

A bound below the mask's own objective raises :class:`CertificateError` (never returned).
The gap is the one of :func:`falcon_milp.result.relative_gap`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .exceptions import CertificateError
from .instance import PruningInstance
from .result import SolveResult, check_mask, mask_objective, relative_gap

OPTIMALITY_TOL = 1e-9
"""A result whose certified relative gap is at most this is reported ``optimal``."""
CERTIFICATE_TOL = 1e-9
"""A bound below the mask's objective by more than this (relative) is an internal error."""


@dataclass
class RawSolution:
    """What a solver function hands back to :func:`falcon_milp.solve`."""

    mask: np.ndarray | None
    bound: float = math.inf
    termination: str = "heuristic"
    extra: dict[str, Any] = field(default_factory=dict)


def finish(instance: PruningInstance, solver: str, raw: RawSolution, runtime: float,
           options: dict[str, Any]) -> SolveResult:
    """Turn solver ``solver``'s raw output into a checked result (exact budget check, objective, gap)."""
    extra = dict(raw.extra)
    if raw.mask is None:
        return SolveResult(np.zeros(instance.n_weights, dtype=bool), -math.inf, float(raw.bound),
                           math.inf, "no_solution", raw.termination, runtime, solver, {},
                           options, extra)
    mask = np.asarray(raw.mask, dtype=bool)
    check = check_mask(instance, mask)
    objective = mask_objective(instance, mask)
    usage = {n: float(u) for n, u in zip(instance.resource_names, check.usage)}
    bound = float(raw.bound)
    termination = raw.termination
    if not check.feasible:       # a budget-breaking mask (FLOP-unaware baselines): no gap to speak of
        status, gap = "infeasible", math.inf
        extra["violation"] = check.violations(instance.resource_names)
    else:
        if bound < objective - CERTIFICATE_TOL * max(1.0, abs(objective)):
            raise CertificateError(
                f"solver '{solver}' returned bound {bound!r} below its mask's objective "
                f"{objective!r}: an internal error (please report it)")
        gap = relative_gap(objective, bound)
        if gap <= OPTIMALITY_TOL:
            status = "optimal"
        else:
            status = "feasible"
            if gap <= (options.get("rel_gap") or 0.0) and termination in ("optimal", "heuristic"):
                termination = "gap_limit"   # proven within the requested gap, not optimal
    return SolveResult(mask, objective, bound, gap, status, termination, runtime, solver,
                       usage, options, extra)
