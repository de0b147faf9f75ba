"""``fast``: exact LP optimum from the per-layer structure, budget-keeping rounding, certified gap.

The entry point of a pipeline whose pieces live in their own modules: the LP relaxation (with
every budget rounded down to its row's lattice) solved exactly by a breakpoint search on the
FLOP multiplier (:mod:`.lp`; banded sorting on large instances, :mod:`.bands`; more than two
rows: a core LP by HiGHS, :mod:`.lp_core`). Rounding (:mod:`.rounding`): the floor of the basic
LP solution is feasible (exact integer budget check); then greedy fill (largest importance
first among the weights that still fit every budget, any layer), a small exchange search (drop
one weight of a layer, refill) and a short run of the exact class-count search of
:mod:`.core_search` (``search_nodes`` nodes, deterministic). The returned bound is the
certified dual value ``D(lam*, w*)`` (plus a rounding margin), or the proven optimum when that
short search finishes, so the reported gap is certified.
"""
from __future__ import annotations

from typing import Any

from ..certificate import OPTIMALITY_TOL, RawSolution
from ..exceptions import SolverOptionError
from ..instance import PruningInstance
from ..validation import integer
from .bands import banded_problem
from .core_search import core_search
from .rounding import exchange, fill
from .sorted_layers import EPS


def solve_fast(instance: PruningInstance, *, time_limit: float | None = None, rel_gap: float = 0.0,
               threads: int | None = None, search_nodes: int = 2000) -> RawSolution:
    """Exact LP (breakpoint search), floor + greedy fill + exchange, a short core search; certified bound.

    ``search_nodes``: node budget of the exact class-count search used as a local improvement
    (0 turns it off); deterministic, unlike a time budget.
    """
    integer(search_nodes, "search_nodes", 0, SolverOptionError)
    prob = banded_problem(instance, threads)
    lp = prob.solve_lp()
    k = fill(prob, lp.floor)
    k, value = exchange(prob, k, prob.value_of(k))
    extra: dict[str, Any] = {"lp_value": lp.lp_value, "lp_exact": lp.exact,
                             "lp_iterations": lp.iterations,
                             "multipliers": [float(m) for m in lp.mu], "w": lp.w, **lp.extra}
    gap = (lp.bound - value) / max(abs(value), 1e-12)
    proven = gap <= OPTIMALITY_TOL
    bound = lp.bound
    if search_nodes and not proven and gap > rel_gap:
        res = core_search(prob, lp, k, value, None, search_nodes)
        k, value = res.counts, res.value
        extra.update(search_nodes=res.nodes, search_finished=res.finished)
        if res.finished:
            bound, proven = min(bound, value + 64 * EPS * abs(value)), True
    mask = prob.layers.mask_from_counts(instance, k)
    extra["full_sorts"] = prob.layers.n_full_sorts
    return RawSolution(mask, bound, "optimal" if proven else "heuristic", extra)
