"""Banded sorting for large instances: an LP on a strided sample locates each layer's threshold.

On instances with ``p >= 8 * SAMPLE_SIZE`` weights the LP is first solved on a sample that keeps
every m-th weight of each layer; every layer then sorts only the weights in a band of values
around the sample's thresholds, and the breakpoint search of :mod:`.lp` starts from a bracket
around the sample's multiplier. Queries outside a band sort that layer entirely first
(:class:`~.sorted_layers.SortedLayers`), so the answers are those of a full sort.
"""
from __future__ import annotations

import math

import numpy as np

from ..instance import PruningInstance
from .lp import START_WIDTH, Problem
from .sorted_layers import SortedLayers

SAMPLE_SIZE = 200_000
"""Weights in the sample whose LP locates the bands (banded mode, instances above 8x this)."""
BAND_FRACTION = 0.06
"""Half-width of a layer's sorted band, as a fraction of its weights (ranks, from the sample)."""
SMALL_LAYER = 1 << 15
"""Layers up to this size are always sorted entirely."""


def banded_problem(instance: PruningInstance, threads: int | None = None) -> Problem:
    """A :class:`~.lp.Problem` whose layers sort only the bands of :func:`sample_bands` (or
    every layer entirely on small instances); same answers as a full sort, less sorting."""
    found = sample_bands(instance)
    if found is None:
        return Problem(instance, threads)
    bands, start, sample = found
    return Problem(instance, threads, SortedLayers(instance, threads, bands), start=start, sample=sample)


def sample_bands(instance: PruningInstance) -> tuple[
        tuple[np.ndarray, np.ndarray], tuple[dict[int, float], float], Problem] | None:
    """Value bands around the LP thresholds of a strided sample of every layer.

    The sample keeps every m-th weight (m = p // SAMPLE_SIZE) and scales the budgets by the
    sample's share of each resource, so its LP thresholds estimate the full ones. Band of
    layer l: the sample values BAND_FRACTION of the layer's ranks above and below its
    thresholds (at the sample's LP optimum and at the ends of the first bracket). Returns the
    bands, the sample's multipliers and the sample problem (it estimates w for a given lam),
    or None for small instances (sort everything).
    """
    p = instance.n_weights
    m = p // SAMPLE_SIZE
    if m < 8:
        return None
    off, imp, costs = instance.offsets, instance.importance, instance.costs
    L = instance.n_groups
    groups = [imp[off[l]:off[l + 1]:m] for l in range(L)]
    ns = np.array([g.size for g in groups], dtype=np.int64)
    sizes = np.asarray(instance.group_sizes, dtype=np.float64)
    budgets = []
    for r in range(instance.n_resources):
        b = float(instance.budgets[r])
        total, part = float(np.dot(sizes, costs[:, r])), float(np.dot(ns, costs[:, r]))
        budgets.append(b * part / total if math.isfinite(b) and total > 0 else b)
    extra = {name: (costs[:, r].tolist(), budgets[r])
             for r, name in enumerate(instance.resource_names) if r >= 2}
    sample = PruningInstance.from_groups(
        groups, costs[:, 1].tolist(), max_nnz=min(int(round(budgets[0])), int(ns.sum())),
        max_flops=budgets[1], names=list(instance.names), extra_resources=extra or None)
    sp = Problem(sample, threads=1)
    lp = sp.solve_lp()
    cands = [lp.shifts + lp.w]
    if sp.active == [1] and lp.mu[0] > 0:
        # thresholds at the ends of the first bracket, and at lam = 0 when the FLOP budget of
        # the sample is nearly free there (the full problem may not need the multiplier)
        lam_s = float(lp.mu[0])
        for lam in (lam_s * (1 - 2 * START_WIDTH), lam_s * (1 + 2 * START_WIDTH), 0.0):
            pt = sp.evaluate(np.array([lam]))
            if lam == 0.0:
                use = sp.rows.usage(sp.fill_ties(pt, 1, descending=False), 1)
                if use > sp.rows.cap[1] * 1.2:
                    continue
            cands.append(pt.shifts + pt.w)
    counts = np.array([sp.layers.counts_gt(t) for t in cands])
    j_lo, j_hi = counts.min(axis=0), counts.max(axis=0)
    lo, hi = np.full(L, -np.inf), np.full(L, np.inf)
    for l in range(L):
        if instance.group_sizes[l] <= SMALL_LAYER:
            continue
        d = max(8, int(math.ceil(BAND_FRACTION * ns[l])))
        if j_lo[l] - d > 0:
            hi[l] = sp.layers.value(l, int(j_lo[l]) - d)
        if j_hi[l] + d < ns[l]:
            lo[l] = sp.layers.value(l, int(j_hi[l]) + d)
    start = ({r: float(mu) for r, mu in zip(sp.active, lp.mu)}, float(lp.w))
    return (lo, hi), start, sp
