"""BatchNorm re-estimation after pruning.

Pruning changes every activation downstream of a pruned layer, so the running mean and
variance a BatchNorm layer stored during training no longer describe its inputs. The fix
(standard in one-shot pruning, e.g. OBC and the CHITA/FALCON scripts) is to recompute them:
reset the statistics and run forward passes over calibration inputs with the BatchNorm layers
in train mode and ``momentum=None`` (the cumulative average over all batches, so the result
does not depend on the order of the batches beyond round-off). No weight changes; every other
module stays in eval mode (dropout off) and all modes and momenta are restored afterwards.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from . import OptionError

__all__ = ["batchnorm_layers", "has_batchnorm", "recalibrate_batchnorm", "BatchNormState"]

_BN = (nn.modules.batchnorm._BatchNorm,)


def batchnorm_layers(model: nn.Module) -> Iterator[nn.Module]:
    """The BatchNorm modules of ``model`` that track running statistics."""
    for m in model.modules():
        if isinstance(m, _BN) and m.track_running_stats:
            yield m


def has_batchnorm(model: nn.Module) -> bool:
    """True when ``model`` has a BatchNorm layer with running statistics."""
    return next(batchnorm_layers(model), None) is not None


class BatchNormState:
    """A copy of every BatchNorm layer's running statistics, to put back with :meth:`restore`."""

    def __init__(self, model: nn.Module) -> None:
        self._saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                       for m in batchnorm_layers(model)]

    def restore(self) -> None:
        for m, mean, var, count in self._saved:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> int:
    """Recompute the running statistics of every BatchNorm layer from ``inputs``.

    Returns the number of BatchNorm layers re-estimated (0: nothing to do, model untouched).
    Batches of ``batch_size`` examples (at least 2 per batch: BatchNorm needs them in train
    mode); the statistics are the cumulative averages of the batch statistics.
    """
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 1 or inputs.shape[0] < 2:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise OptionError(f"`inputs` for BatchNorm re-estimation must hold >= 2 examples; got {shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise OptionError(f"`batch_size` must be an integer >= 2; got {batch_size!r}")
    bns = list(batchnorm_layers(model))
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bns}
    n = int(inputs.shape[0])
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for s in range(0, n, batch_size):
                batch = inputs[s:s + batch_size]
                if batch.shape[0] < 2:        # a last batch of one cannot be normalised in train mode
                    break
                model(batch)
    finally:
        for m, mode in modes.items():
            m.train(mode)
        for m, mom in momenta.items():
            m.momentum = mom
    return len(bns)
