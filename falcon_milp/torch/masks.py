"""Surgery: apply a solved 0/1 mask to a model, count what it keeps, save the pruned weights.

A mask is a flat bool vector over the prunable weights in instance order (layers of
:func:`falcon_milp.torch.flops.prunable_layers` concatenated, each tensor row-major), exactly
the ``mask`` of a :class:`falcon_milp.SolveResult`.

:func:`apply_mask` registers a parametrization ``weight = original * mask``
(``torch.nn.utils.parametrize``) and also zeroes ``original`` where the mask is 0, so masked
weights stay exactly zero through any later training (their gradient is zero and whatever an
optimiser does to ``original`` is multiplied by 0). :func:`remove_masks` folds the masks in;
:func:`pruned_state_dict` returns plain weights (masks folded) without changing the model.

Mask files (:func:`save_masks` / :func:`load_masks`, ``falcon-milp prune --mask-out``): a
NumPy ``.npz`` archive readable with numpy alone, holding ``format_version`` (int64 scalar,
:data:`MASK_FORMAT_VERSION`) and one ``bool`` array per pruned parameter, keyed by its
state_dict name (``fc1.weight``) and shaped like it; True = kept. Nothing is pickled.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from . import DataFileError, ModelError
from .flops import DEFAULT_TYPES, PrunableLayer, dense_nnz, prunable_layers, set_flat_weights

__all__ = ["MASK_FORMAT_VERSION", "Usage", "WeightMask", "apply_mask", "check_layers_match", "count_usage",
           "current_mask", "write_weights", "is_masked", "layer_usage", "load_masks", "pruned_state_dict",
           "remove_masks", "save_masks", "save_pruned"]

MASK_FORMAT_VERSION = 1
"""Version of the mask file format written by :func:`save_masks` (key ``format_version``)."""


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask`` with a fixed 0/1 ``mask`` buffer (saved in state_dict)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _as_flat_bool(mask: Any, p: int) -> torch.Tensor:
    if isinstance(mask, np.ndarray):
        if mask.dtype != bool:
            raise ModelError(f"`mask` must be a bool array; got dtype {mask.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(mask))
    elif isinstance(mask, torch.Tensor):
        if mask.dtype != torch.bool:
            raise ModelError(f"`mask` must be a bool array; got dtype {mask.dtype}")
        t = mask.detach().cpu()
    else:
        raise ModelError(f"`mask` must be a bool numpy array or tensor; got {type(mask).__name__}")
    if tuple(t.shape) != (p,):
        raise ModelError(f"`mask` must have shape ({p},) (one entry per prunable weight); got {tuple(t.shape)}")
    return t


def check_layers_match(layers: Sequence[PrunableLayer], instance: Any) -> None:
    """Raise ModelError unless ``instance`` (a PruningInstance) has these layers' names and sizes."""
    names = tuple(l.name for l in layers)
    if tuple(instance.names) != names:
        i = next((k for k, (a, b) in enumerate(zip(instance.names, names)) if a != b),
                 min(len(names), len(instance.names)))
        got = instance.names[i] if i < len(instance.names) else "<none>"
        want = names[i] if i < len(names) else "<none>"
        raise ModelError(f"instance group {i} is '{got}' but the model's prunable layer {i} is '{want}'")
    for l, n in zip(layers, instance.group_sizes):
        if int(n) != l.n_weights:
            raise ModelError(f"instance group '{l.name}' has {int(n)} weights but the layer has {l.n_weights}")


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` carries a :class:`WeightMask`."""
    return parametrize.is_parametrized(module, name) and any(
        isinstance(p, WeightMask) for p in module.parametrizations[name])


def apply_mask(layers: Sequence[PrunableLayer], mask: Any, instance: Any = None) -> None:
    """Mask the layers' weights with a flat bool ``mask`` (True = keep), in place.

    Registers (or updates) a :class:`WeightMask` on each layer and zeroes the pruned entries of
    the trainable tensor. With ``instance`` the layers are first checked against its groups.
    """
    if instance is not None:
        check_layers_match(layers, instance)
    flat = _as_flat_bool(mask, dense_nnz(layers))
    for layer, part in zip(layers, torch.split(flat, [l.n_weights for l in layers])):
        module, name = layer.module, layer.param_name
        param = layer.parameter
        m = part.reshape(layer.shape).to(device=param.device, dtype=param.dtype)
        with torch.no_grad():
            param.mul_(m)
        if is_masked(module, name):
            for p in module.parametrizations[name]:
                if isinstance(p, WeightMask):
                    p.mask.copy_(m)
        else:
            parametrize.register_parametrization(module, name, WeightMask(m))


def remove_masks(model: nn.Module) -> nn.Module:
    """Fold every :class:`WeightMask` into a plain ``weight`` parameter (zeros stay); returns model."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                if is_masked(module, name):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def pruned_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict with masks folded in and plain keys (``fc.weight``), as loaded by
    the unmasked architecture. The model is not changed."""
    out: dict[str, torch.Tensor] = {}
    masked: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name in module.parametrizations.keys():
                key = f"{mod_name}.{name}" if mod_name else name
                masked[key] = getattr(module, name).detach().clone()
    for key, value in model.state_dict().items():
        if ".parametrizations." in key or key.startswith("parametrizations."):
            head, _, tail = key.partition("parametrizations.")
            pname = tail.split(".")[0]
            plain = f"{head}{pname}"
            if plain in masked and plain not in out:
                out[plain] = masked[plain]
            continue
        out[key] = value.detach().clone()
    return out


def save_pruned(model: nn.Module, path: str | os.PathLike) -> str:
    """``torch.save(pruned_state_dict(model), path)``; returns the path."""
    torch.save(pruned_state_dict(model), path)
    return os.fspath(path)


def _masks_of(source: Any) -> dict[str, np.ndarray]:
    """Parameter name -> bool array, from a model, a list of PrunableLayer or a mapping."""
    if isinstance(source, nn.Module):
        out: dict[str, np.ndarray] = {}
        for mod_name, module in source.named_modules():
            if parametrize.is_parametrized(module):
                for name in module.parametrizations.keys():
                    for p in module.parametrizations[name]:
                        if isinstance(p, WeightMask):
                            key = f"{mod_name}.{name}" if mod_name else name
                            out[key] = p.mask.detach().cpu().numpy() != 0
        if out:
            return out
        return {f"{n}.weight" if n else "weight": (m.weight.detach().cpu().numpy() != 0)
                for n, m in source.named_modules() if isinstance(m, DEFAULT_TYPES)}
    if isinstance(source, Mapping):
        out = {}
        for key, value in source.items():
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if not isinstance(key, str) or not key:
                raise ModelError(f"`masks` keys must be parameter names; got {key!r}")
            if arr.dtype != bool:
                raise ModelError(f"`masks['{key}']` must be a bool array; got dtype {arr.dtype}")
            out[key] = arr
        return out
    if isinstance(source, Sequence) and all(isinstance(l, PrunableLayer) for l in source):
        return {f"{l.name}.{l.param_name}" if l.name else l.param_name:
                (l.weight.detach().cpu().numpy() != 0) for l in source}
    raise ModelError("`model_or_masks` must be an nn.Module, a list of PrunableLayer or a mapping of "
                     f"parameter names to bool arrays; got {type(source).__name__}")


def save_masks(model_or_masks: Any, path: str | os.PathLike) -> str:
    """Write masks to ``path`` exactly (no suffix added) in the mask file format (module docstring).

    ``model_or_masks``: a model carrying :class:`WeightMask` parametrizations (their masks);
    a model without any (the nonzero pattern of every Conv1d/Conv2d/Linear weight, the
    default prunable layers, e.g. after ``prune_model``); a list of :class:`PrunableLayer`
    (nonzero pattern of their effective weights); or a mapping name -> bool array/tensor.
    Returns the path. Re-apply with ``apply_mask(layers, np.concatenate([masks[f"{l.name}.weight"]
    .ravel() for l in layers]))``.
    """
    masks = _masks_of(model_or_masks)
    if "format_version" in masks:
        raise ModelError("`masks` cannot hold a parameter named 'format_version' (the version key)")
    with open(path, "wb") as fh:
        np.savez_compressed(fh, format_version=np.int64(MASK_FORMAT_VERSION), **masks)
    return os.fspath(path)


def load_masks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a mask file written by :func:`save_masks`: parameter name -> bool array (True = kept).

    Raises :class:`DataFileError` (one line) for a missing or corrupt file, an unknown
    ``format_version`` or a non-bool array.
    """
    where = f"mask file '{os.fspath(path)}'"
    if not os.path.isfile(path):
        raise DataFileError(f"{where} does not exist" if not os.path.exists(path) else f"{where} is not a file")
    if not zipfile.is_zipfile(path):
        raise DataFileError(f"{where} is not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataFileError(f"{where} is truncated or corrupt ({type(exc).__name__})") from None
    version = arrays.pop("format_version", None)
    if version is None or version.shape != () or int(version) != MASK_FORMAT_VERSION:
        got = None if version is None else version.tolist()
        raise DataFileError(f"{where}: `format_version` must be {MASK_FORMAT_VERSION}; got {got!r}")
    for key, arr in arrays.items():
        if arr.dtype != bool:
            raise DataFileError(f"{where}: mask '{key}' must be a bool array; got dtype {arr.dtype}")
    return arrays


def current_mask(layers: Sequence[PrunableLayer]) -> np.ndarray:
    """(p,) bool: which effective weights are nonzero, in instance order."""
    return torch.cat([(l.weight.detach() != 0).reshape(-1).cpu() for l in layers]).numpy()


@dataclass(frozen=True)
class Usage:
    """Zero-aware resource use of the prunable layers (per input example).

    ``nnz`` counts nonzero weights, ``flops`` = sum_l nnz_l * f_l (MACs of nonzero weights);
    ``per_layer`` maps a layer name to (nnz, n_weights, flops_per_weight).
    """

    nnz: int
    flops: int
    dense_nnz: int
    dense_flops: int
    per_layer: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def nnz_fraction(self) -> float:
        return self.nnz / self.dense_nnz if self.dense_nnz else float("nan")

    @property
    def flops_fraction(self) -> float:
        return self.flops / self.dense_flops if self.dense_flops else float("nan")


def layer_usage(layers: Sequence[PrunableLayer]) -> Usage:
    """Zero-aware NNZ and FLOPs of the layers' current effective weights."""
    per: dict[str, tuple[int, int, int]] = {}
    nnz = flops = dn = df = 0
    for l in layers:
        k = int(torch.count_nonzero(l.weight.detach()))
        per[l.name] = (k, l.n_weights, l.flops_per_weight)
        nnz += k
        flops += k * l.flops_per_weight
        dn += l.n_weights
        df += l.flops
    return Usage(nnz, flops, dn, df, per)


def count_usage(model: nn.Module, example_input: Any, include: Any = None) -> Usage:
    """Measure the model's zero-aware NNZ and FLOPs (FLOP costs from a forward pass on
    ``example_input``; see :func:`falcon_milp.torch.flops.prunable_layers`)."""
    return layer_usage(prunable_layers(model, example_input, include))


def write_weights(layers: Sequence[PrunableLayer], w: Any, mask: Any, keep_masks: bool = False) -> None:
    """Write the flat weights ``w`` (zero off the flat bool ``mask``) into the layers.

    Layers that already carry a :class:`WeightMask` get their mask updated to ``mask`` (so the
    effective weights are exactly ``w`` on the mask); ``keep_masks=True`` registers masks on
    all layers (the zeros then survive later training).
    """
    mask = np.asarray(mask, dtype=bool)
    set_flat_weights(layers, torch.from_numpy(np.where(mask, np.asarray(w, dtype=np.float64), 0.0)))
    if keep_masks or any(is_masked(l.module, l.param_name) for l in layers):
        apply_mask(layers, mask)
