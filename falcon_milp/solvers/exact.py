"""``exact``: proves optimality of the selection ILP at ResNet50 size.

Layers with identical cost rows form a *class*; inside a class only the total count matters
(keep the largest importances), so the ILP is over class counts k_c with the concave values
``G_c(k)`` = sum of the k largest importances of the class.

Certificate. For any multipliers (mu, w) >= 0 with dual value D and per-class thresholds
``T_c = sum_r mu_r c_{c,r} + w``, every feasible count vector k satisfies the identity

    value(k) = D - Pen(k),   Pen(k) = sum_c loss_c(k_c) + w * slack_nnz(k) + sum_r mu_r * slack_r(k),

where ``loss_c(k) >= 0`` is the reduced value (``I - T_c``) of the weights kept below the
threshold or dropped above it. All terms are >= 0, so a solution better than an incumbent with
penalty P must have ``loss_c(k_c) <= P`` in every class: a *window* of counts around the LP
counts, found from the sorted weights near each class threshold (reduced-cost fixing).

Search. A depth-first search over the class counts inside the windows, classes with the
smallest windows first. A partial assignment is pruned when its accumulated loss plus a lower
bound for the free classes (the cheapest way to absorb the remaining NNZ, resp. FLOP, budget:
merged increments, fractional knapsack, slack priced at w, resp. mu) reaches the incumbent's
penalty. The budgets are checked with exact integer arithmetic. The largest-window classes
form the leaf: the last one takes the largest count that still fits (values only grow with the
count), the one before is scanned in one vectorised step, and when both NNZ and FLOPs bind
(w > 0, mu > 0) the third-to-last is vectorised as well, its partner restricted to the band of
counts where the NNZ and FLOP slacks left for the last class cost at most the remaining
penalty (``Pen >= w * slack_nnz + mu * slack_flops``; a few counts per value). Every
improvement shrinks P and with it all windows. When the search ends the incumbent is
optimal; the returned bound is its value plus 64 ulp. Tolerances: penalties are compared with
a slack of ``SEARCH_TOL`` (1e-13) times the dual value, so the search never prunes a solution
better than the incumbent by more than that; the status is ``optimal`` when the certified gap
is at most :data:`~falcon_milp.solvers.registry.OPTIMALITY_TOL` (1e-9).

Fallback. If the search has not finished after ``MILP_AFTER`` (30,000) nodes -- many classes
with wide windows, typically several extra rows with different costs -- the same windowed
problem is handed to HiGHS as a compact MILP (an integer count and a value per class, one cut
per window segment of the concave value). Its answer is re-checked with exact integer budgets;
the optimality proof is then HiGHS's (``extra["windowed_milp"]``; its dual-bound slack is added
to the bound). The architecture-shaped instances never need it.

With more than two resource rows the certificate and the search stay exact (the identity
holds for any multipliers); the multipliers come from the LP over a core solved by HiGHS (see
:mod:`~falcon_milp.solvers.fast`), so the windows may be wider and the search longer. On time
limit (or ``max_nodes``) the incumbent is returned with the LP bound, status ``feasible``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..exceptions import SolverOptionError
from ..instance import PruningInstance
from .fast import EPS, LPSolution, Problem
from .registry import RawSolution

SEARCH_TOL = 1e-13
"""Relative tolerance (times the dual value) on penalty comparisons in the search."""
MILP_AFTER = 30_000
"""Search nodes after which the windowed problem goes to HiGHS as a compact MILP."""


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


class Core:
    """The class-count problem around an LP solution; windows from reduced costs; exact search."""

    def __init__(self, prob: Problem, lp: LPSolution) -> None:
        self.prob = prob
        self.lp = lp
        layers = prob.layers
        keys: dict[tuple, list[int]] = {}
        for l in range(prob.L):
            keys.setdefault(tuple(prob.costs[l].tolist()), []).append(l)
        self.classes = [np.array(m, dtype=np.int64) for m in keys.values()]
        self.layer_class = np.empty(prob.L, dtype=np.int64)
        for c, m in enumerate(self.classes):
            self.layer_class[m] = c
        thr = lp.shifts + lp.w
        self.thr = thr
        self.counts = layers.counts_gt(thr)
        self.D = prob._dual_value(np.asarray(lp.mu), lp.w, lp.shifts, self.counts)
        self.rows = list(range(1, prob.rows.n_rows))
        self.windows: list[ClassWindow] = []

    def layer_counts(self, class_counts: np.ndarray) -> np.ndarray:
        """Per-layer counts keeping the k_c largest importances of every class (ties: layer order).

        The k-th largest value tau of a class is read from its window; each member layer keeps
        its weights > tau and, in layer order, as many weights == tau as needed.
        """
        layers = self.prob.layers
        out = np.zeros(self.prob.L, dtype=np.int64)
        for c, members in enumerate(self.classes):
            k = int(class_counts[c])
            size = int(self.prob.sizes[members].sum())
            if k <= 0:
                continue
            if k >= size:
                out[members] = self.prob.sizes[members]
                continue
            wc = self.windows[c]
            if not wc.lo <= k <= wc.hi:   # pragma: no cover - counts come from the windows
                raise AssertionError("class count outside its window")
            tau = float(wc.vals[k - wc.lo])          # vals[0] is rank lo - 1
            rest = k
            for l in members:
                gt = layers.count_gt(int(l), tau)
                out[l] = gt
                rest -= gt
            for l in members:
                if rest <= 0:
                    break
                t = min(layers.count_ge(int(l), tau) - int(out[l]), rest)
                out[l] += t
                rest -= t
        return out

    def class_counts(self, layer_counts: np.ndarray) -> np.ndarray:
        return np.array([int(layer_counts[m].sum()) for m in self.classes], dtype=np.int64)

    # ------------------------------------------------------------------ windows
    def _gather(self, c: int, below: int, above: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Class items near the threshold: ``above`` largest-rank items kept at the threshold
        (returned ascending by value, i.e. nearest first) and ``below`` next ones (descending)."""
        layers = self.prob.layers
        ups, downs = [], []
        for l in self.classes[c]:
            m = int(self.counts[l])
            ups.append(layers.range_values(int(l), m - above, m))
            downs.append(layers.range_values(int(l), m, m + below))
        up = np.sort(np.concatenate(ups))[:above]                  # nearest (smallest) kept first
        down = -np.sort(-np.concatenate(downs))[:below]            # nearest (largest) dropped first
        m_c = int(self.counts[self.classes[c]].sum())
        return up, down, m_c

    def build_windows(self, budget: float, k_inc: np.ndarray) -> None:
        """Windows of counts with loss <= budget (always containing the incumbent's counts)."""
        self.windows = []
        for c, members in enumerate(self.classes):
            size = int(self.prob.sizes[members].sum())
            T = float(self.thr[members[0]])
            width = 256
            while True:
                up, down, m_c = self._gather(c, width, width)
                up_loss = np.cumsum(up - T)                 # loss of keeping m_c - j items, j = 1..
                dn_loss = np.cumsum(T - down)               # loss of keeping m_c + j items
                # ties (reduced value ~0) first in the down list carry ~0 loss
                n_up = int(np.searchsorted(up_loss, budget, "right"))
                n_dn = int(np.searchsorted(dn_loss, budget, "right"))
                up_done = n_up < up.size or up.size < width
                dn_done = n_dn < down.size or down.size < width
                need_up = m_c - int(k_inc[c]) if k_inc[c] < m_c else 0
                need_dn = int(k_inc[c]) - m_c if k_inc[c] > m_c else 0
                n_up, n_dn = max(n_up, need_up), max(n_dn, need_dn)
                if up_done and dn_done and n_up <= up.size and n_dn <= down.size:
                    break
                width *= 4
            lo, hi = m_c - n_up, m_c + n_dn
            # values and losses for k = lo..hi
            vals = np.concatenate([up[:n_up][::-1], down[:n_dn]])   # ranks lo..hi-1, descending
            value = np.zeros(hi - lo + 1)
            np.cumsum(vals, out=value[1:])
            loss = np.concatenate([up_loss[:n_up][::-1], [0.0], dn_loss[:n_dn]])
            loss = np.maximum(loss, 0.0)
            z0 = m_c
            z1 = m_c + int(np.sum(np.abs(down[:n_dn] - T) <= 4 * EPS * max(abs(T), 1e-300)))
            cost = [int(self.prob.rows.num[r][members[0]]) for r in self.rows]
            fcost = [float(self.prob.costs[members[0], r]) for r in self.rows]
            above = float(up[n_up]) if n_up < up.size else math.inf     # rank lo - 1
            self.windows.append(ClassWindow(members, cost, size, lo, hi, value, loss, (z0, z1), m_c,
                                            np.maximum(up[:n_up] - T, 0.0),
                                            np.maximum(T - down[:n_dn], 0.0), fcost,
                                            np.concatenate([[above], vals])))

    # ------------------------------------------------------------------ search
    def search(self, k_inc: np.ndarray, p_inc: float, deadline: float | None,
               max_nodes: int | None, band: bool = True) -> tuple[np.ndarray, float, bool, int]:
        """Depth-first search for a count vector with penalty below the incumbent's.

        Classes are ordered by window size. The largest-window classes form the leaf: the
        last one (C) takes the largest count that fits; the second-to-last (B) is scanned in
        one vectorised step; with two binding rows (w > 0 and mu_1 > 0) the third-to-last (A)
        is vectorised too and B is restricted to the band where both slacks stay cheap
        (see :meth:`_band`). Returns (best class counts, best penalty, finished, nodes).
        """
        W = self.windows
        C = len(W)
        R = len(self.rows)
        caps = [self.prob.rows.cap[r] for r in self.rows]
        dens = [self.prob.rows.den[r] for r in self.rows]
        S = self.prob.S
        tol = SEARCH_TOL * max(abs(self.D), 1e-300)
        order = sorted(range(C), key=lambda c: (W[c].hi - W[c].lo, c))
        mu = {r: float(m) for r, m in zip(self.prob.active, self.lp.mu)}
        mus = [mu.get(r, 0.0) for r in self.rows]
        w = float(self.lp.w)
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
        enum = order[:C - n_leaf]
        best_k = k_inc.copy()
        v_inc = sum(float(W[c].value[k_inc[c] - W[c].lo]) for c in range(C))
        state = {"best": p_inc, "nodes": 0, "stopped": False, "v_best": v_inc}
        min_use = []
        for j in range(len(enum) + 1):
            rest = order[j:]
            min_use.append((sum(W[c].lo for c in rest),
                            [sum(W[c].cost[i] * W[c].lo for c in rest) for i in range(R)]))
        rest_bounds = [_RestBound([W[c] for c in order[j:]], w, mus, caps, dens)
                       for j in range(len(enum) + 1)]
        big = any(cap is not None and _big(cap) for cap in caps) or any(
            _big(max(wc.cost[i] for wc in W) * max(wc.hi + 1 for wc in W) * 4) for i in range(R))
        wl = W[tail[-1]]

        def finish(vals: np.ndarray, ok: np.ndarray, acc_val: float, k: np.ndarray,
                   assign: list[tuple[int, np.ndarray]]) -> None:
            if not ok.any():
                return
            tot = np.where(ok, vals, -np.inf)
            j = np.unravel_index(int(np.argmax(tot)), tot.shape)
            v = acc_val + float(tot[j])
            if v > state["v_best"]:
                state["best"], state["v_best"] = p_inc - (v - v_inc), v
                best_k[:] = k
                for c, arr in assign:
                    best_k[c] = int(arr[j])

        def last_counts(kb: np.ndarray, room_s: Any, rooms: list[Any]) -> np.ndarray:
            """Largest count of the last class that fits (vectorised, exact integers)."""
            kl = np.minimum(wl.hi, room_s - kb)
            for i in range(R):
                if rooms[i] is None:
                    continue
                room = rooms[i] - W_cost_b[0][i] * kb
                if wl.cost[i] == 0:
                    kl = np.where(np.asarray(room >= 0, dtype=bool), kl, -1)
                else:
                    kl = np.minimum(kl, room // wl.cost[i])
            return np.asarray(kl, dtype=np.int64) if big else kl

        W_cost_b = [[0] * R]

        def leaf2(k: np.ndarray, acc_loss: float, acc_val: float, used_s: int, used: list[int]) -> None:
            budget = state["best"] + tol - acc_loss
            if len(tail) == 1:
                kb = np.zeros(1, dtype=np.int64)
                vb, lb = np.zeros(1), np.zeros(1)
                W_cost_b[0] = [0] * R
            else:
                wb = W[tail[0]]
                lo, hi = _allowed(wb, budget)
                if lo > hi:
                    return
                kb = np.arange(lo, hi + 1, dtype=np.int64)
                vb, lb = wb.value[kb - wb.lo], wb.loss[kb - wb.lo]
                W_cost_b[0] = wb.cost
            kbx = kb.astype(object) if big else kb
            rooms = [None if caps[i] is None else caps[i] - used[i] for i in range(R)]
            kl = last_counts(kbx, S - used_s, rooms)
            ok = kl >= wl.lo
            idx = np.clip(kl - wl.lo, 0, wl.hi - wl.lo)
            ok &= (lb + wl.loss[idx]) <= budget
            assign = [(tail[-1], kl)] + ([(tail[0], kb)] if len(tail) == 2 else [])
            finish(vb + wl.value[idx], ok, acc_val, k, assign)

        def leaf3(k: np.ndarray, acc_loss: float, acc_val: float, used_s: int, used: list[int]) -> None:
            budget = state["best"] + tol - acc_loss
            wa, wb = W[tail[0]], W[tail[1]]
            lo, hi = _allowed(wa, budget)
            if lo > hi:
                return
            ka = np.arange(lo, hi + 1, dtype=np.int64)
            la = wa.loss[ka - wa.lo]
            # residuals after A (exact)
            kax = ka.astype(object) if big else ka
            room_s = (S - used_s) - kax
            rooms = [None if caps[i] is None else (caps[i] - used[i]) - wa.cost[i] * kax for i in range(R)]
            # band of B counts where the NNZ and row-1 slacks can stay within the budget
            fB, fC = wb.fcost[0], wl.fcost[0]
            slope = fB / fC - 1.0
            d0 = np.asarray(room_s, dtype=np.float64) - np.asarray(rooms[0], dtype=np.float64) / dens[0] / fC
            room_pen = np.maximum(budget - la, 0.0)
            d_hi = room_pen / w              # D(b) = d0 + slope * b <= d_hi
            d_lo = -room_pen / (mus[0] * fC)  # D(b) >= d_lo
            if slope > 0:
                b_lo, b_hi = (d_lo - d0) / slope, (d_hi - d0) / slope
            else:
                b_lo, b_hi = (d_hi - d0) / slope, (d_lo - d0) / slope
            span = float(np.max(b_hi - b_lo)) if b_lo.size else 0.0
            if not math.isfinite(span) or span > 64:
                # wide band (small multipliers): one A count at a time
                for a in ka.tolist():
                    loss_a = float(wa.loss[a - wa.lo])
                    if acc_loss + loss_a > state["best"] + tol:
                        continue
                    k[tail[0]] = a
                    leaf2(k, acc_loss + loss_a, acc_val + float(wa.value[a - wa.lo]), used_s + a,
                          [u + wa.cost[i] * a for i, u in enumerate(used)])
                return
            start = np.floor(b_lo * (1 - 1e-12) - 1e-9 * np.abs(b_lo)).astype(np.int64) - 1
            width = int(math.ceil(span)) + 3
            kb = start[:, None] + np.arange(width, dtype=np.int64)[None, :]
            inside = (kb >= wb.lo) & (kb <= wb.hi)
            kb = np.clip(kb, wb.lo, wb.hi)
            lb = wb.loss[kb - wb.lo]
            vb = wb.value[kb - wb.lo]
            W_cost_b[0] = wb.cost
            if big:
                rs = np.asarray(room_s, dtype=object)[:, None]
                rr = [None if r is None else np.asarray(r, dtype=object)[:, None] for r in rooms]
                kl = last_counts(kb.astype(object), rs, rr)
            else:
                rr = [None if r is None else r[:, None] for r in rooms]
                kl = last_counts(kb, room_s[:, None], rr)
            ok = inside & (kl >= wl.lo)
            idx = np.clip(kl - wl.lo, 0, wl.hi - wl.lo)
            ok &= (la[:, None] + lb + wl.loss[idx]) <= budget
            vals = wa.value[ka - wa.lo][:, None] + vb + wl.value[idx]
            finish(vals, ok, acc_val, k, [(tail[0], np.broadcast_to(ka[:, None], kb.shape)),
                                          (tail[1], kb), (tail[2], kl)])

        leaf = leaf3 if n_leaf == 3 else leaf2

        def dfs(j: int, k: np.ndarray, acc_loss: float, acc_val: float, used_s: int, used: list[int]) -> None:
            state["nodes"] += 1
            if max_nodes is not None and state["nodes"] > max_nodes:
                state["stopped"] = True      # at most max_nodes nodes are expanded
            elif deadline is not None and state["nodes"] % 1024 == 0 and time.perf_counter() > deadline:
                state["stopped"] = True
            if state["stopped"]:
                return
            if j and acc_loss + rest_bounds[j](S - used_s, used) > state["best"] + tol:
                return
            if j == len(enum):
                leaf(k, acc_loss, acc_val, used_s, used)
                return
            c = enum[j]
            wc = W[c]
            rest_s, rest_use = min_use[j + 1]
            for kc in _outward(wc):
                loss = float(wc.loss[kc - wc.lo])
                if acc_loss + loss > state["best"] + tol:
                    break            # counts come by increasing loss: the rest is worse
                us = used_s + kc
                if us + rest_s > S:
                    continue
                nu = [u + wc.cost[i] * kc for i, u in enumerate(used)]
                if any(caps[i] is not None and nu[i] + rest_use[i] > caps[i] for i in range(R)):
                    continue
                k[c] = kc
                dfs(j + 1, k, acc_loss + loss, acc_val + float(wc.value[kc - wc.lo]), us, nu)
                if state["stopped"]:
                    return

        k0 = k_inc.copy()
        dfs(0, k0, 0.0, 0.0, 0, [0] * R)     # finished = the whole tree was searched
        return best_k, state["best"], not state["stopped"], state["nodes"]


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


def _outward(w: ClassWindow):
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


@dataclass
class CoreResult:
    """Outcome of :func:`core_search`: per-layer counts, their value, whether the search ended."""

    counts: np.ndarray
    value: float
    finished: bool
    stopped_by: str          # "", "time_limit" or "iteration_limit"
    nodes: int
    windows: list[int]
    milp: dict[str, Any] | None = None   # set when HiGHS solved the windowed MILP


def core_search(prob: Problem, lp: LPSolution, counts: np.ndarray, value: float,
                deadline: float | None = None, max_nodes: int | None = None,
                band: bool = True, milp_after: int | None = None) -> CoreResult:
    """Improve the incumbent (per-layer counts, value) by the exact search over class counts.

    ``finished`` means the search proved the returned counts optimal. ``milp_after``: when the
    depth-first search has not finished after that many nodes, the same windowed problem is
    handed to HiGHS as a compact MILP (:func:`_windowed_milp`); its proof then relies on HiGHS
    (``CoreResult.milp`` is set).
    """
    core = Core(prob, lp)
    kc = core.class_counts(counts)
    p_inc = core.D - value
    core.build_windows(p_inc + SEARCH_TOL * abs(core.D), kc)
    windows = [w.hi - w.lo + 1 for w in core.windows]
    limit = max_nodes if milp_after is None else (
        milp_after if max_nodes is None else min(max_nodes, milp_after))
    best, p_best, finished, nodes = core.search(kc, p_inc, deadline, limit, band)
    milp: dict[str, Any] | None = None
    if not finished and milp_after is not None and nodes >= milp_after and (
            max_nodes is None or max_nodes > milp_after) and (
            deadline is None or time.perf_counter() < deadline):
        got = _windowed_milp(core, best, deadline)
        if got is not None:
            best_milp, milp = got
            v = sum(float(w.value[best_milp[c] - w.lo]) for c, w in enumerate(core.windows))
            v_old = sum(float(w.value[best[c] - w.lo]) for c, w in enumerate(core.windows))
            if v > v_old:
                best, p_best = best_milp, p_best - (v - v_old)
            finished = milp["status"] == "optimal"
            milp["gain_over_search"] = v - v_old
            # HiGHS's own slack between its dual bound and the best value (>= 0)
            milp["bound_excess"] = max(0.0, milp["dual_bound"] - max(v, v_old))
        user_limit = (max_nodes is not None and nodes >= max_nodes) or (
            deadline is not None and time.perf_counter() > deadline)
        if not finished and not user_limit:
            # HiGHS did not prove it (no solution, rejected, a failure): the exact search goes on
            # to the end (or to the caller's limits) instead of giving up
            best, p_best, finished, more = core.search(best, p_best, deadline,
                                                       None if max_nodes is None else max_nodes - nodes, band)
            nodes += more
            if milp is not None:
                milp["search_resumed"] = True
    # the search works with class values (the largest weights of each class); realise them
    # per layer even when the class counts did not change (the incumbent may not keep the
    # largest weights of a class in every layer)
    new = core.layer_counts(best)
    new_value = value + prob.value_delta(counts, new)
    if new_value >= value and prob.rows.fits(new) and int(new.sum()) <= prob.S:
        counts, value = new, new_value
    stopped = "" if finished else (
        "time_limit" if deadline is not None and time.perf_counter() > deadline else
        "iteration_limit" if max_nodes is not None and nodes >= max_nodes else "unknown")
    return CoreResult(counts, value, finished, stopped, nodes, windows, milp)


def _windowed_milp(core: Core, k_start: np.ndarray, deadline: float | None
                   ) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The class-count problem inside the windows as a compact MILP, solved by HiGHS.

    Columns: an integer count k_c in [lo_c, hi_c] and a value t_c per class; rows: the concave
    value of each class as one cut per window segment (``t_c <= V_c(j) + I_c(j) (k_c - j)``, exact
    at integer counts), the NNZ budget and every finite resource row (scaled integers). Returns
    the best counts and HiGHS's status, or None when HiGHS is missing or the integers are too
    large for doubles. The counts are re-checked with exact integer arithmetic.
    """
    try:
        import highspy
    except ImportError:   # pragma: no cover - highspy is a dependency
        return None
    W = core.windows
    C = len(W)
    R = len(core.rows)
    caps = [core.prob.rows.cap[r] for r in core.rows]
    big = any(cap is not None and abs(cap) >= 2**52 for cap in caps) or any(
        abs(w.cost[i]) * (w.hi + 1) >= 2**52 for w in W for i in range(R))
    if big:
        return None
    lower = np.concatenate([[w.lo for w in W], np.full(C, -np.inf)]).astype(np.float64)
    upper = np.concatenate([[w.hi for w in W], np.full(C, np.inf)]).astype(np.float64)
    cost = np.concatenate([np.zeros(C), np.ones(C)])
    starts, index, value, rlo, rhi = [], [], [], [], []
    for c, w in enumerate(W):
        seg = w.vals[1:]                     # importance of rank j, j = lo .. hi-1
        for j in range(w.lo, w.hi):
            s = float(seg[j - w.lo])
            starts.append(len(index))
            index += [C + c, c]
            value += [1.0, -s]
            rlo.append(-np.inf)
            rhi.append(float(w.value[j - w.lo]) - s * j)
        starts.append(len(index))           # t_c <= V(hi) (also covers an empty window)
        index.append(C + c)
        value.append(1.0)
        rlo.append(-np.inf)
        rhi.append(float(w.value[-1]))
    starts.append(len(index))
    index += list(range(C))
    value += [1.0] * C
    rlo.append(-np.inf)
    rhi.append(float(core.prob.S))
    for i in range(R):
        if caps[i] is None:
            continue
        starts.append(len(index))
        index += list(range(C))
        value += [float(w.cost[i]) for w in W]
        rlo.append(-np.inf)
        rhi.append(float(caps[i]))
    model = {"n_cols": 2 * C, "cost": cost, "lower": lower, "upper": upper, "row_lower": np.array(rlo),
             "row_upper": np.array(rhi), "starts": np.array(starts, dtype=np.int32),
             "index": np.array(index, dtype=np.int32), "value": np.array(value, dtype=np.float64),
             "integrality": np.concatenate([np.ones(C), np.zeros(C)]).astype(np.int32),
             "start": np.asarray([float(v) for v in k_start]
                                 + [float(w.value[k_start[c] - w.lo]) for c, w in enumerate(W)])}
    from .highs import run_highs
    got = run_highs(_run_windowed, (model, deadline), deadline)   # a hard deadline and Ctrl-C
    if got.killed:
        return k_start.copy(), {"status": "time_limit", "highs_nodes": 0, "dual_bound": math.inf,
                                "killed": True}
    run = got.value
    out = {"status": run["status"], "highs_nodes": run["nodes"], "dual_bound": run["dual_bound"]}
    if run["values"] is None:
        return k_start.copy(), {**out, "status": out["status"] if out["status"] != "optimal" else "no_solution"}
    k = np.rint(run["values"][:C]).astype(np.int64)
    k = np.clip(k, [w.lo for w in W], [w.hi for w in W])
    ok = int(k.sum()) <= core.prob.S and all(
        caps[i] is None or sum(w.cost[i] * int(k[c]) for c, w in enumerate(W)) <= caps[i] for i in range(R))
    if not ok:     # HiGHS's tolerance let a budget slip: keep the search's incumbent
        return k_start.copy(), {**out, "status": "rejected"}
    return k, out


def _run_windowed(model: dict[str, Any], deadline: float | None, report: Any = None) -> dict[str, Any]:
    """Solve the windowed MILP arrays of :func:`_windowed_milp` with HiGHS: status ("optimal"
    or HiGHS's status name), nodes, dual bound, column values."""
    import highspy
    from .highs import _new_highs
    h = _new_highs()
    for key, val in (("mip_rel_gap", 0.0), ("mip_abs_gap", 0.0), ("random_seed", 0),
                     ("mip_feasibility_tolerance", 1e-9)):
        h.setOptionValue(key, val)
    if deadline is not None:
        h.setOptionValue("time_limit", max(0.01, deadline - time.perf_counter()))
    n_rows = len(model["starts"])
    h.passModel(model["n_cols"], n_rows, len(model["index"]), int(highspy.MatrixFormat.kRowwise),
                int(highspy.ObjSense.kMaximize), 0.0, model["cost"], model["lower"], model["upper"],
                model["row_lower"], model["row_upper"], model["starts"], model["index"],
                model["value"], model["integrality"])
    h.setSolution(_solution(highspy, model["start"]))
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    values = (np.asarray(h.getSolution().col_value, dtype=np.float64)
              if info.primal_solution_status == 2 else None)
    return {"status": "optimal" if status == highspy.HighsModelStatus.kOptimal else status.name,
            "nodes": int(info.mip_node_count), "dual_bound": float(info.mip_dual_bound), "values": values}


def _solution(highspy: Any, values: np.ndarray) -> Any:
    s = highspy.HighsSolution()
    s.col_value = values.tolist()
    s.value_valid = True
    return s


def solve_exact(instance: PruningInstance, *, time_limit: float | None = None, rel_gap: float = 0.0,
                threads: int | None = None, max_nodes: int | None = None,
                band: bool = True) -> RawSolution:
    """LP (breakpoint search) + rounding, reduced-cost windows, exact search over class counts.

    ``max_nodes`` caps the search (then status ``feasible``, termination ``iteration_limit``);
    ``band=False`` scans the three leaf classes without the two-row band (slower; for checks).
    """
    if max_nodes is not None and (isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 1):
        raise SolverOptionError(f"`max_nodes` must be an integer >= 1; got {max_nodes!r}")
    start = time.perf_counter()
    deadline = None if time_limit is None else start + float(time_limit)
    prob = Problem(instance, threads, banded=True)
    lp = prob.solve_lp()
    k = prob.fill(lp.floor)
    value = prob.value_of(k)
    k, value = prob.exchange(k, value)
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
