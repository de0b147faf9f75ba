"""The local quadratic model of the loss used by FALCON (numpy only, never a p x p matrix).

Scaling convention (used everywhere in :mod:`falcon_milp.torch`): the rows of ``X`` are the
per-sample loss gradients divided by sqrt(n), so that ``X^T X`` is the empirical Fisher
F = (1/n) sum_j g_j g_j^T, and ``g`` is the mean gradient. With d = w - w0,

    Q(w) = 1/2 ||X d||^2 + lam2 ||d||^2 + alpha g^T d
         = 1/2 d^T F d + lam2 ||d||^2 + alpha g^T d                  (Q(w0) = 0)

is the second-order Taylor model of the mean calibration loss around w0 (alpha = 1) with the
Fisher as Hessian, plus a ridge term. It differs from ``falcon-method.md`` section 3 (which
writes alpha g^T w) only by the constant alpha g^T w0. ``lam2`` is therefore on the scale of
the Fisher's diagonal; :func:`default_lam2` picks it relative to mean(diag F) = ||X||_F^2 / p.

    grad Q(w) = X^T (X d) + 2 lam2 d + alpha g          (two passes over X: O(np))

``X`` is held by a :class:`~.gradient_store.GradientStore` (an array or tensor is wrapped
without a copy): float32/float64 in memory (products are single torch BLAS calls, which stay
fast when the cores are shared, where numpy's OpenBLAS threads slow down badly), 16-bit in
memory, or a file, both streamed in blocks widened to float32. Vectors are float64 numpy
arrays on the outside; the results are returned in float64 and no float64 copy of X is made.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..exceptions import InvalidInstanceError
from ..validation import real
from .gradient_store import GradientStore, as_store

Matrix = np.ndarray | torch.Tensor | GradientStore


def frobenius2(X: Matrix) -> float:
    """||X||_F^2, row blocks' norms summed in float64 (no copy of X)."""
    return as_store(X).frobenius2()


def default_lam2(X: Matrix, rel: float = 1e-2) -> float:
    """``rel`` times the mean diagonal of the Fisher, ||X||_F^2 / p (0 for an all-zero X)."""
    p = X.shape[1]
    return rel * frobenius2(X) / max(p, 1)


@dataclass
class QuadraticModel:
    """Q(w) = 1/2 ||X (w - w0)||^2 + lam2 ||w - w0||^2 + alpha g^T (w - w0).

    X : (n, p) float32 or float64 array or tensor, rows = per-sample gradients / sqrt(n);
        stored as a torch tensor sharing the caller's memory (never written).
    w0 : (p,) float64, the weights the model is expanded around.
    lam2 : ridge weight >= 0.  alpha, g : optional first-order term (g: mean gradient).
    """

    X: Matrix
    w0: np.ndarray
    lam2: float = 0.0
    alpha: float = 0.0
    g: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.X, (np.ndarray, torch.Tensor, GradientStore)):
            raise InvalidInstanceError(f"`X` must be a numpy array, a tensor or a GradientStore; "
                                       f"got {type(self.X).__name__}")
        if not isinstance(self.X, GradientStore):
            if self.X.ndim != 2:
                raise InvalidInstanceError(f"`X` must be a 2-D (n, p) array; got shape {tuple(self.X.shape)}")
            if self.X.dtype not in (np.float32, np.float64, torch.float32, torch.float64,
                                    torch.bfloat16, torch.float16, np.float16):
                raise InvalidInstanceError(f"`X` must be float32, float64, bfloat16 or float16; got dtype {self.X.dtype}")
        X = as_store(self.X)
        w0 = np.asarray(self.w0, dtype=np.float64).reshape(-1)
        if w0.size != X.shape[1]:
            raise InvalidInstanceError(
                f"`w0` must have X.shape[1] = {X.shape[1]} entries; got {w0.size}")
        real(self.lam2, "lam2")
        real(self.alpha, "alpha", -math.inf)
        if self.g is not None:
            g = np.asarray(self.g, dtype=np.float64).reshape(-1)
            if g.size != X.shape[1]:
                raise InvalidInstanceError(f"`g` must have X.shape[1] = {X.shape[1]} entries; got {g.size}")
            self.g = g
        elif self.alpha != 0:
            raise InvalidInstanceError("`g` is required when `alpha` is nonzero")
        self.X = X
        self.w0 = w0

    # ------------------------------------------------------------------ sizes
    @property
    def fro2(self) -> float:
        """||X||_F^2 = trace of the Fisher (computed once)."""
        return self.X.frobenius2()

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def p(self) -> int:
        return int(self.X.shape[1])

    # ------------------------------------------------------------------ products
    def matvec(self, d: np.ndarray) -> np.ndarray:
        """X d as float64 (n,)."""
        return self.X.matvec(d)

    def rmatvec(self, r: np.ndarray) -> np.ndarray:
        """X^T r as float64 (p,)."""
        return self.X.rmatvec(r)

    def hessvec(self, d: np.ndarray) -> np.ndarray:
        """(X^T X + 2 lam2 I) d, the Hessian of Q applied to d."""
        return self.X.normal_products(d)[1] + 2.0 * self.lam2 * np.asarray(d, dtype=np.float64)

    # ------------------------------------------------------------------ value / gradient
    def _value_from(self, d: np.ndarray, r: np.ndarray) -> float:
        val = 0.5 * float(r @ r) + self.lam2 * float(d @ d)
        if self.alpha:
            val += self.alpha * float(self.g @ d)
        return val

    def value(self, w: np.ndarray) -> float:
        """Q(w)."""
        d = np.asarray(w, dtype=np.float64) - self.w0
        return self._value_from(d, self.matvec(d))

    def gradient(self, w: np.ndarray) -> np.ndarray:
        """grad Q(w) = X^T X (w - w0) + 2 lam2 (w - w0) + alpha g."""
        return self.value_and_grad(w)[1]

    def value_and_grad(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        """Q(w) and its gradient from one pass of X and one of X^T."""
        d = np.asarray(w, dtype=np.float64) - self.w0
        r, xtr = self.X.normal_products(d)
        grad = xtr + 2.0 * self.lam2 * d
        if self.alpha:
            grad += self.alpha * self.g
        return self._value_from(d, r), grad

    # ------------------------------------------------------------------ Lipschitz constant
    def diag_hessian(self) -> np.ndarray:
        """diag(H) = diag(X^T X) + 2 lam2, float64 (p,) (column sums of squares, O(np))."""
        return self.X.column_sq_sums() + 2.0 * self.lam2

    def lipschitz(self, iters: int = 30, tol: float = 1e-4, safety: float = 1.05,
                  seed: int = 0, metric: np.ndarray | None = None) -> float:
        """An estimate L >= sigma_max(X)^2 + 2 lam2 of the gradient's Lipschitz constant.

        Power iteration on X^T X gives sigma_max^2 from below; it is multiplied by ``safety``
        and capped by the sure upper bound ||X||_F^2. (The DFO loop also backtracks if a step
        fails to decrease Q, so a slight underestimate can never make it diverge.) With a
        diagonal ``metric`` D > 0 it bounds the constant in the D-norm instead,
        lambda_max(D^-1/2 H D^-1/2) <= sigma_max(X D^-1/2)^2 + 2 lam2 max(1/D).
        """
        if metric is None:
            return lipschitz_constant(self.X, self.lam2, iters=iters, tol=tol, safety=safety,
                                      seed=seed, fro2=self.fro2)
        d = np.asarray(metric, dtype=np.float64)
        if d.shape != (self.p,) or not np.all(d > 0) or not np.all(np.isfinite(d)):
            raise InvalidInstanceError(f"`metric` must be {self.p} finite numbers > 0")
        return lipschitz_constant(self.X, 0.0, iters=iters, tol=tol, safety=safety, seed=seed,
                                  col_scale2=1.0 / d) + 2.0 * self.lam2 * float(np.max(1.0 / d))


def lipschitz_constant(X: Matrix, lam2: float = 0.0, *, iters: int = 30, tol: float = 1e-4,
                       safety: float = 1.05, seed: int = 0, fro2: float | None = None,
                       col_scale2: np.ndarray | None = None) -> float:
    """sigma_max(X S)^2 (power iteration, times ``safety``, capped by ||X S||_F^2) + 2 lam2,
    with S = diag(sqrt(col_scale2)) (identity by default)."""
    store = as_store(X)
    n, p = store.shape
    if n == 0 or p == 0:
        return 2.0 * lam2
    s2 = None
    if col_scale2 is not None:
        s2 = np.asarray(col_scale2, dtype=np.float64)
        fro2 = float(store.column_sq_sums() @ s2)
    fro2 = store.frobenius2() if fro2 is None else fro2
    if fro2 == 0.0:
        return 2.0 * lam2
    rng = np.random.default_rng(seed)
    # a direct store iterates in the n-space (X X^T and X^T X share the top eigenvalue: two
    # BLAS calls on short vectors); a streamed store in the p-space, where X^T X v is one pass
    fused = not store.direct
    v = rng.standard_normal(p if fused else n)
    v /= np.linalg.norm(v)
    sq = None if s2 is None else np.sqrt(s2)
    est = 0.0
    for _ in range(max(1, iters)):
        if fused:
            u = store.normal_products(v if sq is None else v * sq)[1]     # S X^T X S v
            if sq is not None:
                u = u * sq
        else:
            y = store.rmatvec(v)
            if s2 is not None:
                y = y * s2
            u = store.matvec(y)          # X S^2 X^T v
        new = float(v @ u)
        norm = float(np.linalg.norm(u))
        if norm == 0.0:
            break
        v = u / norm
        if abs(new - est) <= tol * max(new, 1e-300):
            est = new
            break
        est = new
    sigma2 = min(safety * est, fro2)
    return sigma2 + 2.0 * lam2
