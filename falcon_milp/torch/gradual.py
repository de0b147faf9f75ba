"""Gradual pruning: prune at a few epochs with :func:`.prune.prune_model`, fine-tune in between
(SGD with momentum through the training loop of :func:`.train.train_epoch`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import OptionError
from .masks import remove_masks
from ..validation import fraction, integer
from .options import Calib, check_calib
from .prune import PruneReport, prune_model
from .schedules import gradual_epochs, stage_budgets
from .train import train_epoch

__all__ = ["GradualReport", "gradual_prune"]


@dataclass
class GradualReport:
    """Reports of every pruning step (epoch -> report) and the mean training loss per epoch."""

    prune_epochs: list[int]
    reports: dict[int, PruneReport]
    train_loss: list[float]


def gradual_prune(model: nn.Module, calib: Calib, train_data: Calib, flops_fraction: float | None = 0.3,
                  nnz_fraction: float | None = None, method: str = "falcon", *, n_epochs: int = 4,
                  prune_epochs: Sequence[int] | None = None, n_prunes: int = 3, lr: float = 0.01,
                  momentum: float = 0.9, batch_size: int = 128, seed: int = 0,
                  schedule_start: float = 0.7, schedule_power: float = 3.0,
                  train_epoch: Callable[[nn.Module, int], float] | None = None,
                  **prune_options: Any) -> GradualReport:
    """Gradual pruning: prune at the start of each of ``prune_epochs``, fine-tune in between.

    The budgets of the successive pruning steps follow the polynomial schedule from
    ``schedule_start`` to the targets (:func:`.schedules.stage_budgets`). After every pruning
    step the mask is held by a parametrization (weights = original * mask), so the pruned
    weights stay exactly zero through every optimiser step; at the end the masks are folded
    into plain weights. Fine-tuning is SGD on ``train_data`` unless ``train_epoch(model, epoch)
    -> mean loss`` is given. ``prune_options`` go to :func:`prune_model`.
    """
    n_epochs = integer(n_epochs, "n_epochs", 1)
    if prune_epochs is None:
        prune_epochs = gradual_epochs(n_epochs, n_prunes)
    epochs = sorted(int(e) for e in prune_epochs)
    if not epochs or len(set(epochs)) != len(epochs) or epochs[0] < 0 or epochs[-1] >= n_epochs:
        raise OptionError(f"`prune_epochs` must be distinct epochs in [0, {n_epochs - 1}]; "
                          f"got {list(prune_epochs)}")
    train_data = check_calib(train_data)
    plan = stage_budgets(fraction(flops_fraction, "flops_fraction"), fraction(nnz_fraction, "nnz_fraction"),
                         len(epochs), schedule_start, schedule_power)
    reports: dict[int, PruneReport] = {}
    losses: list[float] = []
    for epoch in range(n_epochs):
        if epoch in epochs:
            nf, ff = plan[epochs.index(epoch)]
            reports[epoch] = prune_model(model, calib, ff, nf, method, keep_masks=True,
                                         seed=seed + epoch, **prune_options)
        if train_epoch is not None:
            losses.append(float(train_epoch(model, epoch)))
        else:
            losses.append(_sgd_epoch(model, train_data, lr, momentum, batch_size, seed + epoch,
                                     prune_options.get("loss_fn")))
    remove_masks(model)
    return GradualReport(epochs, reports, losses)


def _sgd_epoch(model: nn.Module, data: Calib, lr: float, momentum: float, batch_size: int,
               seed: int, loss_fn: Callable | None) -> float:
    """One epoch of SGD with momentum (a fresh optimiser, order drawn from ``seed``) by
    :func:`.train.train_epoch`; the model is left in eval mode. Returns the mean loss."""
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=lr, momentum=momentum)
    model.train()
    loss, _ = train_epoch(model, data[0], data[1], opt, batch_size, torch.Generator().manual_seed(seed),
                          loss_fn=loss_fn)
    model.eval()
    return loss
