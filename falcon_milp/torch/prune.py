"""Prune a PyTorch model in place with FALCON or a baseline, under a FLOP and/or NNZ budget.

Methods (``method=``), all through :func:`prune_model`:

=========================  ===================================================================
``"falcon"``               one stage: DFO (IHT with the FLOP+NNZ ILP as projection, any solver)
                           on the local quadratic model Q, then a backsolve on its support.
``"falcon++"``             ``stages`` stages on a polynomial schedule (start ``schedule_start``),
                           per-sample gradients recomputed at every stage on a fresh calibration
                           subset (``resample``), no retraining. Holds the stage's X and the
                           first stage's X (for the reported Q): twice the memory of X.
``"magnitude"``            the paper's FLOP-aware magnitude pruning: the ILP on I = w^2 with both
                           budgets (solved by ``solver``), no weight update.
``"layerwise-magnitude"``  the same kept fraction r in every layer, r = min(F / F_dense, S / p),
                           top-|w| inside each layer, no weight update.
``"ratio-greedy"``         the ``ratio-greedy`` solver (I/f order) on I = w^2, no weight update.
``"obs"``                  OBS/WoodFisher one shot: the ILP on I = w^2 / [H^-1]_ii, then the OBS
                           weight update, computed as the backsolve on the kept support (for a
                           set of pruned weights the multi-weight OBS update is exactly the
                           minimiser of Q with those weights at zero).
``"nnz-only"``             CHITA-like: DFO + backsolve with the NNZ budget only (S from
                           ``nnz_fraction``, or ``flops_fraction * p`` when that is not given);
                           its FLOP use is reported, not enforced.
=========================  ===================================================================

Q is the model of :mod:`falcon_milp.torch.quadratic` (X = per-sample gradients / sqrt(n), so
X^T X is the empirical Fisher). Budgets: S = floor(nnz_fraction * p), F = flops_fraction *
dense FLOPs (MACs per example); ``None`` = no such budget.

The report's ``objective_before`` is Q at the FLOP-aware magnitude solution (the ILP on w0^2,
weights unchanged: the starting point of DFO; with ``metric="fisher-diagonal"`` the ILP on
diag(H) w0^2, where that DFO starts), ``objective_after`` Q at the final weights,
both on the quadratic model built at the original weights; kept NNZ/FLOP fractions are
measured on the pruned model (zero-aware).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import OptionError
from .backsolve import backsolve
from .dfo import DFOResult, Projector, dfo
from .flops import (PrunableLayer, dense_flops, dense_nnz, flat_weights, flops_vector, group_sizes,
                    prunable_layers, set_flat_weights)
from .masks import apply_mask, is_masked, layer_usage, remove_masks
from .quadratic import QuadraticModel
from .schedules import gradual_epochs, stage_budgets

__all__ = ["METHODS", "PruneReport", "GradualReport", "gradual_prune", "prune_model"]

METHODS = ("falcon", "falcon++", "magnitude", "layerwise-magnitude", "ratio-greedy", "obs", "nnz-only")
_NEEDS_GRADS = ("falcon", "falcon++", "obs", "nnz-only")

Calib = tuple[torch.Tensor, torch.Tensor]


@dataclass
class PruneReport:
    """What :func:`prune_model` did. Fractions are measured on the pruned model.

    times: seconds per phase -- ``gradients`` (per-sample gradients), ``lipschitz`` (power
    iteration), ``dfo_steps`` (gradient steps and objective evaluations), ``projections``
    (ILP solves), ``refine`` (active-set CG), ``backsolve``, ``selection`` (the baselines' one
    solve), ``objective`` (Q evaluations for the report), ``total``.
    """

    method: str
    solver: str
    flops_fraction: float | None
    nnz_fraction: float | None
    max_nnz: int | None
    max_flops: float | None
    kept_nnz: int
    kept_flops: int
    dense_nnz: int
    dense_flops: int
    kept_nnz_fraction: float
    kept_flops_fraction: float
    within_budgets: bool
    objective_before: float | None = None
    objective_after: float | None = None
    loss_before: float | None = None
    loss_after: float | None = None
    n_grads: int = 0
    lam2: float | None = None
    lipschitz: float | None = None
    dfo_iterations: int = 0
    n_projections: int = 0
    backsolve_iterations: int = 0
    times: dict[str, float] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    per_layer: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- validation
def _fraction(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
        raise OptionError(f"`{name}` must be in [0, 1]; got {value!r}")
    return float(value)


def _int_option(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < low:
        raise OptionError(f"`{name}` must be an integer >= {low}; got {value!r}")
    return int(value)


def _real_option(value: Any, name: str, low: float = 0.0, strict: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(float(value))
          and (float(value) > low if strict else float(value) >= low))
    if not ok:
        sign = ">" if strict else ">="
        raise OptionError(f"`{name}` must be a finite number {sign} {low:g}; got {value!r}")
    return float(value)


def _check_calib(calib: Any) -> Calib:
    if not (isinstance(calib, (tuple, list)) and len(calib) == 2
            and all(isinstance(t, torch.Tensor) for t in calib)):
        raise OptionError("`calib` must be a pair of tensors (inputs, targets)")
    x, y = calib
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise OptionError(f"`calib` inputs and targets must hold the same number (>= 1) of examples; "
                          f"got {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def _subsample(calib: Calib, n: int, seed: int, stage: int = 0) -> Calib:
    """``n`` examples drawn without replacement; stage k > 0 draws another subset."""
    x, y = calib
    if n >= x.shape[0]:
        return x, y
    gen = torch.Generator().manual_seed(int(seed) + 1_000_003 * int(stage))
    idx = torch.randperm(x.shape[0], generator=gen)[:n]
    return x[idx], y[idx]


# ----------------------------------------------------------------------------- pieces
def _gradients(model: nn.Module, layers: Sequence[PrunableLayer], calib: Calib,
               loss_fn: Callable | None, chunk_size: int | None) -> np.ndarray:
    """X = per-sample gradients / sqrt(n), float32 numpy (n, p)."""
    from .gradients import per_sample_grads
    G = per_sample_grads(model, calib[0], calib[1], layers, loss_fn, chunk_size)
    G /= math.sqrt(G.shape[0])
    return G.numpy()


def _quadratic(X: np.ndarray, w0: np.ndarray, lam2: float | None, lam2_rel: float,
               alpha: float) -> QuadraticModel:
    """Q at w0; lam2 = lam2_rel * mean(diag Fisher) unless given; g = mean gradient if alpha."""
    g = X.sum(axis=0, dtype=np.float64) / math.sqrt(X.shape[0]) if alpha else None
    qm = QuadraticModel(X, w0, 0.0 if lam2 is None else lam2, alpha, g)
    if lam2 is None:
        qm.lam2 = lam2_rel * qm.fro2 / max(qm.p, 1)
    return qm


def _mean_loss(model: nn.Module, calib: Calib, loss_fn: Callable | None, batch: int = 512) -> float:
    """Mean loss over the calibration examples (eval mode; the mode is restored)."""
    x, y = calib
    was = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for s in range(0, x.shape[0], batch):
                out = model(x[s:s + batch])
                if loss_fn is None:
                    total += float(F.cross_entropy(out, y[s:s + batch], reduction="sum"))
                else:
                    total += sum(float(loss_fn(out[k:k + 1], y[s + k:s + k + 1]))
                                 for k in range(out.shape[0]))
    finally:
        model.train(was)
    return total / x.shape[0]


def _layerwise_mask(w: np.ndarray, sizes: np.ndarray, flops: np.ndarray, max_nnz: int | None,
                    max_flops: float | None) -> np.ndarray:
    """Same kept fraction r = min(F / F_dense, S / p) in every layer, top-|w| per layer."""
    p = int(sizes.sum())
    dense_f = float(np.dot(sizes, flops))
    r = 1.0
    if max_nnz is not None:
        r = min(r, max_nnz / p)
    if max_flops is not None and dense_f > 0:
        r = min(r, max_flops / dense_f)
    mask = np.zeros(p, dtype=bool)
    start = 0
    for n in sizes:
        k = int(math.floor(r * int(n) + 1e-9))
        if k > 0:
            seg = np.abs(w[start:start + n])
            keep = np.argsort(-seg, kind="stable")[:k]
            mask[start + keep] = True
        start += int(n)
    return mask


def _repair(projector: Projector, imp: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Drop the least important kept weights until the exact budget check passes."""
    from ..result import check_mask
    inst = projector.instance(imp)
    if check_mask(inst, mask).feasible:
        return mask
    mask = mask.copy()
    kept = np.flatnonzero(mask)
    order = kept[np.argsort(imp[kept], kind="stable")]
    for i in order:
        mask[i] = False
        if check_mask(inst, mask).feasible:
            break
    return mask


# ----------------------------------------------------------------------------- main entry
def prune_model(model: nn.Module, calib: Calib, flops_fraction: float | None = 0.3,
                nnz_fraction: float | None = None, method: str = "falcon", solver: str = "fast", *,
                n_grads: int = 1000, lam2: float | None = None, lam2_rel: float = 1e-2,
                alpha: float = 0.0, stages: int = 10, schedule_start: float = 0.7,
                schedule_power: float = 3.0, resample: bool = True, max_iter: int = 100, tol: float = 1e-4,
                patience: int | None = 5, step: str = "lipschitz", metric: str = "euclidean",
                refine_iters: int = 0,
                block_size: int = 2000, backsolve_iters: int = 10,
                include: Any = None, loss_fn: Callable | None = None, seed: int = 0,
                chunk_size: int | None = None, compute_objective: bool = True,
                keep_masks: bool = False, solver_options: dict[str, Any] | None = None,
                callback: Callable[[str, int, float], None] | None = None) -> PruneReport:
    """Prune ``model`` in place and return a :class:`PruneReport`.

    Parameters
    ----------
    calib : (inputs, targets) calibration examples (training data); ``n_grads`` of them are
        drawn at random (``seed``) for the per-sample gradients and the reported losses.
    flops_fraction, nnz_fraction : kept fractions in [0, 1] of the dense FLOPs / weights
        (None = no such budget; at least one must be given).
    method : one of :data:`METHODS` (module docstring). solver : the registered ILP solver used
        for every projection / selection (``fast``, ``exact``, ``highs-compact``, ...).
    lam2 : ridge of Q; default ``lam2_rel * mean(diag Fisher)``. alpha : first-order weight.
    stages, schedule_start, schedule_power : FALCON++ schedule (:mod:`.schedules`).
    resample : FALCON++ draws a fresh calibration subset at every stage (when ``calib`` holds
        more than ``n_grads`` examples), so that the backsolves do not all fit the same ones.
    max_iter, tol, patience, step, refine_iters : DFO options (:func:`falcon_milp.torch.dfo.dfo`).
    metric : ``"euclidean"`` (the paper's projection, I = u^2) or ``"fisher-diagonal"`` (DFO in
        the norm of D = diag(H): I = D u^2, the OBD saliency at the start).
    block_size, backsolve_iters : backsolve options (:func:`.backsolve.backsolve`).
    include : which modules are prunable (:func:`falcon_milp.torch.flops.prunable_layers`).
    loss_fn : per-example loss ``(output, target) -> scalar`` (default cross entropy).
    compute_objective : for the gradient-free baselines, also build Q to report it.
    keep_masks : register mask parametrizations so the zeros survive later training (they are
        always updated if the model already carries masks).
    callback(phase, iteration, objective) : progress hook (the CLI's progress bars).
    """
    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise OptionError(f"`model` must be a torch.nn.Module; got {type(model).__name__}")
    if metric not in ("euclidean", "fisher-diagonal"):
        raise OptionError(f"`metric` must be 'euclidean' or 'fisher-diagonal'; got {metric!r}")
    if method not in METHODS:
        raise OptionError(f"`method` must be one of {', '.join(METHODS)}; got {method!r}")
    flops_fraction = _fraction(flops_fraction, "flops_fraction")
    nnz_fraction = _fraction(nnz_fraction, "nnz_fraction")
    if flops_fraction is None and nnz_fraction is None:
        raise OptionError("give `flops_fraction` or `nnz_fraction` (both are None)")
    from ..solvers import get_solver
    get_solver(solver)
    n_grads = _int_option(n_grads, "n_grads", 1)
    stages = _int_option(stages, "stages", 1)
    max_iter = _int_option(max_iter, "max_iter", 1)
    refine_iters = _int_option(refine_iters, "refine_iters", 0)
    block_size = _int_option(block_size, "block_size", 1)
    backsolve_iters = _int_option(backsolve_iters, "backsolve_iters", 0)
    if lam2 is not None:
        lam2 = _real_option(lam2, "lam2")
    lam2_rel = _real_option(lam2_rel, "lam2_rel")
    alpha = _real_option(alpha, "alpha", -math.inf)
    tol = _real_option(tol, "tol")
    _fraction(schedule_start, "schedule_start")
    pool = _check_calib(calib)
    calib = _subsample(pool, n_grads, seed)

    layers = prunable_layers(model, calib[0][:1], include)
    sizes = group_sizes(layers)
    fpw = flops_vector(layers)
    p, dense_f = dense_nnz(layers), dense_flops(layers)
    names = [l.name for l in layers]

    def budgets(nnz_frac: float | None, flops_frac: float | None) -> tuple[int | None, float | None]:
        s = None if nnz_frac is None else int(math.floor(nnz_frac * p + 1e-9))
        f = None if flops_frac is None else flops_frac * dense_f
        return s, f

    if method == "nnz-only":
        s_only = nnz_fraction if nnz_fraction is not None else flops_fraction
        max_nnz, max_flops = budgets(s_only, None)
    else:
        max_nnz, max_flops = budgets(nnz_fraction, flops_fraction)

    times = {k: 0.0 for k in ("gradients", "lipschitz", "dfo_steps", "projections", "refine",
                              "backsolve", "selection", "objective")}
    opts = dict(solver_options or {})
    w0 = flat_weights(layers, torch.float64).numpy().copy()
    loss_before = _mean_loss(model, calib, loss_fn)
    report_stages: list[dict[str, Any]] = []
    dfo_iters = n_proj = bs_iters = 0
    L_used: float | None = None

    # quadratic model at the original weights (for every method that needs or reports Q)
    q0: QuadraticModel | None = None
    if method in _NEEDS_GRADS or compute_objective:
        t = time.perf_counter()
        X = _gradients(model, layers, calib, loss_fn, chunk_size)
        times["gradients"] += time.perf_counter() - t
        q0 = _quadratic(X, w0, lam2, lam2_rel, alpha)
    lam_used = None if q0 is None else q0.lam2

    def make_projector(s: int | None, f: float | None) -> Projector:
        return Projector(sizes, fpw, s, f, solver=solver, names=names, solver_options=opts)

    proj = make_projector(max_nnz, max_flops)

    def cb(phase: str) -> Callable[[int, float], None] | None:
        if callback is None:
            return None
        return lambda it, q: callback(phase, it, q)

    def run_falcon(qm: QuadraticModel, projector: Projector,
                   phase: str) -> tuple[np.ndarray, np.ndarray, DFOResult]:
        nonlocal dfo_iters, n_proj, bs_iters, L_used
        D = qm.diag_hessian() if metric == "fisher-diagonal" else None
        if D is not None and not np.all(D > 0):
            D = np.maximum(D, max(float(D.max()), 1.0) * 1e-12)
        res = dfo(qm, projector, max_iter=max_iter, tol=tol, patience=patience, step=step,
                  metric=D, refine_iters=refine_iters, callback=cb(phase))
        for k_src, k_dst in (("lipschitz", "lipschitz"), ("gradient_steps", "dfo_steps"),
                             ("projections", "projections"), ("refine", "refine")):
            times[k_dst] += res.times[k_src]
        t = time.perf_counter()
        bs = backsolve(qm, res.mask, w_start=res.w, group_sizes=sizes, block_size=block_size,
                       max_iter=backsolve_iters)
        times["backsolve"] += time.perf_counter() - t
        dfo_iters += res.n_iter
        n_proj += res.n_iter + res.n_backtracks
        bs_iters += bs.n_iter
        L_used = res.lipschitz
        return bs.w, res.mask, res

    if method in ("falcon", "nnz-only"):
        assert q0 is not None
        w, mask, _ = run_falcon(q0, proj, method)
    elif method == "falcon++":
        assert q0 is not None
        plan = stage_budgets(flops_fraction, nnz_fraction, stages, schedule_start, schedule_power)
        w = w0
        mask = np.ones(p, dtype=bool)
        for k, (nf, ff) in enumerate(plan):
            if k == 0:
                qk = q0
            else:
                _write(layers, w, mask, keep_masks)
                t = time.perf_counter()
                calib_k = _subsample(pool, n_grads, seed, k) if resample else calib
                Xk = _gradients(model, layers, calib_k, loss_fn, chunk_size)
                times["gradients"] += time.perf_counter() - t
                qk = _quadratic(Xk, w, lam2, lam2_rel, alpha)
            s_k, f_k = budgets(nf, ff)
            w, mask, res = run_falcon(qk, make_projector(s_k, f_k), f"stage {k + 1}/{stages}")
            report_stages.append({"stage": k + 1, "nnz_fraction": nf, "flops_fraction": ff,
                                  "dfo_iterations": res.n_iter, "objective_dfo": res.objective,
                                  "objective_stage": qk.value(w)})
            del qk
    else:
        t = time.perf_counter()
        if method == "layerwise-magnitude":
            mask = _layerwise_mask(w0, sizes, fpw, max_nnz, max_flops)
            mask = _repair(proj, w0 * w0, mask)
        elif method == "magnitude":
            mask = proj(w0 * w0)
            n_proj += 1
        elif method == "ratio-greedy":
            mask = Projector(sizes, fpw, max_nnz, max_flops, solver="ratio-greedy", names=names)(w0 * w0)
            n_proj += 1
        else:  # obs
            from .importance import obs_inverse_diagonal
            assert q0 is not None
            lam_obs = q0.lam2 if q0.lam2 > 0 else (1e-2 * q0.fro2 / max(q0.p, 1) or 1e-12)
            diag = obs_inverse_diagonal(q0.X, lam_obs)
            mask = proj(w0 * w0 / diag)
            n_proj += 1
        times["selection"] += time.perf_counter() - t
        if method == "obs":
            t = time.perf_counter()
            bs = backsolve(q0, mask, group_sizes=sizes, block_size=block_size, max_iter=backsolve_iters)
            times["backsolve"] += time.perf_counter() - t
            w, bs_iters = bs.w, bs.n_iter
        else:
            w = np.where(mask, w0, 0.0)

    _write(layers, w, mask, keep_masks)

    obj_before = obj_after = None
    if q0 is not None:
        t = time.perf_counter()
        imp0 = w0 * w0
        if metric == "fisher-diagonal" and method in ("falcon", "falcon++", "nnz-only"):
            imp0 = q0.diag_hessian() * imp0          # where the D-metric DFO starts
        start_mask = proj(imp0) if method != "magnitude" else mask
        obj_before = q0.value(np.where(start_mask, w0, 0.0))
        obj_after = q0.value(flat_weights(layers, torch.float64).numpy())
        times["objective"] += time.perf_counter() - t
    loss_after = _mean_loss(model, calib, loss_fn)
    usage = layer_usage(layers)
    within = ((max_nnz is None or usage.nnz <= max_nnz)
              and (max_flops is None or usage.flops <= max_flops))
    times["total"] = time.perf_counter() - t_start
    return PruneReport(
        method=method, solver=solver, flops_fraction=flops_fraction, nnz_fraction=nnz_fraction,
        max_nnz=max_nnz, max_flops=max_flops, kept_nnz=usage.nnz, kept_flops=usage.flops,
        dense_nnz=p, dense_flops=dense_f, kept_nnz_fraction=usage.nnz / p,
        kept_flops_fraction=usage.flops / dense_f if dense_f else float("nan"),
        within_budgets=bool(within), objective_before=obj_before, objective_after=obj_after,
        loss_before=loss_before, loss_after=loss_after, n_grads=int(calib[0].shape[0]),
        lam2=lam_used, lipschitz=L_used, dfo_iterations=dfo_iters, n_projections=n_proj,
        backsolve_iterations=bs_iters, times=times, stages=report_stages,
        per_layer=dict(usage.per_layer))


def _write(layers: Sequence[PrunableLayer], w: np.ndarray, mask: np.ndarray, keep_masks: bool) -> None:
    """Write the flat weights into the model (zeros off the mask); update/register masks."""
    w = np.where(mask, w, 0.0)
    set_flat_weights(layers, torch.from_numpy(w))
    if keep_masks or any(is_masked(l.module, l.param_name) for l in layers):
        apply_mask(layers, np.asarray(mask, dtype=bool))


# ----------------------------------------------------------------------------- gradual pruning
@dataclass
class GradualReport:
    """Reports of every pruning step (epoch -> report) and the mean training loss per epoch."""

    prune_epochs: list[int]
    reports: dict[int, PruneReport]
    train_loss: list[float]


def _sgd_epoch(model: nn.Module, data: Calib, lr: float, momentum: float, batch_size: int,
               seed: int, loss_fn: Callable | None) -> float:
    x, y = data
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=gen)
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=lr, momentum=momentum)
    model.train()
    total = 0.0
    for s in range(0, x.shape[0], batch_size):
        idx = order[s:s + batch_size]
        out = model(x[idx])
        loss = F.cross_entropy(out, y[idx]) if loss_fn is None else \
            torch.stack([loss_fn(out[k:k + 1], y[idx][k:k + 1]) for k in range(out.shape[0])]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach()) * idx.numel()
    model.eval()
    return total / x.shape[0]


def gradual_prune(model: nn.Module, calib: Calib, train_data: Calib, flops_fraction: float | None = 0.3,
                  nnz_fraction: float | None = None, method: str = "falcon", *, n_epochs: int = 4,
                  prune_epochs: Sequence[int] | None = None, n_prunes: int = 3, lr: float = 0.01,
                  momentum: float = 0.9, batch_size: int = 128, seed: int = 0,
                  schedule_start: float = 0.7, schedule_power: float = 3.0,
                  train_epoch: Callable[[nn.Module, int], float] | None = None,
                  **prune_options: Any) -> GradualReport:
    """Gradual pruning: prune at the start of each of ``prune_epochs``, fine-tune in between.

    The budgets of the successive pruning steps follow the polynomial schedule from
    ``schedule_start`` to the targets (:func:`.schedules.stage_budgets`). After every pruning
    step the mask is held by a parametrization (weights = original * mask), so the pruned
    weights stay exactly zero through every optimiser step; at the end the masks are folded
    into plain weights. Fine-tuning is SGD on ``train_data`` unless ``train_epoch(model, epoch)
    -> mean loss`` is given. ``prune_options`` go to :func:`prune_model`.
    """
    n_epochs = _int_option(n_epochs, "n_epochs", 1)
    if prune_epochs is None:
        prune_epochs = gradual_epochs(n_epochs, n_prunes)
    epochs = sorted(int(e) for e in prune_epochs)
    if not epochs or len(set(epochs)) != len(epochs) or epochs[0] < 0 or epochs[-1] >= n_epochs:
        raise OptionError(f"`prune_epochs` must be distinct epochs in [0, {n_epochs - 1}]; "
                          f"got {list(prune_epochs)}")
    train_data = _check_calib(train_data)
    plan = stage_budgets(_fraction(flops_fraction, "flops_fraction"), _fraction(nnz_fraction, "nnz_fraction"),
                         len(epochs), schedule_start, schedule_power)
    reports: dict[int, PruneReport] = {}
    losses: list[float] = []
    for epoch in range(n_epochs):
        if epoch in epochs:
            nf, ff = plan[epochs.index(epoch)]
            reports[epoch] = prune_model(model, calib, ff, nf, method, keep_masks=True,
                                         seed=seed + epoch, **prune_options)
        if train_epoch is not None:
            losses.append(float(train_epoch(model, epoch)))
        else:
            losses.append(_sgd_epoch(model, train_data, lr, momentum, batch_size, seed + epoch,
                                     prune_options.get("loss_fn")))
    remove_masks(model)
    return GradualReport(epochs, reports, losses)
