"""The LP with more than two rows (extra resources): solved over a core of weights by HiGHS.

With several multipliers the breakpoint search of :mod:`.lp` no longer applies. The LP is then
solved over a *core*: the two-row LP gives first thresholds, weights far above (below) their
layer threshold are fixed to 1 (0), SciPy's HiGHS solves the LP over the weights in between,
and its duals price the fixed weights; a layer whose fixed weights have the wrong reduced-cost
sign gets a wider core and the LP is solved again. The result is the LP optimum up to HiGHS's
tolerances (not exact in the sense of :mod:`.lp`); the bound is the dual value at HiGHS's duals
evaluated by the caller, which is valid for any duals, so it stays certified. The primal counts
are floored and repaired (:func:`.rounding.repair_counts`) until every row fits exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .rounding import repair_counts

if TYPE_CHECKING:
    from .lp import DualPoint, Problem


@dataclass
class CoreLP:
    """The core LP's answer: the dual point at HiGHS's duals, primal counts, their floor (repaired
    to fit), the primal value, rounds of core widening and details."""

    point: DualPoint
    x: np.ndarray
    floor: np.ndarray
    lp_value: float
    rounds: int
    extra: dict[str, Any] = field(default_factory=dict)


def core_lp(prob: Problem, mu0: np.ndarray, w0: float) -> CoreLP:
    """Several multiplier rows: the LP over a core of weights near the thresholds (HiGHS).

    Start from the multipliers ``mu0`` and ``w0`` (the two-row LP's, extra multipliers 0); fix
    every weight far above its layer threshold to 1 and far below to 0, solve the LP over the
    weights in between with SciPy's HiGHS, and price the fixed weights with its duals: if the
    last fixed-in weight of some layer has a negative reduced value (or the first fixed-out one
    a positive value) the core of that layer is widened and the LP solved again. At the end the
    duals satisfy every reduced-cost sign, i.e. the LP optimum up to HiGHS's tolerances.
    """
    from scipy.optimize import linprog

    L = prob.L
    sizes = prob.sizes
    thr = prob.shifts(mu0) + w0
    width = np.full(L, 64, dtype=np.int64)
    cnt = prob.layers.counts_gt(thr)
    lo = np.maximum(cnt - width, 0)
    hi = np.minimum(prob.layers.counts_ge(thr) + width, sizes)
    costs = prob.costs[:, [0] + prob.active]
    caps = np.array([float(prob.S)] + [prob.budgets[r] for r in prob.active])
    rounds = 0
    solved = None
    while True:
        rounds += 1
        # residual budgets after the fixed-in weights; widen downwards while negative
        resid = caps - costs.T @ lo
        if np.any(resid < 0) and np.any(lo > 0):
            lo = np.maximum(lo - np.maximum(width, lo // 2), 0)
            width *= 2
            continue
        vals = [prob.layers.range_values(l, int(lo[l]), int(hi[l])) for l in range(L)]
        owner = np.repeat(np.arange(L), [v.size for v in vals])
        a = np.concatenate(vals) if owner.size else np.zeros(0)
        A = costs[owner].T
        res = linprog(-a, A_ub=A, b_ub=np.maximum(resid, 0.0), bounds=(0.0, 1.0), method="highs")
        if res.status != 0:            # pragma: no cover - HiGHS failure: keep what we have
            break
        solved = (res, lo.copy(), owner, a)
        y = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)
        thr = costs @ y
        grow = False
        for l in range(L):
            if lo[l] > 0 and prob.layers.value(l, int(lo[l]) - 1) < thr[l] * (1 - 1e-12):
                lo[l] = max(0, int(lo[l]) - 2 * int(width[l]))
                width[l] *= 2
                grow = True
            if hi[l] < sizes[l] and prob.layers.value(l, int(hi[l])) > thr[l] * (1 + 1e-12) + 1e-300:
                hi[l] = min(int(sizes[l]), int(hi[l]) + 2 * int(width[l]))
                width[l] *= 2
                grow = True
        if not grow or rounds > 30:
            break
    if solved is None:                 # pragma: no cover - no LP answer: the two-row point
        point = prob.evaluate(mu0)
        fl = repair_counts(prob, prob.fill_ties(point, prob.active[0], False), point.shifts)
        return CoreLP(point, fl.astype(np.float64), fl, prob.value_of(fl), rounds, {"core_lp": "failed"})
    res, lo, owner, a = solved
    # evaluate() re-optimises w for HiGHS's mu: at least as good a bound as HiGHS's w
    point = prob.evaluate(np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)[1:])
    x = lo.astype(np.float64) + np.bincount(owner, weights=res.x, minlength=L)
    fl = repair_counts(prob, np.floor(x + 1e-9).astype(np.int64), point.shifts)
    lp_value = float(np.dot(a, res.x)) + float(np.sum(prob.layers.topsums(lo)))
    return CoreLP(point, x, fl, lp_value, rounds, {"core_size": int(a.size)})
