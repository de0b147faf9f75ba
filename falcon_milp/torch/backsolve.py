"""Backsolve: minimise the quadratic model Q exactly on a fixed support.

On a support K (the kept weights; the others are held at 0) the minimiser of
Q(w) = 1/2 ||X (w - w0)||^2 + lam2 ||w - w0||^2 + alpha g^T (w - w0) solves the ridge system

    H_KK d_K = -(H_KP d_P + alpha g_K),     d = w - w0,  d_P = -w0_P,  H = X^T X + 2 lam2 I.

We solve it by conjugate gradients preconditioned with the block-diagonal part of H_KK:
each layer is cut into blocks of about ``block_size`` consecutive weights and every block's
kept part B gets its own exact inverse,

    (X_B^T X_B + c I)^{-1} v                                       if |B| <= n (Cholesky, |B| x |B|)
    (v - X_B^T (c I_n + X_B X_B^T)^{-1} X_B v) / c                 if |B| >  n (Woodbury, n x n)

with c = 2 lam2. One preconditioned step with exact line search from ``w0 * mask`` is the
block-diagonal backsolve of the FALCON/CHITA papers (with the cross-block terms of the
gradient kept, and a line search so Q never increases); further iterations converge to the
exact minimiser of Q on the support. Nothing of size p x p or (support x support) is formed.

For large networks (``precond="dual"``, the default from 10^6 weights) the exact minimiser is
computed directly in the n-space instead (:func:`dual_solve`): one n x n system for all layers
together, cross-layer curvature included, in a few passes over X, where CG would need two
passes per iteration and the block factors gigabytes of memory.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..exceptions import InvalidInstanceError
from ..validation import choice, integer
from .quadratic import QuadraticModel


#: how :func:`backsolve` solves: block-preconditioned CG, the exact n-space solve, or auto
PRECONDITIONERS = ("auto", "blocks", "dual")
#: ``precond="auto"`` uses the dual solve from this many weights on (the MNIST nets and
#: ResNet20 stay on block-preconditioned CG, MobileNetV1 and ResNet50 go to the dual solve)
DUAL_MIN_WEIGHTS = 10**6


@dataclass
class BacksolveResult:
    """w: the new weights (zero off the mask); objective: Q(w); n_iter: PCG iterations done."""

    w: np.ndarray
    objective: float
    objective_start: float
    n_iter: int
    converged: bool
    times: dict[str, float] = field(default_factory=dict)


def block_ranges(group_sizes: Sequence[int] | None, p: int, block_size: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) blocks of at most ``block_size`` weights that never cross a group.

    Each group of n_l weights is cut into ceil(n_l / block_size) blocks of nearly equal size.
    """
    integer(block_size, "block_size", 1)
    sizes = [p] if group_sizes is None else [int(s) for s in group_sizes]
    if sum(sizes) != p:
        raise InvalidInstanceError(f"`group_sizes` must sum to p = {p}; got {sum(sizes)}")
    out: list[tuple[int, int]] = []
    start = 0
    for size in sizes:
        n_blocks = max(1, math.ceil(size / block_size))
        edges = np.linspace(0, size, n_blocks + 1).round().astype(np.int64)
        out.extend((start + int(a), start + int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a)
        start += size
    return out


class BlockPreconditioner:
    """The exact inverse of the block-diagonal part of H restricted to the support.

    Built once per support: for every block B (its kept part) the inverse L^-1 of the Cholesky
    factor of its matrix, in the smaller of the primal (|B| x |B|) and dual (n x n, Woodbury)
    forms, float64; storing L^-1 makes each application two matrix-vector products (torch's
    triangular solves with one right-hand side are much slower on CPU). X is read once, in
    column panels of consecutive blocks (any :class:`~.gradient_store.GradientStore`), and the
    blocks of a panel are factored together: blocks of similar size are padded to a common
    size (padding rows and columns are identity, which leaves the inverse of the real part
    unchanged) and go through one batched Gram product, Cholesky factorisation and
    triangular inverse. Memory: 8 min(|B|, n)^2 bytes per block, plus float64 copies of the
    dual blocks' columns up to ``cache_bytes`` (the other dual blocks' columns are read again
    at each application).
    """

    def __init__(self, model: QuadraticModel, mask: np.ndarray, blocks: list[tuple[int, int]],
                 shift: float | None = None, cache_bytes: int = 512 * 2**20) -> None:
        self.model = model
        store = model.X
        n = model.n
        self.c = _shift(model, shift)
        #: (global indices (nb, k), valid (nb, k), L^-1 (nb, k, k)) per batch of primal blocks
        self.primal: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        #: (column range, kept local indices, global indices, L^-1 (n, n), cached columns) per dual block
        self.dual: list[tuple[tuple[int, int], torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor | None]] = []
        self.forms: list[str] = []
        cached = 0
        width = store.panel_width()
        i = 0
        while i < len(blocks):
            a = blocks[i][0]
            j = i + 1
            while j < len(blocks) and blocks[j][1] - a <= width:
                j += 1
            b = blocks[j - 1][1]
            panel_mask = mask[a:b]
            if not panel_mask.any():
                i = j
                continue
            XP = store.column_panel(a, b)                       # (n, b - a), widened
            prim: list[np.ndarray] = []
            for start, stop in blocks[i:j]:
                local = (start - a) + np.flatnonzero(mask[start:stop])
                if local.size == 0:
                    continue
                if local.size <= n:
                    prim.append(local)
                    self.forms.append("primal")
                    continue
                self.forms.append("dual")
                tl = torch.from_numpy(local)
                XB = XP[:, tl]
                gram = (XB @ XB.T).to(torch.float64)
                gram.diagonal().add_(self.c)
                keep = None
                size = 8 * n * local.size
                if cached + size <= cache_bytes:
                    keep = XB.to(torch.float64)
                    cached += size
                self.dual.append(((start, stop), torch.from_numpy(local - (start - a)), a + local,
                                  _spd_inverse(gram), keep))
            for batch in _size_batches(prim):
                self.primal.append(self._factor_batch(XP, a, batch))
            del XP
            i = j
        self.cached_bytes = cached

    def _factor_batch(self, XP: torch.Tensor, a: int, batch: list[np.ndarray]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = max(x.size for x in batch)
        nb = len(batch)
        idx = np.zeros((nb, k), dtype=np.int64)
        valid = np.zeros((nb, k), dtype=bool)
        for r, x in enumerate(batch):
            idx[r, :x.size] = x
            valid[r, :x.size] = True
        tidx, tvalid = torch.from_numpy(idx), torch.from_numpy(valid)
        XB = XP[:, tidx.reshape(-1)].reshape(XP.shape[0], nb, k).permute(1, 0, 2)
        XB = XB * tvalid.unsqueeze(1).to(XB.dtype)                 # padding columns are zero
        gram = torch.bmm(XB.transpose(1, 2), XB).to(torch.float64)
        gram.diagonal(dim1=1, dim2=2).add_(torch.where(tvalid, self.c, 1.0).to(torch.float64))
        return tidx + a, tvalid, _spd_inverse(gram)

    def apply(self, v: np.ndarray) -> np.ndarray:
        """M v for a (p,) vector (entries off the support are ignored and returned as 0)."""
        out = torch.zeros(v.shape[0], dtype=torch.float64)
        vt = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
        for gidx, valid, inv in self.primal:
            vb = (vt[gidx] * valid).unsqueeze(2)                     # (nb, k, 1)
            y = torch.bmm(inv.transpose(1, 2), torch.bmm(inv, vb)).squeeze(2)
            out[gidx[valid]] = y[valid]
        store = self.model.X
        for (start, stop), local, gidx, inv, keep in self.dual:
            XB = keep if keep is not None else store.column_panel(start, stop)[:, local].to(torch.float64)
            vb = vt[torch.from_numpy(gidx)]
            y = torch.mv(inv.T, torch.mv(inv, torch.mv(XB, vb)))
            out[torch.from_numpy(gidx)] = (vb - torch.mv(XB.T, y)) / self.c
        return out.numpy()


def dual_solve(model: QuadraticModel, mask: np.ndarray, shift: float | None = None) -> np.ndarray:
    """The exact minimiser of Q on the support K when |K| > n and alpha = 0, in the n-space.

    With d = w - w0, d_P = -w0_P fixed and b = X_P d_P, the minimiser is
    d_K = -(X_K^T X_K + c I)^-1 X_K^T b = -X_K^T (X_K X_K^T + c I_n)^-1 b (push-through
    identity; no subtraction, so no cancellation when c is small, unlike the Woodbury form of
    the inverse applied to a general vector). Cost: one pass over X in column panels for the
    Gram X_K X_K^T (2 n^2 |K| flops, float64), one n x n Cholesky, X d_P and X^T z (one pass
    each). Memory: 8 n^2 bytes. Returns w (zero off the support).
    """
    store = model.X
    n = model.n
    c = _shift(model, shift)
    gram = torch.zeros((n, n), dtype=torch.float64, device=store.device)
    width = max(1, store.panel_width() // 2)
    for a in range(0, model.p, width):
        b = min(model.p, a + width)
        kept = np.flatnonzero(mask[a:b])
        if kept.size == 0:
            continue
        XK = store.column_panel(a, b)[:, torch.from_numpy(kept).to(store.device)].to(torch.float64)
        gram += XK @ XK.T
    gram.diagonal().add_(c)
    inv = _spd_inverse(gram.cpu())
    d_off = np.where(mask, 0.0, -model.w0)
    bvec = torch.from_numpy(model.X.matvec(d_off))
    z = torch.mv(inv.T, torch.mv(inv, bvec)).numpy()
    return np.where(mask, model.w0 - model.X.rmatvec(z), 0.0)


def _shift(model: QuadraticModel, shift: float | None) -> float:
    c = 2.0 * model.lam2 if shift is None else float(shift)
    if c <= 0.0:
        # H_KK is singular when |K| > n and lam2 = 0: add a tiny ridge relative to diag(F)
        c = 1e-8 * model.fro2 / max(model.p, 1) + 1e-300
    return c


def _size_batches(blocks: list[np.ndarray], slack: float = 1.25, max_entries: int = 2**24) -> list[list[np.ndarray]]:
    """Group blocks by size: within a batch the largest is at most ``slack`` x the smallest
    (+ 16), and nb k^2 stays under ``max_entries`` (so a batch's float64 factors take <= 128 MiB)."""
    out: list[list[np.ndarray]] = []
    for blk in sorted(blocks, key=lambda x: x.size):
        if out:
            cur = out[-1]
            k = blk.size
            if k <= slack * cur[0].size + 16 and (len(cur) + 1) * k * k <= max_entries:
                cur.append(blk)
                continue
        out.append([blk])
    return out


def _spd_inverse(a: torch.Tensor) -> torch.Tensor:
    """L^-1 for the Cholesky factor L of symmetric positive definite matrices (a single (k, k)
    or a batch (nb, k, k)), so that a^-1 = L^-T L^-1; the matrices that round-off made
    indefinite get a growing jitter."""
    batched = a.ndim == 3
    if not batched:
        a = a.unsqueeze(0)
    scale = a.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-300)       # (nb,)
    eye = torch.eye(a.shape[1], dtype=a.dtype).expand_as(a)
    jitter = torch.zeros_like(scale)
    for _ in range(9):
        m = a + jitter[:, None, None] * eye if bool((jitter > 0).any()) else a
        factor, info = torch.linalg.cholesky_ex(m)
        bad = info != 0
        if not bool(bad.any()):
            inv = torch.linalg.solve_triangular(factor, eye, upper=False)
            return inv if batched else inv[0]
        jitter = torch.where(bad, torch.maximum(jitter * 10.0, 1e-12 * scale), jitter)
    raise np.linalg.LinAlgError("backsolve: block matrix is not positive definite")


def conjugate_gradient(model: QuadraticModel, w: np.ndarray, mask: np.ndarray, *, max_iter: int,
                       tol: float = 1e-6, precond: BlockPreconditioner | None = None,
                       grad: np.ndarray | None = None) -> tuple[np.ndarray, int, bool]:
    """Minimise Q over vectors supported on ``mask`` starting from ``w`` (zero off the mask).

    (Preconditioned) conjugate gradients on H_KK; each iteration costs one pass over X and one
    over X^T. Stops when ||r_K|| <= tol * ||r_K at start|| or after ``max_iter`` iterations.
    Returns (w, iterations, converged).
    """
    w = np.where(mask, w, 0.0).astype(np.float64)
    if grad is None:
        grad = model.gradient(w)
    r = np.where(mask, -grad, 0.0)
    r0 = float(np.linalg.norm(r))
    if r0 == 0.0 or max_iter <= 0:
        return w, 0, r0 == 0.0
    z = precond.apply(r) if precond is not None else r.copy()
    d = z.copy()
    rz = float(r @ z)
    it = 0
    converged = False
    while it < max_iter and rz > 0.0:
        Hd = np.where(mask, model.hessvec(d), 0.0)
        curv = float(d @ Hd)
        if curv <= 0.0 or not math.isfinite(curv):
            break
        step = rz / curv
        w += step * d
        r -= step * Hd
        it += 1
        if float(np.linalg.norm(r)) <= tol * r0:
            converged = True
            break
        z = precond.apply(r) if precond is not None else r
        rz_new = float(r @ z)
        d = z + (rz_new / rz) * d
        rz = rz_new
    return w, it, converged


def backsolve(model: QuadraticModel, mask: np.ndarray, *, w_start: np.ndarray | None = None,
              group_sizes: Sequence[int] | None = None, block_size: int = 2000, max_iter: int = 10,
              tol: float = 1e-6, precond: str = "auto") -> BacksolveResult:
    """Minimise Q on the support ``mask`` by preconditioned CG (see module docstring).

    precond : ``"blocks"`` (CG preconditioned by the block-diagonal inverse,
    :class:`BlockPreconditioner`), ``"dual"`` (the exact minimiser through one n x n system,
    :func:`dual_solve`, no CG; used when the support is larger than n and alpha = 0, else
    blocks) or ``"auto"``: dual for large networks (p >= :data:`DUAL_MIN_WEIGHTS`), where every
    CG iteration is a costly pass over X and the block factors would take gigabytes.
    w_start : starting point (default ``w0 * mask``); its entries off the mask are dropped.
    group_sizes : layer sizes, so that blocks never cross a layer (default: one group).
    max_iter=1 gives the papers' block-diagonal backsolve; more iterations solve exactly.
    The returned objective is never above Q(w_start restricted to the mask).
    """
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    if mask.size != model.p:
        raise InvalidInstanceError(f"`mask` must have p = {model.p} entries; got {mask.size}")
    integer(max_iter, "max_iter", 0)
    choice(precond, "precond", PRECONDITIONERS)
    if precond == "auto":
        precond = "dual" if model.p >= DUAL_MIN_WEIGHTS else "blocks"
    start = model.w0 if w_start is None else np.asarray(w_start, dtype=np.float64).reshape(-1)
    w = np.where(mask, start, 0.0)
    t0 = time.perf_counter()
    q0, grad = model.value_and_grad(w)
    blocks = block_ranges(group_sizes, model.p, block_size)
    if max_iter > 0 and precond == "dual" and int(mask.sum()) > model.n and not model.alpha:
        w_new = dual_solve(model, mask)
        t1 = time.perf_counter()
        q1 = model.value(w_new)
        if not q1 <= q0:
            w_new, q1 = w, q0
        return BacksolveResult(w_new, q1, q0, 1, True,
                               {"factorize": t1 - t0, "iterations": time.perf_counter() - t1})
    pre = BlockPreconditioner(model, mask, blocks) if max_iter > 0 else None
    t1 = time.perf_counter()
    w_new, it, converged = conjugate_gradient(model, w, mask, max_iter=max_iter, tol=tol,
                                              precond=pre, grad=grad)
    q1 = model.value(w_new)
    if q1 > q0:          # cannot happen in exact arithmetic; guard against float32 round-off
        w_new, q1 = w, q0
    t2 = time.perf_counter()
    return BacksolveResult(w_new, q1, q0, it, converged,
                           {"factorize": t1 - t0, "iterations": t2 - t1})
