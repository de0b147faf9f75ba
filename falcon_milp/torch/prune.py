"""Prune a PyTorch model in place with FALCON or a baseline, under a FLOP and/or NNZ budget.

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

from ..instance import nnz_from_fraction
from . import OptionError
from .backsolve import PRECONDITIONERS, backsolve
from .batchnorm import has_batchnorm, recalibrate_batchnorm
from .dfo import STEP_RULES, Projector
from .gradient_store import STORE_DTYPES, GradientStore, choose_storage
from .gradients import GRAD_STRATEGIES
from .flops import (PrunableLayer, dense_flops, dense_nnz, flat_weights, flops_vector, group_sizes,
                    prunable_layers)
from .masks import layer_usage, write_weights
from ..memory import PeakMemory, available_memory
from ..solvers.rounding import repair_mask
from ..validation import boolean, choice, fraction, grid, integer, real
from .options import Calib, check_calib, device_option, new_file_option
from .quadratic import QuadraticModel
from .referee import CRITERIA, Referee, mean_loss, split_calibration
from .schedules import stage_budgets
from .stage import StageConfig, StageResult, run_stage

__all__ = ["FISHERS", "METHODS", "PruneReport", "prune_model"]

METHODS = ("falcon", "falcon++", "layer-reconstruction", "magnitude", "layerwise-magnitude", "ratio-greedy",
           "obs", "nnz-only")
FISHERS = ("empirical", "sampled")
_NEEDS_GRADS = ("falcon", "falcon++", "obs", "nnz-only")
_STAGED = ("falcon", "falcon++", "nnz-only", "layer-reconstruction")


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


def _subsample(calib: Calib, n: int, seed: int, stage: int = 0) -> Calib:
    """``n`` examples drawn without replacement; stage k > 0 draws another subset."""
    x, y = calib
    if n >= x.shape[0]:
        return x, y
    gen = torch.Generator().manual_seed(int(seed) + 1_000_003 * int(stage))
    idx = torch.randperm(x.shape[0], generator=gen)[:n]
    return x[idx], y[idx]


# ----------------------------------------------------------------------------- pieces
@dataclass(frozen=True)
class _XPlan:
    """Where and how X is computed and stored (chosen once per run)."""

    dtype: str
    on_disk: bool
    path: str | None
    device: torch.device
    strategy: str
    chunk_size: int | None


def _targets(model: nn.Module, calib: Calib, fisher: str, seed: int) -> torch.Tensor:
    """The labels behind X: the observed ones, or (``fisher="sampled"``) drawn from the model's
    predictive distribution at its current weights (generator seeded by ``seed``)."""
    x, y = calib
    if fisher != "sampled":
        return y
    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            logits = torch.cat([model(x[s:s + 512]) for s in range(0, x.shape[0], 512)])
        finally:
            model.train(was)
    gen = torch.Generator().manual_seed(int(seed) + 104_729)
    return torch.multinomial(torch.softmax(logits.double(), dim=1), 1, generator=gen).squeeze(1)


def _on_device(model: nn.Module, layers: Sequence[PrunableLayer], device: torch.device
               ) -> tuple[nn.Module, list[PrunableLayer]]:
    """The model and its layers on ``device`` (a copy unless it is the CPU)."""
    if device.type == "cpu":
        return model, list(layers)
    import copy
    names = {id(m): n for n, m in model.named_modules()}
    twin = copy.deepcopy(model).to(device)
    mods = dict(twin.named_modules())
    return twin, [replace(l, module=mods[names[id(l.module)]]) for l in layers]


def _gradient_rows(model: nn.Module, layers: Sequence[PrunableLayer], x: torch.Tensor, y: torch.Tensor,
                   loss_fn: Callable | None, grads_per_row: int, plan: _XPlan,
                   sink: Callable[[int, torch.Tensor], None], stats: dict[str, Any], *,
                   weights_at: torch.Tensor | None = None,
                   buffers: dict[str, torch.Tensor] | None = None) -> None:
    """Feed the rows of X to ``sink(first_row, rows)``: each row the sum of ``grads_per_row``
    consecutive per-sample gradients / sqrt(grads_per_row), then / sqrt(rows), so that X^T X
    estimates the Fisher."""
    from .gradients import default_chunk_size, iter_per_sample_grads
    m = grads_per_row
    rows = x.shape[0] // m
    dev_model, dev_layers = _on_device(model, layers, plan.device)
    p = dense_nnz(layers)
    chunk = plan.chunk_size or default_chunk_size(p)
    chunk = max(m, chunk // m * m)                 # whole rows per chunk
    xs, ys = x[:rows * m].to(plan.device), y[:rows * m].to(plan.device)
    if buffers is not None and plan.device.type != "cpu":
        buffers = {k: v.to(plan.device) for k, v in buffers.items()}
    for start, G in iter_per_sample_grads(dev_model, xs, ys, dev_layers, loss_fn, chunk,
                                          strategy=plan.strategy, stats=stats,
                                          weights_at=weights_at, buffers=buffers):
        if m > 1:
            G = G.reshape(-1, m, G.shape[1]).sum(dim=1) / math.sqrt(m)
        G /= math.sqrt(rows)
        sink(start // m, G)


def _gradients(model: nn.Module, layers: Sequence[PrunableLayer], x: torch.Tensor, y: torch.Tensor,
               loss_fn: Callable | None, grads_per_row: int, plan: _XPlan, stats: dict[str, Any]) -> GradientStore:
    """X as a :class:`~.gradient_store.GradientStore` laid out as ``plan`` says."""
    rows = x.shape[0] // grads_per_row
    p = dense_nnz(layers)
    if plan.on_disk:
        if plan.path is None:
            import os
            import tempfile
            fd, path = tempfile.mkstemp(prefix="falcon-x-", suffix=".bin")
            os.close(fd)
            os.remove(path)
        else:
            path = plan.path
        store = GradientStore(rows, p, plan.dtype, path)
    else:
        store = GradientStore(rows, p, plan.dtype, device=plan.device)
    try:
        _gradient_rows(model, layers, x, y, loss_fn, grads_per_row, plan, store.write_rows, stats)
    except BaseException:
        store.close()
        raise
    return store


def _streamed_objective(model: nn.Module, layers: Sequence[PrunableLayer], x: torch.Tensor, y: torch.Tensor,
                        loss_fn: Callable | None, grads_per_row: int, plan: _XPlan, w0: np.ndarray,
                        buffers0: dict[str, torch.Tensor], lam2: float, w: np.ndarray) -> float:
    """Q0(w) = 1/2 ||X0 (w - w0)||^2 + lam2 ||w - w0||^2 without storing X0: the gradients at
    w0 (and the original BatchNorm statistics) are recomputed chunk by chunk and only X0 d kept."""
    d = torch.from_numpy(np.asarray(w, dtype=np.float64) - w0)
    d32 = d.to(torch.float32)
    parts: list[float] = []

    def sink(_: int, rows: torch.Tensor) -> None:
        r = torch.mv(rows, d32.to(rows.device)).to("cpu", torch.float64)
        parts.append(float(r @ r))

    _gradient_rows(model, layers, x, y, loss_fn, grads_per_row, plan, sink, {},
                   weights_at=torch.from_numpy(w0), buffers=buffers0)
    return 0.5 * sum(parts) + lam2 * float(d @ d)


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
    train_part, val = split_calibration(pool, val_fraction, seed) if method in _STAGED or safeguard \
        else (pool, None)
    if grads_per_row is None:
        grads_per_row = max(1, min(4, train_part[0].shape[0] // n_grads))
    grads_needed = n_grads * grads_per_row
    calib = _subsample(train_part, grads_needed, seed)

    layers = prunable_layers(model, calib[0][:1], include)
    sizes = group_sizes(layers)
    fpw = flops_vector(layers)
    p, dense_f = dense_nnz(layers), dense_flops(layers)
    names = [l.name for l in layers]
    bn_on = has_batchnorm(model) if bn_recalibrate is None else bool(bn_recalibrate)
    bn_inputs = calib[0][:1024] if bn_on and calib[0].shape[0] >= 2 else None

    def budgets(nnz_frac: float | None, flops_frac: float | None) -> tuple[int | None, float | None]:
        s = None if nnz_frac is None else nnz_from_fraction(nnz_frac, p)
        f = None if flops_frac is None else flops_frac * dense_f
        return s, f

    if method == "nnz-only":
        s_only = nnz_fraction if nnz_fraction is not None else flops_fraction
        max_nnz, max_flops = budgets(s_only, None)
    else:
        max_nnz, max_flops = budgets(nnz_fraction, flops_fraction)

    allocation: dict[str, Any] = {}
    times = {k: 0.0 for k in ("gradients", "scale_search", "lipschitz", "dfo_steps", "projections",
                              "refine", "support_swaps", "backsolve", "referee", "selection",
                              "batchnorm", "objective")}
    opts = dict(solver_options or {})
    w0 = flat_weights(layers, torch.float64).numpy().copy()
    loss_before = mean_loss(model, calib, loss_fn).loss
    val_before = mean_loss(model, val, loss_fn).loss if val is not None else None
    referee = (Referee(model, layers, val, loss_fn, None if bn_inputs is None else bn_inputs[:256],
                       criterion=criterion) if val is not None else None)
    report_stages: list[dict[str, Any]] = []
    dfo_iters = n_proj = bs_iters = 0
    chosen: str | None = None
    lam_used: float | None = None
    log2_scales: list[float] = []
    lipschitz_used: float | None = None

    budget = available_memory() if max_memory is None else max_memory
    store_dtype, on_disk = choose_storage(calib[0].shape[0] // grads_per_row, p, budget, x_dtype,
                                          x_path is not None)
    if chunk_size is None:
        from .gradients import default_chunk_size
        chunk_size = default_chunk_size(p, int(min(2**30, max(2**26, budget // 64))))
    xplan = _XPlan(store_dtype, on_disk, x_path, dev, grad_strategy, chunk_size)
    grad_stats: dict[str, Any] = {}
    labels0: torch.Tensor | None = None
    buffers0 = {k: b.detach().clone() for k, b in model.named_buffers()}
    x_bytes = 0

    def grads_at(data: Calib, stage: int) -> GradientStore:
        nonlocal labels0, x_bytes
        t = time.perf_counter()
        y = _targets(model, data, fisher, seed + stage)
        if stage == 0:
            labels0 = y
        X = _gradients(model, layers, data[0], y, loss_fn, grads_per_row,
                       replace(xplan, strategy=grad_stats.get("strategy", xplan.strategy)), grad_stats)
        x_bytes = max(x_bytes, X.nbytes)
        times["gradients"] += time.perf_counter() - t
        return X

    def mean_grad(X: GradientStore, data: Calib) -> np.ndarray | None:
        if not alpha:
            return None
        if fisher == "empirical":      # rows: sums of m gradients / sqrt(m * rows)
            return X.column_sums() / math.sqrt(X.shape[0] * grads_per_row)
        from .gradients import summed_grad
        return (summed_grad(model, data[0], data[1], layers) / data[0].shape[0]).numpy()

    # quadratic model at the original weights (for every method that needs or reports Q)
    q0: QuadraticModel | None = None
    X0: GradientStore | None = None
    obj_before: float | None = None
    if method in _NEEDS_GRADS or compute_objective:
        X0 = grads_at(calib, 0)
        q0 = QuadraticModel(X0, w0, 0.0)
        q0.lam2 = (lam2 if lam2 is not None else lam2_grid[len(lam2_grid) // 2] * q0.fro2 / max(p, 1))
    q0_lam2 = 0.0 if q0 is None else q0.lam2

    def make_projector(s: int | None, f: float | None) -> Projector:
        return Projector(sizes, fpw, s, f, solver=solver, names=names, solver_options=opts)

    proj = make_projector(max_nnz, max_flops)
    cfg = StageConfig(lam2=lam2, lam2_rel=lam2_grid, alpha=alpha, metric=metric, layer_scales=layer_scales,
                      update_steps=steps_grid, support_iters=support_iters, step=step, max_iter=max_iter,
                      tol=tol, patience=patience, refine_iters=refine_iters, block_size=block_size,
                      backsolve_iters=backsolve_iters, backsolve_precond=backsolve_precond)
    if q0 is not None:           # Q at FLOP-aware magnitude, for the report
        t = time.perf_counter()
        imp0 = w0 * w0
        if metric == "fisher-diagonal" and method in _STAGED:
            imp0 = q0.diag_hessian() * imp0
        obj_before = q0.value(np.where(proj(imp0), w0, 0.0))
        times["objective"] += time.perf_counter() - t

    def cb(phase: str) -> Callable[[int, float], None] | None:
        if callback is None:
            return None
        return lambda it, q: callback(phase, it, q)

    def stage(X: GradientStore, w_cur: np.ndarray, projector: Projector, data: Calib, k: int,
              phase: str, scales_start: Sequence[float] | None = None) -> StageResult:
        nonlocal dfo_iters, n_proj, bs_iters, lipschitz_used
        if referee is not None:
            referee.reset()
        res = run_stage(X, w_cur, projector, sizes, cfg, referee, times, g=mean_grad(X, data),
                        log2_scales_start=scales_start, callback=cb(phase))
        dfo_iters += res.dfo_iterations
        n_proj += res.n_projections
        bs_iters += res.backsolve_iterations
        lipschitz_used = res.lipschitz
        return res

    if method in ("falcon", "nnz-only"):
        assert X0 is not None
        res = stage(X0, w0, proj, calib, 0, method)
        w, mask, chosen, lam_used, log2_scales = res.w, res.mask, res.choice, res.lam2, res.log2_scales
        report_stages.append(_stage_entry(1, nnz_fraction, flops_fraction, res, time.perf_counter() - t_start))
    elif method == "falcon++":
        assert X0 is not None
        plan = stage_budgets(flops_fraction, nnz_fraction, stages, schedule_start, schedule_power)
        w = w0
        mask = np.ones(p, dtype=bool)
        for k, (nf, ff) in enumerate(plan):
            t_stage = time.perf_counter()
            if k == 0:
                Xk, data_k = X0, calib
            else:
                write_weights(layers, w, mask)
                if bn_inputs is not None:
                    recalibrate_batchnorm(model, bn_inputs)
                data_k = _subsample(train_part, grads_needed, seed, k) if resample else calib
                Xk = grads_at(data_k, k)
            s_k, f_k = budgets(nf, ff)
            res = stage(Xk, w, make_projector(s_k, f_k), data_k, k, f"stage {k + 1}/{stages}",
                        log2_scales if k > 0 else None)
            w, mask = res.w, res.mask
            chosen, lam_used, log2_scales = res.choice, res.lam2, res.log2_scales
            report_stages.append(_stage_entry(k + 1, nf, ff, res, time.perf_counter() - t_stage))
            Xk.close()                     # one X at a time: the report's Q0 is streamed
            q0 = None
    elif method == "layer-reconstruction":
        from .reconstruction import reconstruction_prune
        rec = reconstruction_prune(model, layers, train_part[0], max_nnz, max_flops, normalization=normalization,
                                   sequential=sequential, levels=levels, damp=damp, bn_inputs=bn_inputs,
                                   seed=seed, allocate=allocate)
        w, mask = rec.w, rec.mask
        allocation = rec.allocation
        times.update(rec.times)
        chosen = "reconstruction"
    else:
        t = time.perf_counter()
        if method == "layerwise-magnitude":
            mask = _layerwise_mask(w0, sizes, fpw, max_nnz, max_flops)
            mask = repair_mask(proj.instance(w0 * w0), mask)[0]
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
            assert q0 is not None
            t = time.perf_counter()
            bs = backsolve(q0, mask, group_sizes=sizes, block_size=block_size, max_iter=backsolve_iters,
                           precond=backsolve_precond)
            times["backsolve"] += time.perf_counter() - t
            w, bs_iters = bs.w, bs.n_iter
            lam_used = q0.lam2
        else:
            w = np.where(mask, w0, 0.0)

    # the safeguard: FLOP-aware magnitude judged on the same validation part
    fallback = None
    val_mag = None
    stage_log = list(referee.log) if referee is not None else []
    if referee is not None and method in _STAGED:
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
        if q0 is not None:
            obj_after = q0.value(w_final)
        else:                          # falcon++ dropped X0: recompute X0 d by streaming
            assert labels0 is not None
            obj_after = _streamed_objective(model, layers, calib[0], labels0, loss_fn, grads_per_row,
                                            replace(xplan, strategy=grad_stats.get("strategy", "auto"),
                                                    on_disk=False),
                                            w0, buffers0, q0_lam2, w_final)
        times["objective"] += time.perf_counter() - t
    if X0 is not None:
        X0.close()
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
        fisher=fisher if method in _NEEDS_GRADS or compute_objective else "",
        grads_per_row=grads_per_row,
        lam2=lam_used, lipschitz=lipschitz_used, dfo_iterations=dfo_iters, n_projections=n_proj,
        backsolve_iterations=bs_iters, choice=chosen, log2_layer_scales=log2_scales, times=times,
        stages=report_stages, referee=[] if referee is None else stage_log + list(referee.log),
        per_layer=dict(usage.per_layer), allocation=allocation,
        x_storage="" if not x_bytes else f"{'file' if on_disk else 'memory'} {store_dtype}",
        x_bytes=x_bytes, device=str(dev), grad_strategy=grad_stats.get("strategy", ""),
        grad_examples_per_second=grad_stats.get("examples_per_second"),
        peak_memory_bytes=peak.peak_total(),
        peak_memory_scope="call" if peak.method == "vmhwm-reset" else "process")


prune_model.__signature__ = inspect.signature(_prune_model)       # type: ignore[attr-defined]
prune_model.__doc__ = (_prune_model.__doc__ or "") + """
    If anything fails after pruning started, the model's parameters and buffers are put back
    as they were (the caller's model is never left holding a half-pruned candidate).
    """


def _stage_entry(k: int, nf: float | None, ff: float | None, res: StageResult, seconds: float) -> dict[str, Any]:
    best = next((c["val_loss"] for c in res.candidates if c["candidate"] == res.choice), None)
    return {"stage": k, "nnz_fraction": nf, "flops_fraction": ff, "dfo_iterations": res.dfo_iterations,
            "objective_dfo": res.objective_dfo, "choice": res.choice, "lam2": res.lam2,
            "swapped": res.swapped, "log2_layer_scales": res.log2_scales, "val_loss": best,
            "n_candidates": len(res.candidates), "seconds": seconds}
