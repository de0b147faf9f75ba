"""Tests aimed at mutants of the certificate code that survived the rest of the suite
(issue 10): each fails when the named mutation is applied."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from falcon_milp import PruningInstance, solve
from falcon_milp.result import relative_gap


def test_gap_denominator_is_the_objective_not_the_bound():
    # mutant: / max(|bound|, ...) gives 2/3 here
    assert relative_gap(1.0, 3.0) == 2.0
    assert relative_gap(-2.0, 1.0) == 1.5          # |objective|, not objective
    assert relative_gap(0.0, 1e-13) == pytest.approx(0.1)   # the 1e-12 floor
    assert relative_gap(2.0, 1.0) == 0.0


@pytest.mark.parametrize("solver", ["fast", "exact"])
def test_bound_covers_float_rounding_of_the_optimum(solver):
    # the optimum keeps 1.0 and eleven weights of 1e-16: its exact value is above 1.0, while
    # the float sum 1.0 + 1e-16 + ... rounds back to 1.0. A bound without its rounding margin
    # (mutant: margin = 0) equals that float sum and lies below the true optimum.
    tiny = [1e-16] * 11
    inst = PruningInstance.from_groups([np.array([1.0] + tiny + [0.0] * 4)], [1.0], max_nnz=12)
    res = solve(inst, solver=solver)
    exact_opt = Fraction(1.0) + sum(Fraction(t) for t in tiny)
    acc = 1.0
    for t in tiny:
        acc += t
    assert acc == 1.0 < exact_opt                            # summed in floats, the tiny ones vanish
    assert Fraction(res.bound) >= exact_opt
    assert res.mask.sum() == 12


def _allocation_with_bound(monkeypatch, shift: float):
    """Solve a small allocation with HiGHS's dual bound moved by ``shift`` (in the spec's
    maximisation units): positive = a weaker bound, negative = an impossible one."""
    import dataclasses

    import falcon_milp.solvers.allocation as alloc
    from falcon_milp import AllocationProblem, solve_allocation
    from falcon_milp.solvers.highs import solve_spec as real

    def fake(spec, **kw):
        run = real(spec, **kw)
        return dataclasses.replace(run, bound=run.bound + shift * spec.notes["objective_scale"])

    monkeypatch.setattr(alloc, "solve_spec", fake)
    problem = AllocationProblem.from_groups([np.array([-3.0, -4.0]), np.array([-1.0, -2.0])],
                                            {"nnz": [np.array([0.0, 1.0]), np.array([0.0, 1.0])]}, {"nnz": 1.0})
    return solve_allocation(problem)


def test_allocation_gap_is_relative_to_the_objective(monkeypatch):
    # optimum -5 (one of the two cheaper options); a bound 0.5 weaker is -5.5
    res = _allocation_with_bound(monkeypatch, 0.5)
    assert res.objective == -5.0 and res.bound == -5.5
    assert res.gap == pytest.approx(0.5 / 5.0, rel=1e-12) and res.status == "feasible"


def test_allocation_bound_above_the_objective_is_refused(monkeypatch):
    from falcon_milp.exceptions import CertificateError
    with pytest.raises(CertificateError, match=r"highs: lower bound -4\.(9|89)\d* is above the choice's error -5\.0"):
        _allocation_with_bound(monkeypatch, -0.1)
    # within 1e-9 relative it is rounding: clipped to the objective, optimal
    res = _allocation_with_bound(monkeypatch, -2e-10 * 5)
    assert res.bound == res.objective and res.status == "optimal"
