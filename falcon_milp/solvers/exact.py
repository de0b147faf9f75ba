"""``exact``: proves optimality of the selection ILP at ResNet50 size (the entry point).

Pipeline: the LP by breakpoint search (:mod:`.lp`, banded sorting :mod:`.bands`; a core LP by
HiGHS with extra rows, :mod:`.lp_core`), budget-keeping rounding (:mod:`.rounding`), then the
exact search over class counts inside reduced-cost windows (:mod:`.core_search`,
:mod:`.class_search`), which proves the incumbent optimal. The certificate: every feasible
count vector has ``value = D - Pen`` with all penalty terms >= 0, so the windows contain every
better solution; when the search ends the returned bound is the incumbent's value plus 64 ulp
and the status is ``optimal`` when the certified gap is at most
:data:`~falcon_milp.certificate.OPTIMALITY_TOL` (1e-9).

Fallback. If the search has not finished after ``MILP_AFTER`` (30,000) nodes the same windowed
problem is handed to HiGHS as a compact MILP (:mod:`.windowed_milp`); the optimality proof is
then HiGHS's (``extra["windowed_milp"]``; its dual-bound slack is added to the bound). The
architecture-shaped instances never need it.

With more than two resource rows the certificate and the search stay exact (the identity
holds for any multipliers); the multipliers come from the core LP, so the windows may be wider
and the search longer. On time limit (or ``max_nodes``) the incumbent is returned with the LP
bound, status ``feasible``.
"""
from __future__ import annotations

import time
from typing import Any

from ..certificate import RawSolution
from ..exceptions import SolverOptionError
from ..instance import PruningInstance
from ..validation import integer
from .bands import banded_problem
from .core_search import core_search
from .rounding import exchange, fill
from .sorted_layers import EPS

MILP_AFTER = 30_000
"""Search nodes after which the windowed problem goes to HiGHS as a compact MILP."""


def solve_exact(instance: PruningInstance, *, time_limit: float | None = None, rel_gap: float = 0.0,
                threads: int | None = None, max_nodes: int | None = None,
                band: bool = True) -> RawSolution:
    """LP (breakpoint search) + rounding, reduced-cost windows, exact search over class counts.

    ``max_nodes`` caps the search (then status ``feasible``, termination ``iteration_limit``);
    ``band=False`` scans the three leaf classes without the two-row band (slower; for checks).
    """
    if max_nodes is not None:
        integer(max_nodes, "max_nodes", 1, SolverOptionError)
    start = time.perf_counter()
    deadline = None if time_limit is None else start + float(time_limit)
    prob = banded_problem(instance, threads)
    lp = prob.solve_lp()
    k = fill(prob, lp.floor)
    k, value = exchange(prob, k, prob.value_of(k))
    extra: dict[str, Any] = {"lp_bound": lp.bound, "lp_exact": lp.exact, "lp_iterations": lp.iterations}
    gap0 = (lp.bound - value) / max(abs(value), 1e-12)
    if gap0 <= rel_gap:
        mask = prob.layers.mask_from_counts(instance, k)
        return RawSolution(mask, lp.bound, "gap_limit" if gap0 > 0 else "optimal", extra)
    res = core_search(prob, lp, k, value, deadline, max_nodes, bool(band), milp_after=MILP_AFTER)
    extra.update(nodes=res.nodes, windows=res.windows, full_sorts=prob.layers.n_full_sorts)
    if res.milp is not None:
        extra["windowed_milp"] = res.milp
    mask = prob.layers.mask_from_counts(instance, res.counts)
    if res.finished:
        bound = res.value + 64 * EPS * abs(res.value)
        if res.milp is not None:
            bound += res.milp["bound_excess"]
        return RawSolution(mask, min(bound, lp.bound), "optimal", extra)
    return RawSolution(mask, lp.bound, res.stopped_by, extra)
