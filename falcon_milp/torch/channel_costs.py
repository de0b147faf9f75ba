"""MACs, parameters and (fitted) latency of a network as functions of its groups' kept counts.

Every input or output channel count of a layer is affine in the counts: ``c + sum_g a_g k_g``
(a constant for fixed groups and constant-zero channels; ``a_g`` is the multiplicity of a
flattened input). A layer's cost is then a product of two such forms, expanded into the
constant / linear / pair terms of :class:`falcon_milp.channels.ChannelResource`:

- convolution (groups = 1): MACs = P kh kw C_in C_out, params = kh kw C_in C_out + bias C_out
  (P = output positions per example);
- depthwise: MACs = P kh kw C, params = kh kw C + bias C;
- linear: MACs = P C_in C_out (C_in counts flattened features), params = C_in C_out + bias C_out;
- BatchNorm: 2 C affine parameters (no MACs, as in the FLOP counts of the unstructured side);
- every other parameter of the model is a constant.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from torch import nn

from . import ModelError
from .channel_graph import ChannelGraph

__all__ = ["Affine", "channel_resources", "count_affine"]


class Affine:
    """c + sum_g a_g k_g over the problem's groups (:class:`Polynomial` multiplies two of them)."""

    def __init__(self, const: float = 0.0, coef: dict[int, float] | None = None) -> None:
        self.const = float(const)
        self.coef = dict(coef or {})


class Polynomial:
    """Accumulates constant + lin . k + sum pair terms (the ChannelResource dict)."""

    def __init__(self, n_groups: int) -> None:
        self.const = 0.0
        self.lin = np.zeros(n_groups)
        self.pairs: dict[tuple[int, int], float] = {}

    def add_affine(self, a: Affine, s: float = 1.0) -> None:
        self.const += s * a.const
        for g, c in a.coef.items():
            self.lin[g] += s * c

    def add_product(self, a: Affine, b: Affine, s: float = 1.0) -> None:
        self.const += s * a.const * b.const
        for g, c in a.coef.items():
            self.lin[g] += s * c * b.const
        for h, c in b.coef.items():
            self.lin[h] += s * c * a.const
        for g, c in a.coef.items():
            for h, d in b.coef.items():
                key = (min(g, h), max(g, h))
                self.pairs[key] = self.pairs.get(key, 0.0) + s * c * d

    def as_dict(self) -> dict:
        return {"constant": self.const, "lin": self.lin.copy(),
                "pairs": [(g, h, c) for (g, h), c in self.pairs.items()]}


def count_affine(graph: ChannelGraph, units: np.ndarray, index: dict[int, int], multiplicity: int = 1) -> Affine:
    """The channel count of ``units`` (times ``multiplicity``) as an affine form in the
    prunable groups' counts (``index``: graph group -> problem group). A group is seen with
    all of its channels (that is how groups are formed), so its coefficient is the multiplicity."""
    const = 0.0
    seen: dict[int, int] = {}
    for u in units.tolist():
        g = int(graph.unit_group[u, 0]) if u >= 0 else -1
        if g in index:
            seen[g] = seen.get(g, 0) + 1
        else:
            const += multiplicity
    coef = {}
    for g, c in seen.items():
        size = graph.groups[g].size
        if c % size:
            raise ModelError(f"group '{graph.groups[g].name}' is read partially by one layer")
        coef[index[g]] = float(multiplicity * (c // size))
    return Affine(const, coef)


def channel_resources(model: nn.Module, graph: ChannelGraph, groups: Sequence[int]) -> dict[str, dict]:
    """``{"flops": ..., "params": ...}`` resource dicts over the problem groups ``groups``
    (graph group indices, in problem order), exact for the model as traced."""
    index = {g: i for i, g in enumerate(groups)}
    flops, params = Polynomial(len(groups)), Polynomial(len(groups))
    covered: set[int] = set()
    for name, use in graph.uses.items():
        mod = use.module
        w = mod.weight
        covered.add(id(w))
        kernel = math.prod(w.shape[2:]) if w.ndim > 2 else 1
        bias = getattr(mod, "bias", None)
        if bias is not None:
            covered.add(id(bias))
        out = count_affine(graph, use.out_units, index)
        if use.kind == "depthwise":
            flops.add_affine(out, use.positions * kernel)
            params.add_affine(out, kernel + (1 if bias is not None else 0))
            continue
        cin = count_affine(graph, use.in_units, index, use.multiplicity)
        flops.add_product(cin, out, use.positions * kernel)
        params.add_product(cin, out, kernel)
        if bias is not None:
            params.add_affine(out)
    modules = dict(model.named_modules())
    for name, units in graph.norms.items():
        bn = modules[name]
        n_affine = sum(p is not None for p in (bn.weight, bn.bias))
        for p in (bn.weight, bn.bias):
            if p is not None:
                covered.add(id(p))
        params.add_affine(count_affine(graph, units, index), n_affine)
    params.const += sum(p.numel() for p in model.parameters() if id(p) not in covered)
    return {"flops": flops.as_dict(), "params": params.as_dict()}
