"""``falcon-lagrangian``: the FALCON paper's Lagrangian algorithm for the selection ILP, plus its bound.

Reproduced from the method description (docs: ``falcon-method.md`` section 2; Meng et al.,
AISTATS 2024) and the facts of the published implementation:

1. sort every layer once (ascending ``-I``);
2. golden-section search on the FLOP multiplier lam in ``[0, max_i I_i / f_i]``, stopping when
   the interval is shorter than ``stop_acc`` (1e-12, as published: about 50 steps). Each step
   evaluates the dual ``q(lam) = S w + F lam + sum_i max(0, I_i - lam f_i - w)`` with the
   closed-form ``w = max(0, (S+1)-th largest of I_i - lam f_i)``, by merging the per-layer
   sorted lists shifted by ``lam f_l`` into one sorted array (a k-way merge of presorted runs,
   O(p log L) per step, as the published code does with pairwise merges);
3. rounding at the final lam (midpoint of the last interval): order all weights by reduced
   cost ``I_i - lam f_i`` (a full argsort), find the longest prefix that fits the FLOP budget
   and S, and keep the weights whose reduced cost is strictly above that of the first weight
   left out and above 0.

Differences from the published code, on purpose:
- the dual value at the final lam is returned as the bound (the published code throws it
  away); it is computed in float64 from the sorted layers with a rounding margin, so the
  reported gap is certified;
- the merged array is float64 (also for float32 input), so the search compares accurate
  dual values;
- extra resource rows (beyond NNZ and FLOPs): the search is over the FLOP multiplier only,
  the other multipliers are 0, so the bound (the dual of the problem without the extra rows)
  is still a valid upper bound; the rounding prefix must fit every row;
- the final mask is checked with exact arithmetic and, if float rounding in the cumulative
  sums let it exceed a budget, the last weights of the prefix are dropped.
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..instance import PruningInstance
from ..certificate import RawSolution
from .lp import Problem
from .rounding import repair_mask
from .sorted_layers import ExactRows, SortedLayers

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class _Merger:
    """Evaluates q(lam) by merging the shifted per-layer sorted lists (ascending -I + lam f)."""

    def __init__(self, layers: SortedLayers, flops: np.ndarray, S: int, F: float) -> None:
        self.layers = layers
        self.flops = flops
        self.S = S
        self.F = F
        self.buf = np.empty(int(layers.sizes.sum()), dtype=np.float64)

    def __call__(self, lam: float) -> float:
        buf, pos = self.buf, 0
        for view, f in zip(self.layers.views, self.flops):
            part = buf[pos:pos + view.size]
            part[...] = view
            part += lam * f
            pos += view.size
        buf.sort(kind="stable")          # timsort: merges the L presorted runs
        p = buf.size
        ome = max(-float(buf[self.S]), 0.0) if self.S < p else 0.0
        # sum_i max(0, -buf_i - ome): the entries below -ome form a prefix of the sorted array
        j = int(np.searchsorted(buf, -ome, "left"))
        total = -float(np.sum(buf[:j])) - j * ome
        return self.S * ome + self.F * lam + total


def solve_lagrangian(instance: PruningInstance, *, time_limit: float | None = None,
                     rel_gap: float = 0.0, threads: int | None = None, stop_acc: float = 1e-12,
                     max_steps: int = 200) -> RawSolution:
    """The paper's golden-section Lagrangian with reduced-cost prefix rounding; returns its dual bound."""
    start = time.perf_counter()
    prob = Problem(instance, threads, lattice=False)
    layers = prob.layers
    S = prob.S
    F = float(instance.budgets[1]) if instance.n_resources > 1 else math.inf
    flops = layers.costs[:, 1]
    pos = flops > 0
    termination = "heuristic"
    steps = 0
    if math.isfinite(F) and pos.any():
        merge = _Merger(layers, flops, S, F)
        lam_lb, lam_ub = 0.0, float(np.max(layers.first[pos] / flops[pos]))
        lam_1 = lam_lb + (lam_ub - lam_lb) * (1 - GOLDEN)
        lam_2 = lam_lb + (lam_ub - lam_lb) * GOLDEN
        obj_1, obj_2 = merge(lam_1), merge(lam_2)
        while lam_ub - lam_lb > stop_acc and steps < max_steps:
            if time_limit is not None and time.perf_counter() - start > time_limit:
                termination = "time_limit"
                break
            steps += 1
            if obj_1 > obj_2:
                lam_lb, lam_1, obj_1 = lam_1, lam_2, obj_2
                lam_2 = lam_lb + (lam_ub - lam_lb) * GOLDEN
                obj_2 = merge(lam_2)
            else:
                lam_ub, lam_2, obj_2 = lam_2, lam_1, obj_1
                lam_1 = lam_lb + (lam_ub - lam_lb) * (1 - GOLDEN)
                obj_1 = merge(lam_1)
        del merge
        lam = 0.5 * (lam_1 + lam_2)
    else:
        lam = 0.0
    mask = _prefix_rounding(instance, prob.rows, lam, S)
    # certified dual value at the final lam (other multipliers 0)
    mu = np.array([lam if r == 1 else 0.0 for r in prob.active])
    point = prob.evaluate(mu)
    bound = prob.certified_bound(point)
    return RawSolution(mask, bound, termination,
                       {"lambda": lam, "w": point.w, "golden_steps": steps})


def _prefix_rounding(instance: PruningInstance, rows: ExactRows, lam: float, S: int) -> np.ndarray:
    """Keep the longest prefix of the reduced-cost order that fits every budget (paper's rule)."""
    p = instance.n_weights
    group = instance.group_of_weight()
    reduced = instance.importance.astype(np.float64)
    reduced -= lam * instance.costs[group, 1]
    order = np.argsort(-reduced, kind="stable")
    n = min(S, p)
    for r in range(1, instance.n_resources):
        budget = float(instance.budgets[r])
        if math.isfinite(budget):
            csum = np.cumsum(instance.costs[group[order], r])
            n = min(n, int(np.searchsorted(csum, budget, side="right")))
            del csum
    thres = max(float(reduced[order[n]]), 0.0) if n < p else 0.0
    mask = reduced > thres
    # exact check; float rounding in the cumulative sums must never break a budget: drop the
    # last weights of the prefix
    return repair_mask(instance, mask, order[:n][::-1], rows)[0]
