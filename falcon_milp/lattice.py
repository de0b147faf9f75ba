"""Budget rows on the lattice of their costs: the one scaling every exact budget check uses.

Every float is a dyadic rational, so for the costs of one row there is a power of two
``scale = 2^E`` (E >= 0) with every ``C_l = c_l * scale`` an integer. Counts are integers, so

    sum_l c_l k_l <= B    iff    sum_l C_l k_l <= cap = floor(B * scale)

(the *lattice* row; an infinite budget has no cap). The integer problem is unchanged and an LP
relaxation with the budget rounded down to ``cap / scale`` can only be tighter. Used by the
exact count arithmetic of the solvers (:class:`~falcon_milp.solvers.sorted_layers.ExactRows`),
the LP engine (its budgets on the lattice) and the solver-neutral model rows
(:mod:`falcon_milp.formulations.resources`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence


@dataclass(frozen=True)
class LatticeRow:
    """One row scaled to integers: ``coef[l] = c_l * scale`` exactly, ``cap = floor(B * scale)``
    (None for an infinite budget)."""

    scale: int
    coef: tuple[int, ...]
    cap: int | None

    def budget(self, budget: float) -> float:
        """The budget rounded down to the lattice: the smallest float >= cap / scale, at most ``budget``."""
        if self.cap is None:
            return budget
        exact = Fraction(self.cap, self.scale)
        b = float(exact)
        if Fraction(b) < exact:
            b = math.nextafter(b, math.inf)
        return min(b, budget)


def lattice_row(costs: Sequence[float], budget: float) -> LatticeRow:
    """The lattice row of per-group ``costs`` (finite floats >= 0) and ``budget`` (may be inf)."""
    fr = [Fraction(float(c)) for c in costs]
    scale = max([f.denominator for f in fr] + [1])      # a power of two: the costs are floats
    b = float(budget)
    cap = math.floor(Fraction(b) * scale) if math.isfinite(b) else None
    return LatticeRow(scale, tuple(int(f * scale) for f in fr), cap)
