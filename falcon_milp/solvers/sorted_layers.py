"""Per-layer sorted importances, threshold counts, prefix sums and exact budget arithmetic.

Shared by the ``falcon-lagrangian``, ``fast`` and ``exact`` solvers.

Every layer (group) is sorted once, in descending importance order, in the input dtype
(float32 stays float32), stored negated and ascending. Either entirely (one copy of the
importances), or -- for the ``fast`` and ``exact`` solvers on large instances -- only inside a
band of values around the expected thresholds, estimated from a small sample (see
:class:`SortedLayers`); queries outside a band sort that layer entirely first, so the answers
never depend on the bands. Plus ``n / 4096`` float64 block sums per sorted part.

Threshold model. A layer's kept count at a float64 threshold ``T`` is ``#{i in l : I_i > T}``;
for a dual pair (lam, w) the threshold of layer l is ``T_l = fl(lam * f_l + w)`` (one float64
rounding), which is monotone in w, so "the smallest w with count(w) <= K" is well defined and
found exactly by :meth:`SortedLayers.select`.

Budget arithmetic (:class:`ExactRows`) is exact: every cost and budget is a float, i.e. a
dyadic rational; they are scaled to integers over a common power-of-two denominator.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from ..instance import PruningInstance
from ..lattice import LatticeRow, lattice_row

EPS = np.finfo(np.float64).eps
"""Machine epsilon of float64 (the unit of the rounding margins)."""
BLOCK = 4096
"""Block length of the per-layer prefix sums (partial blocks are summed on demand)."""

_GATHER = 2048
"""Selection switches from value bisection to an exact sort of the candidates below this."""


def default_threads(threads: int | None) -> int:
    """Worker threads for sorting: the given number, else min(2, CPUs)."""
    if threads is not None:
        return max(1, int(threads))
    return max(1, min(2, os.cpu_count() or 1))


def _round_keys(dtype: np.dtype, x: np.ndarray, up: bool) -> np.ndarray:
    """Each float64 of x rounded to ``dtype`` upwards (or downwards), exactly representable."""
    if dtype == np.float64:
        return x
    with np.errstate(over="ignore"):
        y = x.astype(dtype)
    back = y.astype(np.float64)
    if up:
        bad = back < x
        if bad.any():
            y[bad] = np.nextafter(y[bad], dtype.type(np.inf))
    else:
        bad = back > x
        if bad.any():
            y[bad] = np.nextafter(y[bad], dtype.type(-np.inf))
    return y


class SortedLayers:
    """The importances of an instance, sorted once per layer (descending), with counting tools.

    Two modes, same answers:

    - full (``bands=None``): every layer is sorted entirely (``neg``: one buffer of negated
      importances, each layer's segment ascending; ``views[l]`` its segment);
    - banded (``bands=(lo, hi)``): layer l sorts only its weights with ``lo[l] <= I <= hi[l]``
      (``views[l]``, negated, ascending) and keeps the number (``top[l]``) and the float64 sum
      (``top_sum[l]``) of the weights above the band. Rank j of the layer is ``views[l][j -
      top[l]]``. Any query outside the band (a threshold below ``lo`` or above ``hi``, a rank
      outside the sorted part) first sorts that layer entirely (``n_full_sorts`` counts these),
      so the results never depend on the bands, only the time does.

    Attributes: ``offsets`` (L+1,), ``sizes`` (L,), ``costs`` (L, R) float64, ``dtype``,
    ``first`` (L,) float64 layer maxima.
    """

    def __init__(self, instance: PruningInstance, threads: int | None = None,
                 bands: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        imp = instance.importance
        self._imp = imp
        self.dtype = imp.dtype
        self.offsets = instance.offsets
        self.sizes = np.asarray(instance.group_sizes, dtype=np.int64)
        self.costs = np.asarray(instance.costs, dtype=np.float64)
        L = self.n_layers = int(self.sizes.size)
        self.top = np.zeros(L, dtype=np.int64)
        self.top_sum = np.zeros(L, dtype=np.float64)
        self.band_lo = np.full(L, -np.inf)
        self.band_hi = np.full(L, np.inf)
        self.first = np.zeros(L, dtype=np.float64)
        self.views: list[np.ndarray] = [np.empty(0, dtype=self.dtype)] * L
        self._bcum: list[np.ndarray] = [np.zeros(1)] * L
        self.n_full_sorts = 0
        self.neg: np.ndarray | None = None
        if bands is None:
            self.neg = np.empty_like(imp)
            self.views = [self.neg[self.offsets[l]:self.offsets[l + 1]] for l in range(L)]
        else:
            self.band_lo = np.asarray(bands[0], dtype=np.float64).copy()
            self.band_hi = np.asarray(bands[1], dtype=np.float64).copy()

        def work(l: int) -> None:
            x = self._layer(l)
            if bands is None:
                view = self.views[l]
                np.negative(x, out=view)
                view.sort()
                self._set(l, view, 0, 0.0)
                self.first[l] = -float(view[0])
                return
            self.first[l] = float(x.max())
            lo, hi = self.band_lo[l], self.band_hi[l]
            if lo == -np.inf and hi == np.inf:
                view = -x
                view.sort()
                self._set(l, view, 0, 0.0)
                return
            # band ends in the input dtype (no float64 copy of the layer for the comparison)
            hi_d, lo_d = self.dtype.type(hi), self.dtype.type(lo)
            self.band_hi[l], self.band_lo[l] = float(hi_d), float(lo_d)
            above = x > hi_d
            n_top = int(np.count_nonzero(above))
            top_sum = float(np.sum(x, where=above, dtype=np.float64)) if n_top else 0.0
            inside = ~above
            if lo > -np.inf:
                inside &= x >= lo_d
            view = x[inside]
            np.negative(view, out=view)
            view.sort()
            self._set(l, view, n_top, top_sum)

        order = np.argsort(-self.sizes, kind="stable")  # big layers first: better balance
        n_threads = default_threads(threads)
        if n_threads == 1 or L == 1:
            for l in order:
                work(int(l))
        else:
            with ThreadPoolExecutor(n_threads) as pool:
                list(pool.map(work, order.tolist()))

    def _layer(self, l: int) -> np.ndarray:
        return self._imp[self.offsets[l]:self.offsets[l + 1]]

    def _set(self, l: int, view: np.ndarray, top: int, top_sum: float) -> None:
        m = view.size // BLOCK
        cum = np.zeros(m + 1, dtype=np.float64)
        if m:
            blocks = view[:m * BLOCK].reshape(m, BLOCK).sum(axis=1, dtype=np.float64)
            cum[1:] = np.cumsum(blocks.astype(np.longdouble)).astype(np.float64)
        self.views[l] = view
        self._bcum[l] = cum
        self.top[l] = top
        self.top_sum[l] = top_sum

    def _full(self, l: int) -> None:
        """Sort layer l entirely (a query fell outside its band)."""
        view = -self._layer(l)
        view.sort()
        self._set(l, view, 0, 0.0)
        self.band_lo[l], self.band_hi[l] = -np.inf, np.inf
        self.n_full_sorts += 1

    def _ranks(self, l: int, start: int, stop: int) -> int:
        """Make ranks start..stop-1 of layer l available; returns the offset into views[l]."""
        t = int(self.top[l])
        if start < t or stop > t + self.views[l].size:
            self._full(l)
            t = 0
        return t

    def _thresholds_ok(self, t: np.ndarray) -> None:
        bad = np.flatnonzero(~((t >= self.band_lo) & (t <= self.band_hi)))
        for l in bad:
            self._full(int(l))

    # ------------------------------------------------------------------ values and sums
    def value(self, l: int, j: int) -> float:
        """The j-th largest importance of layer l (0-based)."""
        t = self._ranks(l, j, j + 1)
        return -float(self.views[l][j - t])

    def topsum(self, l: int, k: int) -> float:
        """Sum of the k largest importances of layer l (float64; block prefix + partial block)."""
        k = int(k)
        if k <= 0:
            return 0.0
        t = self._ranks(l, k, k)
        j = k - t
        q = j // BLOCK
        rest = self.views[l][q * BLOCK:j]
        part = float(np.sum(rest, dtype=np.float64)) if rest.size else 0.0
        return float(self.top_sum[l]) - (float(self._bcum[l][q]) + part)

    def topsums(self, counts: np.ndarray) -> np.ndarray:
        """(L,) float64: ``topsum(l, counts[l])`` for every layer."""
        return np.array([self.topsum(l, int(k)) for l, k in enumerate(counts)], dtype=np.float64)

    def range_values(self, l: int, start: int, stop: int) -> np.ndarray:
        """Importances of ranks start..stop-1 of layer l, descending, as float64."""
        start, stop = max(0, int(start)), min(int(self.sizes[l]), int(stop))
        if stop <= start:
            return np.empty(0, dtype=np.float64)
        t = self._ranks(l, start, stop)
        return -self.views[l][start - t:stop - t].astype(np.float64)

    # ------------------------------------------------------------------ counts
    def counts_gt(self, thresholds: np.ndarray) -> np.ndarray:
        """(L,) int64: ``#{i in l : I_i > thresholds[l]}``."""
        return self._counts(thresholds, strict=True)

    def counts_ge(self, thresholds: np.ndarray) -> np.ndarray:
        """(L,) int64: ``#{i in l : I_i >= thresholds[l]}``."""
        return self._counts(thresholds, strict=False)

    def _counts(self, thresholds: np.ndarray, strict: bool) -> np.ndarray:
        """Per-layer counts above (``strict``) or at least at the thresholds: a binary search of
        the negated key in each layer's ascending view."""
        t = np.asarray(thresholds, dtype=np.float64)
        self._thresholds_ok(t)
        keys = _round_keys(self.dtype, -t, up=strict)
        side = "left" if strict else "right"
        return self.top + np.fromiter((np.searchsorted(v, k, side) for v, k in zip(self.views, keys)),
                                      dtype=np.int64, count=self.n_layers)

    def count_gt(self, l: int, threshold: float) -> int:
        """``#{i in l : I_i > threshold}`` for one layer."""
        if not self.band_lo[l] <= threshold <= self.band_hi[l]:
            self._full(l)
        key = _round_keys(self.dtype, np.array([-float(threshold)]), up=True)[0]
        return int(self.top[l]) + int(np.searchsorted(self.views[l], key, "left"))

    def count_ge(self, l: int, threshold: float) -> int:
        """``#{i in l : I_i >= threshold}`` for one layer."""
        if not self.band_lo[l] <= threshold <= self.band_hi[l]:
            self._full(l)
        key = _round_keys(self.dtype, np.array([-float(threshold)]), up=False)[0]
        return int(self.top[l]) + int(np.searchsorted(self.views[l], key, "right"))

    def select(self, shifts: np.ndarray, K: int, w_min: float = 0.0,
               hint: tuple[float, float] | None = None) -> tuple[float, np.ndarray, np.ndarray]:
        """Smallest float w >= w_min with ``sum_l #{I > fl(shifts_l + w)} <= K``.

        Returns (w, counts at w, counts just below w); their difference are the items whose
        reduced value ``I - shift`` equals w in the threshold model (the ties). Below means at
        the previous float of w, or, when w = w_min, at or above the threshold.
        Exact: value bisection until at most a few thousand items lie between the bracket
        ends, then the flip points of those items are computed and sorted. ``hint`` = (a, b):
        values expected to bracket the answer (only a speed-up; checked, never trusted).
        """
        shifts = np.asarray(shifts, dtype=np.float64)
        w_lo, c_lo = float(w_min), None
        w_hi, c_hi = math.inf, None
        if hint is not None:     # try the hints first: they may avoid far-off thresholds
            for h in sorted({float(v) for v in hint if math.isfinite(v) and v >= w_lo}, reverse=True):
                c_h = self.counts_gt(shifts + h)
                if int(c_h.sum()) <= K:
                    w_hi, c_hi = h, c_h
                else:
                    w_lo, c_lo = h, c_h
                    break
        if c_lo is None:
            c0 = self.counts_gt(shifts + w_lo)
            if int(c0.sum()) <= K:
                # ties at w_min: the weights exactly at the threshold
                return w_lo, c0, np.maximum(self.counts_ge(shifts + w_lo), c0)
            c_lo = c0
        if c_hi is None:
            # an upper end where nothing is counted
            w_hi = max(w_lo, float(np.max(self.first - shifts)))
            w_hi = max(w_hi * (1 + 1e-12), math.nextafter(w_hi, math.inf))
            c_hi = self.counts_gt(shifts + w_hi)
            while int(c_hi.sum()) > K:  # pragma: no cover - rounding guard
                w_hi = w_hi * 2 + 1.0
                c_hi = self.counts_gt(shifts + w_hi)
        n_lo, n_hi = int(c_lo.sum()), int(c_hi.sum())
        step = 0
        while n_lo - n_hi > _GATHER:
            if step % 2 == 0 and n_lo > n_hi:
                # interpolate the count linearly (regula falsi), kept away from the ends
                t = (n_lo - K - 0.5) / (n_lo - n_hi)
                t = min(max(t, 0.02), 0.98)
                mid = w_lo + (w_hi - w_lo) * t
            else:
                mid = 0.5 * (w_lo + w_hi)
            step += 1
            if not w_lo < mid < w_hi:
                break
            c_mid = self.counts_gt(shifts + mid)
            n_mid = int(c_mid.sum())
            if n_mid > K:
                w_lo, c_lo, n_lo = mid, c_mid, n_mid
            else:
                w_hi, c_hi, n_hi = mid, c_mid, n_mid
        # exact finish: the items counted at w_lo but not at w_hi, and their flip points
        flips = []
        for l in np.flatnonzero(c_lo > c_hi):
            a = self.range_values(int(l), int(c_hi[l]), int(c_lo[l]))
            flips.append(_flip_points(a, float(shifts[l])))
        cand = np.sort(np.concatenate(flips))[::-1]   # descending
        # count(w) = n_hi + #{flip > w}; need <= K  ->  w >= the (K - n_hi + 1)-th largest flip
        r = K - n_hi
        w = float(cand[r]) if r < cand.size else w_lo
        w = max(w, float(w_min))
        c_w = self.counts_gt(shifts + w)
        c_below = self.counts_gt(shifts + math.nextafter(w, -math.inf))
        # rounding guard: move up until the count condition holds (a no-op in practice)
        while int(c_w.sum()) > K:  # pragma: no cover
            w = math.nextafter(w, math.inf)
            c_below, c_w = c_w, self.counts_gt(shifts + w)
        return w, c_w, c_below

    # ------------------------------------------------------------------ masks
    def mask_from_counts(self, instance: PruningInstance, counts: Sequence[int]) -> np.ndarray:
        """Keep the k_l largest importances of every layer (ties: lowest index first)."""
        imp = instance.importance
        mask = np.zeros(imp.size, dtype=bool)
        for l, k in enumerate(counts):
            k = int(k)
            n = int(self.sizes[l])
            lo, hi = int(self.offsets[l]), int(self.offsets[l + 1])
            if k <= 0:
                continue
            if k >= n:
                mask[lo:hi] = True
                continue
            t = self._ranks(l, k - 1, k)
            tau = self.views[l][k - 1 - t]       # negated k-th largest, in the input dtype
            layer, out = imp[lo:hi], mask[lo:hi]
            n_ge = t + int(np.searchsorted(self.views[l], tau, "right"))
            np.greater_equal(layer, -tau, out=out)
            if n_ge > k:                          # too many ties at the threshold: drop the last
                ties = np.flatnonzero(layer == -tau)
                out[ties[ties.size - (n_ge - k):]] = False
        return mask


def _flip_points(a: np.ndarray, shift: float) -> np.ndarray:
    """For each importance a, the smallest float w with ``fl(shift + w) >= a`` (a stops counting)."""
    w = a - shift
    for _ in range(4):                            # fl(shift + w) may miss a by an ulp
        low = (shift + w) < a
        if not low.any():
            break
        w[low] = np.nextafter(w[low], np.inf)
    for _ in range(4):
        prev = np.nextafter(w, -np.inf)
        ok = (shift + prev) >= a
        if not ok.any():
            break
        w[ok] = prev[ok]
    return w


class ExactRows:
    """Per-layer costs and budgets scaled to integers: exact feasibility of count vectors.

    Row r: ``cost[l] = num[r][l] / den[r]`` exactly; ``cap[r] = floor(budget_r * den[r])``
    (None for an infinite budget). Counts are integers, so ``sum_l cost * k <= budget``
    iff ``sum_l num * k <= cap``.
    """

    def __init__(self, costs: np.ndarray, budgets: Sequence[float]) -> None:
        self.n_rows = costs.shape[1]
        self.num: list[np.ndarray] = []
        self.cap: list[int | None] = []
        self.den: list[int] = []
        self.lattice: list[LatticeRow] = []
        for r in range(self.n_rows):
            # counts are integers, so the budget can be rounded down to the costs' lattice
            row = lattice_row(costs[:, r], budgets[r])
            big = max(row.coef, default=0) * (1 << 40) >= (1 << 62)
            self.num.append(np.array(row.coef, dtype=object if big else np.int64))
            self.cap.append(row.cap)
            self.den.append(row.scale)
            self.lattice.append(row)

    def usage(self, counts: np.ndarray, r: int) -> int:
        """Exact scaled use of row r (an int)."""
        num = self.num[r]
        k = np.asarray(counts)
        if num.dtype == object:
            return int(sum(int(a) * int(b) for a, b in zip(num, k) if b))
        return int(np.dot(num, k.astype(np.int64)))

    def slack(self, counts: np.ndarray, r: int) -> int | None:
        """cap - usage (scaled ints; None = unbounded)."""
        cap = self.cap[r]
        return None if cap is None else cap - self.usage(counts, r)

    def fits(self, counts: np.ndarray) -> bool:
        return all(self.cap[r] is None or self.usage(counts, r) <= self.cap[r] for r in range(self.n_rows))
