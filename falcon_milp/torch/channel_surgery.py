"""Channel masks and surgery on a :class:`~.channel_graph.ChannelGraph`.

``keep[g]`` holds the kept channel indices (0..n_g-1) of group g (a group absent from ``keep``
keeps every channel).

- :func:`channel_gates` multiplies the input channels of every consumer (convolution or linear
  layer reading the group) by a per-channel gate. With 0/1 gates this is the *masked model*: a
  removed channel is read by nobody, whatever its producers and BatchNorm write into it.
- :func:`slice_model` returns a physically smaller deep copy: producers lose the removed output
  rows (and biases), BatchNorm its channels (affine parameters and running statistics),
  depthwise convolutions their filters (``groups`` follows), consumers the input columns (a
  linear layer after ``flatten`` loses each removed channel's H x W columns). Its outputs equal
  the masked model's up to floating-point summation order.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from . import ModelError
from .channel_graph import ChannelGraph

__all__ = ["channel_gates", "removed_positions", "slice_model"]


def removed_positions(graph: ChannelGraph, keep: Mapping[int, np.ndarray]) -> dict[tuple[str, str], np.ndarray]:
    """(module, side) -> sorted removed channel positions; side is ``out`` (producer rows,
    depthwise filters, norm channels) or ``in`` (consumer input channels, before multiplicity)."""
    removed: dict[tuple[str, str], list[np.ndarray]] = {}
    for g, kept in keep.items():
        grp = graph.groups[g]
        kept = np.asarray(kept, dtype=np.int64)
        if grp.fixed and kept.size != grp.size:
            raise ModelError(f"group '{grp.name}' is fixed (model input/output or a channel pad); "
                             "it keeps every channel")
        if kept.size == 0 or kept.min() < 0 or kept.max() >= grp.size or np.unique(kept).size != kept.size:
            raise ModelError(f"`keep[{g}]` must be distinct channel indices in [0, {grp.size}) and not empty")
        drop = np.setdiff1d(np.arange(grp.size), kept)
        if drop.size == 0:
            continue
        for m in grp.members:
            side = "in" if m.role == "consumer" else "out"
            removed.setdefault((m.module, side), []).append(m.positions[drop])
    return {k: np.sort(np.concatenate(v)) for k, v in removed.items()}


def _expand(positions: np.ndarray, multiplicity: int) -> np.ndarray:
    """Feature columns of channels at ``positions`` when each spans ``multiplicity`` of them."""
    return (positions[:, None] * multiplicity + np.arange(multiplicity)[None, :]).reshape(-1)


@contextlib.contextmanager
def channel_gates(model: nn.Module, graph: ChannelGraph,
                  gates: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Within the block, every consumer of group g reads its channel j scaled by ``gates[g][j]``
    (forward pre-hooks; differentiable in the gates). ``model`` must be the traced model."""
    modules = dict(model.named_modules())
    per_module: dict[str, list[tuple[np.ndarray, int, int]]] = {}
    for g in gates:
        for m in graph.groups[g].roles("consumer"):
            per_module.setdefault(m.module, []).append((m.positions, m.multiplicity, g))
    handles = []

    def make(name: str):
        entries = per_module[name]
        use = graph.uses[name]
        width = use.in_units.size * use.multiplicity

        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            scale = torch.ones(width, dtype=x.dtype, device=x.device)
            for pos, mult, g in entries:
                cols = torch.as_tensor(_expand(pos, mult), device=x.device)
                scale = scale.index_put((cols,), gates[g].to(x.dtype).repeat_interleave(mult))
            shape = (1, width) + (1,) * (x.ndim - 2)
            return (x * scale.view(shape),) + tuple(args[1:])
        return hook

    try:
        for name in per_module:
            handles.append(modules[name].register_forward_pre_hook(make(name)))
        yield
    finally:
        for h in handles:
            h.remove()


def _keep_index(size: int, removed: np.ndarray | None) -> torch.Tensor:
    keep = np.arange(size) if removed is None else np.setdiff1d(np.arange(size), removed)
    return torch.as_tensor(keep, dtype=torch.long)


def slice_model(model: nn.Module, graph: ChannelGraph, keep: Mapping[int, np.ndarray]) -> nn.Module:
    """A deep copy of ``model`` with the removed channels cut out (module docstring)."""
    removed = removed_positions(graph, keep)
    small = copy.deepcopy(model)
    modules = dict(small.named_modules())
    with torch.no_grad():
        for name, use in graph.uses.items():
            mod = modules[name]
            out_rm, in_rm = removed.get((name, "out")), removed.get((name, "in"))
            if out_rm is None and in_rm is None:
                continue
            w = mod.weight
            if use.kind == "depthwise":
                idx = _keep_index(w.shape[0], out_rm).to(w.device)
                mod.weight = nn.Parameter(w[idx].clone(), requires_grad=w.requires_grad)
                mod.in_channels = mod.out_channels = mod.groups = int(idx.numel())
            else:
                o = _keep_index(w.shape[0], out_rm).to(w.device)
                cols = None if in_rm is None else _expand(in_rm, use.multiplicity)
                i = _keep_index(w.shape[1], cols).to(w.device)
                mod.weight = nn.Parameter(w[o][:, i].clone(), requires_grad=w.requires_grad)
                if isinstance(mod, nn.Linear):
                    mod.out_features, mod.in_features = int(o.numel()), int(i.numel())
                else:
                    mod.out_channels, mod.in_channels = int(o.numel()), int(i.numel())
                idx = o
            if getattr(mod, "bias", None) is not None:
                mod.bias = nn.Parameter(mod.bias[idx].clone(), requires_grad=mod.bias.requires_grad)
        for name in graph.norms:
            rm = removed.get((name, "out"))
            if rm is None:
                continue
            bn = modules[name]
            idx = _keep_index(bn.num_features, rm)
            for attr in ("weight", "bias"):
                p = getattr(bn, attr, None)
                if p is not None:
                    setattr(bn, attr, nn.Parameter(p[idx.to(p.device)].clone(), requires_grad=p.requires_grad))
            for attr in ("running_mean", "running_var"):
                b = getattr(bn, attr, None)
                if b is not None:
                    setattr(bn, attr, b[idx.to(b.device)].clone())
            bn.num_features = int(idx.numel())
    return small
