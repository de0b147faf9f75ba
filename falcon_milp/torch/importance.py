"""Importance scores: one non-negative number per prunable weight, flat, instance order.

Every scorer is a callable ``scorer(model, layers, data=None) -> np.ndarray`` (float64, shape
(p,)) with a ``kind`` and an ``options()`` dict (stored in instance metadata). ``data`` is
``(inputs, targets)`` of calibration examples (training images, never the test set).

magnitude
    I_i = w_i^2.

obs (OBS / WoodFisher)
    I_i = w_i^2 / [H^-1]_ii with H = X^T X + 2*lam2*I, where X = G / sqrt(n) and G (n, p) holds
    the per-sample loss gradients (so X^T X is the empirical Fisher). The diagonal of H^-1 comes
    from the Woodbury identity, with c = 2*lam2 and K = X X^T = U diag(s) U^T (n x n):

        H^-1 = (1/c) (I_p - X^T (c I_n + K)^-1 X)
        [H^-1]_ii = (1/c) (1 - sum_k (U^T x_i)_k^2 / (c + s_k))      (x_i: column i of X)

    which costs O(n^2 p) time and O(n^2 + n b) extra memory (columns in blocks of b), never
    p x p. Rounding is clipped to the exact bounds 1/(c + ||x_i||^2) <= [H^-1]_ii <= 1/c.
    When p <= n the p x p system is the smaller one and is solved directly (Cholesky).
    X itself (n * p float32) is held in memory. lam2 (default 1e-4) is absolute: compare it
    with the Fisher diagonal, whose mean is 1.8e-3 for the bundled MNIST MLP and 7.4e-5 for
    the CNN (1,000 training images; scripts/export_real_instances.py prints it); when 2*lam2
    dominates it, OBS ranks like magnitude.

flexrel (FlexRel-style, magnitude + relevance)
    score_i = (1 - delta) * w_i^2 / sum_j w_j^2 + delta * r_i / sum_j r_j,  delta in [0, 1].
    Relevance r_i of weight i (connecting input activation a_j to output pre-activation z_o,
    a convolution read as its unrolled fully connected layer) is the LRP message from z_o to a_j
    summed over the calibration examples n and the positions t where the weight is used:

        r_i = | sum_{n,t} a_j w_i R_o / z_o |,   with R_o = z_o * dF_n/dz_o (gradient x input),

    F_n the logit of the label of example n (``target="label"``) or of the predicted class
    (``target="predicted"``). In a bias-free ReLU network R_o is exactly the LRP-0 relevance.
    Since sum_{n,t} a_j dF_n/dz_o = dF/dw_i with F = sum_n F_n, this is r_i = |w_i * dF/dw_i|,
    computed with one backward pass per batch. If all r_i are 0 the relevance term is 0.
"""
from __future__ import annotations

import math
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from ..validation import fraction, real
from . import OptionError
from .flops import PrunableLayer, flat_weights
from .gradients import LossFn, per_sample_grads, summed_grad

__all__ = ["FlexRelImportance", "Importance", "MagnitudeImportance", "OBSImportance", "IMPORTANCES",
           "get_importance", "obs_inverse_diagonal", "relevance"]

Data = tuple[torch.Tensor, torch.Tensor]


class Importance(Protocol):
    """What every scorer provides."""

    kind: str

    def __call__(self, model: nn.Module, layers: Sequence[PrunableLayer], data: Data | None = None) -> np.ndarray: ...

    def options(self) -> dict[str, Any]: ...


def _check_data(kind: str, data: Any) -> Data:
    if data is None:
        raise OptionError(f"importance '{kind}' needs calibration `data` (inputs, targets)")
    if not (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)):
        raise OptionError(f"`data` must be a pair of tensors (inputs, targets); got {type(data).__name__}")
    return data[0], data[1]


def _squares(layers: Sequence[PrunableLayer]) -> np.ndarray:
    """(p,) float64 w_i^2, written layer by layer (exact: a float32 squared fits in float64)."""
    out = np.empty(sum(l.n_weights for l in layers), dtype=np.float64)
    start = 0
    for layer in layers:
        part = out[start:start + layer.n_weights]
        w = layer.weight.detach().reshape(-1).cpu()
        part[:] = (w if w.dtype in (torch.float32, torch.float64) else w.to(torch.float64)).numpy()
        np.square(part, out=part)
        start += layer.n_weights
    return out


class MagnitudeImportance:
    """I_i = w_i^2 (no data needed)."""

    kind = "magnitude"

    def __call__(self, model: nn.Module, layers: Sequence[PrunableLayer], data: Data | None = None) -> np.ndarray:
        return _squares(layers)

    def options(self) -> dict[str, Any]:
        return {}


def obs_inverse_diagonal(X: Any, lam2: float, block: int = 8192) -> np.ndarray:
    """diag((X^T X + 2*lam2*I)^-1) for X of shape (n, p), by Woodbury (see module docstring).

    Computed in float64; O(n^2 p) time, O(n^2 + n*block) memory besides X (p > n), or a
    Cholesky factorisation of the p x p matrix when p <= n.
    """
    real(lam2, "lam2", strict=True)
    from .gradient_store import as_store
    store = as_store(X)
    n, p = store.shape
    c = 2.0 * float(lam2)
    if p <= n:  # the primal p x p system is the smaller one (and avoids cancellation in 1 - t)
        X64 = store.column_panel(0, p).to(torch.float64)
        H = X64.T @ X64 + c * torch.eye(p, dtype=torch.float64)
        L = torch.linalg.cholesky(H)
        Linv = torch.linalg.solve_triangular(L, torch.eye(p, dtype=torch.float64), upper=False)
        return (Linv * Linv).sum(0).numpy()      # H^-1 = L^-T L^-1: diag = column norms of L^-1
    K = torch.zeros((n, n), dtype=torch.float64)
    for j in range(0, p, block):
        Xb = store.column_panel(j, min(p, j + block)).to(torch.float64)
        K += Xb @ Xb.T
    s, U = torch.linalg.eigh(K)
    s = s.clamp_min(0.0)
    weight = 1.0 / (c + s)                       # (n,)
    out = np.empty(p, dtype=np.float64)
    for j in range(0, p, block):
        Xb = store.column_panel(j, min(p, j + block)).to(torch.float64)
        Y = U.T @ Xb                             # (n, b)
        t = (Y * Y * weight[:, None]).sum(0)
        d = (1.0 - t) / c
        lower = 1.0 / (c + (Xb * Xb).sum(0))
        out[j:j + block] = torch.clamp(torch.maximum(d, lower), max=1.0 / c).numpy()
    return out


class OBSImportance:
    """I_i = w_i^2 / [H^-1]_ii, H = X^T X + 2*lam2*I, X = per-sample gradients / sqrt(n)."""

    kind = "obs"

    def __init__(self, lam2: float = 1e-4, loss_fn: LossFn | None = None, chunk_size: int | None = None) -> None:
        real(lam2, "lam2", strict=True)
        self.lam2 = float(lam2)
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size

    def __call__(self, model: nn.Module, layers: Sequence[PrunableLayer], data: Data | None = None) -> np.ndarray:
        inputs, targets = _check_data(self.kind, data)
        G = per_sample_grads(model, inputs, targets, layers, self.loss_fn, self.chunk_size)
        G /= math.sqrt(G.shape[0])
        diag = obs_inverse_diagonal(G, self.lam2)
        return _squares(layers) / diag

    def options(self) -> dict[str, Any]:
        return {"lam2": self.lam2, "fisher_scaling": "1/sqrt(n)"}


def relevance(model: nn.Module, layers: Sequence[PrunableLayer], data: Data, target: str = "label",
              batch_size: int = 256) -> np.ndarray:
    """r_i = |w_i * dF/dw_i|, F = sum over examples of the target logit (module docstring)."""
    if target not in ("label", "predicted"):
        raise OptionError(f"`target` must be 'label' or 'predicted'; got {target!r}")
    inputs, targets = _check_data("flexrel", data)

    def logit_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if target == "predicted":
            y = out.detach().argmax(dim=1)
        return out.gather(1, y.view(-1, 1)).sum()

    g = summed_grad(model, inputs, targets, layers, logit_sum, batch_size)
    w = flat_weights(layers, torch.float64)
    return (w * g).abs().numpy()


class FlexRelImportance:
    """(1 - delta) * w^2 / sum w^2 + delta * r / sum r, r = LRP-style relevance (module docstring)."""

    kind = "flexrel"

    def __init__(self, delta: float = 0.5, target: str = "label", batch_size: int = 256) -> None:
        fraction(delta, "delta", optional=False)
        if target not in ("label", "predicted"):
            raise OptionError(f"`target` must be 'label' or 'predicted'; got {target!r}")
        self.delta = float(delta)
        self.target = target
        self.batch_size = batch_size

    def __call__(self, model: nn.Module, layers: Sequence[PrunableLayer], data: Data | None = None) -> np.ndarray:
        mag = _squares(layers)
        total = mag.sum()
        score = (1.0 - self.delta) * (mag / total if total > 0 else mag)
        if self.delta > 0:
            rel = relevance(model, layers, _check_data(self.kind, data), self.target, self.batch_size)
            rtot = rel.sum()
            if rtot > 0:
                score += self.delta * (rel / rtot)
        return score

    def options(self) -> dict[str, Any]:
        return {"delta": self.delta, "target": self.target,
                "relevance": "|w * d(sum of target logits)/dw| (gradient x input LRP-0)",
                "normalisation": "each term divided by its sum over all prunable weights"}


IMPORTANCES = {"magnitude": MagnitudeImportance, "obs": OBSImportance, "flexrel": FlexRelImportance}


def get_importance(name: str, **options: Any) -> Importance:
    """A scorer by name (``magnitude``, ``obs``, ``flexrel``) with its options."""
    try:
        cls = IMPORTANCES[name]
    except (KeyError, TypeError):
        raise OptionError(f"unknown importance {name!r}; known: {', '.join(IMPORTANCES)}") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise OptionError(f"importance '{name}': {exc}") from None
