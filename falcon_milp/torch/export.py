"""Export a PyTorch model as a :class:`~falcon_milp.PruningInstance`.

One group per prunable weight tensor, named by the module's qualified name, in module order;
importances from a scorer of :mod:`falcon_milp.torch.importance`; FLOP cost per weight from
:func:`falcon_milp.torch.flops.prunable_layers` (MACs per input example). Budgets are
absolute (``max_nnz`` weights, ``max_flops`` MACs; None = no budget) or fractions of the dense
totals (``nnz_fraction``: S = floor(fraction * p), exact; ``flops_fraction``: F = fraction * dense
MACs), by the one shared rule :func:`falcon_milp.instance.budgets_from_fractions`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..instance import PruningInstance
from ..instance import budgets_from_fractions as core_budgets
from ..validation import fraction
from . import ModelError, OptionError
from .flops import PrunableLayer, dense_flops, dense_nnz, flops_vector, group_sizes, prunable_layers
from .importance import Importance, get_importance

__all__ = ["budgets_from_fractions", "export_instance"]


def budgets_from_fractions(layers: Sequence[PrunableLayer], nnz_fraction: float | None = None,
                           flops_fraction: float | None = None) -> tuple[int | None, float | None]:
    """(max_nnz, max_flops) from fractions of the dense totals (None stays None); see
    :func:`falcon_milp.instance.budgets_from_fractions`."""
    nf = fraction(nnz_fraction, "nnz_fraction")
    ff = fraction(flops_fraction, "flops_fraction")
    return core_budgets(dense_nnz(layers), float(dense_flops(layers)), nf, ff)


def _input_shape(example_input: Any) -> list[Any]:
    args = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    shapes = [list(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args]
    return shapes[0] if len(shapes) == 1 else shapes


def export_instance(model: nn.Module, example_input: Any, importance: str | Importance = "magnitude",
                    data: tuple[torch.Tensor, torch.Tensor] | None = None, *,
                    max_nnz: int | None = None, max_flops: float | None = None,
                    nnz_fraction: float | None = None, flops_fraction: float | None = None,
                    include: Any = None, layers: Sequence[PrunableLayer] | None = None,
                    importance_options: Mapping[str, Any] | None = None,
                    dtype: Any = np.float32, metadata: Mapping[str, Any] | None = None) -> PruningInstance:
    """Build the pruning instance of ``model``.

    Parameters
    ----------
    model, example_input : the network and an input it accepts (first dimension = batch).
    importance : ``"magnitude"``, ``"obs"``, ``"flexrel"`` or a scorer (callable with ``kind``).
    data : calibration ``(inputs, targets)``, needed by ``obs`` and ``flexrel``.
    max_nnz, max_flops : absolute budgets (None = no budget).
    nnz_fraction, flops_fraction : budgets as fractions of the dense totals, in [0, 1]
        (instead of the absolute budget of the same resource).
    include : which modules are prunable (see :func:`prunable_layers`); or pass ``layers``.
    importance_options : options for a scorer given by name (e.g. ``{"lam2": 1e-4}``).
    dtype : float32 (default: small files) or float64 importances.
    metadata : extra entries for the instance metadata (e.g. ``{"arch": "mnist_mlp"}``).
    """
    if max_nnz is not None and nnz_fraction is not None:
        raise OptionError("give `max_nnz` or `nnz_fraction`, not both")
    if max_flops is not None and flops_fraction is not None:
        raise OptionError("give `max_flops` or `flops_fraction`, not both")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise OptionError(f"`dtype` must be float32 or float64; got {np.dtype(dtype)}")
    if layers is None:
        layers = prunable_layers(model, example_input, include)
    for layer in layers:       # else the scores' NaN would be blamed on `importances`
        if not bool(torch.isfinite(layer.weight.detach()).all()):
            raise ModelError(f"model parameter '{layer.name}.{layer.param_name}' has NaN or infinite values")
    frac_nnz, frac_flops = budgets_from_fractions(layers, nnz_fraction, flops_fraction)
    max_nnz = frac_nnz if nnz_fraction is not None else max_nnz
    max_flops = frac_flops if flops_fraction is not None else max_flops
    if isinstance(importance, str):
        scorer = get_importance(importance, **dict(importance_options or {}))
    else:
        if importance_options:
            raise OptionError("`importance_options` apply only to an importance given by name")
        scorer = importance
    scores = np.asarray(scorer(model, layers, data))
    p = dense_nnz(layers)
    if scores.shape != (p,):
        raise OptionError(f"importance '{getattr(scorer, 'kind', type(scorer).__name__)}' returned shape "
                          f"{scores.shape}; expected ({p},)")
    options = scorer.options() if hasattr(scorer, "options") else {}
    meta: dict[str, Any] = {
        "source": "falcon_milp.torch.export",
        "model": type(model).__name__,
        "input_shape": _input_shape(example_input),
        "importance": getattr(scorer, "kind", type(scorer).__name__),
        "importance_options": options,
        "n_calibration": int(data[0].shape[0]) if data is not None else 0,
        "flops_unit": "MACs per input example",
        "dense_nnz": p,
        "dense_flops": dense_flops(layers),
    }
    if nnz_fraction is not None:
        meta["nnz_fraction"] = float(nnz_fraction)
    if flops_fraction is not None:
        meta["flops_fraction"] = float(flops_fraction)
    meta.update(dict(metadata or {}))
    return PruningInstance.from_flat(
        scores.astype(dtype, copy=False), group_sizes(layers), flops_vector(layers),
        max_nnz=max_nnz, max_flops=max_flops, names=[l.name for l in layers], metadata=meta,
        copy=False)
