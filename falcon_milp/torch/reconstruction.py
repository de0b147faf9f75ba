"""Layer-wise reconstruction pruning with an exact global allocation (``method="layer-reconstruction"``).

For a prunable layer with weight rows w_r (a Linear row, or a conv output channel flattened
over its input channels x kernel) and calibration inputs x (the layer's inputs; conv: the
unfolded patches of every output position), the reconstruction error of a pruned row w'_r is

    E_r(w'_r) = (w_r - w'_r)^T H (w_r - w'_r),     H = (1/N) sum_n sum_pos x x^T + damp I,

the mean (over examples) squared change of the row's outputs summed over positions.

1. **Curves** (:func:`row_traces`): per row, greedy OBS elimination (as in OBC): remove the
   weight with the smallest w_i^2 / [H^-1]_ii, update the remaining weights by the exact
   OBS step and H^-1 by a rank-one downdate; the cumulative scores are E_r(t), the error of the
   best reconstruction on the remaining support after t removals. Rows of one layer are merged
   along the lower convex hulls of their (weighted) curves (:func:`layer_curve`), which gives
   the layer's error e_l(k) at every kept count k and each row's share.
2. **Allocation**: one kept count per layer from a grid of ``levels`` counts, minimising the
   sum of the normalised layer errors under the NNZ and FLOP budgets (the multiple-choice
   knapsack of :func:`falcon_milp.solve_allocation`, solved exactly by HiGHS).
3. **Weights** (:func:`reconstruct_rows`): each row re-fitted by least squares on its kept
   support, w'_S = H_SS^-1 (H w)_S. ``sequential=True`` re-does steps 1 (at the allocated count)
   and 3 layer by layer in network order with the inputs x_p of the network pruned so far and
   the dense layer's outputs as targets: min E[||W x_d - W' x_p||^2], i.e. the same problem
   with H_pp and the target w* = H_pp^-1 G w (G = E[x_p x_d^T]).

Normalisations of the errors (what makes layers comparable in step 2):

- ``"fisher"`` (default): row r weighted by f_r = the mean squared gradient of the loss with
  respect to that output (labels drawn from the model, so it does not vanish at zero training
  loss): f_r E_r is a diagonal second-order estimate of the loss increase;
- ``"relative"``: e_l(k) / ||W X||^2 (every layer's relative output error counts the same);
- ``"raw"``: e_l(k) (output units, not comparable across layers).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..validation import choice
from . import OptionError
from .batchnorm import BatchNormState, recalibrate_batchnorm
from .flops import PrunableLayer

__all__ = ["NORMALIZATIONS", "LayerCurve", "ReconstructionResult", "layer_curve", "layer_hessians",
           "reconstruct_rows", "row_traces", "reconstruction_prune"]

NORMALIZATIONS = ("fisher", "relative", "raw")
ALLOCATIONS = ("milp", "uniform")
_HINV_BYTES = 512 * 2**20          # rows of one layer are eliminated in chunks of at most this much H^-1


# ----------------------------------------------------------------------------- inputs
def _layer_inputs(layer: PrunableLayer, x: torch.Tensor) -> list[torch.Tensor]:
    """The layer's input rows, one (M, d_g) matrix per weight group (conv groups), float64."""
    m = layer.module
    if isinstance(m, nn.Linear):
        return [x.reshape(-1, x.shape[-1]).to(torch.float64)]
    if isinstance(m, nn.Conv2d):
        if not isinstance(m.padding, tuple):
            raise OptionError(f"layer '{layer.name}': padding={m.padding!r} is not supported by "
                              "layer-reconstruction (give explicit padding)")
        if m.padding_mode != "zeros":
            raise OptionError(f"layer '{layer.name}': padding_mode={m.padding_mode!r} is not supported")
        cin_g = m.in_channels // m.groups
        out = []
        for g in range(m.groups):
            xs = x[:, g * cin_g:(g + 1) * cin_g]
            cols = F.unfold(xs, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
            out.append(cols.transpose(1, 2).reshape(-1, cols.shape[1]).to(torch.float64))
        return out
    raise OptionError(f"layer '{layer.name}': {type(m).__name__} is not supported by layer-reconstruction "
                      "(Linear and Conv2d are)")


def _rows_per_group(layer: PrunableLayer) -> int:
    m = layer.module
    return m.out_channels // m.groups if isinstance(m, nn.Conv2d) else layer.shape[0]


def _weight_rows(layer: PrunableLayer, w: torch.Tensor) -> torch.Tensor:
    return w.reshape(layer.shape[0], -1).to(torch.float64)


class _Collector:
    """Forward hooks that accumulate sum x x^T (per conv group) of chosen layers' inputs; with
    ``pair`` set, also sum x_p x_d^T against the inputs the paired (dense) model saw."""

    def __init__(self, layers: Sequence[PrunableLayer]) -> None:
        self.layers = list(layers)
        self.sums: dict[str, list[torch.Tensor]] = {}
        self.count = 0
        self.last: dict[str, list[torch.Tensor]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "_Collector":
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()

    def _hook(self, layer: PrunableLayer) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            xs = _layer_inputs(layer, args[0].detach())
            self.last[layer.name] = xs
            acc = self.sums.get(layer.name)
            if acc is None:
                self.sums[layer.name] = [x.T @ x for x in xs]
            else:
                for a, x in zip(acc, xs):
                    a.add_(x.T @ x)
        return hook


def _batches(inputs: torch.Tensor, batch_size: int):
    for s in range(0, inputs.shape[0], batch_size):
        yield inputs[s:s + batch_size]


def layer_hessians(model: nn.Module, layers: Sequence[PrunableLayer], inputs: torch.Tensor,
                   batch_size: int = 256) -> dict[str, list[torch.Tensor]]:
    """H_l = (1/N) sum_n sum_pos x x^T for every layer (a list: one per conv group), float64,
    from one pass over ``inputs`` in eval mode."""
    was = model.training
    model.eval()
    try:
        with _Collector(layers) as col, torch.no_grad():
            for batch in _batches(inputs, batch_size):
                model(batch)
    finally:
        model.train(was)
    n = inputs.shape[0]
    return {k: [h / n for h in v] for k, v in col.sums.items()}


def output_sensitivities(model: nn.Module, layers: Sequence[PrunableLayer], inputs: torch.Tensor,
                         seed: int = 0, batch_size: int = 256) -> dict[str, np.ndarray]:
    """f_r = mean over examples and output positions of (d loss_n / d y_r)^2 for every output
    r of every layer, labels drawn from the model's own predictive distribution (cross entropy)."""
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str) -> Callable:
        def fwd(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if output.requires_grad:
                output.register_hook(lambda g: grads.__setitem__(name, g.detach()))
        return fwd

    for layer in layers:
        handles.append(layer.module.register_forward_hook(hook(layer.name)))
    was = model.training
    model.eval()
    try:
        for batch in _batches(inputs, batch_size):
            grads.clear()
            out = model(batch)
            with torch.no_grad():
                y = torch.multinomial(torch.softmax(out.detach().double(), dim=1), 1, generator=gen).squeeze(1)
            F.cross_entropy(out, y, reduction="sum").backward()
            for layer in layers:
                g = grads[layer.name].double()
                red = (g * g).transpose(0, 1).reshape(g.shape[1], -1).sum(dim=1)  # over examples and positions
                positions = g[0].numel() // g.shape[1]
                sums[layer.name] = sums.get(layer.name, 0) + red / positions
    finally:
        for h in handles:
            h.remove()
        model.train(was)
        model.zero_grad(set_to_none=True)
    n = inputs.shape[0]
    return {k: (v / n).numpy() for k, v in sums.items()}


# ----------------------------------------------------------------------------- OBS traces
def _damped(H: torch.Tensor, damp: float) -> torch.Tensor:
    d = H.diagonal()
    scale = float(d.mean()) if d.numel() and float(d.mean()) > 0 else 1.0
    out = H.clone()
    out.diagonal().add_(damp * scale)
    dead = d <= 0                         # an input that is always zero: any weight on it is free
    out.diagonal()[dead] += scale
    return out


def row_traces(W: torch.Tensor, H: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Greedy OBS elimination of every row of ``W`` (R, d) under the (damped, SPD) ``H`` (d, d).

    Returns ``order`` (R, d) int64 (the column removed at each step) and ``scores`` (R, d)
    float64 (the error increase of each step; E_r(t) = cumsum). Rows run batched in chunks;
    H^-1 is compacted to the remaining columns whenever half of them are gone.
    """
    R, d = W.shape
    order = np.empty((R, d), dtype=np.int64)
    scores = np.empty((R, d), dtype=np.float64)
    Hinv0 = torch.cholesky_inverse(torch.linalg.cholesky(H))
    chunk = max(1, min(R, _HINV_BYTES // max(1, 8 * d * d)))
    for r0 in range(0, R, chunk):
        rows = slice(r0, min(R, r0 + chunk))
        w = W[rows].clone()
        n = w.shape[0]
        Hinv = Hinv0.expand(n, d, d).clone()
        idx = torch.arange(d).expand(n, d).clone()          # original column of each slot
        alive = torch.ones(n, d, dtype=torch.bool)
        ar = torch.arange(n)
        width = d
        for t in range(d):
            diag = Hinv.diagonal(dim1=1, dim2=2).clamp_min(1e-300)
            s = torch.where(alive, w * w / diag, torch.full_like(w, math.inf))
            j = torch.argmin(s, dim=1)
            order[rows, t] = idx[ar, j].numpy()
            scores[rows, t] = s[ar, j].clamp_min(0).numpy()
            col = Hinv[ar, :, j]                              # (n, width)
            dj = diag[ar, j]
            w -= (w[ar, j] / dj)[:, None] * col
            Hinv.baddbmm_(col.unsqueeze(2), (col / dj[:, None]).unsqueeze(1), alpha=-1.0)
            w[ar, j] = 0.0
            alive[ar, j] = False
            left = d - t - 1
            if left and left <= width // 2 and width > 16:
                keep = torch.nonzero(alive, as_tuple=False)[:, 1].reshape(n, left)
                idx = idx.gather(1, keep)
                w = w.gather(1, keep)
                Hinv = Hinv.gather(1, keep[:, :, None].expand(n, left, width)).gather(
                    2, keep[:, None, :].expand(n, left, left))
                alive = torch.ones(n, left, dtype=torch.bool)
                width = left
    return order, scores


# ----------------------------------------------------------------------------- curves
@dataclass
class LayerCurve:
    """Error of the best found k-weight layer at every kept count k = 0..n (``errors[k]``,
    weighted by the row weights), and how the removals split over rows."""

    name: str
    n_rows: int
    row_len: int
    errors: np.ndarray          # (n + 1,) weighted error at kept count k
    order: np.ndarray           # (R, d) removal order per row
    hull_rows: np.ndarray       # segment -> row, in the merged order
    hull_steps: np.ndarray      # segment -> removals it adds
    hull_starts: np.ndarray     # segment -> removals of its row before it

    def removals_per_row(self, kept: int) -> np.ndarray:
        """t_r, the removals of each row at layer kept count ``kept`` (merge along the hulls)."""
        total = self.n_rows * self.row_len - int(kept)
        t = np.zeros(self.n_rows, dtype=np.int64)
        if total <= 0:
            return t
        ends = np.cumsum(self.hull_steps)
        i = int(np.searchsorted(ends, total, side="left"))
        whole = slice(0, i)
        np.maximum.at(t, self.hull_rows[whole], self.hull_starts[whole] + self.hull_steps[whole])
        done = int(ends[i - 1]) if i else 0
        if i < self.hull_rows.size and total > done:
            r = int(self.hull_rows[i])
            t[r] = int(self.hull_starts[i]) + (total - done)
        return t

    def support(self, kept: int) -> np.ndarray:
        """(R, d) bool: the weights kept at layer kept count ``kept``."""
        t = self.removals_per_row(kept)
        keep = np.ones((self.n_rows, self.row_len), dtype=bool)
        for r in range(self.n_rows):
            keep[r, self.order[r, :t[r]]] = False
        return keep


def _lower_hull(E: np.ndarray) -> np.ndarray:
    """Vertices (indices t) of the lower convex hull of the points (t, E[t]), t = 0..len-1."""
    hull: list[int] = []
    for t in range(E.size):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or above the segment a -> t
            if (E[b] - E[a]) * (t - a) >= (E[t] - E[a]) * (b - a):
                hull.pop()
            else:
                break
        hull.append(t)
    return np.array(hull, dtype=np.int64)


def layer_curve(name: str, order: np.ndarray, scores: np.ndarray, row_weights: np.ndarray) -> LayerCurve:
    """Merge the rows' traces: segments of every row's lower convex hull of f_r E_r(t), taken in
    increasing slope (within a row the slopes increase, so each row's order is kept)."""
    R, d = scores.shape
    cum = np.concatenate([np.zeros((R, 1)), np.cumsum(scores, axis=1)], axis=1)
    seg_rows, seg_steps, seg_starts, seg_slopes, seg_gain = [], [], [], [], []
    for r in range(R):
        E = cum[r] * row_weights[r]
        v = _lower_hull(E)
        steps = np.diff(v)
        seg_rows.append(np.full(steps.size, r))
        seg_steps.append(steps)
        seg_starts.append(v[:-1])
        seg_slopes.append(np.diff(E[v]) / steps)
        seg_gain.append(np.diff(E[v]))
    rows, steps = np.concatenate(seg_rows), np.concatenate(seg_steps)
    starts, slopes = np.concatenate(seg_starts), np.concatenate(seg_slopes)
    o = np.lexsort((starts, rows, slopes))
    rows, steps, starts = rows[o], steps[o], starts[o]
    # weighted error at every total removal count T (piecewise: along the merged segments)
    errors_by_removed = np.empty(R * d + 1)
    errors_by_removed[0] = 0.0
    t = np.zeros(R, dtype=np.int64)
    acc = 0.0
    pos = 0
    for r, s in zip(rows, steps):
        base = cum[r, t[r]] * row_weights[r]
        inside = cum[r, t[r] + 1:t[r] + s + 1] * row_weights[r] - base
        errors_by_removed[pos + 1:pos + s + 1] = acc + inside
        acc += float(inside[-1])
        t[r] += s
        pos += s
    errors = errors_by_removed[::-1].copy()        # kept k = R*d - removed
    return LayerCurve(name, R, d, errors, order, rows, steps, starts)


# ----------------------------------------------------------------------------- weights
def reconstruct_rows(W: torch.Tensor, H: torch.Tensor, keep: np.ndarray) -> torch.Tensor:
    """Least squares on each row's support: w'_S = H_SS^-1 (H w)_S, zero elsewhere."""
    Hw = W @ H                               # (R, d): row r is (H w_r)^T, H symmetric
    out = torch.zeros_like(W)
    for r in range(W.shape[0]):
        S = torch.from_numpy(np.flatnonzero(keep[r]))
        if S.numel() == 0:
            continue
        out[r, S] = torch.linalg.solve(H[S][:, S], Hw[r, S])
    return out


# ----------------------------------------------------------------------------- the method
@dataclass
class ReconstructionResult:
    """Flat weights and mask (layers' order), the allocation and what each phase cost."""

    w: np.ndarray
    mask: np.ndarray
    kept: dict[str, int]
    allocation: dict[str, Any]
    times: dict[str, float] = field(default_factory=dict)


def _levels(n: int, rows: int, count: int) -> np.ndarray:
    """Kept counts of a layer: ``count`` geometric steps from max(1, rows/8) to n."""
    lo = max(1, rows // 8)
    return np.unique(np.round(np.geomspace(lo, n, count)).astype(np.int64))


def _row_weight_vector(layer: PrunableLayer, normalization: str, sens: dict[str, np.ndarray] | None,
                       total_out: float) -> np.ndarray:
    R = layer.shape[0]
    if normalization == "fisher":
        assert sens is not None
        return np.asarray(sens[layer.name], dtype=np.float64).reshape(R)
    if normalization == "relative":
        return np.full(R, 1.0 / max(total_out, 1e-300))
    return np.ones(R)


def _layer_curve(layer: PrunableLayer, damped: list[torch.Tensor], W: torch.Tensor,
                 row_w: np.ndarray) -> LayerCurve:
    """Traces of every row (rows grouped by conv group, each with its group's damped H) and the
    layer curve."""
    per = _rows_per_group(layer)
    order = np.empty(W.shape, dtype=np.int64)
    scores = np.empty(W.shape)
    for g, Hd in enumerate(damped):
        rows = slice(g * per, (g + 1) * per)
        order[rows], scores[rows] = row_traces(W[rows], Hd)
    return layer_curve(layer.name, order, scores, row_w)


def _output_energy(layer: PrunableLayer, Hs: list[torch.Tensor], W: torch.Tensor) -> float:
    """||W X||^2 / N = sum over conv groups of tr(W_g H_g W_g^T)."""
    per = _rows_per_group(layer)
    return float(sum(torch.einsum("rd,de,re->", W[g * per:(g + 1) * per], H, W[g * per:(g + 1) * per])
                     for g, H in enumerate(Hs)))


def _reconstruct_layer(layer: PrunableLayer, W: torch.Tensor, damped: list[torch.Tensor],
                       keep: np.ndarray) -> torch.Tensor:
    per = _rows_per_group(layer)
    out = torch.zeros_like(W)
    for g, Hd in enumerate(damped):
        rows = slice(g * per, (g + 1) * per)
        out[rows] = reconstruct_rows(W[rows], Hd, keep[rows])
    return out


def reconstruction_prune(model: nn.Module, layers: Sequence[PrunableLayer], inputs: torch.Tensor,
                         max_nnz: int | None, max_flops: float | None, *, normalization: str = "fisher",
                         sequential: bool = True, levels: int = 48, damp: float = 1e-2,
                         sens_inputs: torch.Tensor | None = None, bn_inputs: torch.Tensor | None = None,
                         seed: int = 0, time_limit: float | None = None,
                         allocate: str = "milp") -> ReconstructionResult:
    """Prune ``model``'s ``layers`` (module docstring); returns the new flat weights and mask,
    the model itself is left as it was (the caller writes the result).

    ``allocate="uniform"`` (an ablation) replaces the MILP by the same kept fraction in every
    layer, r = min(F / F_dense, S / p), k_l = floor(r n_l).
    """
    from ..allocation import AllocationProblem
    from ..solvers.allocation import solve_allocation
    choice(allocate, "allocate", ALLOCATIONS)
    choice(normalization, "normalization", NORMALIZATIONS)
    times = {"hessians": 0.0, "sensitivities": 0.0, "curves": 0.0, "allocation": 0.0,
             "reconstruction": 0.0, "sequential": 0.0}
    t = time.perf_counter()
    Hs = layer_hessians(model, layers, inputs)
    times["hessians"] = time.perf_counter() - t
    sens = None
    if normalization == "fisher":
        t = time.perf_counter()
        sens = output_sensitivities(model, layers, inputs if sens_inputs is None else sens_inputs, seed)
        times["sensitivities"] = time.perf_counter() - t
    Ws = [_weight_rows(l, l.weight.detach()) for l in layers]
    t = time.perf_counter()
    curves, damped_all, row_ws, grids, errs = [], [], [], [], []
    for layer, W in zip(layers, Ws):
        row_w = _row_weight_vector(layer, normalization, sens, _output_energy(layer, Hs[layer.name], W))
        damped = [_damped(H, damp) for H in Hs[layer.name]]
        curve = _layer_curve(layer, damped, W, row_w)
        curves.append(curve)
        damped_all.append(damped)
        row_ws.append(row_w)
        k = _levels(layer.n_weights, layer.shape[0], levels)
        grids.append(k)
        errs.append(curve.errors[k])
    times["curves"] = time.perf_counter() - t

    t = time.perf_counter()
    if allocate == "uniform":
        p = sum(l.n_weights for l in layers)
        dense_f = sum(l.n_weights * l.flops_per_weight for l in layers)
        r = min(1.0 if max_nnz is None else max_nnz / p,
                1.0 if max_flops is None or not dense_f else max_flops / dense_f)
        grids = [np.array([math.floor(r * l.n_weights)], dtype=np.int64) for l in layers]
        errs = [curve.errors[k] for curve, k in zip(curves, grids)]
    usage: dict[str, list[np.ndarray]] = {}
    budgets: dict[str, float | None] = {}
    if max_nnz is not None:
        usage["nnz"], budgets["nnz"] = [k.astype(np.float64) for k in grids], float(max_nnz)
    if max_flops is not None:
        usage["flops"] = [k.astype(np.float64) * l.flops_per_weight for k, l in zip(grids, layers)]
        budgets["flops"] = float(max_flops)
    problem = AllocationProblem.from_groups(errs, usage, budgets, names=[l.name for l in layers],
                                            labels=[k.astype(np.float64) for k in grids])
    res = solve_allocation(problem, time_limit=time_limit)
    if res.choice is None:
        raise OptionError(f"layer-reconstruction: no allocation of the {levels} kept-count levels fits the "
                          f"budgets ({res.status}); raise `levels` or the budgets")
    kept = {l.name: int(k[c]) for l, k, c in zip(layers, grids, res.choice)}
    times["allocation"] = time.perf_counter() - t
    allocation = {"status": res.status, "gap": res.gap, "objective": res.objective, "bound": res.bound,
                  "solve_s": res.runtime_s, "kept": dict(kept), "normalization": normalization,
                  "levels": int(problem.n_options), "predicted_error": {
                      l.name: float(e[c]) for l, e, c in zip(layers, errs, res.choice)}}

    t = time.perf_counter()
    new_rows = []
    masks = []
    if not sequential:
        for layer, W, curve, damped in zip(layers, Ws, curves, damped_all):
            keep = curve.support(kept[layer.name])
            new_rows.append(_reconstruct_layer(layer, W, damped, keep))
            masks.append(keep)
        times["reconstruction"] = time.perf_counter() - t
    else:
        new_rows, masks = _sequential(model, layers, inputs, Ws, kept, damp, row_ws, bn_inputs)
        times["sequential"] = time.perf_counter() - t
    w = np.concatenate([r.reshape(-1).numpy() for r in new_rows])
    mask = np.concatenate([m.reshape(-1) for m in masks])
    return ReconstructionResult(np.where(mask, w, 0.0), mask, kept, allocation, times)


def _sequential(model: nn.Module, layers: Sequence[PrunableLayer], inputs: torch.Tensor,
                Ws: list[torch.Tensor], kept: dict[str, int], damp: float, row_ws: list[np.ndarray],
                bn_inputs: torch.Tensor | None) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """Layer by layer in network order: inputs of the network pruned so far (x_p) against the
    dense inputs (x_d); E[||W x_d - W' x_p||^2] = (w' - w*)^T H_pp (w' - w*) + const with
    w* = H_pp^-1 G w, G = E[x_p x_d^T]; traces of w* under H_pp, the allocated count, least squares."""
    import copy
    dense = copy.deepcopy(model).eval()
    dense_layers = {name: mod for name, mod in dense.named_modules()}
    originals = [l.parameter.detach().clone() for l in layers]
    bn_state = BatchNormState(model)
    was = model.training
    model.eval()
    new_rows: list[torch.Tensor] = []
    masks: list[np.ndarray] = []
    try:
        for i, layer in enumerate(layers):
            per = _rows_per_group(layer)
            d_layer = dense_layers[layer.name]
            grab: dict[str, list[torch.Tensor]] = {}

            def dense_hook(module: nn.Module, args: tuple, output: Any) -> None:
                grab["d"] = _layer_inputs(layer, args[0].detach())

            h = d_layer.register_forward_hook(dense_hook)
            Hpp: list[torch.Tensor] | None = None
            G: list[torch.Tensor] | None = None
            try:
                with _Collector([layer]) as col, torch.no_grad():
                    for batch in _batches(inputs, 256):
                        dense(batch)
                        model(batch)
                        xp, xd = col.last[layer.name], grab["d"]
                        part = [a.T @ b for a, b in zip(xp, xd)]
                        G = part if G is None else [g + p for g, p in zip(G, part)]
                Hpp = [s / inputs.shape[0] for s in col.sums[layer.name]]
                G = [g / inputs.shape[0] for g in G or []]
            finally:
                h.remove()
            W = Ws[i]
            damped = [_damped(H, damp) for H in Hpp]
            target = torch.empty_like(W)
            for g, (Hd, Gg) in enumerate(zip(damped, G)):
                rows = slice(g * per, (g + 1) * per)
                target[rows] = torch.linalg.solve(Hd, Gg @ W[rows].T).T
            curve = _layer_curve(layer, damped, target, row_ws[i])
            keep = curve.support(kept[layer.name])
            rec = _reconstruct_layer(layer, target, damped, keep)
            new_rows.append(rec)
            masks.append(keep)
            with torch.no_grad():
                layer.parameter.copy_(torch.from_numpy(np.where(keep, rec.numpy(), 0.0)).reshape(layer.shape)
                                      .to(layer.parameter.dtype))
            if bn_inputs is not None:
                recalibrate_batchnorm(model, bn_inputs)
    finally:
        with torch.no_grad():           # the caller writes the result; leave the model as it was
            for layer, w0 in zip(layers, originals):
                layer.parameter.copy_(w0)
        bn_state.restore()
        model.train(was)
    return new_rows, masks
