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


def dfo(model: QuadraticModel, project: Callable[[np.ndarray], np.ndarray], *,
        w_init: np.ndarray | None = None, lipschitz: float | None = None, max_iter: int = 100,
        tol: float = 1e-4, patience: int | None = None, step: str = "lipschitz",
        max_step_scale: float = 1024.0, metric: np.ndarray | None = None, refine_iters: int = 0,
        max_backtracks: int = 30,
        callback: Callable[[int, float], None] | None = None) -> DFOResult:
    """Run iterative hard thresholding from ``w_init`` (default w0).

    project : maps importances (p,) to a feasible bool mask (e.g. a :class:`Projector`).
    lipschitz : L; default from power iteration (:meth:`QuadraticModel.lipschitz`).
    step : ``"lipschitz"``: tau = 1/L (the paper's rule; L doubled if a step fails to descend);
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
    if patience is not None and (not isinstance(patience, (int, np.integer)) or isinstance(patience, bool)
                                 or patience < 1):
        raise InvalidInstanceError(f"`patience` must be None or an integer >= 1; got {patience!r}")
    if step not in ("lipschitz", "adaptive"):
        raise InvalidInstanceError(f"`step` must be 'lipschitz' or 'adaptive'; got {step!r}")
    if not (isinstance(max_step_scale, (int, float)) and 1.0 <= max_step_scale < math.inf):
        raise InvalidInstanceError(f"`max_step_scale` must be a finite number >= 1; got {max_step_scale!r}")
    for name, val, lo in (("max_iter", max_iter, 1), ("refine_iters", refine_iters, 0),
                          ("max_backtracks", max_backtracks, 0)):
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < lo:
            raise InvalidInstanceError(f"`{name}` must be an integer >= {lo}; got {val!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0 and math.isfinite(tol)):
        raise InvalidInstanceError(f"`tol` must be a finite number >= 0; got {tol!r}")
    times = {"lipschitz": 0.0, "gradient_steps": 0.0, "projections": 0.0, "refine": 0.0}
    t0 = time.perf_counter()
    if metric is not None:
        metric = np.asarray(metric, dtype=np.float64)
        if metric.shape != (model.p,) or not np.all(metric > 0) or not np.all(np.isfinite(metric)):
            raise InvalidInstanceError(f"`metric` must be {model.p} finite numbers > 0")
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
            t = time.perf_counter()
            w_ref, k, _ = conjugate_gradient(model, w_new, new_mask, max_iter=refine_iters,
                                             grad=grad_new)
            q_ref, g_ref = model.value_and_grad(w_ref)
            if q_ref <= q_new:
                w_new, q_new, grad_new = w_ref, q_ref, g_ref
                n_refine += k
            times["refine"] += time.perf_counter() - t
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
                     n_refine, times, scale / L)
