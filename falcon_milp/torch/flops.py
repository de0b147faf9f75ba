"""FLOP cost of every prunable weight, measured with forward hooks on an example input.

Definition (docs falcon-method.md, section 1; "FLOPs" are multiply-accumulates, MACs, per
input example):

- convolution (any stride, padding, dilation, groups, depthwise; 1-D, 2-D or 3-D): every
  kernel entry is used once per output position, so ``f = prod(output spatial size)``
  (``H_out * W_out`` for Conv2d);
- linear: ``f`` = number of positions the layer is applied to per example (1 for a plain
  classifier on (N, d) inputs, T for (N, T, d) token inputs).

A module called several times in one forward pass gets the sum of its uses; a module never
reached gets ``f = 0``. A weight shared by several modules is listed once (first module) with
the summed cost. The dense MAC count of the network's prunable layers is
``sum_l n_l * f_l`` (:func:`dense_flops`).

The order of :func:`prunable_layers` (module registration order, ``model.named_modules()``)
is the order of the groups in exported instances and of the columns of per-sample gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from . import InputShapeError, ModelError, NoPrunableLayerError

__all__ = ["DEFAULT_TYPES", "PrunableLayer", "dense_flops", "dense_nnz", "flat_weights",
           "flops_vector", "group_sizes", "layer_offsets", "prunable_layers", "run_forward",
           "set_flat_weights", "split_flat"]

#: module types pruned by default (their ``weight``); biases and normalisation are never pruned
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
_SUPPORTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

Include = Callable[[str, nn.Module], bool] | Iterable[str] | Sequence[type] | None


@dataclass(frozen=True, eq=False)
class PrunableLayer:
    """One prunable weight tensor (one group of an instance).

    Attributes
    ----------
    name : qualified module name (``model.named_modules()``), the group name.
    module : the module itself (a live reference).
    param_name : name of the pruned tensor on the module (``"weight"``).
    shape : shape of the tensor; ``n_weights = prod(shape)``.
    n_weights : number of weights.
    flops_per_weight : MACs per weight per input example (see module docstring).
    kind : ``"conv"`` or ``"linear"``.
    """

    name: str
    module: nn.Module
    param_name: str
    shape: tuple[int, ...]
    n_weights: int
    flops_per_weight: int
    kind: str

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight (masked if a mask parametrization is registered)."""
        return getattr(self.module, self.param_name)

    @property
    def parameter(self) -> nn.Parameter:
        """The trainable leaf tensor (``parametrizations.weight.original`` when masked)."""
        if parametrize.is_parametrized(self.module, self.param_name):
            return self.module.parametrizations[self.param_name].original
        return getattr(self.module, self.param_name)

    @property
    def flops(self) -> int:
        """Dense MACs of this layer per example: ``n_weights * flops_per_weight``."""
        return self.n_weights * self.flops_per_weight


def _as_args(example_input: Any) -> tuple[Any, ...]:
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input)
    return (example_input,)


def _shape_text(example_input: Any) -> str:
    args = _as_args(example_input)
    shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args]
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


def run_forward(model: nn.Module, example_input: Any) -> Any:
    """``model(*example_input)`` in eval mode without gradients; the mode is restored.

    A failing forward pass (wrong shape, dtype or device) becomes one-line
    :class:`InputShapeError`.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(*_as_args(example_input))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputShapeError(f"`example_input` of shape {_shape_text(example_input)} does not fit "
                              f"{type(model).__name__}: {first}") from None
    finally:
        model.train(was_training)


def _meta_forward(model: nn.Module, example_input: Any) -> bool:
    """Run the forward pass on the ``meta`` device (shapes only, no arithmetic) with every
    parameter and buffer swapped for a meta tensor; False when some operation of the model
    cannot run there (data-dependent control flow, ops without meta kernels)."""
    state = {k: torch.empty_like(v, device="meta")
             for k, v in [*model.named_parameters(), *model.named_buffers()]}
    args = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in _as_args(example_input))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            functional_call(model, state, args)
        return True
    except Exception:  # noqa: BLE001 - any failure: fall back to the real forward pass
        return False
    finally:
        model.train(was_training)


def _selector(include: Include) -> tuple[Callable[[str, nn.Module], bool], set[str] | None]:
    """A predicate on (name, module) and, for a list of names, the names asked for."""
    if include is None:
        return (lambda _n, m: isinstance(m, DEFAULT_TYPES)), None
    if callable(include) and not isinstance(include, type):
        return (lambda n, m: isinstance(m, _SUPPORTED) and bool(include(n, m))), None
    items = list(include)  # type: ignore[arg-type]
    if items and all(isinstance(t, type) for t in items):
        for t in items:
            if not issubclass(t, _SUPPORTED):
                raise ModelError(f"`include` type {t.__name__} is not supported; use subclasses of "
                                 "Conv1d, Conv2d, Conv3d or Linear")
        types = tuple(items)
        return (lambda _n, m: isinstance(m, types)), None
    if all(isinstance(t, str) for t in items):
        names = set(items)
        return (lambda n, _m: n in names), names
    raise ModelError("`include` must be None, module types, module names or a callable(name, module)")


def prunable_layers(model: nn.Module, example_input: Any, include: Include = None,
                    batch_size: int | None = None) -> list[PrunableLayer]:
    """The prunable weight tensors of ``model`` in module order, with their FLOP cost per weight.

    Parameters
    ----------
    model : any ``nn.Module`` (any device, ``meta`` included: only shapes are used).
    example_input : a tensor (or tuple of positional tensors) that ``model`` accepts; its first
        dimension is the batch (costs are per example). The pass runs on the ``meta`` device
        (shapes only, fast even for ResNet50) and falls back to a real pass in eval mode without
        gradients when the model cannot run there.
    include : which modules are prunable (their ``weight``): None = every Conv1d, Conv2d and
        Linear; a sequence of module types (Conv1d/2d/3d, Linear or subclasses); an iterable of
        qualified module names; or a callable ``(name, module) -> bool`` applied to
        Conv/Linear modules.
    batch_size : examples in ``example_input`` (default: its first dimension; 1 for a 1-D input).

    Raises :class:`NoPrunableLayerError` when nothing is selected and :class:`InputShapeError`
    when the forward pass fails.
    """
    select, names_asked = _selector(include)
    chosen: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not select(name, module):
            continue
        if isinstance(module, _TRANSPOSED) or not isinstance(module, _SUPPORTED):
            raise ModelError(f"module '{name}' ({type(module).__name__}) is not supported; "
                             "prunable modules are Conv1d, Conv2d, Conv3d and Linear")
        chosen.append((name, module))
    if names_asked is not None:
        missing = sorted(names_asked - {n for n, _ in chosen})
        if missing:
            raise ModelError(f"`include` names module '{missing[0]}', which {type(model).__name__} "
                             "does not have")
    if not chosen:
        raise NoPrunableLayerError(
            f"{type(model).__name__} has no prunable layer (Conv1d/Conv2d/Linear weight"
            + (" matching `include`" if include is not None else "") + ")")

    if batch_size is None:
        first = _as_args(example_input)[0]
        batch_size = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim >= 2 else 1
    if batch_size < 1:
        raise InputShapeError(f"`batch_size` must be >= 1; got {batch_size}")

    uses = {id(m): 0 for _, m in chosen}

    def hook(module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        if isinstance(module, nn.Linear):
            uses[id(module)] += out.numel() // module.out_features
        else:
            n_spatial = module.weight.ndim - 2
            batched = out.ndim == n_spatial + 2
            spatial = math.prod(out.shape[2:] if batched else out.shape[1:])
            uses[id(module)] += spatial * (out.shape[0] if batched else 1)

    handles = [m.register_forward_hook(hook) for _, m in chosen]
    try:
        if not _meta_forward(model, example_input):
            for key in uses:  # a partial meta pass may have counted some uses
                uses[key] = 0
            run_forward(model, example_input)
    finally:
        for h in handles:
            h.remove()

    layers: list[PrunableLayer] = []
    by_param: dict[int, int] = {}
    for name, module in chosen:
        total = uses[id(module)]
        if total % batch_size:
            raise InputShapeError(f"module '{name}' was applied at {total} positions, not a multiple "
                                  f"of `batch_size` = {batch_size}")
        f = total // batch_size
        w = module.weight
        leaf = (module.parametrizations["weight"].original
                if parametrize.is_parametrized(module, "weight") else w)
        if id(leaf) in by_param:  # tied weight: one group, costs added
            i = by_param[id(leaf)]
            old = layers[i]
            layers[i] = PrunableLayer(old.name, old.module, old.param_name, old.shape, old.n_weights,
                                      old.flops_per_weight + f, old.kind)
            continue
        by_param[id(leaf)] = len(layers)
        kind = "linear" if isinstance(module, nn.Linear) else "conv"
        layers.append(PrunableLayer(name, module, "weight", tuple(w.shape), w.numel(), f, kind))
    return layers


# ----------------------------------------------------------------------------- helpers
def group_sizes(layers: Sequence[PrunableLayer]) -> np.ndarray:
    """(L,) int64 number of weights per layer."""
    return np.array([l.n_weights for l in layers], dtype=np.int64)


def flops_vector(layers: Sequence[PrunableLayer]) -> np.ndarray:
    """(L,) float64 FLOP cost per weight of each layer."""
    return np.array([l.flops_per_weight for l in layers], dtype=np.float64)


def layer_offsets(layers: Sequence[PrunableLayer]) -> np.ndarray:
    """(L+1,) start of each layer in the flat weight vector; the last entry is p."""
    out = np.zeros(len(layers) + 1, dtype=np.int64)
    np.cumsum(group_sizes(layers), out=out[1:])
    return out


def dense_nnz(layers: Sequence[PrunableLayer]) -> int:
    """p, the number of prunable weights."""
    return int(sum(l.n_weights for l in layers))


def dense_flops(layers: Sequence[PrunableLayer]) -> int:
    """Dense MACs of the prunable layers per example: sum_l n_l * f_l."""
    return int(sum(l.flops for l in layers))


def flat_weights(layers: Sequence[PrunableLayer], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(p,) detached copy of the effective weights, layers concatenated in order (row-major)."""
    return torch.cat([l.weight.detach().reshape(-1).to(dtype) for l in layers])


def split_flat(layers: Sequence[PrunableLayer], flat: Any) -> list[torch.Tensor]:
    """Split a flat (p,) tensor/array into per-layer tensors of the layers' shapes (views)."""
    t = torch.as_tensor(flat)
    p = dense_nnz(layers)
    if t.ndim != 1 or t.numel() != p:
        raise ModelError(f"flat vector must have shape ({p},); got {tuple(t.shape)}")
    parts = torch.split(t, [l.n_weights for l in layers])
    return [part.reshape(l.shape) for part, l in zip(parts, layers)]


def set_flat_weights(layers: Sequence[PrunableLayer], flat: Any) -> None:
    """Write a flat (p,) vector into the layers' trainable weights (in place, no autograd).

    On a masked model this writes ``original``; the effective weight stays masked.
    """
    with torch.no_grad():
        for layer, part in zip(layers, split_flat(layers, flat)):
            param = layer.parameter
            param.copy_(part.to(device=param.device, dtype=param.dtype))
