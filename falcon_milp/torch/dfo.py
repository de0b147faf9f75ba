"""DFO: iterative hard thresholding for min Q(w) s.t. ||w||_0 <= S, sum_i f_i [w_i != 0] <= F.

One iteration (falcon-method.md section 3):

    u = w - tau * grad Q(w)                               tau = 1 / L
    z = argmax { sum_i u_i^2 z_i : z feasible }           the FLOP+NNZ ILP with I = u^2
    w = u * z                                             (Euclidean projection onto the set)

With a diagonal ``metric`` D the same scheme runs in the norm ||.||_D (a diagonally scaled
IHT): u = w - tau D^-1 grad, I = D u^2, and L is taken in that norm.

Any registered solver does the projection (``falcon_milp.solve``). A heuristic projection
(``fast``, ``ratio-greedy``) is safeguarded: if it keeps less of u^2 than the current support
does, the current support is used instead. With that, the standard argument gives
Q(w_new) <= Q(w) whenever L >= sigma_max(X)^2 + 2 lam2; should a step still increase Q
(an underestimated L, round-off), the step is halved and redone, so the objective
sequence is non-increasing. The paper's step tau = 1/L is very short when the Fisher has a
few large eigenvalues (the usual case); ``step="adaptive"`` tries longer steps s/L
(s <= ``max_step_scale``) and keeps the longest that decreases Q. Optional active-set
refinement: when the support did not change in an iteration, a few conjugate-gradient steps
minimise Q on that support.

Stops when the relative decrease of Q in one iteration, (Q_prev - Q) / |Q|, is at most ``tol``,
when the support has not changed for ``patience`` iterations, or after ``max_iter`` iterations.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..exceptions import InvalidInstanceError
from ..instance import PruningInstance
from ..validation import choice, integer, real
from .backsolve import conjugate_gradient
from .quadratic import QuadraticModel


class Projector:
    """Projection onto {w : NNZ(w) <= S, FLOPs(w) <= F} by an ILP solver on I = u^2.

    Holds the layer structure and the budgets; each call builds a cheap
    :meth:`PruningInstance.from_flat` view (no copy) and solves it with ``solver``.
    """

    def __init__(self, group_sizes: Sequence[int], flops_per_weight: Sequence[float],
                 max_nnz: int | None, max_flops: float | None, *, solver: str = "fast",
                 names: Sequence[str] | None = None, solver_options: dict[str, Any] | None = None) -> None:
        from ..solvers import get_solver
        get_solver(solver)          # unknown names fail here, before any work
        self.group_sizes = np.asarray(group_sizes, dtype=np.int64)
        self.flops_per_weight = [float(f) for f in flops_per_weight]
        self.max_nnz = max_nnz
        self.max_flops = max_flops
        self.solver = solver
        self.names = None if names is None else tuple(names)
        self.solver_options = dict(solver_options or {})
        self.n_calls = 0
        self.seconds = 0.0
        self.last_result = None
        # validates sizes and budgets once
        self.instance(np.ones(int(self.group_sizes.sum())))

    def instance(self, importance: np.ndarray) -> PruningInstance:
        return PruningInstance.from_flat(importance, self.group_sizes, self.flops_per_weight,
                                         max_nnz=self.max_nnz, max_flops=self.max_flops,
                                         names=self.names, copy=False)

    def __call__(self, importance: np.ndarray) -> np.ndarray:
        """The mask of a (near-)optimal feasible selection for these importances."""
        from ..solvers import solve
        t0 = time.perf_counter()
        res = solve(self.instance(importance), solver=self.solver, **self.solver_options)
        self.seconds += time.perf_counter() - t0
        self.n_calls += 1
        self.last_result = res
        if res.status not in ("feasible", "optimal"):
            raise InvalidInstanceError(
                f"projection solver '{self.solver}' returned status '{res.status}'; "
                "it must return a mask within both budgets (use a FLOP-aware solver)")
        return res.mask


@dataclass
class DFOResult:
    """Outcome of :func:`dfo`: weights, their support and how the objective went."""

    w: np.ndarray
    mask: np.ndarray
    objective: float
    history: list[float]
    n_iter: int
    converged: bool
    lipschitz: float
    n_backtracks: int = 0
    n_safeguarded: int = 0
    n_refine_steps: int = 0
    times: dict[str, float] = field(default_factory=dict)
    last_step: float = 0.0
    n_projections: int = 0


STEP_RULES = ("linesearch", "lipschitz", "adaptive")


def _refine(model: QuadraticModel, w: np.ndarray, mask: np.ndarray, q: float, grad: np.ndarray,
            iters: int, times: dict[str, float]) -> tuple[np.ndarray, float, np.ndarray, int]:
    """A few CG steps on the support; kept only if Q does not increase. Returns (w, Q, grad, steps)."""
    t = time.perf_counter()
    w_ref, k, _ = conjugate_gradient(model, w, mask, max_iter=iters, grad=grad)
    q_ref, g_ref = model.value_and_grad(w_ref)
    times["refine"] += time.perf_counter() - t
    if q_ref <= q:
        return w_ref, q_ref, g_ref, k
    return w, q, grad, 0


def _dfo_linesearch(model: QuadraticModel, project: Callable[[np.ndarray], np.ndarray],
                    w_init: np.ndarray | None, max_iter: int, tol: float, patience: int | None,
                    metric: np.ndarray | None, refine_iters: int,
                    callback: Callable[[int, float], None] | None,
                    times: dict[str, float], growth: float = 2.0, max_grow: int = 20,
                    max_bisect: int = 12) -> "DFOResult":
    """DFO with the support-aware step rule of :func:`_linesearch_iteration` (no Lipschitz
    constant needed). The first iterate is the projection of w_init moved by the exact line
    minimiser along -D^-1 grad over all coordinates (w_init itself when grad Q(w_init) = 0)."""
    w = model.w0.copy() if w_init is None else np.asarray(w_init, dtype=np.float64).reshape(-1).copy()
    if w.size != model.p:
        raise InvalidInstanceError(f"`w_init` must have p = {model.p} entries; got {w.size}")
    t = time.perf_counter()
    q, grad = model.value_and_grad(w)
    d = -grad if metric is None else -grad / metric
    tau = 0.0
    if np.any(d):
        curv = float(d @ model.hessvec(d))
        slope = float(grad @ d)
        tau = -slope / curv if curv > 0 and slope < 0 else 0.0
    u = w + tau * d
    imp = u * u if metric is None else metric * u * u
    times["gradient_steps"] += time.perf_counter() - t
    t = time.perf_counter()
    mask = np.asarray(project(imp), dtype=bool)
    times["projections"] += time.perf_counter() - t
    n_proj = 1
    w = np.where(mask, u, 0.0)
    q, grad = model.value_and_grad(w)
    history = [q]
    if callback is not None:
        callback(1, q)
    it, stable, n_refine, n_safe, converged = 1, 0, 0, 0, False
    while it < max_iter:
        it += 1
        w_new, m_new, q_new, g_new, k, k_safe = _linesearch_iteration(
            model, project, w, q, grad, mask, metric, growth, max_grow, max_bisect, times)
        n_proj += k
        n_safe += k_safe
        same = np.array_equal(m_new, mask)
        if same and refine_iters > 0:
            w_new, q_new, g_new, k_cg = _refine(model, w_new, m_new, q_new, g_new, refine_iters, times)
            n_refine += k_cg
        decrease = q - q_new
        w, q, grad, mask = w_new, q_new, g_new, m_new
        stable = stable + 1 if same else 0
        history.append(q)
        if callback is not None:
            callback(it, q)
        if decrease <= tol * max(abs(q), 1e-30) and same:
            converged = True
            break
        if patience is not None and stable >= patience:
            converged = True
            break
    return DFOResult(w, mask, q, history, it, converged, math.nan, 0, n_safe, n_refine, times, 0.0,
                     n_projections=n_proj)


def _linesearch_iteration(model: QuadraticModel, project: Callable[[np.ndarray], np.ndarray],
                          w: np.ndarray, q: float, grad: np.ndarray, mask: np.ndarray,
                          metric: np.ndarray | None, growth: float, max_grow: int,
                          max_bisect: int, times: dict[str, float]) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, int, int]:
    """One DFO iteration with the support-aware step rule (``step="linesearch"``).

    d = -D^-1 grad Q(w) (D = I for the Euclidean metric), w supported on ``mask`` = M.

    1. tau_M = (grad_M . -d_M) / (d_M^T H d_M): the exact minimiser of Q along d restricted to
       M (closed form, Q is quadratic). If projecting u = w + tau_M d keeps M, that step is taken.
    2. Otherwise the kept set changes at some tau_c <= tau_M; bisection on [0, tau_M] finds it
       (to a factor 2^-max_bisect), then tau = tau_c, growth tau_c, growth^2 tau_c, ... is tried
       while Q(P(w + tau d)) decreases. The best of those and the same-support step of length
       min(tau_M, largest tau seen keeping M) is taken, so Q never increases.

    Returns (w_new, mask_new, q_new, grad_new, number of projections, number of safeguarded
    projections).
    """
    d = -grad if metric is None else -grad / metric
    d_M = np.where(mask, d, 0.0)
    t = time.perf_counter()
    Hd = model.hessvec(d_M)
    curv = float(d_M @ Hd)
    slope = float(grad @ d_M)                         # <= 0
    times["gradient_steps"] += time.perf_counter() - t
    n_proj = n_safe = 0

    def project_at(tau: float) -> tuple[np.ndarray, np.ndarray]:
        nonlocal n_proj, n_safe
        u = w + tau * d
        imp = u * u if metric is None else metric * u * u
        t0 = time.perf_counter()
        m = np.asarray(project(imp), dtype=bool)
        if float(np.sum(imp, where=mask)) > float(np.sum(imp, where=m)):
            m = mask                                     # safeguard: the current support projects better
            n_safe += 1
        times["projections"] += time.perf_counter() - t0
        n_proj += 1
        return u, m

    def evaluate(u: np.ndarray, m: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        w_new = np.where(m, u, 0.0)
        qv, g = model.value_and_grad(w_new)
        times["gradient_steps"] += time.perf_counter() - t0
        return qv, w_new, g

    d_max = float(np.max(np.abs(d), initial=0.0))
    if d_max == 0.0 or not math.isfinite(d_max):
        return w, mask, q, grad, 0, 0                      # stationary
    if curv > 0.0 and slope < 0.0:
        tau_m = -slope / curv
    else:                                                # no descent on M: probe the support change only
        tau_m = max(float(np.max(np.abs(w), initial=0.0)), 1e-12) / d_max
    best_w, best_m, best_q, best_g = w, mask, q, grad
    u, m_new = project_at(tau_m)
    lo, hi = 0.0, tau_m
    if np.array_equal(m_new, mask):
        qv, w_new, g = evaluate(u, mask)
        if qv <= q:
            best_w, best_m, best_q, best_g = w_new, mask, qv, g
        # look further out for the first step that changes the kept set
        lo, hi = tau_m, math.nan
        for _ in range(max_grow):
            tau = lo * growth * growth
            if not math.isfinite(tau * d_max):
                break
            _, m_far = project_at(tau)
            if not np.array_equal(m_far, mask):
                hi = tau
                break
            lo = tau
        if math.isnan(hi):
            return best_w, best_m, best_q, best_g, n_proj, n_safe
    for _ in range(max_bisect):                          # bisection for the first change of the kept set
        mid = math.sqrt(lo * hi) if lo > 0.0 else 0.5 * hi
        _, m_mid = project_at(mid)
        if np.array_equal(m_mid, mask):
            lo = mid
        else:
            hi = mid
    if 0.0 < lo < tau_m and curv > 0.0 and slope < 0.0:   # the same-support step of length lo
        qv, w_same, g = evaluate(w + lo * d, mask)
        if qv < best_q:
            best_w, best_m, best_q, best_g = w_same, mask, qv, g
    tau = hi
    prev = math.inf
    for _ in range(max_grow + 1):
        if not math.isfinite(tau * d_max):
            break
        u, m_tau = project_at(tau)
        qv, w_tau, g = evaluate(u, m_tau)
        if qv < best_q:
            best_w, best_m, best_q, best_g = w_tau, m_tau, qv, g
        if qv >= prev:
            break
        prev = qv
        tau *= growth
    return best_w, best_m, best_q, best_g, n_proj, n_safe


def dfo(model: QuadraticModel, project: Callable[[np.ndarray], np.ndarray], *,
        w_init: np.ndarray | None = None, lipschitz: float | None = None, max_iter: int = 100,
        tol: float = 1e-4, patience: int | None = None, step: str = "linesearch",
        max_step_scale: float = 1024.0, metric: np.ndarray | None = None, refine_iters: int = 0,
        max_backtracks: int = 30,
        callback: Callable[[int, float], None] | None = None) -> DFOResult:
    """Run iterative hard thresholding from ``w_init`` (default w0).

    project : maps importances (p,) to a feasible bool mask (e.g. a :class:`Projector`).
    lipschitz : L; default from power iteration (:meth:`QuadraticModel.lipschitz`).
    step : ``"linesearch"`` (default): the support-aware rule of :func:`_linesearch_iteration`
        (exact line minimiser on the support when the support would not change, else the
        smallest step that changes it, grown geometrically while Q decreases; no L needed);
        ``"lipschitz"``: tau = 1/L (the paper's rule; L doubled if a step fails to descend);
        ``"adaptive"``: tau = s/L with s tried from min(2 s_prev, max_step_scale) down, halving
        until Q decreases (once s <= 1 descent is guaranteed, as in the lipschitz rule).
    metric : optional diagonal D > 0 (p,): DFO in the norm ||x||_D^2 = sum_i D_i x_i^2, i.e.
        u = w - (tau / D) * grad Q(w), projection with I = D u^2, L in the D-norm. With
        D = diag(H) the first projection is the OBD saliency (F_ii + 2 lam2) w_i^2 instead of w_i^2.
    patience : also stop once the support has not changed for this many iterations (the
        backsolve then minimises Q on it exactly, which is what further steps would do slowly).
    refine_iters : conjugate-gradient steps on the support whenever it did not change.
    callback(iteration, objective) is called after every iteration (progress bars).
    """
    integer(patience, "patience", 1, optional=True)
    choice(step, "step", STEP_RULES)
    real(max_step_scale, "max_step_scale", 1.0)
    for name, val, lo in (("max_iter", max_iter, 1), ("refine_iters", refine_iters, 0),
                          ("max_backtracks", max_backtracks, 0)):
        integer(val, name, lo)
    real(tol, "tol")
    times = {"lipschitz": 0.0, "gradient_steps": 0.0, "projections": 0.0, "refine": 0.0}
    t0 = time.perf_counter()
    if metric is not None:
        metric = np.asarray(metric, dtype=np.float64)
        if metric.shape != (model.p,) or not np.all(metric > 0) or not np.all(np.isfinite(metric)):
            raise InvalidInstanceError(f"`metric` must be {model.p} finite numbers > 0")
    if step == "linesearch":
        return _dfo_linesearch(model, project, w_init, max_iter, tol, patience, metric,
                               refine_iters, callback, times)
    if lipschitz is None:
        lipschitz = model.lipschitz(metric=metric)
    if not (lipschitz > 0 and math.isfinite(lipschitz)):
        # Q is linear (X = 0, lam2 = 0): any positive step works; pick 1
        lipschitz = 1.0 if lipschitz == 0 else lipschitz
    L = float(lipschitz)
    times["lipschitz"] = time.perf_counter() - t0

    w = model.w0.copy() if w_init is None else np.asarray(w_init, dtype=np.float64).reshape(-1).copy()
    if w.size != model.p:
        raise InvalidInstanceError(f"`w_init` must have p = {model.p} entries; got {w.size}")
    t = time.perf_counter()
    q, grad = model.value_and_grad(w)
    times["gradient_steps"] += time.perf_counter() - t
    mask: np.ndarray | None = None
    history: list[float] = []
    n_back = n_safe = n_refine = 0
    converged = False
    stable = 0
    adaptive = step == "adaptive"
    scale = float(max_step_scale) if adaptive else 1.0     # tau = scale / L
    it = 0
    while it < max_iter:
        it += 1
        if adaptive and mask is not None:
            scale = min(2.0 * scale, float(max_step_scale))
        for _attempt in range(max_backtracks + 1 + (int(math.log2(max_step_scale)) + 1 if adaptive else 0)):
            t = time.perf_counter()
            u = w - (scale / L) * (grad if metric is None else grad / metric)
            imp = u * u if metric is None else metric * u * u
            times["gradient_steps"] += time.perf_counter() - t
            t = time.perf_counter()
            new_mask = np.asarray(project(imp), dtype=bool)
            if mask is not None and float(np.sum(imp, where=mask)) > float(np.sum(imp, where=new_mask)):
                new_mask = mask          # safeguard: the current support projects better
                n_safe += 1
            times["projections"] += time.perf_counter() - t
            t = time.perf_counter()
            w_new = np.where(new_mask, u, 0.0)
            q_new, grad_new = model.value_and_grad(w_new)
            times["gradient_steps"] += time.perf_counter() - t
            # the first iterate comes from an infeasible start: no descent to check;
            # with tau <= 1/L descent is guaranteed up to round-off (float32 X), hence the slack
            slack = 1e-7 * max(abs(q), 1e-30) if scale <= 1.0 else 0.0
            if mask is None or q_new <= q + slack:
                break
            scale *= 0.5
            n_back += 1
        else:
            break   # no descent even with a tiny step: stationary for this projection
        same = mask is not None and np.array_equal(new_mask, mask)
        if same and refine_iters > 0:
            w_new, q_new, grad_new, k = _refine(model, w_new, new_mask, q_new, grad_new, refine_iters, times)
            n_refine += k
        decrease = q - q_new
        w, q, grad, mask_prev, mask = w_new, q_new, grad_new, mask, new_mask
        stable = stable + 1 if same else 0
        history.append(q)
        if callback is not None:
            callback(it, q)
        if mask_prev is not None and decrease <= tol * max(abs(q), 1e-30):
            converged = True
            break
        if patience is not None and stable >= patience:
            converged = True
            break
    assert mask is not None
    return DFOResult(w, mask, q, history, it, converged, L / min(scale, 1.0), n_back, n_safe,
                     n_refine, times, scale / L, n_projections=it + n_back)


@dataclass
class SupportSearch:
    """Outcome of :func:`refine_support`: weights and support after the swaps, Q before/after."""

    w: np.ndarray
    mask: np.ndarray
    objective: float
    objective_start: float
    n_iter: int
    n_swapped: int
    n_candidates: int
    history: list[float] = field(default_factory=list)


def refine_support(model: QuadraticModel, project: Callable[[np.ndarray], np.ndarray], w: np.ndarray,
                   mask: np.ndarray, *, metric: np.ndarray | None = None,
                   group_sizes: Sequence[int] | None = None, iters: int = 10,
                   log2_taus: Sequence[float] = tuple(range(-8, 5)), candidate_iters: int = 5,
                   block_size: int = 2000) -> SupportSearch:
    """Support swaps judged at each candidate's own minimiser (hard thresholding pursuit).

    Plain IHT compares supports at the point u = w - tau D^-1 grad Q(w), where the kept weights
    have moved by a gradient step too; on an ill-conditioned Q that hides every good swap (the
    DFO then keeps its first support). Here, from w (the minimiser of Q on ``mask``, so grad Q
    is ~0 on the support and the pruned coordinates carry the information), for each tau in
    tau_ref 2^k (k in ``log2_taus``; tau_ref puts the largest pruned |D^-1 grad| at the median
    kept |w|) the candidate support is the projection of u(tau), and its value is
    min Q on it (the block-preconditioned backsolve, ``candidate_iters`` steps, warm start u).
    The best candidate replaces the support when it lowers Q; ``iters`` rounds at most.
    Every mask comes from ``project``, so every budget holds.
    """
    from .backsolve import backsolve
    mask = np.asarray(mask, dtype=bool).copy()
    w = np.where(mask, w, 0.0)
    q = model.value(w)
    q_start = q
    history = [q]
    swapped = n_cand = 0
    it = 0
    for it in range(1, iters + 1):
        grad = model.gradient(w)
        d = grad if metric is None else grad / metric
        off = np.abs(np.where(mask, 0.0, d))
        if not mask.any() or float(off.max(initial=0.0)) == 0.0:
            break
        tau_ref = float(np.median(np.abs(w[mask]))) / float(off.max())
        seen = {np.packbits(mask).tobytes()}
        best: tuple[float, np.ndarray, np.ndarray] | None = None
        for k in log2_taus:
            u = w - tau_ref * 2.0 ** k * d
            imp = u * u if metric is None else metric * u * u
            cand = np.asarray(project(imp), dtype=bool)
            key = np.packbits(cand).tobytes()
            if key in seen:
                continue
            seen.add(key)
            n_cand += 1
            bs = backsolve(model, cand, w_start=u, group_sizes=group_sizes, block_size=block_size,
                           max_iter=candidate_iters)
            if best is None or bs.objective < best[0]:
                best = (bs.objective, cand, bs.w)
        if best is None or best[0] >= q - 1e-12 * max(abs(q), 1e-30):
            break
        swapped += int(np.count_nonzero(best[1] & ~mask))
        q, mask, w = best[0], best[1], best[2]
        history.append(q)
    return SupportSearch(w, mask, q, q_start, it, swapped, n_cand, history)
