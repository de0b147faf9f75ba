"""``fast``: exact LP optimum from the per-layer structure, budget-keeping rounding, certified gap.

The selection ILP ``max sum_i I_i z_i  s.t.  sum_i c_{i,r} z_i <= B_r (r = 0..R-1), z in {0,1}^p``
(row 0: c = 1, B = S; row 1: FLOPs) is handled with every budget rounded down to the lattice of
its row's costs (e.g. to an integer for integer FLOP costs): counts are integers, so the integer
problem is the same and its LP relaxation can only be tighter. That LP has the dual

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
kink (no tolerance is involved; about 25 steps on ResNet50-shaped instances). The primal LP
solution is a basic point between the two pieces meeting there that spends exactly F: one
fractional layer, two when the NNZ row binds too (walking from one piece to the other weight
by weight, with exact integer budget arithmetic).

Rounding: the floor of the basic LP solution is feasible (exact integer budget check); then
greedy fill (largest importance first among the weights that still fit every budget, any
layer), a small exchange search (drop one weight of a layer, refill) and a short run of the
exact class-count search of :mod:`~falcon_milp.solvers.exact` (``search_nodes`` nodes,
deterministic). The returned bound is the certified dual value ``D(lam*, w*)`` (plus a
rounding margin), or the proven optimum when that short search finishes, so the reported gap
is certified.

Sorting. On large instances (``p >= 8 * SAMPLE_SIZE``) the LP is first solved on a strided
sample of 200,000 weights; every layer then sorts only the weights inside a band of values
around the sample's thresholds (about 12% of them), and the breakpoint search starts from a
bracket around the sample's multiplier (widened until it holds). A query outside a band sorts
that layer entirely first, so the results are those of a full sort; only the time differs.

More than two rows (extra resources): the dual has several multipliers and the search above
no longer applies. The LP is then solved over a *core*: the two-row LP gives first
thresholds, weights far above (below) their layer threshold are fixed to 1 (0), SciPy's HiGHS
solves the LP over the weights in between, and its duals price the fixed weights; a layer
whose fixed weights have the wrong reduced-cost sign gets a wider core and the LP is solved
again. The result is the LP optimum up to HiGHS's tolerances (not exact in the sense above);
the bound is the dual value at HiGHS's duals evaluated here, which is valid for any duals, so
it stays certified. The primal counts are floored and repaired until every row fits exactly.
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
SAMPLE_SIZE = 200_000
"""Weights in the sample whose LP locates the bands (banded mode, instances above 8x this)."""
BAND_FRACTION = 0.06
"""Half-width of a layer's sorted band, as a fraction of its weights (ranks, from the sample)."""
SMALL_LAYER = 1 << 15
"""Layers up to this size are always sorted entirely."""
START_WIDTH = 0.05
"""Relative half-width of the first bracket around the sample's multipliers."""


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
                 layers: SortedLayers | None = None, banded: bool = False,
                 lattice: bool = True) -> None:
        """``banded``: sort only bands around the thresholds of an LP on a sample (large
        instances; same results, less sorting); otherwise every layer is sorted entirely.
        ``lattice``: round every budget down to the lattice of its row's costs (counts are
        integers, so the integer problem is unchanged and its LP relaxation only tighter)."""
        self.instance = instance
        self.start: tuple[dict[int, float], float] | None = None
        self.sample: Problem | None = None
        if layers is None:
            bands = None
            if banded:
                found = _sample_bands(instance)
                if found is not None:
                    bands, self.start, self.sample = found
            layers = SortedLayers(instance, threads, bands)
        self.layers = layers
        self.costs = self.layers.costs
        self.sizes = self.layers.sizes
        self.S = int(instance.max_nnz)
        self.budgets = [float(b) for b in instance.budgets]
        self.rows = ExactRows(self.costs, self.budgets)
        if lattice:
            for r in range(1, instance.n_resources):
                if self.rows.cap[r] is not None:
                    exact = Fraction(self.rows.cap[r], self.rows.den[r])
                    b = float(exact)
                    if Fraction(b) < exact:
                        b = math.nextafter(b, math.inf)
                    self.budgets[r] = min(b, self.budgets[r])
        # multiplier rows: every resource but NNZ with a finite budget
        self.active = [r for r in range(1, instance.n_resources) if math.isfinite(self.budgets[r])]
        self.L = self.layers.n_layers
        groups: dict[tuple, list[int]] = {}
        for l in range(self.L):
            groups.setdefault(tuple(self.costs[l].tolist()), []).append(l)
        self.classes = [np.array(m, dtype=np.int64) for m in groups.values()]

    # ------------------------------------------------------------------ dual evaluation
    def shifts(self, mu: np.ndarray) -> np.ndarray:
        if not self.active:
            return np.zeros(self.L)
        return self.costs[:, self.active] @ np.asarray(mu, dtype=np.float64)

    def evaluate(self, mu: np.ndarray, hint: tuple[float, float] | None = None) -> DualPoint:
        """phi(mu) = min_w D(mu, w) with the minimising w and the counts there.

        ``hint``: two values expected to bracket the minimising w (a speed-up only).
        """
        mu = np.asarray(mu, dtype=np.float64)
        shifts = self.shifts(mu)
        w, counts, below = self.layers.select(shifts, self.S, 0.0, hint)
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
        return self._lp_core()

    def _finish(self, point: DualPoint, p1: np.ndarray, p2: np.ndarray, theta: Fraction,
                exact: bool, iterations: int, **extra: Any) -> LPSolution:
        """LP solution between the pieces p1 (row use >= budget) and p2 (<= budget).

        Both pieces are optimal for the inner problem at the kink, so every point between them
        spending exactly the budget is LP-optimal. :meth:`_vertex` walks from p2 to p1 one
        weight (or one swap) at a time and stops where the budget is met, which gives a basic
        solution: at most one fractional layer, two when the NNZ row binds as well. If the walk
        fails (float noise in degenerate cases) the convex combination theta*p1 + (1-theta)*p2
        is used instead.
        """
        bound = self.certified_bound(point)
        walk = self._vertex(p1, p2, point.w > 0) if self.active else None
        if walk is not None:
            fl, frac = walk
            x = fl.astype(np.float64)
            lp_value = self.value_of(fl)
            for l, t in frac:
                x[l] += float(t)
                lp_value += float(t) * self.layers.value(l, int(fl[l]))
        else:
            x = float(theta) * p1 + (1 - float(theta)) * p2
            fl = np.array([math.floor(theta * int(a) + (1 - theta) * int(b)) for a, b in zip(p1, p2)],
                          dtype=np.int64)
            lp_value = float(theta) * self.value_of(p1) + (1 - float(theta)) * self.value_of(p2) \
                if theta not in (0, 1) else self.value_of(p1 if theta == 1 else p2)
        return LPSolution(point.mu, point.w, bound, x, fl, lp_value, exact, iterations,
                          point.shifts, dict(extra))

    def _vertex(self, p1: np.ndarray, p2: np.ndarray, count_binds: bool
                ) -> tuple[np.ndarray, list[tuple[int, Fraction]]] | None:
        """Walk from p2 towards p1 until the multiplier row is exactly spent (exact integers).

        Returns the integer part of the stopping point and its fractional entries, or None.
        """
        r = self.active[0]
        num = self.rows.num[r]
        cap = self.rows.cap[r]
        u = self.rows.usage(p2, r)
        if u > cap or self.rows.usage(p1, r) < cap:
            return None
        cur = p2.astype(np.int64).copy()
        d = p1.astype(np.int64) - cur
        rem = [(int(num[l]), int(l), int(-d[l])) for l in np.flatnonzero(d < 0)]
        add = [(int(num[l]), int(l), int(d[l])) for l in np.flatnonzero(d > 0)]
        if not count_binds:
            for c, l, m in rem:                  # removals first (lower the use), then additions
                cur[l] -= m
                u -= c * m
            for c, l, m in sorted(add, reverse=True):
                if u + c * m < cap or c == 0:
                    cur[l] += m
                    u += c * m
                    continue
                t = Fraction(cap - u, c)
                whole = math.floor(t)
                cur[l] += whole
                return cur, ([(l, t - whole)] if t > whole else [])
            return cur, []
        # NNZ binds: swap one weight out for one in, largest increase of the row first
        rem.sort()
        add.sort(reverse=True)
        i = j = 0
        rem_left = [m for _, _, m in rem]
        add_left = [m for _, _, m in add]
        while i < len(rem) and j < len(add):
            c_out, l_out, _ = rem[i]
            c_in, l_in, _ = add[j]
            m = min(rem_left[i], add_left[j])
            step = c_in - c_out
            if step > 0 and u + step * m >= cap:
                t = Fraction(cap - u, step)
                whole = math.floor(t)
                cur[l_out] -= whole
                cur[l_in] += whole
                if t > whole:           # x[l_out] = cur - f: its floor is one lower
                    cur[l_out] -= 1
                    return cur, [(l_out, 1 - (t - whole)), (l_in, t - whole)]
                return cur, []
            cur[l_out] -= m
            cur[l_in] += m
            u += step * m
            rem_left[i] -= m
            add_left[j] -= m
            i += rem_left[i] == 0
            j += add_left[j] == 0
        return (cur, []) if u <= cap and np.array_equal(cur, p1) else None

    def _lp_no_multiplier(self) -> LPSolution:
        pt = self.evaluate(np.zeros(0))
        k = self.fill_ties(pt, 0, False)
        return self._finish(pt, k, k, Fraction(1), True, 1)

    def _w_hint(self, r: int, lam: float) -> tuple[float, float] | None:
        """Values expected to bracket w(lam), from the sample problem (banded mode)."""
        if self.sample is None or r not in self.sample.active:
            return None
        mu = np.array([lam if q == r else 0.0 for q in self.sample.active])
        w = self.sample.evaluate(mu).w
        return (w * (1 - START_WIDTH), w * (1 + START_WIDTH) + 1e-300)

    def _lp_one_multiplier(self) -> LPSolution:
        r = self.active[0]
        cap = self.rows.cap[r]
        use = lambda k: self.rows.usage(k, r)  # noqa: E731
        den = self.rows.den[r]

        def pieces(pt: DualPoint) -> tuple[np.ndarray, int, np.ndarray, int]:
            kmin = self.fill_ties(pt, r, descending=False)   # fewest costs: right derivative
            kmax = self.fill_ties(pt, r, descending=True)    # most costs: left derivative
            return kmin, use(kmin), kmax, use(kmax)

        # a bracket around the sample's multiplier (if any): thresholds stay inside the bands
        lo = hi = None
        steps = 0
        if self.start is not None and r in self.start[0]:
            lam_s = self.start[0][r]
            # lam_s * (1 -+ width), the width doubling (up to 4 times) until the kink is bracketed
            width = START_WIDTH
            tried: set[float] = set()
            for _ in range(4 if lam_s > 0 else 1):
                lams = []
                if lo is None:
                    lams.append(max(0.0, lam_s * (1 - width)))
                if hi is None and lam_s > 0:
                    lams.append(lam_s * (1 + width))
                for lam in sorted(set(lams) - tried):
                    tried.add(lam)
                    pt = self.evaluate(np.array([lam]), hint=self._w_hint(r, lam))
                    steps += 1
                    k_min, u_min, k_max, u_max = pieces(pt)
                    if u_min <= cap <= u_max:
                        return self._finish(pt, k_max, k_min, _theta(cap, u_max, u_min), True, steps,
                                            lam=lam)
                    if lam == 0.0 and u_min <= cap:     # the budget does not bind: lam = 0
                        return self._finish(pt, k_min, k_min, Fraction(1), True, steps, lam=0.0)
                    if u_min > cap:
                        if lo is None or lam > float(lo.mu[0]):
                            lo, lo_min, lo_umin = pt, k_min, u_min
                    elif hi is None or lam < float(hi.mu[0]):
                        hi, hi_max, hi_umax = pt, k_max, u_max
                if lo is not None and hi is not None:
                    break
                width *= 2
        if lo is None:
            lo = self.evaluate(np.zeros(1), hint=self._w_hint(r, 0.0))
            steps += 1
            lo_min, lo_umin, _, _ = pieces(lo)
            if lo_umin <= cap:      # the budget does not bind: lam = 0
                return self._finish(lo, lo_min, lo_min, Fraction(1), True, steps, lam=0.0)
        if hi is None:
            cost = self.costs[:, r]
            pos = cost > 0
            lam_max = float(np.max(self.layers.first[pos] / cost[pos]))
            for _ in range(64):  # every layer with cost > 0 must lie at or below its threshold
                if np.all(lam_max * cost[pos] >= self.layers.first[pos]):
                    break
                lam_max = math.nextafter(lam_max * (1 + 4 * EPS), math.inf)
            hi = self.evaluate(np.array([lam_max]))
            steps += 1
            hi_min, hi_umin, hi_max, hi_umax = pieces(hi)
            if hi_umax >= cap:      # subgradient interval at lam_max contains 0
                return self._finish(hi, hi_max, hi_min, _theta(cap, hi_umax, hi_umin), True, steps,
                                    lam=lam_max)
        best = lo if lo.value <= hi.value else hi
        slope = lambda u: float(cap - u) / den  # noqa: E731  F - usage, as a float
        while steps < MAX_BREAKPOINT_STEPS:
            a, b = float(lo.mu[0]), float(hi.mu[0])
            s_lo, s_hi = slope(lo_umin), slope(hi_umax)     # s_lo < 0 < s_hi
            x = (hi.value - lo.value + s_lo * a - s_hi * b) / (s_lo - s_hi)
            if not a < x < b:
                # the two lines meet at an end of the bracket (they always meet inside [a, b]
                # in exact arithmetic): that end is the minimum
                return self._finish(best, lo_min, hi_max, _theta(cap, lo_umin, hi_umax), True,
                                    steps, lam=float(best.mu[0]))
            # w(lam) does not increase with lam: w(b) <= w(x) <= w(a)
            pt = self.evaluate(np.array([x]), hint=(hi.w, math.nextafter(lo.w, math.inf)))
            steps += 1
            if pt.value <= best.value:
                best = pt
            k_min, u_min, k_max, u_max = pieces(pt)
            if u_min <= cap <= u_max:   # 0 in the subgradient: x is optimal
                return self._finish(best, k_max, k_min, _theta(cap, u_max, u_min), True, steps,
                                    lam=float(best.mu[0]))
            line = max(lo.value + s_lo * (x - a), hi.value + s_hi * (x - b))
            known = (u_min > cap and np.array_equal(k_min, lo_min)) or \
                    (u_max < cap and np.array_equal(k_max, hi_max))
            if known or pt.value <= line:
                # no new piece: the two known lines meet at the minimum
                return self._finish(best, lo_min, hi_max, _theta(cap, lo_umin, hi_umax), True,
                                    steps, lam=float(best.mu[0]))
            if u_min > cap:
                lo, lo_min, lo_umin = pt, k_min, u_min
            else:
                hi, hi_max, hi_umax = pt, k_max, u_max
        return self._finish(best, lo_min, hi_max, _theta(cap, lo_umin, hi_umax), False, steps,
                            lam=float(best.mu[0]))

    def _lp_core(self) -> LPSolution:
        """Several multiplier rows: the LP over a core of weights near the thresholds (HiGHS).

        Start from the two-row LP (NNZ + FLOPs, extra multipliers 0); fix every weight far
        above its layer threshold to 1 and far below to 0, solve the LP over the weights in
        between with SciPy's HiGHS, and price the fixed weights with its duals: if the last
        fixed-in weight of some layer has a negative reduced value (or the first fixed-out one a
        positive value) the core of that layer is widened and the LP solved again. At the end
        the duals satisfy every reduced-cost sign, i.e. the LP optimum up to HiGHS's
        tolerances. The bound is the dual value at those duals, evaluated here (certified for
        any duals).
        """
        from scipy.optimize import linprog

        m = len(self.active)
        L = self.L
        sizes = self.sizes
        if 1 in self.active:
            two = Problem(self.instance, layers=self.layers)
            two.active = [1]
            two.start, two.sample = self.start, self.sample
            first = two._lp_one_multiplier()
            mu0 = np.array([first.mu[0] if r == 1 else 0.0 for r in self.active])
            w0 = first.w
        else:
            mu0, w0 = np.zeros(m), 0.0
        thr = self.shifts(mu0) + w0
        width = np.full(L, 64, dtype=np.int64)
        cnt = self.layers.counts_gt(thr)
        lo = np.maximum(cnt - width, 0)
        hi = np.minimum(self.layers.counts_ge(thr) + width, sizes)
        costs = self.costs[:, [0] + self.active]
        caps = np.array([float(self.S)] + [self.budgets[r] for r in self.active])
        rounds = 0
        solved = None
        while True:
            rounds += 1
            # residual budgets after the fixed-in weights; widen downwards while negative
            resid = caps - costs.T @ lo
            if np.any(resid < 0) and np.any(lo > 0):
                lo = np.maximum(lo - np.maximum(width, lo // 2), 0)
                width *= 2
                continue
            vals = [self.layers.range_values(l, int(lo[l]), int(hi[l])) for l in range(L)]
            owner = np.repeat(np.arange(L), [v.size for v in vals])
            a = np.concatenate(vals) if owner.size else np.zeros(0)
            A = costs[owner].T
            res = linprog(-a, A_ub=A, b_ub=np.maximum(resid, 0.0), bounds=(0.0, 1.0), method="highs")
            if res.status != 0:            # pragma: no cover - HiGHS failure: keep what we have
                break
            solved = (res, lo.copy(), owner, a)
            y = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)
            thr = costs @ y
            grow = False
            for l in range(L):
                if lo[l] > 0 and self.layers.value(l, int(lo[l]) - 1) < thr[l] * (1 - 1e-12):
                    lo[l] = max(0, int(lo[l]) - 2 * int(width[l]))
                    width[l] *= 2
                    grow = True
                if hi[l] < sizes[l] and self.layers.value(l, int(hi[l])) > thr[l] * (1 + 1e-12) + 1e-300:
                    hi[l] = min(int(sizes[l]), int(hi[l]) + 2 * int(width[l]))
                    width[l] *= 2
                    grow = True
            if not grow or rounds > 30:
                break
        if solved is None:                 # pragma: no cover - no LP answer: the two-row point
            point = self.evaluate(mu0)
            fl = self.repair(self.fill_ties(point, self.active[0], False), point.shifts)
            return LPSolution(point.mu, point.w, self.certified_bound(point), fl.astype(np.float64),
                              fl, self.value_of(fl), False, rounds, point.shifts, {"core_lp": "failed"})
        res, lo, owner, a = solved
        # evaluate() re-optimises w for HiGHS's mu: at least as good a bound as HiGHS's w
        point = self.evaluate(np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)[1:])
        x = lo.astype(np.float64) + np.bincount(owner, weights=res.x, minlength=L)
        fl = self.repair(np.floor(x + 1e-9).astype(np.int64), point.shifts)
        lp_value = float(np.dot(a, res.x)) + float(np.sum(self.layers.topsums(lo)))
        return LPSolution(point.mu, point.w, self.certified_bound(point), x, fl, lp_value, False,
                          rounds, point.shifts, {"core_size": int(a.size)})

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
            end = self.layers.count_ge(l, max(second, float(np.nextafter(0, 1)))) \
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
        """1-out/refill local search: drop the smallest kept weight of a class, refill greedily.

        A class is a set of layers with identical costs; dropping its smallest kept weight (and
        filling by largest importance) keeps the largest weights of every class, so one trial
        per class is enough.
        """
        for _ in range(max_rounds):
            improved = False
            for members in self.classes:
                kept = members[k[members] > 0]
                if kept.size == 0:
                    continue
                l = int(kept[np.argmin([self.layers.value(int(m), int(k[m]) - 1) for m in kept])])
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


def _sample_bands(instance: PruningInstance) -> tuple[
        tuple[np.ndarray, np.ndarray], tuple[dict[int, float], float], "Problem"] | None:
    """Value bands around the LP thresholds of a strided sample of every layer.

    The sample keeps every m-th weight (m = p // SAMPLE_SIZE) and scales the budgets by the
    sample's share of each resource, so its LP thresholds estimate the full ones. Band of
    layer l: the sample values BAND_FRACTION of the layer's ranks above and below its
    thresholds (at the sample's LP optimum and at the ends of the first bracket). Returns the
    bands, the sample's multipliers and the sample problem (it estimates w for a given lam),
    or None for small instances (sort everything).
    """
    p = instance.n_weights
    m = p // SAMPLE_SIZE
    if m < 8:
        return None
    off, imp, costs = instance.offsets, instance.importance, instance.costs
    L = instance.n_groups
    groups = [imp[off[l]:off[l + 1]:m] for l in range(L)]
    ns = np.array([g.size for g in groups], dtype=np.int64)
    sizes = np.asarray(instance.group_sizes, dtype=np.float64)
    budgets = []
    for r in range(instance.n_resources):
        b = float(instance.budgets[r])
        total, part = float(np.dot(sizes, costs[:, r])), float(np.dot(ns, costs[:, r]))
        budgets.append(b * part / total if math.isfinite(b) and total > 0 else b)
    extra = {name: (costs[:, r].tolist(), budgets[r])
             for r, name in enumerate(instance.resource_names) if r >= 2}
    sample = PruningInstance.from_groups(
        groups, costs[:, 1].tolist(), max_nnz=min(int(round(budgets[0])), int(ns.sum())),
        max_flops=budgets[1], names=list(instance.names), extra_resources=extra or None)
    sp = Problem(sample, threads=1)
    lp = sp.solve_lp()
    cands = [lp.shifts + lp.w]
    if sp.active == [1] and lp.mu[0] > 0:
        # thresholds at the ends of the first bracket, and at lam = 0 when the FLOP budget of
        # the sample is nearly free there (the full problem may not need the multiplier)
        lam_s = float(lp.mu[0])
        for lam in (lam_s * (1 - 2 * START_WIDTH), lam_s * (1 + 2 * START_WIDTH), 0.0):
            pt = sp.evaluate(np.array([lam]))
            if lam == 0.0:
                use = sp.rows.usage(sp.fill_ties(pt, 1, descending=False), 1)
                if use > sp.rows.cap[1] * 1.2:
                    continue
            cands.append(pt.shifts + pt.w)
    counts = np.array([sp.layers.counts_gt(t) for t in cands])
    j_lo, j_hi = counts.min(axis=0), counts.max(axis=0)
    lo, hi = np.full(L, -np.inf), np.full(L, np.inf)
    for l in range(L):
        if instance.group_sizes[l] <= SMALL_LAYER:
            continue
        d = max(8, int(math.ceil(BAND_FRACTION * ns[l])))
        if j_lo[l] - d > 0:
            hi[l] = sp.layers.value(l, int(j_lo[l]) - d)
        if j_hi[l] + d < ns[l]:
            lo[l] = sp.layers.value(l, int(j_hi[l]) + d)
    start = ({r: float(mu) for r, mu in zip(sp.active, lp.mu)}, float(lp.w))
    return (lo, hi), start, sp


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
    prob = Problem(instance, threads, banded=True)
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
    extra["full_sorts"] = prob.layers.n_full_sorts
    return RawSolution(mask, bound, "optimal" if proven else "heuristic", extra)
