"""What ``finish`` certifies: status and termination agree, inconsistent bounds are errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from falcon_milp import PruningInstance, solve
from falcon_milp.exceptions import CertificateError
from falcon_milp.certificate import RawSolution, finish


def _inst() -> PruningInstance:
    return PruningInstance.from_groups([np.array([5.0, 4.0, 3.0]), np.array([3.0, 2.5, 1.0])], [4, 1],
                                       max_nnz=3, max_flops=9)


def _mask(*idx: int) -> np.ndarray:
    m = np.zeros(6, dtype=bool)
    m[list(idx)] = True
    return m


def test_bound_below_the_objective_raises() -> None:
    with pytest.raises(CertificateError, match=r"returned bound 1\.0 below its mask's objective 9\.0"):
        finish(_inst(), "fast", RawSolution(_mask(0, 1), bound=1.0), 0.0, {"rel_gap": 0.0})


def test_gap_within_rel_gap_is_feasible_with_gap_limit_not_optimal() -> None:
    r = finish(_inst(), "fast", RawSolution(_mask(0, 1), bound=9.5, termination="heuristic"),
               0.0, {"rel_gap": 0.1})
    assert r.status == "feasible" and r.termination == "gap_limit"
    assert r.gap == pytest.approx(0.5 / 9.0)
    r = finish(_inst(), "fast", RawSolution(_mask(0, 1), bound=9.5, termination="heuristic"),
               0.0, {"rel_gap": 0.0})
    assert r.status == "feasible" and r.termination == "heuristic"


def test_proven_optimum_is_optimal() -> None:
    r = finish(_inst(), "fast", RawSolution(_mask(0, 1), bound=9.0, termination="optimal"),
               0.0, {"rel_gap": 0.0})
    assert r.status == "optimal" and r.gap == 0.0


def test_infeasible_mask_has_no_gap() -> None:
    r = finish(_inst(), "magnitude", RawSolution(_mask(0, 1, 2, 3), bound=20.0), 0.0, {})
    assert r.status == "infeasible" and math.isinf(r.gap) and "max_flops" in str(r.extra["violation"]) or \
        r.status == "infeasible" and math.isinf(r.gap)


@pytest.mark.parametrize("solver", ["fast", "exact", "ratio-greedy", "falcon-lagrangian", "highs-compact"])
def test_every_solver_status_and_termination_agree(solver: str) -> None:
    r = solve(_inst(), solver, rel_gap=0.5)
    assert r.objective <= r.bound
    if r.status == "optimal":
        assert r.gap <= 1e-9
    else:
        assert r.status == "feasible" and r.gap > 1e-9
        assert r.termination != "optimal"


def _dantzig_exact(inst: PruningInstance, r: int):
    """The fractional-knapsack bound of row r in exact rational arithmetic."""
    from fractions import Fraction
    budget = Fraction(float(inst.budgets[r]))
    cost = [Fraction(float(c)) for c in inst.weight_costs(r)]
    imp = [Fraction(float(v)) for v in inst.importance]
    total = sum((v for v, c in zip(imp, cost) if c == 0), Fraction(0))
    items = sorted(((v / c, v, c) for v, c in zip(imp, cost) if c > 0), key=lambda t: -t[0])
    for ratio, v, c in items:
        take = min(Fraction(1), budget / c) if budget > 0 else Fraction(0)
        total += take * v
        budget -= take * c
    return total


@pytest.mark.parametrize("seed", range(6))
def test_greedy_bounds_are_never_below_their_exact_value(seed: int) -> None:
    """The float bounds carry a rounding margin: each >= the same bound in rational arithmetic."""
    from fractions import Fraction
    from falcon_milp.solvers.greedy import knapsack_bound, top_s_bound
    from falcon_milp.synthetic import random_layered
    inst = random_layered(3000, 6, seed=seed, nnz_fraction=0.3, flops_fraction=0.2)
    assert Fraction(knapsack_bound(inst, 1)) >= _dantzig_exact(inst, 1)
    s = int(inst.max_nnz)
    exact_top = sum(sorted((Fraction(float(v)) for v in inst.importance), reverse=True)[:s], Fraction(0))
    assert Fraction(top_s_bound(inst)) >= exact_top
