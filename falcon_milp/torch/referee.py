"""The real loss as referee: judge candidate pruned weights on held-out calibration data.

The quadratic model Q is a Taylor model at the current weights; one-shot pruning to a few
percent of the weights goes far outside the region where it describes the loss. So every
choice the model cannot make well is made by the *actual* mean loss on a validation split of
the calibration data, disjoint from the examples whose gradients build Q (never the test set):

- :func:`split_calibration` -- the (gradient part, validation part) split;
- :class:`Referee` -- writes candidate weights into the model (BatchNorm statistics re-estimated
  on the gradient part's inputs when the model has BatchNorm), returns a :class:`Verdict`
  (validation loss and accuracy), and remembers the best candidate it has seen;
- :func:`search_layer_scales` -- the layer allocation of the selection ILP chosen by the referee:
  per-layer factors s_l on the importances (I_i = s_l u_i^2, i.e. a projection in a per-layer
  scaled norm). The Euclidean projection weighs every layer alike, which nothing justifies
  (under BatchNorm a layer's weights can be rescaled at no change of the function); the
  factors are found by coordinate search on log2 s_l with shrinking steps.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..validation import choice
from . import OptionError
from .batchnorm import has_batchnorm, recalibrate_batchnorm
from .flops import PrunableLayer
from .masks import write_weights

__all__ = ["CRITERIA", "Calib", "Referee", "ScaleSearch", "Verdict", "calibrated_loss", "mean_loss",
           "search_layer_scales", "split_calibration"]

Calib = tuple[torch.Tensor, torch.Tensor]


def split_calibration(pool: Calib, val_fraction: float, seed: int = 0,
                      min_val: int = 256) -> tuple[Calib, Calib | None]:
    """(gradient part, validation part) of the calibration pool, drawn at random (``seed``).

    The validation part holds round(val_fraction N) examples, raised to min(min_val, N // 2)
    when that is larger; ``val_fraction=0`` (or N < 4) gives no validation part.
    """
    x, y = pool
    n = int(x.shape[0])
    if val_fraction == 0 or n < 4:
        return pool, None
    n_val = max(int(round(val_fraction * n)), min(min_val, n // 2))
    n_val = min(n_val, n - 1)
    gen = torch.Generator().manual_seed(int(seed) + 7_919)
    idx = torch.randperm(n, generator=gen)
    v, r = idx[:n_val], idx[n_val:]
    return (x[r], y[r]), (x[v], y[v])


@dataclass(frozen=True)
class Verdict:
    """Validation loss, accuracy (None for non-class targets) and the score that ranks
    candidates (lower is better: see :class:`Referee`)."""

    loss: float
    accuracy: float | None
    score: float = math.nan


class Referee:
    """Measures candidate weights on the validation part; keeps the best one.

    ``__call__(w, mask, label)`` writes w (zero off the mask) into the model, re-estimates
    BatchNorm statistics (if ``bn_inputs`` is given and the model has BatchNorm), and returns
    the :class:`Verdict`; labelled candidates are logged and compete for :attr:`best`
    (unlabelled ones are probes, e.g. of the layer-scale search). The model is left holding the last candidate: call
    :meth:`write_best` to put the best one back.
    """

    def __init__(self, model: nn.Module, layers: Sequence[PrunableLayer], val: Calib,
                 loss_fn: Callable | None = None, bn_inputs: torch.Tensor | None = None,
                 batch_size: int = 512, criterion: str = "calibrated-loss") -> None:
        self.model = model
        self.layers = layers
        self.val = val
        self.loss_fn = loss_fn
        self.bn_inputs = bn_inputs if bn_inputs is not None and has_batchnorm(model) else None
        choice(criterion, "criterion", CRITERIA)
        if criterion == "calibrated-loss" and loss_fn is not None:
            criterion = "loss"
        self.criterion = criterion
        self.batch_size = batch_size
        self.n_evals = 0
        self.seconds = 0.0
        self.best: tuple[float, np.ndarray, np.ndarray, str] | None = None
        self.log: list[dict[str, Any]] = []

    def reset(self) -> None:
        """Forget the best candidate and the log (a new stage starts)."""
        self.best = None
        self.log = []

    def measure(self) -> Verdict:
        """The verdict on the model's current weights (eval mode; the mode is restored)."""
        return mean_loss(self.model, self.val, self.loss_fn, self.batch_size, self.criterion)

    def __call__(self, w: np.ndarray, mask: np.ndarray, label: str = "", **info: Any) -> Verdict:
        t = time.perf_counter()
        write_weights(self.layers, w, mask)
        if self.bn_inputs is not None:
            recalibrate_batchnorm(self.model, self.bn_inputs)
        v = self.measure()
        self.n_evals += 1
        self.seconds += time.perf_counter() - t
        if label and math.isfinite(v.score) and (self.best is None or v.score < self.best[0]):
            self.best = (v.score, np.asarray(w, dtype=np.float64).copy(), np.asarray(mask, dtype=bool).copy(), label)
        if label:
            self.log.append({"candidate": label, "val_loss": v.loss, "val_accuracy": v.accuracy,
                             "score": v.score, **info})
        return v

    def write_best(self) -> tuple[np.ndarray, np.ndarray, str]:
        """Write the best candidate seen into the model; returns (w, mask, label)."""
        if self.best is None:
            raise OptionError("no candidate was judged (internal error)")
        _, w, mask, label = self.best
        write_weights(self.layers, w, mask)
        if self.bn_inputs is not None:
            recalibrate_batchnorm(self.model, self.bn_inputs)
        return w, mask, label


CRITERIA = ("calibrated-loss", "loss", "accuracy")


def calibrated_loss(logits: torch.Tensor, y: torch.Tensor) -> float:
    """min over a temperature T > 0 of the mean cross entropy of logits / T.

    Pruning distorts the confidence of a network as much as its ranking of the classes; the
    best temperature removes the first (a collapsed network with constant outputs then scores
    the entropy of the labels, ~2.30 for ten balanced classes, worse than any network that
    still ranks the right class first more often than chance). Golden-section search on
    log T in [-6, 6] (convex in 1/T), 40 evaluations on the cached logits.
    """
    z = logits.double()

    def ce(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    a, b = -6.0, 6.0
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = ce(c), ce(d)
    for _ in range(40):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = ce(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = ce(d)
    return min(fc, fd, ce(0.0))


def mean_loss(model: nn.Module, data: Calib, loss_fn: Callable | None = None,
              batch_size: int = 512, criterion: str = "loss") -> Verdict:
    """Mean loss (default cross entropy), top-1 accuracy and the ``criterion`` score of
    ``model`` on ``data``, eval mode. Scores: ``"loss"``; ``"calibrated-loss"``
    (:func:`calibrated_loss`, default loss only); ``"accuracy"``: 1 - accuracy, loss / 1e6
    breaking ties."""
    x, y = data
    was = model.training
    model.eval()
    total, correct = 0.0, 0
    classes = y.dtype in (torch.int64, torch.int32) and y.ndim == 1
    outs = []
    try:
        with torch.no_grad():
            for s in range(0, x.shape[0], batch_size):
                out = model(x[s:s + batch_size])
                yb = y[s:s + batch_size]
                if loss_fn is None:
                    total += float(F.cross_entropy(out, yb, reduction="sum"))
                    if criterion == "calibrated-loss":
                        outs.append(out)
                else:
                    total += sum(float(loss_fn(out[k:k + 1], yb[k:k + 1])) for k in range(out.shape[0]))
                if classes and out.ndim == 2:
                    correct += int((out.argmax(1) == yb).sum())
    finally:
        model.train(was)
    n = max(int(x.shape[0]), 1)
    loss = total / n
    acc = correct / n if classes else None
    score = loss
    if criterion == "calibrated-loss" and outs:
        score = calibrated_loss(torch.cat(outs), y)
    elif criterion == "accuracy" and acc is not None:
        score = 1.0 - acc + loss * 1e-6
    return Verdict(loss, acc, score if math.isfinite(score) else math.inf)


@dataclass
class ScaleSearch:
    """Outcome of :func:`search_layer_scales`: log2 factors per layer, the mask, the losses."""

    log2_scales: np.ndarray
    mask: np.ndarray
    loss: float
    loss_start: float
    n_evals: int
    history: list[float] = field(default_factory=list)

    @property
    def scales(self) -> np.ndarray:
        return np.exp2(self.log2_scales)


def search_layer_scales(judge: Callable[[np.ndarray], float], project: Callable[[np.ndarray], np.ndarray],
                        base: np.ndarray, group_sizes: Sequence[int], *,
                        steps: Sequence[float] = (4.0, 2.0, 1.0, 0.5, 0.25),
                        max_evals: int = 200, starts: Sequence[np.ndarray] = ()) -> ScaleSearch:
    """Coordinate search for per-layer factors s_l = 2^theta_l of the importances.

    For theta the mask is ``project(base * s_group(i))`` and its score ``judge(mask)`` (the
    validation loss of the kept weights, lower is better). The search starts from the best of
    theta = 0 (the plain importances) and ``starts``; each layer's theta_l is moved by +step
    and -step, a move is kept when it lowers the score, and the step shrinks through
    ``steps`` when no move helps. Masks already scored are not scored again. Stops after
    ``max_evals`` scores.
    """
    sizes = np.asarray(group_sizes, dtype=np.int64)
    gid = np.repeat(np.arange(sizes.size), sizes)
    seen: dict[bytes, float] = {}
    n_evals = 0

    def score(th: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal n_evals
        mask = np.asarray(project(base * np.exp2(th)[gid]), dtype=bool)
        key = np.packbits(mask).tobytes()
        if key not in seen:
            seen[key] = float(judge(mask))
            n_evals += 1
        return seen[key], mask

    theta = np.zeros(sizes.size)
    best, mask = score(theta)
    start_loss = best
    for st in starts:
        th = np.asarray(st, dtype=np.float64).reshape(sizes.size)
        val, m = score(th)
        if val < best:
            best, theta, mask = val, th, m
    history = [best]
    for step in steps:
        improved = True
        while improved and n_evals < max_evals:
            improved = False
            for l in range(sizes.size):
                for sign in (1.0, -1.0):
                    if n_evals >= max_evals:
                        break
                    th = theta.copy()
                    th[l] += sign * step
                    val, m = score(th)
                    if val < best - 1e-12 * max(1.0, abs(best)):
                        best, theta, mask, improved = val, th, m, True
                        history.append(best)
    return ScaleSearch(theta, mask, best, start_loss, n_evals, history)
