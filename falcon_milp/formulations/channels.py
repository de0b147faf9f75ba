"""The channel-count MILPs (math and the choice of linearisation: ``formulations/channels.md``).

Two exact linearisations of the bilinear budgets. ``choice`` (default, :func:`_choice_spec`):
one binary per (group, count), products disaggregated. ``binary`` (:func:`_binary_spec`):
columns ``k[g]`` (integer kept count of group g), ``v[g]`` (its value, the epigraph of the
concave prefix-sum curve), ``y[g, b]`` (bit b of k_g, for the groups that appear in a product),
``w[p, b]`` (= y[e, b] k[o] for product p = k_e k_o, e the factor with fewer bits). Rows:
``bits`` (k_g = sum_b 2^b y[g, b]), ``value`` (one tangent per distinct slope of each curve),
``mccormick`` (w >= k_o - n_o (1 - y), w >= m_o y: exact for a binary y; the upper envelope is
not needed because every budget coefficient is >= 0), ``budget`` (one row per finite budget,
divided by what it leaves for the counts). Values are scaled so that the densest total is
:data:`OBJECTIVE_TOP`: value = objective / ``notes["objective_scale"]``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..channels import ChannelProblem
from .spec import ColumnBlock, LinearSpec, RowBlock

__all__ = ["LINEARIZATIONS", "OBJECTIVE_TOP", "build_channel_model", "channel_spec", "counts_from_values"]

OBJECTIVE_TOP = 2.0 ** 20
"""Scaled value of keeping every channel (HiGHS's absolute tolerances are then negligible)."""


class _Rows:
    """Accumulates CSR rows for one block."""

    def __init__(self, name: str, doc: str) -> None:
        self.name, self.doc = name, doc
        self.index: list = []
        self.indptr, self.cols, self.vals = [0], [], []
        self.lower: list[float] = []
        self.upper: list[float] = []

    def add(self, key, cols, vals, lower: float, upper: float) -> None:
        cols = np.asarray(cols, dtype=np.int64)
        vals = np.asarray(vals, dtype=np.float64)
        keep = vals != 0
        self.index.append(key)
        self.cols.append(cols[keep])
        self.vals.append(vals[keep])
        self.indptr.append(self.indptr[-1] + int(keep.sum()))
        self.lower.append(lower)
        self.upper.append(upper)

    def block(self) -> RowBlock:
        cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dtype=dt))
        return RowBlock(self.name, self.index, np.array(self.indptr, dtype=np.int64),
                        cat(self.cols, np.int64), cat(self.vals, np.float64),
                        np.array(self.lower, dtype=np.float64), np.array(self.upper, dtype=np.float64), self.doc)


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


def _common(problem: ChannelProblem) -> tuple[np.ndarray, np.ndarray, float, list[str]]:
    """Sizes and minimum counts as floats, the objective scale, the resources with a finite budget."""
    total = float(sum(v.sum() for v in problem.values))
    return (problem.sizes.astype(np.float64), problem.min_keep.astype(np.float64),
            OBJECTIVE_TOP / total if total > 0 else 1.0,
            [r for r, b in problem.budgets.items() if math.isfinite(b)])


def _budget_rows(problem: ChannelProblem, finite: list[str], k0: int,
                 product_terms: Callable[[int, int, float], tuple[list[int], list[float]]], doc: str) -> "_Rows":
    """One row per finite budget, divided by what it leaves for the counts (B - const):
    the linear terms on the ``k`` columns (from ``k0``), each product coef k_g k_h as the
    columns and coefficients ``product_terms(g, h, coef)`` gives."""
    budget = _Rows("budget", doc)
    for r in finite:
        res = problem.resources[r]
        room = problem.budgets[r] - res.constant
        div = room if room > 0 else 1.0
        nz = np.flatnonzero(res.lin)
        cols, vals = (k0 + nz).tolist(), res.lin[nz].tolist()
        for g, h, c in zip(res.pair_g.tolist(), res.pair_h.tolist(), res.pair_coef.tolist()):
            pc, pv = product_terms(g, h, c)
            cols.extend(pc)
            vals.extend(pv)
        # merge duplicate columns (a group may appear in lin and in several products)
        cols_a, inv = np.unique(np.asarray(cols, dtype=np.int64), return_inverse=True)
        vals_a = np.zeros(cols_a.size)
        np.add.at(vals_a, inv, np.asarray(vals, dtype=np.float64) / div)
        budget.add(r, cols_a, vals_a, -np.inf, 1.0 if room > 0 else room)
    return budget


def _binary_spec(problem: ChannelProblem) -> LinearSpec:
    """The binary-expansion MILP (``linearization="binary"``)."""
    G = problem.n_groups
    n, m, scale, finite = _common(problem)

    # products k_e k_o in any finite budget: expand the factor with fewer bits
    pairs: dict[tuple[int, int], tuple[int, int]] = {}
    for r in finite:
        res = problem.resources[r]
        for g, h in zip(res.pair_g.tolist(), res.pair_h.tolist()):
            e, o = (g, h) if _bits(problem.sizes[g]) <= _bits(problem.sizes[h]) else (h, g)
            pairs[(g, h)] = (e, o)
    expanded = sorted({e for e, _ in pairs.values()})
    k0, v0 = 0, G
    y_start, y0 = {}, 2 * G
    for g in expanded:
        y_start[g] = y0
        y0 += _bits(problem.sizes[g])
    w_start, w0 = {}, y0
    for key, (e, _o) in pairs.items():
        w_start[key] = w0
        w0 += _bits(problem.sizes[e])

    columns = [
        ColumnBlock("k", list(problem.names), m, n, True, np.zeros(G), "k[g]: channels group g keeps"),
        ColumnBlock("v", list(problem.names), np.zeros(G),
                    np.array([v.sum() * scale for v in problem.values]), False,
                    np.ones(G), "v[g] <= V_g(k_g) (scaled)"),
    ]
    y_index = [(problem.names[g], b) for g in expanded for b in range(_bits(problem.sizes[g]))]
    columns.append(ColumnBlock("y", y_index, np.zeros(len(y_index)), np.ones(len(y_index)), True,
                               np.zeros(len(y_index)), "y[g, b]: bit b of k_g"))
    w_index, w_upper = [], []
    for (g, h), (e, o) in pairs.items():
        for b in range(_bits(problem.sizes[e])):
            w_index.append((problem.names[g], problem.names[h], b))
            w_upper.append(n[o])
    columns.append(ColumnBlock("w", w_index, np.zeros(len(w_index)), np.array(w_upper, dtype=np.float64),
                               False, np.zeros(len(w_index)), "w[g, h, b] = y[e, b] k[o]"))

    bits = _Rows("bits", "k_g - sum_b 2^b y[g, b] = 0")
    for g in expanded:
        B = _bits(problem.sizes[g])
        bits.add(problem.names[g], [k0 + g] + list(range(y_start[g], y_start[g] + B)),
                 [1.0] + [-(2.0 ** b) for b in range(B)], 0.0, 0.0)

    value = _Rows("value", "v_g - d_j k_g <= S_j - d_j j: the tangent of segment j of V_g (scaled)")
    for g, vals in enumerate(problem.values):
        d = vals * scale
        prefix = np.concatenate([[0.0], np.cumsum(d)])
        lo = int(problem.min_keep[g])
        last = None
        for j in range(lo, int(problem.sizes[g])):
            if last is not None and d[j] == last:
                continue                      # the same line as the previous segment
            last = d[j]
            value.add((problem.names[g], j), [v0 + g, k0 + g], [1.0, -d[j]], -np.inf, prefix[j] - d[j] * j)

    mc = _Rows("mccormick", "w >= k_o - n_o (1 - y[e, b]) and w >= m_o y[e, b]")
    for (g, h), (e, o) in pairs.items():
        for b in range(_bits(problem.sizes[e])):
            wc, yc = w_start[(g, h)] + b, y_start[e] + b
            mc.add((problem.names[g], problem.names[h], b, "lower"), [k0 + o, wc, yc], [1.0, -1.0, n[o]],
                   -np.inf, n[o])
            if m[o] > 0:
                mc.add((problem.names[g], problem.names[h], b, "floor"), [yc, wc], [m[o], -1.0], -np.inf, 0.0)

    def binary_terms(g: int, h: int, c: float) -> tuple[list[int], list[float]]:
        e, _o = pairs[(g, h)]
        B = _bits(problem.sizes[e])
        return list(range(w_start[(g, h)], w_start[(g, h)] + B)), [c * 2.0 ** b for b in range(B)]

    budget = _budget_rows(problem, finite, k0, binary_terms,
                          "(sum_g lin_g k_g + sum_p coef_p sum_b 2^b w[p, b]) / (B - const) <= 1")
    rows = [blk.block() for blk in (bits, value, mc, budget) if blk.index]
    notes = {"objective_scale": scale, "budget_rows": finite, "products": len(pairs),
             "expanded_groups": len(expanded)}
    return LinearSpec("channels-binary", columns, rows, notes)


def _choice_spec(problem: ChannelProblem) -> LinearSpec:
    """The one-hot MILP (``linearization="choice"``, the default): x[g, j] = 1 when group g
    keeps j channels; a product k_e k_o is sum_j j z[p, j] with z[p, j] = x[e, j] k_o written
    as a disaggregation (sum_j z[p, j] = k_o, m_o x[e, j] <= z[p, j] <= n_o x[e, j]), the
    convex hull of each product's disjunction."""
    G = problem.n_groups
    n, m, scale, finite = _common(problem)
    opts = [problem.options(g) for g in range(G)]
    x_start = np.concatenate([[0], np.cumsum([o.size for o in opts])]).astype(np.int64) + G
    pairs: dict[tuple[int, int], tuple[int, int]] = {}
    for r in finite:
        res = problem.resources[r]
        for g, h in zip(res.pair_g.tolist(), res.pair_h.tolist()):
            if g != h:
                pairs[(g, h)] = (g, h) if opts[g].size <= opts[h].size else (h, g)
    z_start, z0 = {}, int(x_start[-1])
    for key, (e, _o) in pairs.items():
        z_start[key] = z0
        z0 += opts[e].size

    x_index, x_cost = [], []
    for g in range(G):
        prefix = np.concatenate([[0.0], np.cumsum(problem.values[g])]) * scale
        x_index.extend((problem.names[g], int(j)) for j in opts[g])
        x_cost.append(prefix[opts[g]])
    cost = np.concatenate(x_cost)
    columns = [ColumnBlock("k", list(problem.names), m, n, True, np.zeros(G), "k[g]: channels group g keeps"),
               ColumnBlock("x", x_index, np.zeros(cost.size), np.ones(cost.size), True, cost,
                           "x[g, j] = 1 when group g keeps j channels")]
    z_index, z_upper = [], []
    for (g, h), (e, o) in pairs.items():
        z_index.extend((problem.names[g], problem.names[h], int(j)) for j in opts[e])
        z_upper.extend([n[o]] * opts[e].size)
    columns.append(ColumnBlock("z", z_index, np.zeros(len(z_index)), np.array(z_upper, dtype=np.float64), False,
                               np.zeros(len(z_index)), "z[g, h, j] = x[e, j] k[o]"))

    one = _Rows("choose", "sum_j x[g, j] = 1")
    link = _Rows("count", "k_g - sum_j j x[g, j] = 0")
    for g in range(G):
        cols = np.arange(x_start[g], x_start[g + 1])
        one.add(problem.names[g], cols, np.ones(cols.size), 1.0, 1.0)
        link.add(problem.names[g], np.concatenate([[g], cols]),
                 np.concatenate([[1.0], -opts[g].astype(np.float64)]), 0.0, 0.0)
    split = _Rows("split", "sum_j z[p, j] = k_o")
    hull = _Rows("hull", "m_o x[e, j] <= z[p, j] <= n_o x[e, j]")
    for (g, h), (e, o) in pairs.items():
        zc = np.arange(z_start[(g, h)], z_start[(g, h)] + opts[e].size)
        split.add((problem.names[g], problem.names[h]), np.concatenate([zc, [o]]),
                  np.concatenate([np.ones(zc.size), [-1.0]]), 0.0, 0.0)
        for j, (zj, xj) in enumerate(zip(zc, np.arange(x_start[e], x_start[e + 1]))):
            hull.add((problem.names[g], problem.names[h], int(opts[e][j]), "upper"), [zj, xj], [1.0, -n[o]],
                     -np.inf, 0.0)
            if m[o] > 0:
                hull.add((problem.names[g], problem.names[h], int(opts[e][j]), "lower"), [xj, zj], [m[o], -1.0],
                         -np.inf, 0.0)
    def choice_terms(g: int, h: int, c: float) -> tuple[list[int], list[float]]:
        if g == h:                       # k_g^2 = sum_j j^2 x[g, j]: linear in x
            return list(range(x_start[g], x_start[g + 1])), (c * opts[g].astype(np.float64) ** 2).tolist()
        e, _o = pairs[(g, h)]
        return (list(range(z_start[(g, h)], z_start[(g, h)] + opts[e].size)),
                (c * opts[e].astype(np.float64)).tolist())

    budget = _budget_rows(problem, finite, 0, choice_terms,
                          "(sum_g lin_g k_g + sum_p coef_p sum_j j z[p, j]) / (B - const) <= 1")
    rows = [blk.block() for blk in (one, link, split, hull, budget) if blk.index]
    notes = {"objective_scale": scale, "budget_rows": finite, "products": len(pairs)}
    return LinearSpec("channels-choice", columns, rows, notes)


LINEARIZATIONS = ("choice", "binary")


def channel_spec(problem: ChannelProblem, linearization: str = "choice") -> LinearSpec:
    """The MILP of ``problem`` as a :class:`LinearSpec` (maximise the scaled kept value);
    ``linearization``: ``choice`` (one-hot counts, disaggregated products: the tight default)
    or ``binary`` (binary expansion of one factor, McCormick rows: fewer columns, weaker LP)."""
    if linearization == "choice":
        return _choice_spec(problem)
    if linearization == "binary":
        if problem.round_to > 1:
            raise ValueError("`linearization` 'binary' does not support round_to > 1; use 'choice'")
        return _binary_spec(problem)
    raise ValueError(f"`linearization` must be one of {', '.join(LINEARIZATIONS)}; got {linearization!r}")


def build_channel_model(problem: ChannelProblem, linearization: str = "choice"):
    """The MILP as a Pyomo ConcreteModel, exportable to LP/MPS like the other formulations
    (choice: ``k``, ``x``, ``z``; rows ``choose``, ``count``, ``split``, ``hull``, ``budget``;
    binary: ``k``, ``v``, ``y``, ``w``; rows ``bits``, ``value``, ``mccormick``, ``budget``)."""
    from .spec import to_pyomo
    return to_pyomo(channel_spec(problem, linearization), "falcon_channels")


def counts_from_values(problem: ChannelProblem, spec: LinearSpec, values: np.ndarray) -> np.ndarray:
    """(G,) kept counts from a solution vector (k rounded to the nearest integer, clipped)."""
    k = values[spec.column_block("k").cols]
    return np.clip(np.rint(k), problem.min_keep, problem.sizes).astype(np.int64)
