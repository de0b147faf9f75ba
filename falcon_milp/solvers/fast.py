"""``fast``: exact LP optimum from the per-layer structure, budget-keeping rounding, certified gap.

The selection ILP ``max sum_i I_i z_i  s.t.  sum_i c_{i,r} z_i <= B_r (r = 0..R-1), z in {0,1}^p``
(row 0: c = 1, B = S; row 1: FLOPs) has the LP dual

    D(mu, w) = S w + sum_{r>=1} B_r mu_r + sum_i max(0, I_i - sum_r mu_r c_{i,r} - w),

an upper bound on the optimum for every mu >= 0, w >= 0. Inside a layer the shift
``s_l = sum_r mu_r c_{l,r}`` is constant, so once every layer is sorted (descending) the number
of weights above ``s_l + w`` is a binary search: a dual evaluation costs O(L log p).

Two rows (NNZ + FLOPs), the case of the paper, are solved exactly:
``phi(lam) = min_w D(lam, w)`` is convex and piecewise linear in lam; for a given lam the best w
is the (S+1)-th largest reduced value ``I_i - lam f_i`` (clipped at 0), found exactly by
:meth:`SortedLayers.select`, and the slope of phi is ``F - FLOPs(top-S set)`` (an interval when
reduced values tie). The minimiser is found by a breakpoint search (Kelley's cutting-plane
method in one dimension): intersect the lines of phi at the two bracket ends, evaluate there,
and stop when the subgradient interval contains 0 or the line found is one already known.
Each step discovers a new linear piece, so it ends after finitely many steps at the exact
kink; the primal LP solution is the convex combination of the two pieces meeting there that
spends exactly F (at most two layers are fractional in practice: the two crossing items).

Rounding: the floor of the LP counts is feasible (exact integer budget check); then greedy
fill (largest importance first among the weights that still fit every budget, any layer)
and a small exchange search (remove one weight from a layer, refill) while it improves.
The returned bound is the certified dual value ``D(lam*, w*)`` (plus a rounding margin), so
the reported gap is certified.

More than two rows: the dual is minimised over several multipliers with Kelley's
cutting-plane method (a small LP over the cuts, solved by SciPy/HiGHS); every evaluated point
gives a valid bound and the best one is returned, but the LP optimum is then only
approximated (to about 1e-9 relative, or until the iteration cap), and the primal point is
recovered from the cut multipliers, floored and repaired until it fits every row exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from ..exceptions import SolverOptionError
from ..instance import PruningInstance
from .registry import OPTIMALITY_TOL, RawSolution
from ._sorted import ExactRows, SortedLayers

EPS = np.finfo(np.float64).eps
MAX_BREAKPOINT_STEPS = 200
MAX_CUTS = 300


@dataclass
class DualPoint:
    """phi at one multiplier vector: w, the dual value, strict counts and tie counts."""

    mu: np.ndarray
    w: float
    value: float
    counts: np.ndarray          # #{I > s_l + w} per layer
    ties: np.ndarray            # reduced value == w (threshold model)
    shifts: np.ndarray


@dataclass
class LPSolution:
    """Result of the LP: dual point, certified bound, primal counts (fractional) and pieces."""

    mu: np.ndarray
    w: float
    bound: float
    x: np.ndarray                       # (L,) LP counts per layer (float)
    floor: np.ndarray                   # (L,) int64, floor of x, feasible
    lp_value: float                     # primal value of x (<= LP optimum <= bound)
    exact: bool                         # LP optimum proven (primal = dual up to rounding)
    iterations: int
    shifts: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


class Problem:
    """An instance prepared for the structured solvers: sorted layers + exact budget rows."""

    def __init__(self, instance: PruningInstance, threads: int | None = None,
                 layers: SortedLayers | None = None) -> None:
        self.instance = instance
        self.layers = layers if layers is not None else SortedLayers(instance, threads)
        self.costs = self.layers.costs
        self.sizes = self.layers.sizes
        self.S = int(instance.max_nnz)
        self.budgets = [float(b) for b in instance.budgets]
        self.rows = ExactRows(self.costs, self.budgets)
        # multiplier rows: every resource but NNZ with a finite budget
        self.active = [r for r in range(1, instance.n_resources) if math.isfinite(self.budgets[r])]
        self.L = self.layers.n_layers

    # ------------------------------------------------------------------ dual evaluation
    def shifts(self, mu: np.ndarray) -> np.ndarray:
        if not self.active:
            return np.zeros(self.L)
        return self.costs[:, self.active] @ np.asarray(mu, dtype=np.float64)

    def evaluate(self, mu: np.ndarray) -> DualPoint:
        """phi(mu) = min_w D(mu, w) with the minimising w and the counts there."""
        mu = np.asarray(mu, dtype=np.float64)
        shifts = self.shifts(mu)
        w, counts, below = self.layers.select(shifts, self.S, 0.0)
        ties = below - counts
        value = self._dual_value(mu, w, shifts, counts)
        return DualPoint(mu, w, value, counts, ties, shifts)

    def _dual_value(self, mu: np.ndarray, w: float, shifts: np.ndarray, counts: np.ndarray) -> float:
        thr = shifts + w
        tops = self.layers.topsums(counts)
        val = self.S * w + sum(self.budgets[r] * float(m) for r, m in zip(self.active, mu))
        return float(val + np.sum(tops - counts * thr))

    def certified_bound(self, point: DualPoint) -> float:
        """D(mu, w) plus a margin covering float rounding (sums, shifts, near-threshold items)."""
        thr = point.shifts + point.w
        tops = self.layers.topsums(point.counts)
        scale = (abs(self.S * point.w) + sum(abs(self.budgets[r] * float(m)) for r, m in zip(self.active, point.mu))
                 + float(np.sum(np.abs(tops))) + float(np.sum(point.counts * np.abs(thr))))
        # items just at or below the rounded threshold whose true reduced value may be > 0
        band = self.layers.counts_ge(thr * (1 - 8 * EPS) - 8 * EPS * np.abs(point.shifts)) - point.counts
        margin = 64 * EPS * scale + float(np.sum(band * (8 * EPS * (np.abs(thr) + np.abs(point.shifts)))))
        return point.value + margin

    # ------------------------------------------------------------------ pieces
    def fill_ties(self, point: DualPoint, order_by_cost: int, descending: bool) -> np.ndarray:
        """Counts of the top-S set at ``point``: strict counts plus ties, cheapest (or dearest) first.

        With w > 0 exactly S - sum(counts) ties are added (they have reduced value w > 0);
        with w = 0 ties are worth 0 and are added only for the dearest-first piece.
        """
        k = point.counts.copy()
        room = self.S - int(k.sum())
        need = room if point.w > 0 else (room if descending else 0)
        if need <= 0 or not point.ties.any():
            return k
        key = self.costs[:, order_by_cost]
        order = np.argsort(-key if descending else key, kind="stable")
        for l in order:
            if need <= 0:
                break
            t = min(int(point.ties[l]), need)
            k[l] += t
            need -= t
        return k

    def value_of(self, counts: np.ndarray) -> float:
        return float(np.sum(self.layers.topsums(counts)))

    # ------------------------------------------------------------------ LP
    def solve_lp(self) -> LPSolution:
        if len(self.active) == 0:
            return self._lp_no_multiplier()
        if len(self.active) == 1:
            return self._lp_one_multiplier()
        return self._lp_cutting_plane()

    def _finish(self, point: DualPoint, p1: np.ndarray, p2: np.ndarray, theta: Fraction,
                exact: bool, iterations: int, **extra: Any) -> LPSolution:
        """LP solution theta * p1 + (1 - theta) * p2 (both within the NNZ budget)."""
        x = float(theta) * p1 + (1 - float(theta)) * p2
        fl = np.array([math.floor(theta * int(a) + (1 - theta) * int(b)) for a, b in zip(p1, p2)],
                      dtype=np.int64)
        lp_value = float(theta) * self.value_of(p1) + (1 - float(theta)) * self.value_of(p2) \
            if theta not in (0, 1) else self.value_of(p1 if theta == 1 else p2)
        bound = self.certified_bound(point)
        return LPSolution(point.mu, point.w, bound, x, fl, lp_value, exact, iterations,
                          point.shifts, dict(extra))

    def _lp_no_multiplier(self) -> LPSolution:
        pt = self.evaluate(np.zeros(0))
        k = self.fill_ties(pt, 0, False)
        return self._finish(pt, k, k, Fraction(1), True, 1)

    def _lp_one_multiplier(self) -> LPSolution:
        r = self.active[0]
        cap = self.rows.cap[r]
        use = lambda k: self.rows.usage(k, r)  # noqa: E731
        den = self.rows.den[r]

        def pieces(pt: DualPoint) -> tuple[np.ndarray, int, np.ndarray, int]:
            kmin = self.fill_ties(pt, r, descending=False)   # fewest costs: right derivative
            kmax = self.fill_ties(pt, r, descending=True)    # most costs: left derivative
            return kmin, use(kmin), kmax, use(kmax)

        lo = self.evaluate(np.zeros(1))
        lo_min, lo_umin, lo_max, lo_umax = pieces(lo)
        if lo_umin <= cap:      # the budget does not bind: lam = 0
            return self._finish(lo, lo_min, lo_min, Fraction(1), True, 1, lam=0.0)
        cost = self.costs[:, r]
        pos = cost > 0
        lam_max = float(np.max(self.layers.first[pos] / cost[pos]))
        for _ in range(64):  # every layer with cost > 0 must lie at or below its threshold
            if np.all(lam_max * cost[pos] >= self.layers.first[pos]):
                break
            lam_max = math.nextafter(lam_max * (1 + 4 * EPS), math.inf)
        hi = self.evaluate(np.array([lam_max]))
        hi_min, hi_umin, hi_max, hi_umax = pieces(hi)
        if hi_umax >= cap:      # subgradient interval at lam_max contains 0
            return self._finish(hi, hi_max, hi_min, _theta(cap, hi_umax, hi_umin), True, 2,
                                lam=lam_max)
        best = lo if lo.value <= hi.value else hi
        steps = 2
        slope = lambda u: float(cap - u) / den  # noqa: E731  F - usage, as a float
        while steps < MAX_BREAKPOINT_STEPS:
            a, b = float(lo.mu[0]), float(hi.mu[0])
            s_lo, s_hi = slope(lo_umin), slope(hi_umax)     # s_lo < 0 < s_hi
            x = (hi.value - lo.value + s_lo * a - s_hi * b) / (s_lo - s_hi)
            if not a < x < b:
                x = 0.5 * (a + b)
                if not a < x < b:   # no float left between the ends: the kink is here
                    return self._finish(best, lo_min, hi_max, _theta(cap, lo_umin, hi_umax), True,
                                        steps, lam=float(best.mu[0]))
            pt = self.evaluate(np.array([x]))
            steps += 1
            if pt.value < best.value:
                best = pt
            k_min, u_min, k_max, u_max = pieces(pt)
            if u_min <= cap <= u_max:   # 0 in the subgradient: x is optimal
                return self._finish(pt, k_max, k_min, _theta(cap, u_max, u_min), True, steps, lam=x)
            line = max(lo.value + s_lo * (x - a), hi.value + s_hi * (x - b))
            known = (u_min > cap and np.array_equal(k_min, lo_min)) or \
                    (u_max < cap and np.array_equal(k_max, hi_max))
            if known or pt.value <= line:
                # no new piece: the two known lines meet at the minimum
                return self._finish(pt, lo_min, hi_max, _theta(cap, lo_umin, hi_umax), True, steps,
                                    lam=x)
            if u_min > cap:
                lo, lo_min, lo_umin, lo_max, lo_umax = pt, k_min, u_min, k_max, u_max
            else:
                hi, hi_min, hi_umin, hi_max, hi_umax = pt, k_min, u_min, k_max, u_max
        return self._finish(best, lo_min, hi_max, _theta(cap, lo_umin, hi_umax), False, steps,
                            lam=float(best.mu[0]))

    def _lp_cutting_plane(self) -> LPSolution:
        """Several multipliers: Kelley's cutting planes over mu in a box (approximate LP)."""
        from scipy.optimize import linprog

        m = len(self.active)
        upper = np.zeros(m)
        for j, r in enumerate(self.active):
            cost = self.costs[:, r]
            pos = cost > 0
            upper[j] = float(np.max(self.layers.first[pos] / cost[pos])) * (1 + 1e-9) if pos.any() else 0.0
        mu = np.zeros(m)
        cuts_g, cuts_b, pts, pieces = [], [], [], []
        best: DualPoint | None = None
        lower = -math.inf
        weights: np.ndarray | None = None
        it = 0
        for it in range(MAX_CUTS):
            pt = self.evaluate(mu)
            k = self.fill_ties(pt, self.active[0], descending=False)
            g = np.array([self.budgets[r] - float(np.dot(self.costs[:, r], k)) for r in self.active])
            if best is None or pt.value < best.value:
                best = pt
            cuts_g.append(g)
            cuts_b.append(pt.value - float(g @ mu))
            pts.append(pt)
            pieces.append(k)
            if best.value - lower <= 1e-10 * max(1.0, abs(best.value)):
                break
            # min t  s.t.  t >= b_j + g_j . mu  ->  -t + g_j . mu <= -b_j
            G = np.array(cuts_g)
            A = np.hstack([-np.ones((len(cuts_g), 1)), G])
            res = linprog(np.r_[1.0, np.zeros(m)], A_ub=A, b_ub=-np.array(cuts_b),
                          bounds=[(None, None)] + [(0.0, u) for u in upper], method="highs")
            if res.status != 0:
                break
            lower = float(res.x[0])
            mu = np.clip(res.x[1:], 0.0, upper)
            weights = np.clip(-np.asarray(res.ineqlin.marginals), 0.0, None)
        assert best is not None
        if weights is None or weights.size != len(pieces) or weights.sum() <= 0:
            weights = np.zeros(len(pieces))
            weights[next(i for i, q in enumerate(pts) if q is best)] = 1.0
        weights = weights / weights.sum()
        x = np.sum([wt * k for wt, k in zip(weights, pieces)], axis=0).astype(np.float64)
        fl = self.repair(np.floor(x + 1e-9).astype(np.int64), best.shifts)
        bound = self.certified_bound(best)
        return LPSolution(best.mu, best.w, bound, x, fl, self.value_of(fl), False, it + 1,
                          best.shifts, {"lower_estimate": lower})

    # ------------------------------------------------------------------ integer solutions
    def repair(self, k: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """Drop weights (lowest importance per unit of shift first) until every row fits."""
        k = np.minimum(np.maximum(k, 0), self.sizes).astype(np.int64)
        while not self.rows.fits(k) or int(k.sum()) > self.S:
            cand = np.flatnonzero(k > 0)
            ratio = np.array([self.layers.value(int(l), int(k[l]) - 1) / (1.0 + shifts[l]) for l in cand])
            l = int(cand[np.argmin(ratio)])
            k[l] -= 1
        return k

    def fill(self, k: np.ndarray) -> np.ndarray:
        """Greedy: add the largest next importance among the layers whose next weight fits."""
        k = k.copy()
        room = self.S - int(k.sum())
        slack = [self.rows.slack(k, r) for r in range(1, self.rows.n_rows)]
        nums = [self.rows.num[r] for r in range(1, self.rows.n_rows)]
        L = self.L
        heads = np.array([self.layers.value(l, int(k[l])) if k[l] < self.sizes[l] else -1.0
                          for l in range(L)])
        while room > 0:
            fits = heads > 0
            for sl, num in zip(slack, nums):
                if sl is not None:
                    fits &= np.array([int(num[l]) <= sl for l in range(L)])
            if not fits.any():
                break
            l = int(np.argmax(np.where(fits, heads, -np.inf)))
            # take a run from layer l while it stays the best choice and fits
            other = np.where(fits, heads, -np.inf)
            other[l] = -np.inf
            second = float(other.max()) if (other > -np.inf).any() else 0.0
            end = int(self.layers.counts_ge(np.full(L, max(second, np.nextafter(0, 1))))[l]) \
                if second > 0 else int(self.sizes[l])
            run = max(1, min(end - int(k[l]), room))
            for sl, num in zip(slack, nums):
                if sl is not None and int(num[l]) > 0:
                    run = min(run, sl // int(num[l]))
            run = min(run, int(self.sizes[l] - k[l]))
            # stop the run at the first zero importance
            vals = self.layers.range_values(l, int(k[l]), int(k[l]) + run)
            run = int(np.count_nonzero(vals > 0))
            if run <= 0:
                heads[l] = -1.0
                continue
            k[l] += run
            room -= run
            slack = [None if sl is None else sl - run * int(num[l]) for sl, num in zip(slack, nums)]
            heads[l] = self.layers.value(l, int(k[l])) if k[l] < self.sizes[l] else -1.0
        return k

    def exchange(self, k: np.ndarray, value: float, max_rounds: int = 20) -> tuple[np.ndarray, float]:
        """1-out/refill local search: drop the last weight of one layer, refill; keep improvements."""
        for _ in range(max_rounds):
            improved = False
            for l in np.flatnonzero(k > 0):
                trial = k.copy()
                trial[l] -= 1
                trial = self.fill(trial)
                if np.array_equal(trial, k):
                    continue
                v = self.value_delta(k, trial) + value
                if v > value * (1 + 4 * EPS) and self.rows.fits(trial):
                    k, value, improved = trial, v, True
            if not improved:
                break
        return k, value

    def value_delta(self, old: np.ndarray, new: np.ndarray) -> float:
        """value(new) - value(old), summed over the changed ranks only (accurate)."""
        d = 0.0
        for l in np.flatnonzero(old != new):
            a, b = int(old[l]), int(new[l])
            vals = self.layers.range_values(int(l), min(a, b), max(a, b))
            s = float(np.sum(vals))
            d += s if b > a else -s
        return d


def _theta(cap: int, u1: int, u2: int) -> Fraction:
    """Weight of piece 1 (usage u1 >= cap) in the combination spending exactly cap (u2 <= cap)."""
    if u1 == u2:
        return Fraction(0)
    return Fraction(cap - u2, u1 - u2)


def solve_fast(instance: PruningInstance, *, time_limit: float | None = None, rel_gap: float = 0.0,
               threads: int | None = None, search_nodes: int = 2000) -> RawSolution:
    """Exact LP (breakpoint search), floor + greedy fill + exchange, a short core search; certified bound.

    ``search_nodes``: node budget of the exact class-count search used as a local improvement
    (0 turns it off); deterministic, unlike a time budget.
    """
    if isinstance(search_nodes, bool) or not isinstance(search_nodes, int) or search_nodes < 0:
        raise SolverOptionError(f"`search_nodes` must be an integer >= 0; got {search_nodes!r}")
    prob = Problem(instance, threads)
    lp = prob.solve_lp()
    k = prob.fill(lp.floor)
    value = prob.value_of(k)
    k, value = prob.exchange(k, value)
    extra: dict[str, Any] = {"lp_value": lp.lp_value, "lp_exact": lp.exact,
                             "lp_iterations": lp.iterations,
                             "multipliers": [float(m) for m in lp.mu], "w": lp.w, **lp.extra}
    gap = (lp.bound - value) / max(abs(value), 1e-12)
    proven = gap <= OPTIMALITY_TOL
    bound = lp.bound
    if search_nodes and not proven and gap > rel_gap:
        from .exact import core_search   # exact builds on this module
        res = core_search(prob, lp, k, value, None, search_nodes)
        k, value = res.counts, res.value
        extra.update(search_nodes=res.nodes, search_finished=res.finished)
        if res.finished:
            bound, proven = min(bound, value + 64 * EPS * abs(value)), True
    mask = prob.layers.mask_from_counts(instance, k)
    return RawSolution(mask, bound, "optimal" if proven else "heuristic", extra)
