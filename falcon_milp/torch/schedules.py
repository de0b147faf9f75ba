"""Pruning schedules: pure functions of numbers (no torch, no model).

- :func:`polynomial_schedule`: the kept fraction at each of K stages (FALCON++), going from
  ``start`` (first stage) to ``end`` (last stage) on the polynomial (Zhu & Gupta style) curve

      kept_k = end + (start - end) * (1 - k / (K - 1))^power,    k = 0, ..., K - 1

  so the steps are large at first and small near the target.
- :func:`stage_budgets`: the (NNZ fraction, FLOP fraction) pair of every stage.
- :func:`gradual_epochs`: the epochs at which gradual pruning prunes.
"""
from __future__ import annotations

from ..exceptions import OptionError
from ..validation import fraction, integer, real


def polynomial_schedule(start: float, end: float, stages: int, power: float = 3.0) -> list[float]:
    """Kept fractions of the K stages: ``start`` at the first, ``end`` at the last.

    ``start`` is clipped to be >= ``end``. Non-increasing; ``stages=1`` gives ``[end]``.
    """
    start = fraction(start, "start", optional=False)
    end = fraction(end, "end", optional=False)
    stages = integer(stages, "stages", 1)
    real(power, "power", strict=True)
    start = max(start, end)
    if stages == 1:
        return [end]
    out = [end + (start - end) * (1.0 - k / (stages - 1)) ** power for k in range(stages)]
    out[-1] = end
    return out


def stage_budgets(flops_fraction: float | None, nnz_fraction: float | None, stages: int,
                  start: float = 0.7, power: float = 3.0) -> list[tuple[float | None, float | None]]:
    """(NNZ fraction, FLOP fraction) kept at each stage; ``None`` stays ``None`` (no budget).

    Each budget follows :func:`polynomial_schedule` from ``start`` to its own target (a target
    above ``start`` is reached from above with a flat schedule at the target).
    """
    stages = integer(stages, "stages", 1)
    nnz = None if nnz_fraction is None else polynomial_schedule(
        start, fraction(nnz_fraction, "nnz_fraction"), stages, power)
    flops = None if flops_fraction is None else polynomial_schedule(
        start, fraction(flops_fraction, "flops_fraction"), stages, power)
    return [(None if nnz is None else nnz[k], None if flops is None else flops[k]) for k in range(stages)]


def gradual_epochs(n_epochs: int, n_prunes: int, first: int = 0, last: int | None = None) -> list[int]:
    """``n_prunes`` distinct epochs evenly spaced in [first, last] (default last = n_epochs - 1).

    Gradual pruning prunes at the start of each listed epoch and fine-tunes the rest of it.
    """
    n_epochs = integer(n_epochs, "n_epochs", 1)
    n_prunes = integer(n_prunes, "n_prunes", 1)
    first = integer(first, "first", 0)
    last = n_epochs - 1 if last is None else integer(last, "last", 0)
    if not first <= last < n_epochs:
        raise OptionError(
            f"`first` <= `last` < `n_epochs` must hold; got {first}, {last}, {n_epochs}")
    if n_prunes > last - first + 1:
        raise OptionError(
            f"`n_prunes` must be at most last - first + 1 = {last - first + 1}; got {n_prunes}")
    if n_prunes == 1:
        return [first]
    step = (last - first) / (n_prunes - 1)
    epochs = [first + round(k * step) for k in range(n_prunes)]
    # rounding cannot collide because step >= 1, but keep the guarantee explicit
    assert len(set(epochs)) == n_prunes
    return epochs
