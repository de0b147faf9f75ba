"""One result type for every solver, and the exact feasibility check every mask goes through.

Gap, defined once: for this maximisation the bound is an upper bound on the optimum and

    gap = (bound - objective) / max(|objective|, 1e-12)        (0 when bound <= objective)

Feasibility is checked exactly: the kept count of each group is an integer and every cost
and budget is a float, i.e. an exact dyadic rational; usage_r = sum_l c_{l,r} * k_l is
summed with :class:`fractions.Fraction` (O(L) exact operations after an O(p) count), so a
mask is never accepted because of rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from .exceptions import InvalidInstanceError
from .instance import PruningInstance

STATUSES = ("no_solution", "infeasible", "feasible", "optimal")
TERMINATIONS = ("optimal", "gap_limit", "time_limit", "iteration_limit", "heuristic",
                "infeasible", "error", "unknown")
GAP_FLOOR = 1e-12


def relative_gap(objective: float, bound: float) -> float:
    """(bound - objective) / max(|objective|, 1e-12), clipped at 0; inf without a bound."""
    if not math.isfinite(bound) or not math.isfinite(objective):
        return math.inf
    return max(0.0, (bound - objective) / max(abs(objective), GAP_FLOOR))


def kept_counts(instance: PruningInstance, mask: np.ndarray) -> np.ndarray:
    """(L,) number of kept weights in each group (no O(p) temporary: one count per group)."""
    offsets = instance.offsets
    return np.array([np.count_nonzero(mask[a:b]) for a, b in zip(offsets[:-1], offsets[1:])],
                    dtype=np.int64)


@dataclass(frozen=True)
class MaskCheck:
    """Exact resource use of a mask: counts per group, usage and slack per resource."""

    counts: np.ndarray
    usage: tuple[Fraction, ...]
    budgets: tuple[Fraction, ...]

    @property
    def feasible(self) -> bool:
        return all(u <= b for u, b in zip(self.usage, self.budgets))

    def violations(self, names: tuple[str, ...]) -> dict[str, float]:
        """Resource name -> amount over budget (only the violated ones)."""
        return {n: float(u - b) for n, u, b in zip(names, self.usage, self.budgets) if u > b}


def _exact(x: float) -> Fraction:
    return Fraction(x) if math.isfinite(x) else Fraction(10**400)  # inf: larger than any usage


def check_mask(instance: PruningInstance, mask: Any) -> MaskCheck:
    """Validate the mask's shape and type, then compute its exact use of every resource."""
    m = np.asarray(mask)
    if m.dtype != bool:
        raise InvalidInstanceError(f"`mask` must be a bool array; got dtype {m.dtype}")
    if m.shape != (instance.n_weights,):
        raise InvalidInstanceError(
            f"`mask` must have shape ({instance.n_weights},); got {m.shape}")
    counts = kept_counts(instance, np.ascontiguousarray(m))
    usage = []
    for r in range(instance.n_resources):
        col = instance.costs[:, r]
        usage.append(sum((Fraction(float(c)) * int(k) for c, k in zip(col, counts) if k), Fraction(0)))
    budgets = tuple(_exact(float(b)) for b in instance.budgets)
    return MaskCheck(counts, tuple(usage), budgets)


def mask_objective(instance: PruningInstance, mask: np.ndarray) -> float:
    """sum of kept importances, accumulated in float64."""
    return float(np.sum(instance.importance, where=mask, dtype=np.float64))


@dataclass
class SolveResult:
    """What every solver returns.

    mask: (p,) bool, groups concatenated in order; objective: sum of kept importances
    (recomputed from the mask); bound: proven upper bound on the optimum (inf if none);
    gap: see module docstring; status: what you hold (no_solution < infeasible < feasible <
    optimal; ``infeasible`` = a mask that breaks a budget, e.g. the FLOP-unaware baseline);
    termination: why the solver stopped; runtime_s: wall time of the solve;
    usage: resource name -> used amount; options: the options used; extra: solver details.
    """

    mask: np.ndarray
    objective: float
    bound: float
    gap: float
    status: str
    termination: str
    runtime_s: float
    solver: str
    usage: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, include_mask: bool = False) -> dict[str, Any]:
        """JSON-friendly dict (mask as a list of kept indices only if asked)."""
        out = {k: getattr(self, k) for k in
               ("solver", "status", "termination", "objective", "bound", "gap", "runtime_s",
                "usage", "options", "extra")}
        out["n_kept"] = int(self.mask.sum()) if self.mask is not None else 0
        for k in ("objective", "bound", "gap"):
            if not math.isfinite(out[k]):
                out[k] = None
        if include_mask:
            out["kept_indices"] = np.flatnonzero(self.mask).tolist()
        return out
