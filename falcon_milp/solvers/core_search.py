"""The core of ``exact``: class windows from reduced costs and the exact search over class counts.

Layers with identical cost rows form a *class*; inside a class only the total count matters
(keep the largest importances), so the ILP is over class counts k_c with the concave values
``G_c(k)`` = sum of the k largest importances of the class.

Certificate. For any multipliers (mu, w) >= 0 with dual value D and per-class thresholds
``T_c = sum_r mu_r c_{c,r} + w``, every feasible count vector k satisfies the identity

    value(k) = D - Pen(k),   Pen(k) = sum_c loss_c(k_c) + w * slack_nnz(k) + sum_r mu_r * slack_r(k),

where ``loss_c(k) >= 0`` is the reduced value (``I - T_c``) of the weights kept below the
threshold or dropped above it. All terms are >= 0, so a solution better than an incumbent with
penalty P must have ``loss_c(k_c) <= P`` in every class: a *window* of counts around the LP
counts, found from the sorted weights near each class threshold (reduced-cost fixing,
:meth:`Core.build_windows`).

Search: :class:`~.class_search.ClassSearch` (depth-first, every improvement shrinks P and with
it all windows; when it ends the incumbent is optimal). Tolerances: penalties are compared with
a slack of ``SEARCH_TOL`` (1e-13) times the dual value, so the search never prunes a solution
better than the incumbent by more than that. Fallback: after ``milp_after`` nodes the windowed
problem goes to HiGHS (:mod:`.windowed_milp`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .class_search import ClassSearch, ClassWindow
from .lp import LPSolution, Problem
from .sorted_layers import EPS
from .windowed_milp import windowed_milp

SEARCH_TOL = 1e-13
"""Relative tolerance (times the dual value) on penalty comparisons in the search."""


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
        self.D = prob.dual_value(np.asarray(lp.mu), lp.w, lp.shifts, self.counts)
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
        """Depth-first search for a count vector with penalty below the incumbent's
        (:class:`~.class_search.ClassSearch`). Returns (best class counts, best penalty,
        finished, nodes)."""
        caps = [self.prob.rows.cap[r] for r in self.rows]
        dens = [self.prob.rows.den[r] for r in self.rows]
        tol = SEARCH_TOL * max(abs(self.D), 1e-300)
        mu = {r: float(m) for r, m in zip(self.prob.active, self.lp.mu)}
        mus = [mu.get(r, 0.0) for r in self.rows]
        return ClassSearch(self.windows, caps, dens, self.prob.S, tol, mus, float(self.lp.w), band).run(
            k_inc, p_inc, deadline, max_nodes)


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
    handed to HiGHS as a compact MILP (:func:`.windowed_milp.windowed_milp`); its proof then relies on HiGHS
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
        got = windowed_milp(core, best, deadline)
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
