"""The compact per-layer MILP (math: ``formulations/compact.md``).

Sort layer l's importances in decreasing order, s_1 >= s_2 >= ... >= s_{n_l}; keeping k weights
of layer l is worth at most g_l(k) = s_1 + ... + s_k, a concave piecewise-linear function. With
one integer count k_l and one epigraph variable t_l per layer:

    max  sum_l t_l
    s.t. t_l <= g_l(j) + s_{j+1} (k_l - j)       for each j where the slope changes (s_{j+1} < s_j)
         sum_l C_{l,r} k_l <= floor(B_r 2^E_r)   for every resource row that can bind
         k_l in {0, ..., n_l},  0 <= t_l <= g_l(n_l)

Only L integer variables; the number of cuts is the number of distinct importance values per
layer (runs of equal values share one cut). A solution maps back to a mask by keeping the k_l
most important weights of each layer (:func:`counts_to_mask`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..exceptions import InvalidInstanceError
from ..instance import PruningInstance
from .resources import limb_blocks, limb_split, resource_rows
from .spec import ColumnBlock, LinearSpec, RowBlock, rows_from_lists


@dataclass(frozen=True, eq=False)
class Breakpoints:
    """Cuts of one layer: t <= rhs[c] + slope[c] * k, for the run starts j[c] (0-based)."""

    j: np.ndarray        # int64, where each run of equal sorted importances starts
    slope: np.ndarray    # s_{j+1}
    rhs: np.ndarray      # g(j) - s_{j+1} * j
    total: float         # g(n)


def layer_breakpoints(importance: np.ndarray, scale: float = 1.0, min_slope: float = 0.0) -> Breakpoints:
    """Breakpoints of the concave prefix sum of one layer's importances (sorted descending, times ``scale``).

    With ``min_slope > 0`` the cuts of the tail of positive slopes below ``min_slope`` (which a
    solver would drop as too small matrix entries) are replaced by one cut of slope ``min_slope``
    at the start of the tail: still an upper bound of g everywhere (a relaxation), over by at
    most ``min_slope`` per kept tail weight; with t <= g(n) it is exact again at k = n.
    """
    s = np.sort(np.asarray(importance, dtype=np.float64))[::-1] * scale
    prefix = np.concatenate([[0.0], np.cumsum(s)])
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    slope = s[starts]
    if min_slope > 0:
        tail = np.flatnonzero((slope > 0) & (slope < min_slope))
        if tail.size:
            first = int(tail[0])
            starts = starts[:first + 1]
            slope = np.append(slope[:first], min_slope)
    rhs = prefix[starts] - slope * starts
    return Breakpoints(starts.astype(np.int64), slope, np.maximum(rhs, 0.0), float(prefix[-1]))


def compact_spec(instance: PruningInstance, exact: bool = False, objective_scale: float = 1.0,
                 min_slope: float = 0.0) -> LinearSpec:
    """The compact MILP as a :class:`LinearSpec`: columns ``k`` then ``t``, both indexed by group name.

    ``objective_scale`` (a power of two) multiplies every importance; ``min_slope``: see
    :func:`layer_breakpoints` (the HiGHS solver uses it; user-facing models keep every cut).
    """
    names = list(instance.names)
    n_groups = instance.n_groups
    layers = [layer_breakpoints(a, objective_scale, min_slope) for a in instance.importances]
    columns = [
        ColumnBlock("k", names, np.zeros(n_groups), instance.group_sizes.astype(np.float64), True,
                    np.zeros(n_groups), "k[l] = number of kept weights of group l (its most important)"),
        ColumnBlock("t", names, np.zeros(n_groups), np.array([b.total for b in layers]), False,
                    np.ones(n_groups), "t[l] <= g_l(k[l]), the importance kept in group l"),
    ]
    # epigraph rows: t_l - slope * k_l <= rhs, built in bulk
    counts = np.array([b.j.size for b in layers], dtype=np.int64)
    layer_of = np.repeat(np.arange(n_groups), counts)
    slope = np.concatenate([b.slope for b in layers])
    rhs = np.concatenate([b.rhs for b in layers])
    j = np.concatenate([b.j for b in layers])
    n_cuts = int(counts.sum())
    has_k = slope != 0
    per_row = 1 + has_k.astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(per_row)])
    indices = np.empty(int(indptr[-1]), dtype=np.int64)
    data = np.empty(int(indptr[-1]))
    indices[indptr[:-1]] = n_groups + layer_of          # t_l
    data[indptr[:-1]] = 1.0
    k_pos = indptr[:-1][has_k] + 1
    indices[k_pos] = layer_of[has_k]                      # k_l
    data[k_pos] = -slope[has_k]
    index = list(zip([names[l] for l in layer_of], j.tolist()))
    row_blocks = [RowBlock("epigraph", index, indptr, indices, data, np.full(n_cuts, -np.inf), rhs,
                           "t[l] <= g_l(j) + s_l(j+1) (k[l] - j) at each slope change j")]
    rows = resource_rows(instance)
    plain = [r for r in rows if r.exact or not exact]
    limbed = [r for r in rows if not (r.exact or not exact)]
    if plain:
        row_blocks.append(rows_from_lists(
            "budget", [r.name for r in plain], [(np.arange(n_groups), r.coef) for r in plain],
            np.full(len(plain), -np.inf), [r.rhs for r in plain],
            "sum_l C_{l,r} k[l] <= floor(B_r 2^E_r), one row per resource that can bind"))
    if limbed:
        splits = [limb_split(r, instance.group_sizes) for r in limbed]
        limb_cols, limb_rows = limb_blocks(splits, 0, 2 * n_groups)
        columns += limb_cols
        row_blocks += limb_rows
    kept = {r.name for r in rows}
    limbed_names = {r.name for r in limbed}
    notes = {
        "rows": {r.name: {"scale": r.scale, "rhs": r.rhs, "exact": r.exact or r.name in limbed_names,
                          "form": "limbs" if r.name in limbed_names else "row"} for r in rows},
        "omitted_rows": [n for n in instance.resource_names if n not in kept],
        "inexact_rows": [r.name for r in rows if not r.exact and r.name not in limbed_names],
        "n_cuts": n_cuts,
        "objective_scale": objective_scale,
        "relaxed_tails": int(sum(bool(b.slope.size) and 0 < b.slope[-1] == min_slope for b in layers)),
    }
    return LinearSpec("compact", columns, row_blocks, notes)


def build_compact_model(instance: PruningInstance, exact: bool = False):
    """The compact MILP as a Pyomo ConcreteModel.

    Components: ``k`` and ``t`` (indexed by group name), ``obj`` (maximise sum of t),
    ``epigraph`` (indexed by (group name, j)), ``budget`` (indexed by resource name) and,
    with ``exact=True`` and a row doubles cannot decide, the ``limb_*`` components.
    Map a solution back with :func:`counts_to_mask`.
    """
    from .spec import to_pyomo
    return to_pyomo(compact_spec(instance, exact=exact), "falcon_compact_milp")


def counts_to_mask(instance: PruningInstance, counts) -> np.ndarray:
    """Mask keeping the ``counts[l]`` most important weights of each group (ties: lower index first)."""
    k = np.asarray(counts)
    if k.shape != (instance.n_groups,):
        raise InvalidInstanceError(f"`counts` must have shape ({instance.n_groups},); got {k.shape}")
    if not np.issubdtype(k.dtype, np.integer):
        if not np.all(np.isfinite(k)) or np.any(k != np.round(k)):
            raise InvalidInstanceError("`counts` must be integers")
    k = k.astype(np.int64)
    sizes = instance.group_sizes
    if np.any(k < 0) or np.any(k > sizes):
        bad = int(np.flatnonzero((k < 0) | (k > sizes))[0])
        raise InvalidInstanceError(
            f"`counts` of group '{instance.names[bad]}' must be in [0, {int(sizes[bad])}]; got {int(k[bad])}")
    imp = instance.importance
    group = instance.group_of_weight()
    order = np.argsort(-imp, kind="stable")
    order = order[np.argsort(group[order], kind="stable")]      # by group, then importance desc, then index
    rank = np.arange(imp.size) - np.repeat(instance.offsets[:-1], sizes)
    keep = rank < np.repeat(k, sizes)
    mask = np.zeros(imp.size, dtype=bool)
    mask[order[keep]] = True
    return mask
