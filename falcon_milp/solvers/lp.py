"""The LP engine of ``fast`` and ``exact``: per-layer sorted structure, dual points, breakpoint search.

(Over 400 lines: one class, :class:`Problem`, whose dual evaluation, pieces, basic-solution walk
and breakpoint search share its exact rows; the sorted layers, the bands, the core LP and the
rounding are in their own modules.)

The selection ILP ``max sum_i I_i z_i  s.t.  sum_i c_{i,r} z_i <= B_r (r = 0..R-1), z in {0,1}^p``
(row 0: c = 1, B = S; row 1: FLOPs) is handled with every budget rounded down to the lattice of
its row's costs (e.g. to an integer for integer FLOP costs): counts are integers, so the integer
problem is the same and its LP relaxation can only be tighter. That LP has the dual

    D(mu, w) = S w + sum_{r>=1} B_r mu_r + sum_i max(0, I_i - sum_r mu_r c_{i,r} - w),

an upper bound on the optimum for every mu >= 0, w >= 0. Inside a layer the shift
``s_l = sum_r mu_r c_{l,r}`` is constant, so once every layer is sorted (descending,
:class:`~.sorted_layers.SortedLayers`) the number of weights above ``s_l + w`` is a binary
search: a dual evaluation costs O(L log p).

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
by weight, with exact integer budget arithmetic). More than two rows: :mod:`.lp_core`.

Sorting. On large instances (``p >= 8 * SAMPLE_SIZE``) the LP is first solved on a strided
sample of 200,000 weights; every layer then sorts only the weights inside a band of values
around the sample's thresholds (about 12% of them), and the breakpoint search starts from a
bracket around the sample's multiplier (widened until it holds). A query outside a band sorts
that layer entirely first, so the results are those of a full sort; only the time differs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from ..instance import PruningInstance
from .lp_core import core_lp
from .sorted_layers import EPS, ExactRows, SortedLayers

MAX_BREAKPOINT_STEPS = 200
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
                 layers: SortedLayers | None = None, lattice: bool = True,
                 start: tuple[dict[int, float], float] | None = None, sample: Problem | None = None) -> None:
        """``layers``: the sorted layers (default: every layer sorted entirely; banded layers and
        the ``start`` multipliers and ``sample`` problem behind them come from
        :func:`.bands.banded_problem`). ``lattice``: round every budget down to the lattice of
        its row's costs (counts are integers, so the integer problem is unchanged and its LP
        relaxation only tighter)."""
        self.instance = instance
        self.start = start
        self.sample = sample
        self.layers = SortedLayers(instance, threads) if layers is None else layers
        self.costs = self.layers.costs
        self.sizes = self.layers.sizes
        self.S = int(instance.max_nnz)
        self.budgets = [float(b) for b in instance.budgets]
        self.rows = ExactRows(self.costs, self.budgets)
        if lattice:
            for r in range(1, instance.n_resources):
                self.budgets[r] = self.rows.lattice[r].budget(self.budgets[r])
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
        value = self.dual_value(mu, w, shifts, counts)
        return DualPoint(mu, w, value, counts, ties, shifts)

    def dual_value(self, mu: np.ndarray, w: float, shifts: np.ndarray, counts: np.ndarray) -> float:
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
        """The LP optimum: exact with at most one multiplier row, over a core (HiGHS) with more."""
        if len(self.active) == 0:
            return self._lp_no_multiplier()
        if len(self.active) == 1:
            return self._lp_one_multiplier()
        return self._lp_core()

    def _lp_core(self) -> LPSolution:
        """Several multiplier rows: :func:`.lp_core.core_lp`, started at the two-row LP's point."""
        m = len(self.active)
        if 1 in self.active:
            two = Problem(self.instance, layers=self.layers)
            two.active = [1]
            two.start, two.sample = self.start, self.sample
            first = two.solve_lp()
            mu0 = np.array([first.mu[0] if r == 1 else 0.0 for r in self.active])
            w0 = first.w
        else:
            mu0, w0 = np.zeros(m), 0.0
        got = core_lp(self, mu0, w0)
        point = got.point
        return LPSolution(point.mu, point.w, self.certified_bound(point), got.x, got.floor, got.lp_value,
                          False, got.rounds, point.shifts, got.extra)

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

