"""Baselines: FLOP-unaware global magnitude, and importance/FLOP ratio greedy.

Both return a cheap valid upper bound so their gap is known:
- top-S bound: the optimum without the FLOP (and extra) budgets, sum of the S largest I_i;
- for ratio-greedy also the fractional-knapsack bound of each single cost row
  (Dantzig: items by I/c, fill the budget, last item fractional). The minimum is kept.
"""
from __future__ import annotations

import math

import numpy as np

from ..instance import PruningInstance
from ..certificate import RawSolution
from .rounding import repair_mask


def top_k_mask(importance: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k largest entries (ties broken by lower index)."""
    p = importance.size
    mask = np.zeros(p, dtype=bool)
    if k >= p:
        mask[:] = True
    elif k > 0:
        order = np.argsort(-importance, kind="stable")
        mask[order[:k]] = True
    return mask


def top_s_bound(instance: PruningInstance) -> float:
    """sum of the S largest importances: the optimum with only the NNZ budget."""
    imp = instance.importance
    s = min(instance.max_nnz, imp.size)
    if s == 0:
        return 0.0
    part = np.partition(imp, imp.size - s)[imp.size - s:].astype(np.float64)
    return float(np.sum(part)) + sum_margin(part.size, float(np.abs(part).sum()))


EPS = float(np.finfo(np.float64).eps)


def sum_margin(n: int, abs_sum: float) -> float:
    """Upper bound on the rounding error of numpy's float64 sum of n terms whose absolute values
    add to ``abs_sum`` (pairwise summation over blocks of up to 128 sequential terms), plus a
    few roundings of the code around it."""
    return (128 + math.ceil(math.log2(n + 1)) + 8) * EPS * abs_sum


def knapsack_bound(instance: PruningInstance, resource: int) -> float:
    """Fractional-knapsack (Dantzig) bound for one resource row alone, with a margin that covers
    the float rounding of its sums (the ratio order is exact up to ties, which do not change it)."""
    budget = float(instance.budgets[resource])
    if math.isinf(budget):
        return math.inf
    cost = instance.weight_costs(resource)
    imp = instance.importance.astype(np.float64)
    free = cost == 0
    total = float(imp[free].sum())
    c, v = cost[~free], imp[~free]
    order = np.argsort(-(v / c), kind="stable")
    csum = np.cumsum(c[order])
    n_full = int(np.searchsorted(csum, budget, side="right"))
    total += float(v[order[:n_full]].sum())
    slack = 0.0
    if n_full < order.size:
        used = float(csum[n_full - 1]) if n_full else 0.0
        j = order[n_full]
        total += float(v[j]) * max(0.0, budget - used) / float(c[j])
        # the running cost sum is off by at most n eps |used|: the fractional item's share too
        slack = float(v[j]) / float(c[j]) * (order.size + 2) * EPS * (abs(used) + abs(budget))
    return total + sum_margin(imp.size, float(np.abs(imp).sum())) + slack


def solve_magnitude(instance: PruningInstance, *, time_limit=None, rel_gap=0.0, threads=None) -> RawSolution:
    """Keep the S largest importances, ignoring FLOPs. Its value bounds the true optimum."""
    mask = top_k_mask(instance.importance, instance.max_nnz)
    return RawSolution(mask, top_s_bound(instance), "heuristic")


def _ratio_order(instance: PruningInstance) -> tuple[np.ndarray, np.ndarray]:
    """Weights by decreasing importance per unit of the most binding cost (FLOPs), ties by index."""
    flops = instance.weight_costs(1)
    imp = instance.importance.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(flops > 0, imp / np.where(flops > 0, flops, 1.0), np.inf)
    # zero-importance weights never help: put them last
    ratio = np.where(imp > 0, ratio, -1.0)
    return np.argsort(-ratio, kind="stable"), imp


def solve_ratio_greedy(instance: PruningInstance, *, time_limit=None, rel_gap=0.0, threads=None) -> RawSolution:
    """Go through weights by I/f and keep each one that still fits every budget.

    Vectorised: repeatedly take the longest prefix of the remaining order that fits; the first
    weight that does not fit sets the cost threshold for the rest of its resource, so the loop
    runs at most once per distinct cost vector.
    """
    order, imp = _ratio_order(instance)
    order = order[imp[order] > 0]
    costs = instance.costs[instance.group_of_weight()[order]]       # (m, R)
    remaining = np.array([float(b) for b in instance.budgets])
    keep: list[np.ndarray] = []
    cand = np.arange(order.size)
    while cand.size:
        fits = np.all(costs[cand] <= remaining, axis=1)
        cand = cand[fits]
        if cand.size == 0:
            break
        csum = np.cumsum(costs[cand], axis=0)
        ok = np.all(csum <= remaining, axis=1)
        n = cand.size if ok.all() else int(np.argmin(ok))
        if n == 0:
            cand = cand[1:]
            continue
        keep.append(cand[:n])
        remaining = remaining - csum[n - 1]
        cand = cand[n:]
    mask = np.zeros(instance.n_weights, dtype=bool)
    if keep:
        mask[order[np.concatenate(keep)]] = True
    mask = repair_mask(instance, mask, order[::-1])[0]     # float rounding guard: lowest ranked first
    bound = min([top_s_bound(instance)] + [knapsack_bound(instance, r) for r in range(1, instance.n_resources)])
    return RawSolution(mask, bound, "heuristic")
