"""The depth-first search over class counts of the ``exact`` solver (see :mod:`.core_search`).

:class:`ClassSearch` searches the windows of :class:`ClassWindow` for a count vector whose
penalty is below the incumbent's. Classes are ordered by window size; the largest-window
classes form the leaf: the last one (C) takes the largest count that fits (values only grow
with the count), the one before (B) is scanned in one vectorised step, and when both NNZ and
FLOPs bind (w > 0, mu > 0) the third-to-last (A) is vectorised as well, B restricted to the band
of counts where the NNZ and FLOP slacks left for C cost at most the remaining penalty
(``Pen >= w * slack_nnz + mu * slack_flops``). A partial assignment is pruned when its loss plus
:class:`_RestBound` (the cheapest way for the free classes to absorb the remaining budgets)
reaches the incumbent's penalty. Budgets are checked with exact integers.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np


@dataclass
class ClassWindow:
    """One class near its threshold: counts lo..hi, value and loss of every count in between."""

    members: np.ndarray      # layer ids
    cost: list[int]          # scaled integer cost per row (rows 1..R-1)
    size: int                # total weights
    lo: int
    hi: int
    value: np.ndarray        # value[k - lo] = G(k) - G(lo), float64, length hi - lo + 1
    loss: np.ndarray         # loss[k - lo] >= 0
    zero: tuple[int, int]    # counts with loss 0: [zero0, zero1]
    m: int                   # count at the threshold (strict)
    inc_up: np.ndarray       # loss of dropping the 1st, 2nd, ... kept weight below m (ascending)
    inc_dn: np.ndarray       # loss of adding the 1st, 2nd, ... weight above m (ascending)
    fcost: list[float]       # cost per row (rows 1..R-1), as floats
    vals: np.ndarray         # importances of class ranks lo-1 .. hi-1 (descending; inf if lo = 0)


class ClassSearch:
    """One depth-first search over the class counts inside the windows ``W``.

    ``caps`` / ``dens``: scaled integer caps and denominators of rows 1.. (None = no budget);
    ``S``: the NNZ budget; ``tol``: slack on penalty comparisons; ``mus`` / ``w``: the
    multipliers of rows 1.. and of the NNZ row; ``band``: use the three-class leaf when it
    applies. :meth:`run` returns (best class counts, best penalty, finished, nodes).
    """

    def __init__(self, W: list[ClassWindow], caps: list[int | None], dens: list[int], S: int, tol: float,
                 mus: list[float], w: float, band: bool = True) -> None:
        self.W, self.caps, self.dens, self.S, self.tol, self.mus, self.w = W, caps, dens, S, tol, mus, w
        C = len(W)
        R = self.R = len(caps)
        order = self.order = sorted(range(C), key=lambda c: (W[c].hi - W[c].lo, c))
        n_leaf = min(C, 3)
        tail = order[C - n_leaf:]
        # a three-class leaf needs two binding rows and different costs of B and C in row 1
        use3 = False
        if band and n_leaf == 3 and R >= 1 and caps[0] is not None and w > 0 and mus[0] > 0:
            fB, fC = W[tail[1]].fcost[0], W[tail[2]].fcost[0]
            use3 = fC > 0 and fB != fC
        if n_leaf == 3 and not use3:
            n_leaf = 2
            tail = order[C - 2:]
        self.tail = tail
        self.enum = enum = order[:C - n_leaf]
        self._leaf = self._leaf3 if n_leaf == 3 else self._leaf2
        self.min_use = []
        for j in range(len(enum) + 1):
            rest = order[j:]
            self.min_use.append((sum(W[c].lo for c in rest),
                                 [sum(W[c].cost[i] * W[c].lo for c in rest) for i in range(R)]))
        self.rest_bounds = [_RestBound([W[c] for c in order[j:]], w, mus, caps, dens)
                            for j in range(len(enum) + 1)]
        self.big = any(cap is not None and _big(cap) for cap in caps) or any(
            _big(max(wc.cost[i] for wc in W) * max(wc.hi + 1 for wc in W) * 4) for i in range(R))
        self.wl = W[tail[-1]]
        self.cost_b: list[int] = [0] * R

    def run(self, k_inc: np.ndarray, p_inc: float, deadline: float | None,
            max_nodes: int | None) -> tuple[np.ndarray, float, bool, int]:
        """Search from the incumbent (class counts ``k_inc``, penalty ``p_inc``) to the end, to
        ``deadline`` or to ``max_nodes`` nodes."""
        W = self.W
        self.p_inc, self.deadline, self.max_nodes = p_inc, deadline, max_nodes
        self.best_k = k_inc.copy()
        self.v_inc = sum(float(W[c].value[k_inc[c] - W[c].lo]) for c in range(len(W)))
        self.best, self.nodes, self.stopped, self.v_best = p_inc, 0, False, self.v_inc
        self._dfs(0, k_inc.copy(), 0.0, 0.0, 0, [0] * self.R)     # finished = the whole tree was searched
        return self.best_k, self.best, not self.stopped, self.nodes

    def _take(self, vals: np.ndarray, ok: np.ndarray, acc_val: float, k: np.ndarray,
              assign: list[tuple[int, np.ndarray]]) -> None:
        """Keep the best admissible leaf of ``vals`` if it beats the incumbent."""
        if not ok.any():
            return
        tot = np.where(ok, vals, -np.inf)
        j = np.unravel_index(int(np.argmax(tot)), tot.shape)
        v = acc_val + float(tot[j])
        if v > self.v_best:
            self.best, self.v_best = self.p_inc - (v - self.v_inc), v
            self.best_k[:] = k
            for c, arr in assign:
                self.best_k[c] = int(arr[j])

    def _last_counts(self, kb: np.ndarray, room_s: Any, rooms: list[Any]) -> np.ndarray:
        """Largest count of the last class that fits (vectorised, exact integers)."""
        kl = np.minimum(self.wl.hi, room_s - kb)
        for i in range(self.R):
            if rooms[i] is None:
                continue
            room = rooms[i] - self.cost_b[i] * kb
            if self.wl.cost[i] == 0:
                kl = np.where(np.asarray(room >= 0, dtype=bool), kl, -1)
            else:
                kl = np.minimum(kl, room // self.wl.cost[i])
        return np.asarray(kl, dtype=np.int64) if self.big else kl

    def _leaf2(self, k: np.ndarray, acc_loss: float, acc_val: float, used_s: int, used: list[int]) -> None:
        """Leaf of one or two classes: B scanned in one vectorised step, C the largest fitting count."""
        budget = self.best + self.tol - acc_loss
        if len(self.tail) == 1:
            kb = np.zeros(1, dtype=np.int64)
            vb, lb = np.zeros(1), np.zeros(1)
            self.cost_b = [0] * self.R
        else:
            wb = self.W[self.tail[0]]
            lo, hi = _allowed(wb, budget)
            if lo > hi:
                return
            kb = np.arange(lo, hi + 1, dtype=np.int64)
            vb, lb = wb.value[kb - wb.lo], wb.loss[kb - wb.lo]
            self.cost_b = wb.cost
        kbx = kb.astype(object) if self.big else kb
        rooms = [None if self.caps[i] is None else self.caps[i] - used[i] for i in range(self.R)]
        kl = self._last_counts(kbx, self.S - used_s, rooms)
        ok = kl >= self.wl.lo
        idx = np.clip(kl - self.wl.lo, 0, self.wl.hi - self.wl.lo)
        ok &= (lb + self.wl.loss[idx]) <= budget
        assign = [(self.tail[-1], kl)] + ([(self.tail[0], kb)] if len(self.tail) == 2 else [])
        self._take(vb + self.wl.value[idx], ok, acc_val, k, assign)

    def _leaf3(self, k: np.ndarray, acc_loss: float, acc_val: float, used_s: int, used: list[int]) -> None:
        """Leaf of three classes: A vectorised, B restricted to the two-row band, C the largest fit."""
        budget = self.best + self.tol - acc_loss
        wa, wb = self.W[self.tail[0]], self.W[self.tail[1]]
        lo, hi = _allowed(wa, budget)
        if lo > hi:
            return
        ka = np.arange(lo, hi + 1, dtype=np.int64)
        la = wa.loss[ka - wa.lo]
        # residuals after A (exact)
        kax = ka.astype(object) if self.big else ka
        room_s = (self.S - used_s) - kax
        rooms = [None if self.caps[i] is None else (self.caps[i] - used[i]) - wa.cost[i] * kax
                 for i in range(self.R)]
        # band of B counts where the NNZ and row-1 slacks can stay within the budget
        fB, fC = wb.fcost[0], self.wl.fcost[0]
        slope = fB / fC - 1.0
        d0 = np.asarray(room_s, dtype=np.float64) - np.asarray(rooms[0], dtype=np.float64) / self.dens[0] / fC
        room_pen = np.maximum(budget - la, 0.0)
        d_hi = room_pen / self.w              # D(b) = d0 + slope * b <= d_hi
        d_lo = -room_pen / (self.mus[0] * fC)  # D(b) >= d_lo
        if slope > 0:
            b_lo, b_hi = (d_lo - d0) / slope, (d_hi - d0) / slope
        else:
            b_lo, b_hi = (d_hi - d0) / slope, (d_lo - d0) / slope
        span = float(np.max(b_hi - b_lo)) if b_lo.size else 0.0
        if not math.isfinite(span) or span > 64:
            # wide band (small multipliers): one A count at a time
            for a in ka.tolist():
                loss_a = float(wa.loss[a - wa.lo])
                if acc_loss + loss_a > self.best + self.tol:
                    continue
                k[self.tail[0]] = a
                self._leaf2(k, acc_loss + loss_a, acc_val + float(wa.value[a - wa.lo]), used_s + a,
                            [u + wa.cost[i] * a for i, u in enumerate(used)])
            return
        start = np.floor(b_lo * (1 - 1e-12) - 1e-9 * np.abs(b_lo)).astype(np.int64) - 1
        width = int(math.ceil(span)) + 3
        kb = start[:, None] + np.arange(width, dtype=np.int64)[None, :]
        inside = (kb >= wb.lo) & (kb <= wb.hi)
        kb = np.clip(kb, wb.lo, wb.hi)
        lb = wb.loss[kb - wb.lo]
        vb = wb.value[kb - wb.lo]
        self.cost_b = wb.cost
        if self.big:
            rs = np.asarray(room_s, dtype=object)[:, None]
            rr = [None if r is None else np.asarray(r, dtype=object)[:, None] for r in rooms]
            kl = self._last_counts(kb.astype(object), rs, rr)
        else:
            rr = [None if r is None else r[:, None] for r in rooms]
            kl = self._last_counts(kb, room_s[:, None], rr)
        ok = inside & (kl >= self.wl.lo)
        idx = np.clip(kl - self.wl.lo, 0, self.wl.hi - self.wl.lo)
        ok &= (la[:, None] + lb + self.wl.loss[idx]) <= budget
        vals = wa.value[ka - wa.lo][:, None] + vb + self.wl.value[idx]
        self._take(vals, ok, acc_val, k, [(self.tail[0], np.broadcast_to(ka[:, None], kb.shape)),
                                          (self.tail[1], kb), (self.tail[2], kl)])

    def _dfs(self, j: int, k: np.ndarray, acc_loss: float, acc_val: float, used_s: int, used: list[int]) -> None:
        """Enumerate the counts of class ``enum[j]`` by increasing loss, then recurse / reach the leaf."""
        self.nodes += 1
        if self.max_nodes is not None and self.nodes > self.max_nodes:
            self.stopped = True      # at most max_nodes nodes are expanded
        elif self.deadline is not None and self.nodes % 1024 == 0 and time.perf_counter() > self.deadline:
            self.stopped = True
        if self.stopped:
            return
        if j and acc_loss + self.rest_bounds[j](self.S - used_s, used) > self.best + self.tol:
            return
        if j == len(self.enum):
            self._leaf(k, acc_loss, acc_val, used_s, used)
            return
        c = self.enum[j]
        wc = self.W[c]
        rest_s, rest_use = self.min_use[j + 1]
        for kc in _outward(wc):
            loss = float(wc.loss[kc - wc.lo])
            if acc_loss + loss > self.best + self.tol:
                break            # counts come by increasing loss: the rest is worse
            us = used_s + kc
            if us + rest_s > self.S:
                continue
            nu = [u + wc.cost[i] * kc for i, u in enumerate(used)]
            if any(self.caps[i] is not None and nu[i] + rest_use[i] > self.caps[i] for i in range(self.R)):
                continue
            k[c] = kc
            self._dfs(j + 1, k, acc_loss + loss, acc_val + float(wc.value[kc - wc.lo]), us, nu)
            if self.stopped:
                return


class _RestBound:
    """Lower bound on the loss + slack penalty of the classes not yet fixed.

    With residual budgets (rho_S, rho_r) the free classes must change their total count by
    ``Delta = rho_S - sum m_c`` minus an NNZ slack s (penalty w per unit), and their use of row r
    by ``Delta_r = rho_r - sum c_r m_c`` minus a slack (penalty mu_r per unit). Each alone gives a
    bound: the cheapest |Delta| count increments of the free classes (slack capped at w), and the
    fractional-knapsack cost of Delta_r units of row r (increments sorted by loss per unit,
    capped at mu_r). The larger one is returned.
    """

    def __init__(self, windows: list[ClassWindow], w: float, mu: list[float],
                 caps: list[int | None], dens: list[int]) -> None:
        self.m = sum(wc.m for wc in windows)
        dn = np.sort(np.concatenate([wc.inc_dn for wc in windows] + [np.empty(0)]))
        up = np.sort(np.concatenate([wc.inc_up for wc in windows] + [np.empty(0)]))
        self.dn = np.concatenate([[0.0], np.cumsum(np.minimum(dn, w))])
        self.up = np.concatenate([[0.0], np.cumsum(up)])
        self.w = w
        self.cap_of = caps
        self.rows = []
        for i, cap in enumerate(caps):
            if cap is None:
                continue
            base = sum(wc.cost[i] * wc.m for wc in windows)
            parts = {}
            for side in ("dn", "up"):
                inc, fl = [], []
                for wc in windows:
                    f = wc.fcost[i]
                    if f > 0:
                        arr = wc.inc_dn if side == "dn" else wc.inc_up
                        inc.append(arr / f)
                        fl.append(np.full(arr.size, f))
                rate = np.concatenate(inc + [np.empty(0)])
                fls = np.concatenate(fl + [np.empty(0)])
                o = np.argsort(rate, kind="stable")
                rate, fls = rate[o], fls[o]
                if side == "dn":
                    rate = np.minimum(rate, mu[i])
                parts[side] = (np.concatenate([[0.0], np.cumsum(fls)]),
                               np.concatenate([[0.0], np.cumsum(rate * fls)]), rate)
            self.rows.append((i, base, dens[i], mu[i], parts))

    def __call__(self, room_s: int, used: list[int]) -> float:
        d = room_s - self.m
        if d >= 0:
            n = self.dn.size - 1
            b = float(self.dn[d]) if d <= n else float(self.dn[n]) + self.w * (d - n)
        else:
            b = float(self.up[-d]) if -d < self.up.size else math.inf
        for i, base, den, mu_i, parts in self.rows:
            if b == math.inf:
                break
            # caps are finite here; residual use of row i, in real units
            delta = float(self._caps_minus(i, used) - base) / den
            if delta >= 0:
                cf, cl, rate = parts["dn"]
                b = max(b, _knap(cf, cl, rate, delta, mu_i))
            else:
                cf, cl, rate = parts["up"]
                b = max(b, _knap(cf, cl, rate, -delta, math.inf))
        return b

    def _caps_minus(self, i: int, used: list[int]) -> int:
        return self.cap_of[i] - used[i]


def _knap(cum_units: np.ndarray, cum_loss: np.ndarray, rate: np.ndarray, need: float,
          beyond: float) -> float:
    """Fractional-knapsack cost of ``need`` units; ``beyond`` per unit past the last item."""
    if need <= 0:
        return 0.0
    j = int(np.searchsorted(cum_units, need, "left"))
    if j >= cum_units.size:
        extra = need - float(cum_units[-1])
        return math.inf if beyond == math.inf else float(cum_loss[-1]) + beyond * extra
    return float(cum_loss[j - 1]) + (need - float(cum_units[j - 1])) * float(rate[j - 1])


def _big(x: int) -> bool:
    return abs(x) >= (1 << 62)


def _allowed(w: ClassWindow, budget: float) -> tuple[int, int]:
    """Smallest and largest count of the window with loss <= budget (loss is V-shaped)."""
    z0, z1 = w.zero
    left = w.loss[: z0 - w.lo + 1]            # decreasing towards z0
    right = w.loss[z1 - w.lo:]                 # increasing from z1
    # first index in left with loss <= budget
    a = w.lo + int(np.searchsorted(-left, -budget, "left"))
    b = z1 + int(np.searchsorted(right, budget, "right")) - 1
    return a, b


def _outward(w: ClassWindow) -> Iterator[int]:
    """Counts of the window by increasing loss (merging both sides of the zero-loss region)."""
    z0, z1 = w.zero
    for k in range(z0, z1 + 1):
        yield k
    i, j = z0 - 1, z1 + 1
    while i >= w.lo or j <= w.hi:
        li = w.loss[i - w.lo] if i >= w.lo else math.inf
        lj = w.loss[j - w.lo] if j <= w.hi else math.inf
        if li <= lj:
            yield i
            i -= 1
        else:
            yield j
            j += 1
