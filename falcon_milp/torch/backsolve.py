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
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..exceptions import InvalidInstanceError
from .quadratic import QuadraticModel


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
    if not isinstance(block_size, (int, np.integer)) or isinstance(block_size, bool) or block_size < 1:
        raise InvalidInstanceError(f"`block_size` must be an integer >= 1; got {block_size!r}")
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

    Built once per support: for every block the inverse L^-1 of the Cholesky factor of its
    matrix, in the smaller of the primal (|B| x |B|) and dual (n x n, Woodbury) forms, float64,
    computed with torch (MKL) from a Gram matrix formed in X's dtype. Storing L^-1 makes each
    application two matrix-vector products (torch's triangular solves with one right-hand
    side are much slower on CPU). Memory:
    8 min(|B|, n)^2 bytes per block, plus float64 copies of the dual blocks' columns up to
    ``cache_bytes`` (the other dual blocks are converted at each application).
    """

    def __init__(self, model: QuadraticModel, mask: np.ndarray, blocks: list[tuple[int, int]],
                 shift: float | None = None, cache_bytes: int = 256 * 2**20) -> None:
        self.model = model
        n = model.n
        c = 2.0 * model.lam2 if shift is None else float(shift)
        if c <= 0.0:
            # H_KK is singular when |K| > n and lam2 = 0: add a tiny ridge relative to diag(F)
            c = 1e-8 * model.fro2 / max(model.p, 1) + 1e-300
        self.c = c
        self.blocks: list[tuple[np.ndarray, torch.Tensor, str, torch.Tensor, torch.Tensor | None]] = []
        cached = 0
        for start, stop in blocks:
            idx = start + np.flatnonzero(mask[start:stop])
            if idx.size == 0:
                continue
            tidx = torch.from_numpy(idx)
            XB = model.X[:, tidx]
            keep = None
            if idx.size <= n:
                gram = (XB.T @ XB).to(torch.float64)
                form = "primal"
            else:
                gram = (XB @ XB.T).to(torch.float64)
                form = "dual"
                size = 8 * n * idx.size
                if cached + size <= cache_bytes:
                    keep = XB.to(torch.float64)
                    cached += size
            gram.diagonal().add_(c)
            self.blocks.append((idx, tidx, form, _spd_inverse(gram), keep))
        self.cached_bytes = cached

    def apply(self, v: np.ndarray) -> np.ndarray:
        """M v for a (p,) vector (entries off the support are ignored and returned as 0)."""
        out = np.zeros(v.shape[0], dtype=np.float64)
        for idx, tidx, form, inv, keep in self.blocks:
            vb = torch.from_numpy(v[idx])
            if form == "primal":
                out[idx] = torch.mv(inv.T, torch.mv(inv, vb)).numpy()
            else:
                XB = keep if keep is not None else self.model.X[:, tidx].to(torch.float64)
                y = torch.mv(inv.T, torch.mv(inv, torch.mv(XB, vb)))
                out[idx] = ((vb - torch.mv(XB.T, y)) / self.c).numpy()
        return out


def _spd_inverse(a: torch.Tensor) -> torch.Tensor:
    """L^-1 for the Cholesky factor L of a symmetric positive definite matrix (so that
    a^-1 = L^-T L^-1), with a growing jitter if round-off made ``a`` indefinite."""
    scale = float(a.diagonal().mean()) or 1.0
    jitter = 0.0
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    for _ in range(8):
        if jitter:
            a = a + jitter * eye
        factor, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            return torch.linalg.solve_triangular(factor, eye, upper=False)
        jitter = max(jitter * 10.0, 1e-12 * scale)
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
              tol: float = 1e-6) -> BacksolveResult:
    """Minimise Q on the support ``mask`` by block-preconditioned CG (see module docstring).

    w_start : starting point (default ``w0 * mask``); its entries off the mask are dropped.
    group_sizes : layer sizes, so that blocks never cross a layer (default: one group).
    max_iter=1 gives the papers' block-diagonal backsolve; more iterations solve exactly.
    The returned objective is never above Q(w_start restricted to the mask).
    """
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    if mask.size != model.p:
        raise InvalidInstanceError(f"`mask` must have p = {model.p} entries; got {mask.size}")
    if not isinstance(max_iter, (int, np.integer)) or isinstance(max_iter, bool) or max_iter < 0:
        raise InvalidInstanceError(f"`max_iter` must be an integer >= 0; got {max_iter!r}")
    start = model.w0 if w_start is None else np.asarray(w_start, dtype=np.float64).reshape(-1)
    w = np.where(mask, start, 0.0)
    t0 = time.perf_counter()
    q0, grad = model.value_and_grad(w)
    blocks = block_ranges(group_sizes, model.p, block_size)
    precond = BlockPreconditioner(model, mask, blocks) if max_iter > 0 else None
    t1 = time.perf_counter()
    w_new, it, converged = conjugate_gradient(model, w, mask, max_iter=max_iter, tol=tol,
                                              precond=precond, grad=grad)
    q1 = model.value(w_new)
    if q1 > q0:          # cannot happen in exact arithmetic; guard against float32 round-off
        w_new, q1 = w, q0
    t2 = time.perf_counter()
    return BacksolveResult(w_new, q1, q0, it, converged,
                           {"factorize": t1 - t0, "iterations": t2 - t1})
