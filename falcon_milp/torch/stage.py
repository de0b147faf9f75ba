"""One FALCON stage: from per-sample gradients at the current weights to pruned weights.

Inputs: X (rows = per-sample gradients / sqrt(n) at the current weights w_c), the projector
onto the stage's budgets, and optionally a :class:`~.referee.Referee` (validation loss).
Steps, each with what it is for:

1. **Layer scales** (``layer_scales="search"``, needs the referee): factors s_l of the
   importances found by coordinate search on the validation loss of the projected masks
   (weights w_c, no update). They set the norm of the projection: DFO runs with the diagonal
   metric D_i = base_i * s_l(i) (base = 1, or diag(H) for ``metric="fisher-diagonal"``).
2. For every ridge lam2 of the grid (``lam2_rel`` x mean diag of the Fisher, or ``lam2``):
   Q(w) = 1/2 ||X (w - w_c)||^2 + lam2 ||w - w_c||^2 (+ alpha g^T (w - w_c));
   **DFO** (IHT with the ILP as projection, :func:`.dfo.dfo`, support-aware line search by
   default), **support swaps** judged at each candidate's minimiser
   (:func:`.dfo.refine_support`), **backsolve** on the final support.
3. **Update length**: the candidates w_c|K + t (w_bs - w_c|K) for t in ``update_steps``
   (t = 1 is the backsolve, t = 0 keeps the current values on the support) are judged by the
   referee, which keeps the best of everything it saw. Without a referee: the middle ridge of
   the grid and t = 1 (the paper's procedure).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .backsolve import backsolve
from .dfo import Projector, dfo, refine_support
from .quadratic import QuadraticModel, frobenius2
from .referee import Referee, search_layer_scales

__all__ = ["StageConfig", "StageResult", "run_stage"]


@dataclass(frozen=True)
class StageConfig:
    """The options of one stage (see :func:`falcon_milp.torch.prune.prune_model`)."""

    lam2: float | None = None
    lam2_rel: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    alpha: float = 0.0
    metric: str = "euclidean"
    layer_scales: str = "search"
    scale_evals: int = 100
    scale_steps: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    warm_scale_steps: tuple[float, ...] = (1.0, 0.5)
    update_steps: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    support_iters: int = 0
    support_log2_taus: tuple[float, ...] = tuple(range(-6, 5, 2))
    support_cg: int = 3
    step: str = "linesearch"
    max_iter: int = 100
    tol: float = 1e-4
    patience: int | None = 3
    refine_iters: int = 0
    block_size: int = 2000
    backsolve_iters: int = 10
    backsolve_precond: str = "auto"


@dataclass
class StageResult:
    """The stage's chosen weights (zero off ``mask``) and how they were found."""

    w: np.ndarray
    mask: np.ndarray
    choice: str
    lam2: float | None
    log2_scales: list[float]
    lipschitz: float | None = None
    dfo_iterations: int = 0
    n_projections: int = 0
    backsolve_iterations: int = 0
    swapped: int = 0
    objective_dfo: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)


def _ridges(X: Any, cfg: StageConfig) -> list[tuple[str, float]]:
    if cfg.lam2 is not None:
        return [(f"lam2={cfg.lam2:g}", float(cfg.lam2))]
    mean_diag = frobenius2(X) / max(int(X.shape[1]), 1)
    return [(f"lam2_rel={r:g}", r * mean_diag) for r in cfg.lam2_rel]


def _scale_starts(base: np.ndarray, sizes: np.ndarray, flops: Sequence[float]) -> list[np.ndarray]:
    """Starting points of the layer-scale search besides 0: importance per FLOP (s_l = 1/f_l)
    and its square root, and each layer normalised by its mean importance (what BatchNorm
    makes arbitrary)."""
    f = np.maximum(np.asarray(flops, dtype=np.float64), 1e-300)
    starts = [-np.log2(f), -0.5 * np.log2(f)]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    means = np.array([float(np.mean(base[a:b])) if b > a else 1.0 for a, b in zip(bounds[:-1], bounds[1:])])
    if np.all(means > 0) and np.all(np.isfinite(means)):
        starts.append(-np.log2(means) + float(np.mean(np.log2(means))))
    return [s - float(np.mean(s)) for s in starts]


def run_stage(X: Any, w_cur: np.ndarray, projector: Projector, group_sizes: Sequence[int],
              cfg: StageConfig, referee: Referee | None, times: dict[str, float], *,
              g: np.ndarray | None = None, log2_scales_start: Sequence[float] | None = None,
              callback: Callable[[int, float], None] | None = None) -> StageResult:
    """Run one stage (module docstring); ``times`` gets the seconds of each phase added.

    ``log2_scales_start``: the previous stage's layer scales (FALCON++); the search then also
    starts there, with the steps from ``cfg.warm_scale_steps`` only (a local refinement)."""
    sizes = np.asarray(group_sizes, dtype=np.int64)
    gid = np.repeat(np.arange(sizes.size), sizes)
    ridges = _ridges(X, cfg)
    if referee is None:                      # the paper's procedure: one ridge, full update
        mid = len(ridges) // 2
        ridges = [ridges[mid]]
    base_metric = None
    if cfg.metric == "fisher-diagonal":
        d = QuadraticModel(X, w_cur, ridges[len(ridges) // 2][1]).diag_hessian()
        base_metric = np.maximum(d, max(float(d.max()), 1.0) * 1e-12)

    # 1. layer scales chosen by the referee
    theta = np.zeros(sizes.size)
    if referee is not None and cfg.layer_scales == "search":
        t = time.perf_counter()
        base = w_cur * w_cur if base_metric is None else base_metric * w_cur * w_cur
        if log2_scales_start is None:
            starts, steps = _scale_starts(base, sizes, projector.flops_per_weight), cfg.scale_steps
        else:
            starts, steps = [np.asarray(log2_scales_start, dtype=np.float64)], cfg.warm_scale_steps
        found = search_layer_scales(lambda m: referee(w_cur, m, "").score, projector, base, sizes,
                                    max_evals=cfg.scale_evals, steps=steps, starts=starts)
        theta = found.log2_scales
        referee(w_cur, found.mask, "layer scales, t=0", log2_scales=[float(v) for v in theta])
        times["scale_search"] = times.get("scale_search", 0.0) + time.perf_counter() - t
    scale = np.exp2(theta)[gid]
    metric = scale if base_metric is None else base_metric * scale
    if np.all(metric == 1.0):
        metric = None

    out = StageResult(w_cur, np.ones(w_cur.size, dtype=bool), "", ridges[0][1], [float(v) for v in theta])
    fallback: tuple[np.ndarray, np.ndarray, str, float] | None = None
    fallback_full: tuple[np.ndarray, np.ndarray, str, float] | None = None
    for label, lam2 in ridges:
        qm = QuadraticModel(X, w_cur, lam2, cfg.alpha if g is not None else 0.0, g)
        res = dfo(qm, projector, max_iter=cfg.max_iter, tol=cfg.tol, patience=cfg.patience,
                  step=cfg.step, metric=metric, refine_iters=cfg.refine_iters, callback=callback)
        for k_src, k_dst in (("lipschitz", "lipschitz"), ("gradient_steps", "dfo_steps"),
                             ("projections", "projections"), ("refine", "refine")):
            times[k_dst] = times.get(k_dst, 0.0) + res.times[k_src]
        out.dfo_iterations += res.n_iter
        if math.isfinite(res.lipschitz):
            out.lipschitz = res.lipschitz
        out.n_projections += res.n_projections
        w, mask = res.w, res.mask
        if cfg.support_iters > 0:
            t = time.perf_counter()
            w0_bs = backsolve(qm, mask, w_start=w, group_sizes=sizes, block_size=cfg.block_size,
                              max_iter=cfg.backsolve_iters, precond=cfg.backsolve_precond)
            ss = refine_support(qm, projector, w0_bs.w, mask, metric=metric, group_sizes=sizes,
                                iters=cfg.support_iters, block_size=cfg.block_size,
                                log2_taus=cfg.support_log2_taus, candidate_iters=cfg.support_cg)
            w, mask = ss.w, ss.mask
            out.swapped += ss.n_swapped
            out.n_projections += ss.n_candidates
            times["support_swaps"] = times.get("support_swaps", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        bs = backsolve(qm, mask, w_start=w, group_sizes=sizes, block_size=cfg.block_size,
                       max_iter=cfg.backsolve_iters, precond=cfg.backsolve_precond)
        times["backsolve"] = times.get("backsolve", 0.0) + time.perf_counter() - t
        out.backsolve_iterations += bs.n_iter
        if out.objective_dfo is None:
            out.objective_dfo = res.objective
        if referee is None:
            fallback = (bs.w, mask, f"{label}, t=1", lam2)
            continue
        if fallback_full is None or label == ridges[len(ridges) // 2][0]:
            fallback_full = (bs.w, mask, f"{label}, t=1", lam2)
        t = time.perf_counter()
        kept = np.where(mask, w_cur, 0.0)
        for step in cfg.update_steps:
            cand = kept + step * (bs.w - kept)
            referee(cand, mask, f"{label}, t={step:g}", lam2=lam2, q=qm.value(cand))
        times["referee"] = times.get("referee", 0.0) + time.perf_counter() - t
    if referee is None:
        assert fallback is not None
        out.w, out.mask, out.choice, out.lam2 = fallback
        return out
    if referee.best is None:                 # no candidate scored finite: the paper's choice
        assert fallback_full is not None
        out.w, out.mask, out.choice, out.lam2 = fallback_full
        return out
    w, mask, choice = referee.best[1], referee.best[2], referee.best[3]
    out.w, out.mask, out.choice, out.lam2 = w, mask, choice, None
    for lab, lam2 in ridges:
        if choice.startswith(lab + ","):
            out.lam2 = lam2
    out.candidates = list(referee.log)
    return out
