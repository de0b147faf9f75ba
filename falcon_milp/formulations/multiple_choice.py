"""The multiple-choice knapsack MILP of an allocation problem (math: ``formulations/multiple_choice.md``).

One binary x[g, j] per option; one equality row per group (exactly one option), one row per
resource with a finite budget, scaled by the budget (sum (u / B) x <= 1). Columns whose option
can never be part of a feasible choice, or that another option of the group dominates, are
fixed to 0 (the optimum is unchanged; ``notes["fixed"]`` counts them). The objective is the
error, shifted by each group's smallest error and scaled to at most :data:`OBJECTIVE_TOP`, and
negated (the spec maximises): error = ``notes["offset"] - objective / notes["objective_scale"]``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..allocation import AllocationProblem
from .spec import ColumnBlock, LinearSpec, RowBlock

OBJECTIVE_TOP = 2.0 ** 20
"""The largest shifted error after scaling. HiGHS prunes nodes whose bound is within an absolute
tolerance of the incumbent; at a top of 1 that left relative gaps of 1e-7 on ResNet50-shaped
curves (benchmarks/bench_allocation.py), at 2^20 below 1e-14."""
__all__ = ["build_multiple_choice_model", "choice_from_values", "multiple_choice_spec", "usable_options"]


def usable_options(problem: AllocationProblem) -> np.ndarray:
    """(J,) bool: False for an option that cannot be in any feasible choice (its use plus the
    smallest use of every other group exceeds a budget) or that is dominated (another option of
    its group errs no more and uses no more of any resource, with ties broken by index)."""
    keep = np.ones(problem.n_options, dtype=bool)
    usage, budgets = problem.usage, problem.budgets
    mins = np.zeros((usage.shape[0], problem.n_groups))
    for g in range(problem.n_groups):
        if usage.shape[0]:
            mins[:, g] = usage[:, problem.group(g)].min(axis=1)
    total_min = mins.sum(axis=1)
    for g in range(problem.n_groups):
        s = problem.group(g)
        u = usage[:, s]                                       # (R, J_g)
        rest = (total_min - mins[:, g])[:, None]
        ok = np.all(u + rest <= budgets[:, None] * (1 + 1e-12) + 1e-300, axis=0)
        e = problem.errors[s]
        J = e.size
        if J > 1:
            # option b dominates a: e_b <= e_a and u_b <= u_a everywhere, strictly better somewhere
            # or equal with a smaller index
            le_e = e[:, None] <= e[None, :]                   # [b, a]
            le_u = np.all(u[:, :, None] <= u[:, None, :], axis=0)
            strict = (e[:, None] < e[None, :]) | np.any(u[:, :, None] < u[:, None, :], axis=0)
            earlier = np.arange(J)[:, None] < np.arange(J)[None, :]
            dom = le_e & le_u & (strict | earlier)
            np.fill_diagonal(dom, False)
            dom &= ok[:, None]                                # only a usable option dominates
            ok &= ~dom.any(axis=0)
        keep[s] = ok
    return keep


def multiple_choice_spec(problem: AllocationProblem, exclude: Sequence[np.ndarray] = ()) -> LinearSpec:
    """The MILP as a :class:`LinearSpec` (columns ``x`` indexed by (group name, option)).

    ``exclude``: choices ((G,) option per group) known to break a budget in exact arithmetic,
    each cut off by a no-good row sum_g x[g, c_g] <= G - 1 (no feasible choice is lost)."""
    G, J = problem.n_groups, problem.n_options
    group_of = np.repeat(np.arange(G), np.diff(problem.offsets))
    shift = np.array([problem.errors[problem.group(g)].min() for g in range(G)])
    rel = problem.errors - shift[group_of]
    top = float(rel.max()) if rel.size else 0.0
    scale = OBJECTIVE_TOP / top if top > 0 else 1.0
    usable = usable_options(problem)
    index = [(problem.names[g], int(j - problem.offsets[g])) for j, g in enumerate(group_of)]
    columns = [ColumnBlock("x", index, np.zeros(J), usable.astype(np.float64), True, -rel * scale,
                           "x[g, j] = 1 when group g takes option j")]
    rows = [RowBlock("choose", list(problem.names), problem.offsets.copy(), np.arange(J, dtype=np.int64),
                     np.ones(J), np.ones(G), np.ones(G), "sum_j x[g, j] = 1: one option per group")]
    finite = [r for r in range(problem.usage.shape[0]) if np.isfinite(problem.budgets[r])]
    if finite:
        indptr, indices, data = [0], [], []
        for r in finite:
            b = problem.budgets[r]
            coef = problem.usage[r] / b if b > 0 else problem.usage[r]
            nz = np.flatnonzero(coef)
            indices.append(nz)
            data.append(coef[nz])
            indptr.append(indptr[-1] + nz.size)
        upper = np.array([1.0 if problem.budgets[r] > 0 else 0.0 for r in finite])
        rows.append(RowBlock("budget", [problem.resource_names[r] for r in finite],
                             np.array(indptr, dtype=np.int64), np.concatenate(indices).astype(np.int64),
                             np.concatenate(data), np.full(len(finite), -np.inf), upper,
                             "sum_{g,j} (u^r_{g,j} / B_r) x[g, j] <= 1, one row per finite budget"))
    if len(exclude):
        cols = [problem.offsets[:-1] + np.asarray(c, dtype=np.int64) for c in exclude]
        rows.append(RowBlock("nogood", list(range(len(cols))), np.arange(len(cols) + 1, dtype=np.int64) * G,
                             np.concatenate(cols), np.ones(G * len(cols)), np.full(len(cols), -np.inf),
                             np.full(len(cols), G - 1.0),
                             "sum_g x[g, c_g] <= G - 1 for a choice c that breaks a budget exactly"))
    notes = {"offset": float(shift.sum()), "objective_scale": scale, "fixed": int((~usable).sum()),
             "budget_rows": [problem.resource_names[r] for r in finite]}
    return LinearSpec("multiple-choice", columns, rows, notes)


def build_multiple_choice_model(problem: AllocationProblem):
    """The MILP as a Pyomo ConcreteModel: ``x`` (binary, indexed by (group name, option)),
    ``obj`` (maximise the negated, shifted, scaled error), ``choose`` (per group), ``budget``."""
    from .spec import to_pyomo
    return to_pyomo(multiple_choice_spec(problem), "falcon_multiple_choice")


def choice_from_values(problem: AllocationProblem, values: np.ndarray) -> np.ndarray:
    """(G,) option index per group: the largest x of each group (a solved x is 0/1)."""
    return np.array([int(np.argmax(values[problem.group(g)])) for g in range(problem.n_groups)],
                    dtype=np.int64)
