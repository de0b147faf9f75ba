"""A small deterministic training loop (Adam, cosine learning rate, optional random shifts).

Used by ``scripts/train_mnist.py`` to train the bundled MNIST networks on the 5k training images;
:func:`train_epoch` is also the fine-tuning loop of :mod:`.gradual` (a masked model (masks from :mod:`falcon_milp.torch.masks` keep the
pruned weights at zero). For a given seed, thread count and machine the run is reproducible.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import integer, real

__all__ = ["evaluate", "random_shift", "train_classifier", "train_epoch"]


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer (dy, dx) in [-max_shift, max_shift]^2, filled with the
    batch minimum (the background: a 0 pixel after normalisation)."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    fill = x.amin()
    padded = F.pad(x, (max_shift,) * 4, value=float(fill))
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :].expand(n, h, w)
    idx = torch.arange(n)[:, None, None].expand(n, h, w)
    return padded.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2).contiguous()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for s in range(0, x.shape[0], batch_size):
                correct += int((model(x[s:s + batch_size]).argmax(1) == y[s:s + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / x.shape[0]


def train_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                batch_size: int, gen: torch.Generator, *, loss_fn: Callable | None = None, max_shift: int = 0,
                sched: Any = None) -> tuple[float, float]:
    """One pass over (x, y) in the random order ``gen`` draws, one optimiser step per batch
    (``sched`` stepped after each), the model in train mode. Loss: cross entropy, or the mean of
    the per-example ``loss_fn(output, target)``. ``max_shift`` > 0 adds random translations.
    Returns the mean loss and the training accuracy over the epoch."""
    perm = torch.randperm(x.shape[0], generator=gen)
    loss_sum, correct = 0.0, 0
    for s in range(0, x.shape[0], batch_size):
        idx = perm[s:s + batch_size]
        xb = random_shift(x[idx], max_shift, gen)
        out = model(xb)
        loss = F.cross_entropy(out, y[idx]) if loss_fn is None else \
            torch.stack([loss_fn(out[k:k + 1], y[idx][k:k + 1]) for k in range(out.shape[0])]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        loss_sum += float(loss.detach()) * idx.numel()
        correct += int((out.argmax(1) == y[idx]).sum())
    return loss_sum / x.shape[0], correct / x.shape[0]


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 30,
                     batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 0.0,
                     max_shift: int = 0, seed: int = 0,
                     log: Callable[[dict], None] | None = None) -> list[dict]:
    """Train with cross entropy, Adam(W) and a cosine learning-rate decay to 0.

    ``max_shift`` > 0 adds random translations of up to that many pixels. Returns one dict per
    epoch (``epoch``, ``loss``, ``train_acc`` on the augmented batches, ``lr``); ``log`` is called
    with each of them.
    """
    integer(epochs, "epochs", 1)
    integer(batch_size, "batch_size", 1)
    real(lr, "lr", strict=True)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    history = []
    model.train()
    for epoch in range(epochs):
        loss, acc = train_epoch(model, x, y, opt, batch_size, gen, max_shift=max_shift, sched=sched)
        rec = {"epoch": epoch + 1, "loss": loss, "train_acc": acc, "lr": opt.param_groups[0]["lr"]}
        history.append(rec)
        if log is not None:
            log(rec)
    model.eval()
    return history
