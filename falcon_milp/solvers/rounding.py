"""Rounding: from LP counts to integer solutions, and the one repair every solver uses.

- :func:`fill` and :func:`exchange`: the budget-keeping rounding of ``fast`` and ``exact``
  after the floor of the basic LP solution (greedy fill by largest importance among the
  weights that still fit every budget, any layer; then a 1-out/refill exchange search);
- :func:`drop_to_fit`: the repair. It walks candidates in a given drop order and drops one when
  its group costs something on a row still over budget, until every row fits, keeping the
  exact scaled-integer use of every row up to date (O(R) per candidate, so linear in the
  candidates walked; no O(p) re-check per dropped weight). Rows only ever lose use, so a
  candidate skipped once never becomes useful later. On top of it :func:`repair_mask` (a mask,
  any drop order, default least important first) and :func:`repair_counts` (per-layer counts
  of sorted layers, lowest importance per unit of shift first).
"""
from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from ..instance import PruningInstance
from ..result import kept_counts
from .sorted_layers import EPS, ExactRows

if TYPE_CHECKING:
    from .lp import Problem


def drop_to_fit(rows: ExactRows, counts: np.ndarray, groups: Iterable[int]) -> list[int]:
    """Drop candidates until every row of ``rows`` fits; ``counts`` (per group) is updated in place.

    ``groups``: the group of each candidate, in drop order (an iterator is consumed only as far
    as needed). A candidate is dropped when its group costs something on a row still over
    budget. Returns the positions (in ``groups``) of the dropped candidates; fewer rows may
    still be over budget only when the candidates run out.
    """
    usage = [rows.usage(counts, r) for r in range(rows.n_rows)]
    caps = rows.cap
    over = [r for r in range(rows.n_rows) if caps[r] is not None and usage[r] > caps[r]]
    dropped: list[int] = []
    if not over:
        return dropped
    for pos, g in enumerate(groups):
        if not any(rows.num[r][g] > 0 for r in over):
            continue
        counts[g] -= 1
        for r in range(rows.n_rows):
            usage[r] -= int(rows.num[r][g])
        dropped.append(pos)
        over = [r for r in over if usage[r] > caps[r]]
        if not over:
            break
    return dropped


def instance_rows(instance: PruningInstance) -> ExactRows:
    """The exact scaled-integer rows of an instance's own budgets (``rows.fits`` is
    :func:`~falcon_milp.result.check_mask`'s feasibility, counted per group)."""
    return ExactRows(np.asarray(instance.costs, dtype=np.float64), [float(b) for b in instance.budgets])


def repair_mask(instance: PruningInstance, mask: np.ndarray, order: np.ndarray | None = None,
                rows: ExactRows | None = None) -> tuple[np.ndarray, int]:
    """Drop kept weights until the exact budget check passes. Returns (mask, number dropped).

    ``order``: weight indices in the order to drop them (those not kept are passed over);
    default: the kept weights by ascending importance (ties: lowest index first). Only weights
    that cost something on a violated row are dropped. ``rows``: the instance's exact rows, if
    the caller has them. The input mask is not modified.
    """
    rows = instance_rows(instance) if rows is None else rows
    counts = kept_counts(instance, mask)
    if rows.fits(counts):
        return mask, 0
    if order is None:
        kept = np.flatnonzero(mask)
        order = kept[np.argsort(instance.importance[kept], kind="stable")]
    else:
        order = np.asarray(order)
        order = order[mask[order]]
    group = instance.group_of_weight()
    pos = drop_to_fit(rows, counts, (int(g) for g in group[order]))
    mask = mask.copy()
    mask[order[pos]] = False
    return mask, len(pos)


def repair_counts(prob: Problem, k: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Per-layer counts (clipped to the layer sizes) with weights dropped until every row fits:
    lowest importance per unit of shift first, ``value / (1 + shift_l)`` (ties: lowest layer)."""
    k = np.minimum(np.maximum(k, 0), prob.sizes).astype(np.int64)
    drop_to_fit(prob.rows, k, _by_ratio(prob, k.copy(), shifts))
    return k


def _by_ratio(prob: Problem, k: np.ndarray, shifts: np.ndarray) -> Iterator[int]:
    """Layers of the kept weights by increasing ``value / (1 + shift)`` (a merge of the layers'
    runs: inside a layer the next weight to drop is the smallest kept one)."""
    def key(l: int) -> float:
        return prob.layers.value(l, int(k[l]) - 1) / (1.0 + shifts[l])

    heap = [(key(int(l)), int(l)) for l in np.flatnonzero(k > 0)]
    heapq.heapify(heap)
    while heap:
        _, l = heapq.heappop(heap)
        yield l
        k[l] -= 1
        if k[l] > 0:
            heapq.heappush(heap, (key(l), l))


def fill(prob: Problem, k: np.ndarray) -> np.ndarray:
    """Greedy: add the largest next importance among the layers whose next weight fits."""
    k = k.copy()
    room = prob.S - int(k.sum())
    slack = [prob.rows.slack(k, r) for r in range(1, prob.rows.n_rows)]
    nums = [prob.rows.num[r] for r in range(1, prob.rows.n_rows)]
    L = prob.L
    heads = np.array([prob.layers.value(l, int(k[l])) if k[l] < prob.sizes[l] else -1.0
                      for l in range(L)])
    while room > 0:
        fits = heads > 0
        for sl, num in zip(slack, nums):
            if sl is not None:
                fits &= np.array([int(num[l]) <= sl for l in range(L)])
        if not fits.any():
            break
        l = int(np.argmax(np.where(fits, heads, -np.inf)))
        # take a run from layer l while it stays the best choice and fits
        other = np.where(fits, heads, -np.inf)
        other[l] = -np.inf
        second = float(other.max()) if (other > -np.inf).any() else 0.0
        end = prob.layers.count_ge(l, max(second, float(np.nextafter(0, 1)))) \
            if second > 0 else int(prob.sizes[l])
        run = max(1, min(end - int(k[l]), room))
        for sl, num in zip(slack, nums):
            if sl is not None and int(num[l]) > 0:
                run = min(run, sl // int(num[l]))
        run = min(run, int(prob.sizes[l] - k[l]))
        # stop the run at the first zero importance
        vals = prob.layers.range_values(l, int(k[l]), int(k[l]) + run)
        run = int(np.count_nonzero(vals > 0))
        if run <= 0:
            heads[l] = -1.0
            continue
        k[l] += run
        room -= run
        slack = [None if sl is None else sl - run * int(num[l]) for sl, num in zip(slack, nums)]
        heads[l] = prob.layers.value(l, int(k[l])) if k[l] < prob.sizes[l] else -1.0
    return k


def exchange(prob: Problem, k: np.ndarray, value: float, max_rounds: int = 20) -> tuple[np.ndarray, float]:
    """1-out/refill local search: drop the smallest kept weight of a class, refill greedily.

    A class is a set of layers with identical costs; dropping its smallest kept weight (and
    filling by largest importance) keeps the largest weights of every class, so one trial
    per class is enough.
    """
    for _ in range(max_rounds):
        improved = False
        for members in prob.classes:
            kept = members[k[members] > 0]
            if kept.size == 0:
                continue
            l = int(kept[np.argmin([prob.layers.value(int(m), int(k[m]) - 1) for m in kept])])
            trial = k.copy()
            trial[l] -= 1
            trial = fill(prob, trial)
            if np.array_equal(trial, k):
                continue
            v = prob.value_delta(k, trial) + value
            if v > value * (1 + 4 * EPS) and prob.rows.fits(trial):
                k, value, improved = trial, v, True
        if not improved:
            break
    return k, value
