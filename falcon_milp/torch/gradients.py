"""Per-sample gradients of the loss over the prunable weights: the rows of X.

For examples (x_k, y_k), k = 1..n, row k of X is

    X[k] = d loss(model(x_k), y_k) / d w      (w: the prunable weights, instance order)

computed in float32, ``chunk_size`` examples at a time so that memory stays at
O(chunk_size * p) besides the output, by one of two strategies: ``"vmap"`` (``torch.func``:
``functional_call`` + ``vmap(grad(.))``, one batched pass per chunk; fastest on small
networks, 2-8x faster than a loop on the MNIST nets and ResNet20) or ``"loop"`` (one forward
and backward pass per example; faster on ImageNet networks, where a vmapped chunk is no faster
than single examples: 1.3-3x faster on MobileNetV1 and ResNet50 at 224 x 224). ``"auto"``
times the first chunk both ways and keeps the faster. The model runs
in eval mode (BatchNorm uses its running statistics, dropout is off); its mode is restored.
On a masked model (:mod:`falcon_milp.torch.masks`) the gradient is taken with respect to the
*effective* weights, pruned entries included (their gradient at w_i = 0 is generally nonzero).

The empirical Fisher is X^T X / n; the local quadratic model of falcon-method.md section 3
uses X (scale it by 1/sqrt(n) for the Fisher convention).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils import parametrize

from . import InputShapeError, ModelError
from ..validation import choice
from .flops import PrunableLayer, dense_nnz, prunable_layers
from .masks import WeightMask

__all__ = ["GRAD_STRATEGIES", "LossFn", "Objective", "default_chunk_size", "iter_per_sample_grads",
           "per_sample_grads", "summed_grad"]

#: how per-sample gradients are computed (module docstring)
GRAD_STRATEGIES = ("auto", "vmap", "loop")

#: ``loss_fn(output, target) -> scalar`` for a batch of one example (default: cross entropy)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_chunk_size(p: int, target_bytes: int = 256 * 2**20) -> int:
    """Examples per chunk so that one chunk of float32 gradients (plus a copy) is ~target_bytes."""
    return int(max(1, min(256, target_bytes // max(1, 8 * p))))


def _keys(layers: Sequence[PrunableLayer], model: nn.Module, at: torch.Tensor | None = None
          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(differentiable weights by functional_call key, fixed overrides such as mask = 1);
    ``at``: flat weights (instance order) to use instead of the layers' current ones."""
    names = {id(m): n for n, m in model.named_modules()}
    weights: dict[str, torch.Tensor] = {}
    fixed: dict[str, torch.Tensor] = {}
    offset = 0
    for layer in layers:
        if id(layer.module) not in names:
            raise ModelError(f"layer '{layer.name}' is not a module of {type(model).__name__}")
        prefix = names[id(layer.module)]
        prefix = prefix + "." if prefix else ""
        w = layer.weight.detach().to(torch.float32)
        if at is not None:
            w = at[offset:offset + w.numel()].reshape(w.shape).to(device=w.device, dtype=torch.float32)
            offset += w.numel()
        if parametrize.is_parametrized(layer.module, layer.param_name):
            plist = layer.module.parametrizations[layer.param_name]
            if not all(isinstance(p, WeightMask) for p in plist):
                raise ModelError(f"layer '{layer.name}' has a parametrization other than WeightMask; "
                                 "per-sample gradients support plain or masked weights only")
            base = f"{prefix}parametrizations.{layer.param_name}"
            weights[f"{base}.original"] = w
            for i, p in enumerate(plist):  # evaluate the effective weight itself: mask = 1
                fixed[f"{base}.{i}.mask"] = torch.ones_like(p.mask)
        else:
            weights[f"{prefix}{layer.param_name}"] = w
    return weights, fixed


def iter_per_sample_grads(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                          layers: Sequence[PrunableLayer] | None = None,
                          loss_fn: LossFn | None = None,
                          chunk_size: int | None = None, *, strategy: str = "auto",
                          stats: dict[str, Any] | None = None, weights_at: torch.Tensor | None = None,
                          buffers: dict[str, torch.Tensor] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, G)`` with G the float32 (c, p) per-sample gradients of examples
    ``start .. start + c - 1``, in order (the chunked form of :func:`per_sample_grads`).

    ``layers`` defaults to ``prunable_layers(model, inputs[:1])``; columns follow their order.
    ``strategy``: one of :data:`GRAD_STRATEGIES`. ``stats`` (a dict) receives the strategy used
    and ``examples_per_second``. ``weights_at`` (flat, instance order) and ``buffers`` (by
    name, e.g. saved BatchNorm statistics) evaluate the gradients at other values than the
    model's current ones, without touching the model.
    """
    n = int(inputs.shape[0]) if isinstance(inputs, torch.Tensor) and inputs.ndim >= 1 else 0
    if not isinstance(targets, torch.Tensor) or targets.ndim < 1 or targets.shape[0] != n:
        tn = targets.shape[0] if isinstance(targets, torch.Tensor) and targets.ndim >= 1 else "no"
        raise InputShapeError(f"`inputs` has {n} examples but `targets` has {tn}")
    if n == 0:
        raise InputShapeError("`inputs` must hold at least one example; got 0")
    choice(strategy, "strategy", GRAD_STRATEGIES)
    if layers is None:
        layers = prunable_layers(model, inputs[:1])
    p = dense_nnz(layers)
    if chunk_size is None:
        chunk_size = default_chunk_size(p)
    if chunk_size < 1:
        raise InputShapeError(f"`chunk_size` must be >= 1; got {chunk_size}")
    loss = loss_fn or (lambda out, y: F.cross_entropy(out, y, reduction="sum"))
    weights, fixed = _keys(layers, model, weights_at)
    if buffers:
        fixed = {**buffers, **fixed}
    keys = list(weights)

    def one(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**params, **fixed}, (x.unsqueeze(0),))
        return loss(out, y.unsqueeze(0))

    per_sample = vmap(grad(one), in_dims=(None, 0, 0))

    def by_vmap(xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the module's own parameters need no autograd graph
            g = per_sample(weights, xc, yc)
        return torch.cat([g[k].reshape(g[k].shape[0], -1).to(torch.float32) for k in keys], dim=1)

    leaves = {k: v.detach().requires_grad_(True) for k, v in weights.items()}

    def by_loop(xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        out = torch.empty((xc.shape[0], p), dtype=torch.float32, device=xc.device)
        for r in range(xc.shape[0]):
            with torch.enable_grad():
                val = one(leaves, xc[r], yc[r])
                gs = torch.autograd.grad(val, [leaves[k] for k in keys], allow_unused=True)
            col = 0
            for k, g in zip(keys, gs):
                size = leaves[k].numel()
                out[r, col:col + size] = 0.0 if g is None else g.reshape(-1)
                col += size
        return out

    chosen = strategy
    timing: dict[str, float] = {}
    done = 0
    t_all = time.perf_counter()
    for start in range(0, n, chunk_size):
        xc = inputs[start:start + chunk_size]
        yc = targets[start:start + chunk_size]
        was_training = model.training
        model.eval()
        try:
            if chosen == "auto":      # the first chunk by vmap, a few of its examples by loop
                t = time.perf_counter()
                g = by_vmap(xc, yc)
                timing["vmap"] = (time.perf_counter() - t) / xc.shape[0]
                probe = min(2, int(xc.shape[0]))
                t = time.perf_counter()
                by_loop(xc[:probe], yc[:probe])
                timing["loop"] = (time.perf_counter() - t) / probe
                chosen = min(timing, key=timing.__getitem__)
            else:
                g = by_vmap(xc, yc) if chosen == "vmap" else by_loop(xc, yc)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputShapeError(
                f"per-sample gradients failed for inputs of shape {tuple(inputs.shape)} and "
                f"targets of shape {tuple(targets.shape)}: {first}") from None
        finally:  # restored before yielding: the caller never runs inside our modes
            model.train(was_training)
        done += int(xc.shape[0])
        if stats is not None:
            stats["strategy"] = chosen
            stats["examples_per_second"] = done / max(time.perf_counter() - t_all, 1e-12)
            if timing:
                stats["seconds_per_example"] = dict(timing)
        yield start, g


def per_sample_grads(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                     layers: Sequence[PrunableLayer] | None = None, loss_fn: LossFn | None = None,
                     chunk_size: int | None = None) -> torch.Tensor:
    """X: float32 tensor (n, p) of per-sample loss gradients over the prunable weights, columns
    in instance order (layers concatenated, each tensor row-major). Memory: n * p * 4 bytes for
    the result plus one chunk; use :func:`iter_per_sample_grads` when that does not fit."""
    if layers is None and isinstance(inputs, torch.Tensor) and inputs.ndim >= 1 and inputs.shape[0] > 0:
        layers = prunable_layers(model, inputs[:1])
    out: torch.Tensor | None = None
    for start, g in iter_per_sample_grads(model, inputs, targets, layers, loss_fn, chunk_size):
        if out is None:
            out = torch.empty((inputs.shape[0], g.shape[1]), dtype=torch.float32)
        out[start:start + g.shape[0]] = g
    assert out is not None
    return out



#: ``objective(output, target) -> scalar`` summed over a batch
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def summed_grad(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                layers: Sequence[PrunableLayer] | None = None, objective: Objective | None = None,
                batch_size: int = 256) -> torch.Tensor:
    """g = sum_k d objective(model(x_k), y_k) / d w as a float64 (p,) tensor (instance order).

    ``objective`` receives a batch and must return the batch's sum (default: cross entropy with
    ``reduction="sum"``, so g = X^T 1). Eval mode, effective weights, as for the per-sample form.
    """
    n = int(inputs.shape[0]) if isinstance(inputs, torch.Tensor) and inputs.ndim >= 1 else 0
    if not isinstance(targets, torch.Tensor) or targets.ndim < 1 or targets.shape[0] != n:
        tn = targets.shape[0] if isinstance(targets, torch.Tensor) and targets.ndim >= 1 else "no"
        raise InputShapeError(f"`inputs` has {n} examples but `targets` has {tn}")
    if n == 0:
        raise InputShapeError("`inputs` must hold at least one example; got 0")
    if batch_size < 1:
        raise InputShapeError(f"`batch_size` must be >= 1; got {batch_size}")
    if layers is None:
        layers = prunable_layers(model, inputs[:1])
    obj = objective or (lambda out, y: F.cross_entropy(out, y, reduction="sum"))
    weights, fixed = _keys(layers, model)
    keys = list(weights)

    def batch_obj(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return obj(functional_call(model, {**params, **fixed}, (x,)), y)

    total = torch.zeros(dense_nnz(layers), dtype=torch.float64)
    g_fn = grad(batch_obj)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                g = g_fn(weights, inputs[start:start + batch_size], targets[start:start + batch_size])
                total += torch.cat([g[k].reshape(-1) for k in keys]).to(torch.float64)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputShapeError(f"gradient failed for inputs of shape {tuple(inputs.shape)} and "
                              f"targets of shape {tuple(targets.shape)}: {first}") from None
    finally:
        model.train(was_training)
    return total
