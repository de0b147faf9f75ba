"""The channel-count MILP (math and the choice of linearisation: ``formulations/channels.md``).

Columns: ``k[g]`` (integer kept count of group g), ``v[g]`` (its value, the epigraph of the
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

import numpy as np

from ..channels import ChannelProblem
from .spec import ColumnBlock, LinearSpec, RowBlock

__all__ = ["OBJECTIVE_TOP", "build_channel_model", "channel_spec", "counts_from_values"]

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


def channel_spec(problem: ChannelProblem) -> LinearSpec:
    """The MILP of ``problem`` as a :class:`LinearSpec` (maximise the scaled kept value)."""
    G = problem.n_groups
    n = problem.sizes.astype(np.float64)
    m = problem.min_keep.astype(np.float64)
    total = float(sum(v.sum() for v in problem.values))
    scale = OBJECTIVE_TOP / total if total > 0 else 1.0
    finite = [r for r, b in problem.budgets.items() if math.isfinite(b)]

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

    budget = _Rows("budget", "(sum_g lin_g k_g + sum_p coef_p sum_b 2^b w[p, b]) / (B - const) <= 1")
    for r in finite:
        res = problem.resources[r]
        room = problem.budgets[r] - res.constant
        div = room if room > 0 else 1.0
        cols, vals = [], []
        nz = np.flatnonzero(res.lin)
        cols.extend((k0 + nz).tolist())
        vals.extend((res.lin[nz] / div).tolist())
        for g, h, c in zip(res.pair_g.tolist(), res.pair_h.tolist(), res.pair_coef.tolist()):
            e, _o = pairs[(g, h)]
            B = _bits(problem.sizes[e])
            cols.extend(range(w_start[(g, h)], w_start[(g, h)] + B))
            vals.extend([c * 2.0 ** b / div for b in range(B)])
        # merge duplicate columns (a group may appear in lin and in several pairs)
        cols_a, inv = np.unique(np.asarray(cols, dtype=np.int64), return_inverse=True)
        vals_a = np.zeros(cols_a.size)
        np.add.at(vals_a, inv, np.asarray(vals, dtype=np.float64))
        budget.add(r, cols_a, vals_a, -np.inf, 1.0 if room > 0 else room)

    rows = [blk.block() for blk in (bits, value, mc, budget) if blk.index]
    notes = {"objective_scale": scale, "budget_rows": finite, "products": len(pairs),
             "expanded_groups": len(expanded)}
    return LinearSpec("channels", columns, rows, notes)


def build_channel_model(problem: ChannelProblem):
    """The MILP as a Pyomo ConcreteModel (``k``, ``v``, ``y``, ``w``; rows ``bits``, ``value``,
    ``mccormick``, ``budget``), exportable to LP/MPS like the other formulations."""
    from .spec import to_pyomo
    return to_pyomo(channel_spec(problem), "falcon_channels")


def counts_from_values(problem: ChannelProblem, spec: LinearSpec, values: np.ndarray) -> np.ndarray:
    """(G,) kept counts from a solution vector (k rounded to the nearest integer, clipped)."""
    k = values[spec.column_block("k").cols]
    return np.clip(np.rint(k), problem.min_keep, problem.sizes).astype(np.int64)
