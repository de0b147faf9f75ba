"""Prune a PyTorch model in place with FALCON or a baseline, under a FLOP and/or NNZ budget.

(Over 400 lines: the documented option list of :func:`prune_model`, its checks and the report
dataclass; the methods are in :mod:`.prune_methods`, X in :mod:`.fisher_rows`.)

Methods (``method=``), all through :func:`prune_model`:

=========================  ===================================================================
``"falcon"``               one stage (:mod:`.stage`): layer scales, DFO (IHT with the FLOP+NNZ
                           ILP as projection, any solver), support swaps, backsolve; the
                           candidates judged by the validation loss (the referee).
``"falcon++"``             ``stages`` such stages on a polynomial schedule (start
                           ``schedule_start``), per-sample gradients recomputed at the current
                           weights at every stage on a fresh calibration subset (``resample``),
                           BatchNorm re-estimated between stages, no retraining.
                           ``schedule="paper"``: the paper's scripts (20 stages, cubic, from 70%).
``"magnitude"``            the paper's FLOP-aware magnitude pruning: the ILP on I = w^2 with both
                           budgets (solved by ``solver``), no weight update.
``"layerwise-magnitude"``  the same kept fraction r in every layer, r = min(F / F_dense, S / p),
                           top-|w| inside each layer, no weight update.
``"ratio-greedy"``         the ``ratio-greedy`` solver (I/f order) on I = w^2, no weight update.
``"obs"``                  OBS/WoodFisher one shot: the ILP on I = w^2 / [H^-1]_ii, then the OBS
                           weight update, computed as the backsolve on the kept support (for a
                           set of pruned weights the multi-weight OBS update is exactly the
                           minimiser of Q with those weights at zero).
``"layer-reconstruction"`` per-layer OBS reconstruction curves, one kept count per layer chosen
                           exactly under both budgets (the multiple-choice knapsack MILP),
                           each layer re-fitted to its outputs, layer by layer on the pruned
                           network's inputs (``sequential``), :mod:`.reconstruction`.
``"nnz-only"``             CHITA-like: the ``falcon`` stage with the NNZ budget only (S from
                           ``nnz_fraction``, or ``flops_fraction * p`` when that is not given);
                           its FLOP use is reported, not enforced.
=========================  ===================================================================

Data: ``calib`` is a pool of training examples. A validation part (``val_fraction``, disjoint)
is set aside for the referee; the gradients use ``n_grads`` examples of the rest. With
``safeguard=True`` a FALCON result whose validation loss is above FLOP-aware magnitude's is
replaced by the magnitude solution, and the report says so (``fallback="magnitude"``).
BatchNorm statistics are re-estimated after pruning (``bn_recalibrate=None``: when the model
has BatchNorm) from the gradient part's inputs, for every method.

Q is the model of :mod:`falcon_milp.torch.quadratic` (X = per-sample gradients / sqrt(n), so
X^T X is the empirical Fisher; ``fisher="sampled"``: targets drawn from the model's own
predictive distribution; ``grads_per_row=m``: each row sums m examples' gradients / sqrt(m)).
Budgets: S = floor(nnz_fraction * p), F = flops_fraction * dense FLOPs (MACs per example);
``None`` = no such budget. The report's ``objective_before`` is Q at the FLOP-aware magnitude
solution, ``objective_after`` Q at the final weights, both on the quadratic model built at the
original weights; kept NNZ/FLOP fractions are measured on the pruned model (zero-aware).
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..memory import PeakMemory, available_memory
from ..validation import boolean, choice, fraction, grid, integer, real
from . import OptionError
from .backsolve import PRECONDITIONERS
from .batchnorm import has_batchnorm, recalibrate_batchnorm
from .dfo import STEP_RULES
from .fisher_rows import XPlan, streamed_objective, subsample
from .flops import dense_nnz, flat_weights, prunable_layers
from .gradient_store import STORE_DTYPES, choose_storage
from .gradients import GRAD_STRATEGIES
from .masks import layer_usage, write_weights
from .options import Calib, check_calib, device_option, new_file_option
from .prune_methods import METHOD_FUNCTIONS, NEEDS_GRADS, STAGED, PruneRun
from .quadratic import QuadraticModel
from .referee import CRITERIA, Referee, mean_loss, split_calibration
from .stage import StageConfig

__all__ = ["FISHERS", "METHODS", "PruneReport", "prune_model"]

METHODS = tuple(METHOD_FUNCTIONS)
FISHERS = ("empirical", "sampled")


@dataclass
class PruneReport:
    """What :func:`prune_model` did. Fractions are measured on the pruned model.

    times: seconds per phase -- ``gradients`` (per-sample gradients), ``scale_search`` (layer
    scales judged by the referee), ``dfo_steps``, ``projections`` (ILP solves inside DFO),
    ``support_swaps``, ``backsolve``, ``referee`` (validation losses of the update candidates),
    ``selection`` (the baselines' one solve), ``batchnorm``, ``objective`` (Q for the report),
    ``total``. ``referee``: every candidate of the (last) stage judged on the validation part
    (loss, accuracy, score), then ``magnitude`` and ``result`` of the safeguard; ``choice``:
    the chosen candidate; ``fallback`` is ``"magnitude"`` when the safeguard replaced it.
    ``n_grads``: examples behind the gradients (X has n_grads / grads_per_row rows); ``fisher``:
    which Fisher X estimates. ``x_storage`` / ``x_bytes``: where X was kept and its size;
    ``grad_strategy`` / ``grad_examples_per_second``: how the per-sample gradients were
    computed and how fast; ``peak_memory_bytes``: the peak resident memory of this call
    (``peak_memory_scope="call"``, Linux) or of the process so far (``"process"``).
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
    val_loss_before: float | None = None
    val_loss_after: float | None = None
    val_accuracy_after: float | None = None
    val_loss_magnitude: float | None = None
    n_val: int = 0
    fallback: str | None = None
    bn_recalibrated: int = 0
    n_grads: int = 0
    fisher: str = ""
    grads_per_row: int = 1
    lam2: float | None = None
    lipschitz: float | None = None
    dfo_iterations: int = 0
    n_projections: int = 0
    backsolve_iterations: int = 0
    choice: str | None = None
    log2_layer_scales: list[float] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    referee: list[dict[str, Any]] = field(default_factory=list)
    per_layer: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    allocation: dict[str, Any] = field(default_factory=dict)
    x_storage: str = ""
    x_bytes: int = 0
    device: str = "cpu"
    grad_strategy: str = ""
    grad_examples_per_second: float | None = None
    peak_memory_bytes: int = 0
    peak_memory_scope: str = "call"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- main entry
def prune_model(model: nn.Module, *args: Any, **kwargs: Any) -> PruneReport:
    """Prune ``model`` in place and return a :class:`PruneReport` (:func:`_prune_model`).

    If anything fails after pruning started, the model's parameters and buffers are put back
    as they were (the caller's model is never left holding a half-pruned candidate).
    """
    snapshot = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                if isinstance(model, nn.Module) else None)
    masked_before = set()
    if snapshot is not None:
        masked_before = {(id(m), n) for m in model.modules() if parametrize.is_parametrized(m)
                         for n in m.parametrizations}
    try:
        return _prune_model(model, *args, **kwargs)
    except BaseException:
        if snapshot is not None:
            for m in list(model.modules()):        # masks registered by this call go again
                if parametrize.is_parametrized(m):
                    for n in list(m.parametrizations):
                        if (id(m), n) not in masked_before:
                            parametrize.remove_parametrizations(m, n, leave_parametrized=False)
            with torch.no_grad():
                state = model.state_dict()
                for k, v in snapshot.items():
                    if k in state and state[k].shape == v.shape:
                        state[k].copy_(v)
        raise


def _prune_model(model: nn.Module, calib: Calib, flops_fraction: float | None = 0.3,
                nnz_fraction: float | None = None, method: str = "falcon", solver: str = "fast", *,
                n_grads: int = 1000, val_fraction: float = 0.1, lam2: float | None = None,
                lam2_rel: float | Sequence[float] = (1e-3, 1e-2, 1e-1),
                alpha: float = 0.0, fisher: str = "empirical", grads_per_row: int = 1,
                layer_scales: str = "search", update_steps: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
                support_iters: int = 0, safeguard: bool = True, criterion: str = "calibrated-loss", bn_recalibrate: bool | None = None,
                stages: int = 10, schedule: str | None = None, schedule_start: float = 0.7,
                schedule_power: float = 3.0, resample: bool = True, max_iter: int = 100, tol: float = 1e-4,
                patience: int | None = 3, step: str = "linesearch", metric: str = "euclidean",
                refine_iters: int = 0, block_size: int = 2000, backsolve_iters: int = 10,
                include: Any = None, loss_fn: Callable | None = None, seed: int = 0,
                chunk_size: int | None = None, compute_objective: bool = True,
                keep_masks: bool = False, solver_options: dict[str, Any] | None = None,
                normalization: str = "fisher", sequential: bool = True, levels: int = 48, damp: float = 1e-2,
                allocate: str = "milp", x_dtype: str | None = None, x_path: str | None = None,
                max_memory: int | None = None, device: str = "cpu", grad_strategy: str = "auto",
                backsolve_precond: str = "auto",
                callback: Callable[[str, int, float], None] | None = None) -> PruneReport:
    """Prune ``model`` in place and return a :class:`PruneReport`.

    Parameters
    ----------
    calib : (inputs, targets): a pool of training examples. ``val_fraction`` of it (at least
        256 when the pool holds 512 or more; 0 turns the referee off) is the validation part;
        ``n_grads`` of the rest, drawn at random (``seed``), give the per-sample gradients.
    flops_fraction, nnz_fraction : kept fractions in [0, 1] of the dense FLOPs / weights
        (None = no such budget; at least one must be given).
    method : one of :data:`METHODS` (module docstring). solver : the registered ILP solver used
        for every projection / selection (``fast``, ``exact``, ``highs-compact``, ...).
    lam2 : a fixed ridge of Q; else ``lam2_rel`` (a number or a grid) x mean(diag Fisher), the
        grid's best chosen by the referee. alpha : first-order weight.
    fisher : ``"empirical"`` (observed labels) or ``"sampled"`` (labels drawn from the model;
        needs the default loss); None = ``"sampled"`` with the default loss, else ``"empirical"``.
    grads_per_row : examples summed per row of X; None = min(4, examples available / n_grads).
        (``fisher=None, grads_per_row=None`` validated best on MLPNet, docs/pruning.md.)
    layer_scales : ``"search"`` (per-layer factors of the projection's importances chosen by
        the referee) or ``"none"`` (the paper's Euclidean projection).
    update_steps : fractions t of the backsolve update judged by the referee (1 = full update).
    support_iters : rounds of support swaps judged at each candidate's minimiser (0 = off).
    safeguard : replace a FALCON result that validates worse than FLOP-aware magnitude.
    criterion : how the referee ranks candidates: ``"calibrated-loss"`` (validation cross
        entropy at the best temperature, :func:`.referee.calibrated_loss`), ``"loss"``,
        ``"accuracy"``.
    bn_recalibrate : re-estimate BatchNorm statistics (None = when the model has BatchNorm).
    stages, schedule, schedule_start, schedule_power : FALCON++ schedule (:mod:`.schedules`);
        ``schedule="paper"`` = 20 stages, cubic, from 70% kept.
    resample : FALCON++ draws a fresh gradient subset at every stage.
    max_iter, tol, patience, step, refine_iters : DFO options (:func:`falcon_milp.torch.dfo.dfo`).
    metric : ``"euclidean"`` (I = s_l u^2) or ``"fisher-diagonal"`` (I = s_l diag(H) u^2).
    block_size, backsolve_iters : backsolve options (:func:`.backsolve.backsolve`).
    include : which modules are prunable (:func:`falcon_milp.torch.flops.prunable_layers`).
    loss_fn : per-example loss ``(output, target) -> scalar`` (default cross entropy).
    compute_objective : for the gradient-free baselines, also build Q to report it.
    keep_masks : register mask parametrizations so the zeros survive later training (they are
        always updated if the model already carries masks).
    callback(phase, iteration, objective) : progress hook (the CLI's progress bars).
    normalization, sequential, levels, damp, allocate : layer-reconstruction options
        (:func:`.reconstruction.reconstruction_prune`): how layer errors are made comparable
        (``"fisher"``, ``"relative"``, ``"raw"``), re-fit layer by layer on the pruned network's
        inputs, kept-count levels per layer, ridge of H (x mean diag), ``"milp"`` (exact
        allocation) or ``"uniform"`` (the same kept fraction in every layer: an ablation).
    x_dtype, x_path, max_memory : where X lives (:mod:`.gradient_store`): ``x_dtype`` one of
        ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"float64"`` in memory, or in the new
        file ``x_path`` (scratch, deleted after the run; default dtype bfloat16); by default
        chosen from ``max_memory`` bytes (default: what the machine has free now): float32 if
        X takes at most half of it, else bfloat16 if that does, else a bfloat16 temporary file.
        FALCON++ holds one X at a time (the report's Q at the original weights is recomputed
        by streaming the gradients at the end instead of keeping the first stage's X).
    device : where the per-sample gradients, X and its products run (``"cpu"``, ``"cuda"``);
        the ILP, the referee and the BatchNorm passes stay with the model.
    grad_strategy : ``"auto"`` (time both on the first chunk), ``"vmap"`` or ``"loop"``
        (:mod:`.gradients`). backsolve_precond : :func:`.backsolve.backsolve`'s ``precond``.
    """
    t_start = time.perf_counter()
    peak = PeakMemory()
    peak.start()
    if not isinstance(model, nn.Module):
        raise OptionError(f"`model` must be a torch.nn.Module; got {type(model).__name__}")
    choice(metric, "metric", ("euclidean", "fisher-diagonal"))
    choice(method, "method", METHODS)
    if fisher is None:
        fisher = "empirical" if loss_fn is not None else "sampled"
    choice(fisher, "fisher", FISHERS)
    choice(layer_scales, "layer_scales", ("search", "none"))
    choice(step, "step", STEP_RULES)
    choice(schedule, "schedule", (None, "polynomial", "paper"))
    choice(criterion, "criterion", CRITERIA)
    from .reconstruction import NORMALIZATIONS
    choice(normalization, "normalization", NORMALIZATIONS)
    choice(allocate, "allocate", ("milp", "uniform"))
    levels = integer(levels, "levels", 2)
    damp = real(damp, "damp", strict=True)
    boolean(sequential, "sequential")
    if x_dtype is not None:
        choice(x_dtype, "x_dtype", tuple(STORE_DTYPES))
    x_path = new_file_option(x_path, "x_path")
    if max_memory is not None:
        max_memory = integer(max_memory, "max_memory", 1)
    dev = device_option(device)
    if x_path is not None and dev.type != "cpu":
        raise OptionError("`x_path` (X in a file) works with `device='cpu'` only")
    choice(grad_strategy, "grad_strategy", GRAD_STRATEGIES)
    choice(backsolve_precond, "backsolve_precond", PRECONDITIONERS)
    if fisher == "sampled" and loss_fn is not None:
        raise OptionError("`fisher='sampled'` draws class labels: it needs the default cross-entropy loss")
    flops_fraction = fraction(flops_fraction, "flops_fraction")
    nnz_fraction = fraction(nnz_fraction, "nnz_fraction")
    if flops_fraction is None and nnz_fraction is None:
        raise OptionError("give `flops_fraction` or `nnz_fraction` (both are None)")
    from ..solvers import get_solver
    get_solver(solver)
    n_grads = integer(n_grads, "n_grads", 1)
    if grads_per_row is not None:
        grads_per_row = integer(grads_per_row, "grads_per_row", 1)
    stages = integer(stages, "stages", 1)
    max_iter = integer(max_iter, "max_iter", 1)
    refine_iters = integer(refine_iters, "refine_iters", 0)
    support_iters = integer(support_iters, "support_iters", 0)
    block_size = integer(block_size, "block_size", 1)
    backsolve_iters = integer(backsolve_iters, "backsolve_iters", 0)
    if lam2 is not None:
        lam2 = real(lam2, "lam2")
    lam2_grid = grid(lam2_rel, "lam2_rel")
    steps_grid = grid(update_steps, "update_steps", 0.0, 1.0)
    val_fraction = float(fraction(val_fraction, "val_fraction") or 0.0)
    alpha = real(alpha, "alpha", -math.inf)
    tol = real(tol, "tol")
    fraction(schedule_start, "schedule_start")
    if schedule == "paper":
        stages, schedule_start, schedule_power = 20, 0.7, 3.0
    pool = check_calib(calib)
    train_part, val = split_calibration(pool, val_fraction, seed) if method in STAGED or safeguard \
        else (pool, None)
    if grads_per_row is None:
        grads_per_row = max(1, min(4, train_part[0].shape[0] // n_grads))
    grads_needed = n_grads * grads_per_row
    calib = subsample(train_part, grads_needed, seed)

    layers = prunable_layers(model, calib[0][:1], include)
    bn_on = has_batchnorm(model) if bn_recalibrate is None else bool(bn_recalibrate)
    bn_inputs = calib[0][:1024] if bn_on and calib[0].shape[0] >= 2 else None
    times = {k: 0.0 for k in ("gradients", "scale_search", "lipschitz", "dfo_steps", "projections",
                              "refine", "support_swaps", "backsolve", "referee", "selection",
                              "batchnorm", "objective")}
    p = dense_nnz(layers)
    budget = available_memory() if max_memory is None else max_memory
    store_dtype, on_disk = choose_storage(calib[0].shape[0] // grads_per_row, p, budget, x_dtype,
                                          x_path is not None)
    if chunk_size is None:
        from .gradients import default_chunk_size
        chunk_size = default_chunk_size(p, int(min(2**30, max(2**26, budget // 64))))
    cfg = StageConfig(lam2=lam2, lam2_rel=lam2_grid, alpha=alpha, metric=metric, layer_scales=layer_scales,
                      update_steps=steps_grid, support_iters=support_iters, step=step, max_iter=max_iter,
                      tol=tol, patience=patience, refine_iters=refine_iters, block_size=block_size,
                      backsolve_iters=backsolve_iters, backsolve_precond=backsolve_precond)
    options = dict(nnz_fraction=nnz_fraction, flops_fraction=flops_fraction, stages=stages,
                   schedule_start=schedule_start, schedule_power=schedule_power, resample=resample,
                   normalization=normalization, sequential=sequential, levels=levels, damp=damp,
                   allocate=allocate, block_size=block_size, backsolve_iters=backsolve_iters,
                   backsolve_precond=backsolve_precond)
    referee = (Referee(model, layers, val, loss_fn, None if bn_inputs is None else bn_inputs[:256],
                       criterion=criterion) if val is not None else None)
    run = PruneRun(model, layers, calib, train_part, grads_needed, seed, fisher, loss_fn, grads_per_row, alpha,
                   XPlan(store_dtype, on_disk, x_path, dev, grad_strategy, chunk_size), solver,
                   dict(solver_options or {}), cfg, referee, bn_inputs, callback, options, times, t_start)
    dense_f = run.dense_f
    if method == "nnz-only":
        s_only = nnz_fraction if nnz_fraction is not None else flops_fraction
        max_nnz, max_flops = run.budgets(s_only, None)
    else:
        max_nnz, max_flops = run.budgets(nnz_fraction, flops_fraction)
    options.update(max_nnz=max_nnz, max_flops=max_flops)
    w0 = run.w0
    loss_before = mean_loss(model, calib, loss_fn).loss
    val_before = mean_loss(model, val, loss_fn).loss if val is not None else None
    buffers0 = {k: b.detach().clone() for k, b in model.named_buffers()}

    # quadratic model at the original weights (for every method that needs or reports Q)
    obj_before: float | None = None
    if method in NEEDS_GRADS or compute_objective:
        run.X0 = run.grads_at(calib, 0)
        run.q0 = QuadraticModel(run.X0, w0, 0.0)
        run.q0.lam2 = (lam2 if lam2 is not None else lam2_grid[len(lam2_grid) // 2] * run.q0.fro2 / max(p, 1))
    q0_lam2 = 0.0 if run.q0 is None else run.q0.lam2
    proj = run.proj = run.projector(max_nnz, max_flops)
    if run.q0 is not None:           # Q at FLOP-aware magnitude, for the report
        t = time.perf_counter()
        imp0 = w0 * w0
        if metric == "fisher-diagonal" and method in STAGED:
            imp0 = run.q0.diag_hessian() * imp0
        obj_before = run.q0.value(np.where(proj(imp0), w0, 0.0))
        times["objective"] += time.perf_counter() - t

    sel = METHOD_FUNCTIONS[method](run, method)
    w, mask, chosen, lam_used, log2_scales = sel.w, sel.mask, sel.choice, sel.lam2, sel.log2_scales

    # the safeguard: FLOP-aware magnitude judged on the same validation part
    fallback = None
    val_mag = None
    stage_log = list(referee.log) if referee is not None else []
    if referee is not None and method in STAGED:
        referee.reset()
        mag_mask = proj(w0 * w0)
        v_mag = referee(np.where(mag_mask, w0, 0.0), mag_mask, "magnitude")
        v_res = referee(w, mask, "result")
        val_mag = v_mag.loss
        if safeguard and v_mag.score < v_res.score:
            w, mask, fallback = np.where(mag_mask, w0, 0.0), mag_mask, "magnitude"
            chosen, lam_used, log2_scales = "magnitude", None, []

    t = time.perf_counter()
    write_weights(layers, w, mask, keep_masks)
    bn_count = recalibrate_batchnorm(model, bn_inputs) if bn_inputs is not None else 0
    times["batchnorm"] += time.perf_counter() - t

    obj_after = None
    if obj_before is not None:
        t = time.perf_counter()
        w_final = flat_weights(layers, torch.float64).numpy()
        if run.q0 is not None:
            obj_after = run.q0.value(w_final)
        else:                          # falcon++ dropped X0: recompute X0 d by streaming
            assert run.labels0 is not None
            obj_after = streamed_objective(model, layers, calib[0], run.labels0, loss_fn, grads_per_row,
                                           replace(run.xplan, strategy=run.grad_stats.get("strategy", "auto"),
                                                   on_disk=False),
                                           w0, buffers0, q0_lam2, w_final)
        times["objective"] += time.perf_counter() - t
    if run.X0 is not None:
        run.X0.close()
    loss_after = mean_loss(model, calib, loss_fn).loss
    val_after = mean_loss(model, val, loss_fn) if val is not None else None
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
        loss_before=loss_before, loss_after=loss_after, val_loss_before=val_before,
        val_loss_after=None if val_after is None else val_after.loss,
        val_accuracy_after=None if val_after is None else val_after.accuracy,
        val_loss_magnitude=val_mag, n_val=0 if val is None else int(val[0].shape[0]),
        fallback=fallback, bn_recalibrated=bn_count, n_grads=int(calib[0].shape[0]),
        fisher=fisher if method in NEEDS_GRADS or compute_objective else "",
        grads_per_row=grads_per_row,
        lam2=lam_used, lipschitz=run.lipschitz, dfo_iterations=run.dfo_iters, n_projections=run.n_proj,
        backsolve_iterations=run.bs_iters, choice=chosen, log2_layer_scales=log2_scales, times=times,
        stages=run.report_stages, referee=[] if referee is None else stage_log + list(referee.log),
        per_layer=dict(usage.per_layer), allocation=sel.allocation,
        x_storage="" if not run.x_bytes else f"{'file' if on_disk else 'memory'} {store_dtype}",
        x_bytes=run.x_bytes, device=str(dev), grad_strategy=run.grad_stats.get("strategy", ""),
        grad_examples_per_second=run.grad_stats.get("examples_per_second"),
        peak_memory_bytes=peak.peak_total(),
        peak_memory_scope="call" if peak.method == "vmhwm-reset" else "process")


prune_model.__signature__ = inspect.signature(_prune_model)       # type: ignore[attr-defined]
prune_model.__doc__ = (_prune_model.__doc__ or "") + """
    If anything fails after pruning started, the model's parameters and buffers are put back
    as they were (the caller's model is never left holding a half-pruned candidate).
    """
