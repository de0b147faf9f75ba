"""Measured CPU latency: whole models, and a per-layer table for the channel MILP's latency budget.

:func:`fit_latency_model` times every convolution / linear layer of a traced model alone, on
its own input shape, at a grid of kept input x output channel fractions (4 x 4 points; 4 for a
depthwise layer), and fits each layer's table with non-negative least squares by

    t_l(c_in, c_out) = a_l + b_l c_in + c_l c_out + d_l c_in c_out

(the bilinear shape of its MAC count plus per-channel memory traffic and a fixed launch cost;
each point is the fastest of >= 5 runs, the statistic least disturbed by other load),
so the latency budget has the same constant / linear / pair structure as the MAC budget and the
MILP stays exact *for the fitted model*. Everything else in the network (BatchNorm, activations,
pooling, Python overhead) is one constant: the measured dense model time minus the fitted
dense layer times (clipped at 0). The fit's relative error per layer is in the summary; the
pruned model's latency is always measured again, never taken from the fit.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from . import ModelError
from .channel_costs import Polynomial, count_affine
from .channel_graph import ChannelGraph, ModuleUse, eval_mode

__all__ = ["LatencyModel", "compare_latency", "fit_latency_model", "measure_latency"]

GRID = (0.25, 0.5, 0.75, 1.0)


def measure_latency(model: nn.Module, x: torch.Tensor, *, min_time: float = 0.3, min_runs: int = 5,
                    warmup: int = 2, statistic: str = "median") -> float:
    """Seconds of ``model(x)`` in eval mode without gradients (the mode is restored): the
    ``median`` or ``min`` of at least ``min_runs`` runs lasting ``min_time`` in all."""
    with eval_mode(model), torch.no_grad():
        for _ in range(warmup):
            model(x)
        runs: list[float] = []
        start = time.perf_counter()
        while len(runs) < min_runs or time.perf_counter() - start < min_time:
            t = time.perf_counter()
            model(x)
            runs.append(time.perf_counter() - t)
    return min(runs) if statistic == "min" else statistics.median(runs)


def compare_latency(first: nn.Module, second: nn.Module, x: torch.Tensor, rounds: int = 3,
                    min_time: float = 0.2) -> tuple[float, float]:
    """Seconds of ``first(x)`` and ``second(x)`` measured side by side: ``rounds`` alternating
    rounds, each the fastest of its runs, and the fastest round of each model (load from other
    processes only ever adds time, so the minimum is the least disturbed estimate)."""
    a, b = [], []
    for _ in range(rounds):
        a.append(measure_latency(first, x, min_time=min_time, statistic="min"))
        b.append(measure_latency(second, x, min_time=min_time, statistic="min"))
    return min(a), min(b)


def _layer(use: ModuleUse, c_in: int, c_out: int | None) -> tuple[nn.Module, torch.Tensor]:
    """A standalone copy of ``use``'s layer at (c_in, c_out) channels (depthwise: c_out None)
    and one input example for it."""
    mod = use.module
    if use.kind == "linear":
        layer = nn.Linear(c_in * use.multiplicity, c_out, bias=mod.bias is not None)
        return layer, torch.randn(1, c_in * use.multiplicity)
    depthwise = c_out is None
    conv = type(mod)(c_in, c_in if depthwise else c_out, mod.kernel_size, mod.stride, mod.padding,
                     mod.dilation, c_in if depthwise else 1, mod.bias is not None, mod.padding_mode)
    return conv, torch.randn(1, c_in, *use.in_shape[2:])


def _features(c_in: int, c_out: int | None) -> list[float]:
    """The fit's regressors (1, c_in, c_out, c_in c_out); a depthwise layer (c_out None) has
    only the first two."""
    return [1.0, c_in, 0.0, 0.0] if c_out is None else [1.0, c_in, c_out, c_in * c_out]


@dataclass
class LatencyModel:
    """Fitted per-layer coefficients (a, b, c, d) by module name, and the constant remainder."""

    coefficients: dict[str, tuple[float, float, float, float]]
    constant: float
    batch: int
    fit_error: dict[str, float]
    measured_dense_s: float

    def resource(self, graph: ChannelGraph, groups: Sequence[int]) -> dict:
        """The latency as a ChannelResource dict over the problem groups ``groups``."""
        if set(self.coefficients) != set(graph.uses):
            missing = sorted(set(graph.uses) ^ set(self.coefficients))
            raise ModelError(f"the latency model was fitted on other layers (differs in '{missing[0]}')")
        index = {g: i for i, g in enumerate(groups)}
        poly = Polynomial(len(groups))
        poly.const += self.constant
        for name, (a, b, c, d) in self.coefficients.items():
            use = graph.uses[name]
            cin = count_affine(graph, use.in_units, index)
            cout = count_affine(graph, use.out_units, index)
            poly.const += a
            poly.add_affine(cin, b)
            poly.add_affine(cout, c)
            poly.add_product(cin, cout, d)
        return poly.as_dict()

    def summary(self) -> dict[str, Any]:
        errs = list(self.fit_error.values())
        return {"batch": self.batch, "layers": len(self.coefficients), "constant_s": self.constant,
                "measured_dense_s": self.measured_dense_s,
                "max_fit_error": max(errs) if errs else 0.0,
                "median_fit_error": statistics.median(errs) if errs else 0.0}


def fit_latency_model(model: nn.Module, graph: ChannelGraph, batch: int = 64,
                      example_input: torch.Tensor | None = None) -> LatencyModel:
    """Time every layer of ``graph`` on the grid and fit the table (module docstring)."""
    coefficients: dict[str, tuple[float, float, float, float]] = {}
    errors: dict[str, float] = {}
    dense_fit = 0.0
    for name, use in graph.uses.items():
        n_in = use.in_units.size
        n_out = None if use.kind == "depthwise" else use.out_units.size
        rows, times = [], []
        ins = sorted({max(1, round(f * n_in)) for f in GRID})
        outs = [None] if n_out is None else sorted({max(1, round(f * n_out)) for f in GRID})
        for ci in ins:
            for co in outs:
                layer, x1 = _layer(use, ci, co)
                x = x1.expand(batch, *x1.shape[1:]).contiguous()
                times.append(measure_latency(layer, x, min_time=0.05, min_runs=5, warmup=1, statistic="min"))
                rows.append(_features(ci, co))
        A, y = np.array(rows), np.array(times)
        coef, _ = nnls(A, y)            # the all-zero columns of a depthwise layer stay 0
        errors[name] = float(np.max(np.abs(A @ coef - y) / y))
        coefficients[name] = tuple(float(c) for c in coef)
        dense_fit += float(coef @ np.array(_features(n_in, n_out)))
    if example_input is None:
        first = next(u for u in graph.uses.values())
        example_input = torch.randn(1, *first.in_shape[1:])
    x = example_input[:1].expand(batch, *example_input.shape[1:]).contiguous()
    measured = measure_latency(model, x, statistic="min")
    return LatencyModel(coefficients, max(0.0, measured - dense_fit), batch, errors, measured)
