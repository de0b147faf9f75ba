"""X, the per-sample gradient matrix behind Q, and the calibration subsets it is computed on.

Each row of X is the sum of ``grads_per_row`` consecutive per-sample gradients divided by
sqrt(grads_per_row) and by sqrt(rows), so that X^T X estimates the Fisher (empirical, or
``fisher="sampled"``: labels drawn from the model's own predictive distribution). Where and how
X is computed and kept (dtype, memory or a file, device, vmap or loop) is an :class:`XPlan`;
:func:`gradient_matrix` fills a :class:`~.gradient_store.GradientStore`, and
:func:`streamed_objective` evaluates Q at the original weights without keeping X.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .flops import PrunableLayer, dense_nnz
from .gradient_store import GradientStore
from .options import Calib

__all__ = ["XPlan", "gradient_matrix", "gradient_rows", "streamed_objective", "subsample", "targets"]


def subsample(calib: Calib, n: int, seed: int, stage: int = 0) -> Calib:
    """``n`` examples drawn without replacement; stage k > 0 draws another subset."""
    x, y = calib
    if n >= x.shape[0]:
        return x, y
    gen = torch.Generator().manual_seed(int(seed) + 1_000_003 * int(stage))
    idx = torch.randperm(x.shape[0], generator=gen)[:n]
    return x[idx], y[idx]


@dataclass(frozen=True)
class XPlan:
    """Where and how X is computed and stored (chosen once per run)."""

    dtype: str
    on_disk: bool
    path: str | None
    device: torch.device
    strategy: str
    chunk_size: int | None


def targets(model: nn.Module, calib: Calib, fisher: str, seed: int) -> torch.Tensor:
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


def gradient_rows(model: nn.Module, layers: Sequence[PrunableLayer], x: torch.Tensor, y: torch.Tensor,
                   loss_fn: Callable | None, grads_per_row: int, plan: XPlan,
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


def gradient_matrix(model: nn.Module, layers: Sequence[PrunableLayer], x: torch.Tensor, y: torch.Tensor,
               loss_fn: Callable | None, grads_per_row: int, plan: XPlan, stats: dict[str, Any]) -> GradientStore:
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
        gradient_rows(model, layers, x, y, loss_fn, grads_per_row, plan, store.write_rows, stats)
    except BaseException:
        store.close()
        raise
    return store


def streamed_objective(model: nn.Module, layers: Sequence[PrunableLayer], x: torch.Tensor, y: torch.Tensor,
                        loss_fn: Callable | None, grads_per_row: int, plan: XPlan, w0: np.ndarray,
                        buffers0: dict[str, torch.Tensor], lam2: float, w: np.ndarray) -> float:
    """Q0(w) = 1/2 ||X0 (w - w0)||^2 + lam2 ||w - w0||^2 without storing X0: the gradients at
    w0 (and the original BatchNorm statistics) are recomputed chunk by chunk and only X0 d kept."""
    d = torch.from_numpy(np.asarray(w, dtype=np.float64) - w0)
    d32 = d.to(torch.float32)
    parts: list[float] = []

    def sink(_: int, rows: torch.Tensor) -> None:
        r = torch.mv(rows, d32.to(rows.device)).to("cpu", torch.float64)
        parts.append(float(r @ r))

    gradient_rows(model, layers, x, y, loss_fn, grads_per_row, plan, sink, {},
                   weights_at=torch.from_numpy(w0), buffers=buffers0)
    return 0.5 * sum(parts) + lam2 * float(d @ d)
