"""Resource rows sum_l c_{l,r} k_l <= B_r, written so that a floating-point solver decides them exactly.

Math and proofs: ``formulations/resources.md``. In short, every float is a dyadic rational,
so for the costs of one row there is a power of two 2^E (E >= 0) with C_l = c_l * 2^E integral.
For integer counts k the row is equivalent to

    sum_l C_l k_l <= floor(B * 2^E)                                   (the *lattice* row)

- If sum_l C_l n_l <= 2^50 every activity at an integral point is an integer that doubles hold
  exactly, and any solver tolerance below 1/2 decides the row exactly: the row is *exact*.
  Integer FLOP costs give E = 0, i.e. the budget is just rounded down: floor(F).
- Otherwise (e.g. costs 0.1 and 0.3: 3 * 0.1 > 0.3 exactly, but not in doubles) the row is
  *inexact* as one row. :func:`limb_rows` then splits sum_l C_l k_l into base-2^m digits with
  integer carries and compares the digits lexicographically with those of floor(B * 2^E);
  every coefficient is <= 2^m and every activity < 2^50, so the split rows are exact again.

Rows that can never bind (budget infinite, or >= the dense total, compared exactly) are left out.
Everything here is numpy + fractions; no solver is imported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..instance import PruningInstance
from ..lattice import lattice_row

EXACT_LIMIT = 2 ** 50
"""Largest integer activity a row may reach and still be evaluated exactly (with margin) in doubles."""


@dataclass(frozen=True, eq=False)
class ResourceRow:
    """One budget row of the models, over per-group counts.

    ``coef[l]`` is the coefficient of every weight of group l (C_l), ``rhs`` the right-hand side;
    the row is the original one times ``scale`` = 2^E with its budget rounded down to the lattice.
    ``exact`` is False when the activity can exceed :data:`EXACT_LIMIT` (see :func:`limb_rows`).
    """

    name: str
    index: int
    coef: np.ndarray
    rhs: float
    scale: float
    exact: bool
    coef_int: tuple[int, ...]
    rhs_int: int


def resource_rows(instance: PruningInstance) -> list[ResourceRow]:
    """The budget rows that can bind, each scaled to integer coefficients (see module docstring)."""
    rows = []
    sizes = [int(n) for n in instance.group_sizes]
    for r, name in enumerate(instance.resource_names):
        budget = float(instance.budgets[r])
        if math.isinf(budget):
            continue
        costs = [float(c) for c in instance.costs[:, r]]
        dense = sum((Fraction(c) * n for c, n in zip(costs, sizes)), Fraction(0))
        if dense <= Fraction(budget):
            continue  # never binds
        lat = lattice_row(costs, budget)          # the lattice row (falcon_milp.lattice)
        scale, coef_int, rhs_int = lat.scale, lat.coef, lat.cap
        assert rhs_int is not None
        total = sum(ci * n for ci, n in zip(coef_int, sizes))
        exact = total <= EXACT_LIMIT
        if exact:
            coef = np.array(coef_int, dtype=np.float64)
            rhs = float(rhs_int)
            row_scale = float(scale)
        else:  # plain float row; exactness via limb_rows when asked
            coef = np.array(costs, dtype=np.float64)
            rhs = budget
            row_scale = 1.0
        rows.append(ResourceRow(name, r, coef, rhs, row_scale, exact, coef_int, rhs_int))
    return rows


@dataclass(frozen=True, eq=False)
class LimbSplit:
    """Base-2^m digits of one inexact row (see ``formulations/resources.md``).

    digits[j][l]: digit j of C_l (j = 0 lowest; the top digit J-1 may exceed 2^m - 1);
    rhs_digits[j]: digit j of floor(B * 2^E); carry_ub[j]: upper bound of carry q_j.
    """

    row: ResourceRow
    base_bits: int
    digits: np.ndarray          # (J, L) float64, exact integers
    rhs_digits: tuple[int, ...]
    carry_ub: tuple[int, ...]   # J - 1 entries

    @property
    def n_limbs(self) -> int:
        return int(self.digits.shape[0])


INTEGRALITY_TOL = 1e-6
"""Integrality tolerance the limb digits are sized for (HiGHS's default mip_feasibility_tolerance)."""


def limb_bits(n_groups: int, n_weights: int) -> int:
    """Digit size m: L * 2^m * INTEGRALITY_TOL <= 0.01, so counts that are integral only up to the
    solver's tolerance still move a digit sum by less than 1/100; and 2^m * p < 2^50."""
    by_tolerance = math.floor(math.log2(0.01 / (max(1, n_groups) * INTEGRALITY_TOL)))
    return max(1, min(24, by_tolerance, 50 - max(1, n_weights).bit_length()))


def limb_split(row: ResourceRow, group_sizes: np.ndarray) -> LimbSplit:
    """Split an inexact row into base-2^m digits with m chosen so that every digit row is exact."""
    sizes = [int(n) for n in group_sizes]
    p = max(1, sum(sizes))
    m = limb_bits(len(sizes), p)
    top_value = max(max(row.coef_int), row.rhs_int)
    n_limbs = max(2, -(-top_value.bit_length() // m))
    mask = (1 << m) - 1
    digits = np.zeros((n_limbs, len(sizes)), dtype=np.float64)
    for l, c in enumerate(row.coef_int):
        for j in range(n_limbs):
            d = c >> (m * j)
            digits[j, l] = d if j == n_limbs - 1 else d & mask
    rhs_digits = tuple(((row.rhs_int >> (m * j)) if j == n_limbs - 1 else (row.rhs_int >> (m * j)) & mask)
                       for j in range(n_limbs))
    carry_ub: list[int] = []
    carry = 0
    for j in range(n_limbs - 1):
        a_max = sum(int(digits[j, l]) * n for l, n in enumerate(sizes))
        carry = (a_max + carry) >> m
        carry_ub.append(carry)
    return LimbSplit(row, m, digits, rhs_digits, tuple(carry_ub))


def budget_entries(row: ResourceRow, instance: PruningInstance) -> tuple[np.ndarray, np.ndarray]:
    """(columns, coefficients) of a budget row over the per-weight variables z (zeros left out)."""
    weight_coef = np.repeat(row.coef, instance.group_sizes)
    cols = np.flatnonzero(weight_coef)
    return cols, weight_coef[cols]


def limb_blocks(splits: list[LimbSplit], k_start: int, first_col: int):
    """Columns and rows that state the inexact rows exactly over the count variables k.

    For each split row (digits D_j of C, b_j of floor(B 2^E), base 2^m, J digits):
      limb_sum[r,j]    sum_l D_{j,l} k_l + q_{j-1} - 2^m q_j - rho_j = 0      (j < J-1; q_{-1} = 0)
      limb_top[r]      sum_l D_{J-1,l} k_l + q_{J-2} + s_{J-1} <= b_{J-1}
      limb_digit[r,j]  rho_j - 2^m s_{j+1} <= b_j                              (j < J-1)
      limb_below[r,j]  rho_j + s_j - 2^m s_{j+1} <= b_j                         (1 <= j < J-1)
    with integer carries q, digits rho in [0, 2^m - 1] and binaries s (s_j = 1 only if the
    usage is already below the budget in the digits >= j). Returns (column blocks, row blocks).
    """
    from .spec import ColumnBlock, rows_from_lists

    q_index, q_ub, rho_index, s_index = [], [], [], []
    for sp in splits:
        name, n = sp.row.name, sp.n_limbs
        q_index += [(name, j) for j in range(n - 1)]
        q_ub += list(sp.carry_ub)
        rho_index += [(name, j) for j in range(n - 1)]
        s_index += [(name, j) for j in range(1, n)]
    max_digit = [((1 << sp.base_bits) - 1) for sp in splits for _ in range(sp.n_limbs - 1)]
    q_col = {key: first_col + i for i, key in enumerate(q_index)}
    rho_col = {key: first_col + len(q_index) + i for i, key in enumerate(rho_index)}
    s_col = {key: first_col + len(q_index) + len(rho_index) + i for i, key in enumerate(s_index)}
    columns = [
        ColumnBlock("limb_q", q_index, np.zeros(len(q_index)), np.array(q_ub, dtype=np.float64), True,
                    np.zeros(len(q_index)), "carry q[r,j] out of digit j of the usage of resource r"),
        ColumnBlock("limb_rho", rho_index, np.zeros(len(rho_index)), np.array(max_digit, dtype=np.float64),
                    True, np.zeros(len(rho_index)), "digit rho[r,j] of the usage of resource r (base 2^m)"),
        ColumnBlock("limb_s", s_index, np.zeros(len(s_index)), np.ones(len(s_index)), True,
                    np.zeros(len(s_index)), "1 only if the usage is below the budget in digits >= j"),
    ]
    sums, tops, digit_rows, below_rows = [], [], [], []
    for sp in splits:
        name, n, base = sp.row.name, sp.n_limbs, float(1 << sp.base_bits)
        n_groups = sp.digits.shape[1]
        k_cols = np.arange(k_start, k_start + n_groups)
        for j in range(n - 1):
            cols = list(k_cols) + [q_col[name, j], rho_col[name, j]]
            vals = list(sp.digits[j]) + [-base, -1.0]
            if j > 0:
                cols.append(q_col[name, j - 1])
                vals.append(1.0)
            sums.append(((name, j), cols, vals))
            digit_rows.append(((name, j), [rho_col[name, j], s_col[name, j + 1]], [1.0, -base],
                               sp.rhs_digits[j]))
            if j >= 1:
                below_rows.append(((name, j), [rho_col[name, j], s_col[name, j], s_col[name, j + 1]],
                                   [1.0, 1.0, -base], sp.rhs_digits[j]))
        top_cols = list(k_cols) + [s_col[name, n - 1], q_col[name, n - 2]]
        top_vals = list(sp.digits[n - 1]) + [1.0, 1.0]
        tops.append((name, top_cols, top_vals, sp.rhs_digits[n - 1]))
    rows = [
        rows_from_lists("limb_sum", [s[0] for s in sums], [(s[1], s[2]) for s in sums],
                        np.zeros(len(sums)), np.zeros(len(sums)),
                        "digit j of the usage: sum_l D[j,l] k_l + q[j-1] = 2^m q[j] + rho[j]"),
        rows_from_lists("limb_top", [t[0] for t in tops], [(t[1], t[2]) for t in tops],
                        np.full(len(tops), -np.inf), np.array([float(t[3]) for t in tops]),
                        "top digit of the usage (plus carry) <= top digit of the budget"),
        rows_from_lists("limb_digit", [d[0] for d in digit_rows], [(d[1], d[2]) for d in digit_rows],
                        np.full(len(digit_rows), -np.inf), np.array([float(d[3]) for d in digit_rows]),
                        "digit j of the usage <= digit j of the budget unless already below above j"),
    ]
    if below_rows:
        rows.append(rows_from_lists(
            "limb_below", [b[0] for b in below_rows], [(b[1], b[2]) for b in below_rows],
            np.full(len(below_rows), -np.inf), np.array([float(b[3]) for b in below_rows]),
            "below[j] = 1 only if below above j, or digit j of the usage < digit j of the budget"))
    return columns, rows
