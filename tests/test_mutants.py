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
