"""Structured FLOP-aware pruning: keep whole channels, chosen by the exact channel MILP.

``prune_channels(model, example_input, flops_fraction=0.3, calib=(x, y))``:

1. the coupling graph (:mod:`.channel_graph`) groups the channels pruned together;
2. every channel gets an importance (:func:`channel_importance`): ``taylor`` (default) is the
   Fisher estimate of the loss increase when the channel is removed, sum over calibration
   batches of B (dL/dm_c)^2 for a gate m_c = 1 on the channel where its consumers read it;
   ``magnitude`` is the sum, over every tensor slice the channel owns (producer rows,
   consumer columns, depthwise filters, BatchNorm scale), of the slice's squared weights
   divided by the tensor's squared norm (so tensors of different scales weigh alike);
3. the channel MILP (:mod:`falcon_milp.solvers.channels`) picks the kept count of every group
   (channels kept in descending importance) under the MAC, parameter and optional latency
   budgets, with a proven optimality gap;
4. :func:`.channel_surgery.slice_model` cuts the model down; BatchNorm is re-estimated on the
   calibration images; MACs and parameters are counted again on the small model,
   independently of the MILP (they must agree exactly), and CPU latency is measured.
"""
from __future__ import annotations

import math
import time
from fractions import Fraction
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..channels import ChannelProblem, check_counts
from ..solvers.channels import CHANNEL_SOLVERS, solve_channels
from . import ModelError, OptionError
from .batchnorm import has_batchnorm, recalibrate_batchnorm
from .channel_costs import channel_resources
from .channel_graph import ChannelGraph, build_channel_graph, eval_mode
from .channel_surgery import channel_gates, slice_model
from .flops import dense_flops, prunable_layers
from .latency import LatencyModel, compare_latency, fit_latency_model
from ..validation import choice, fraction, integer, real
from .options import check_calib

__all__ = ["CHANNEL_IMPORTANCES", "ChannelReport", "channel_importance", "load_channel_pruned", "prune_channels",
           "save_channel_pruned"]

CHANNEL_IMPORTANCES = ("taylor", "magnitude")


def _slices(graph: ChannelGraph, model: nn.Module, g: int) -> list[tuple[torch.Tensor, int, np.ndarray, int]]:
    """(tensor, channel dim, positions, multiplicity) of every weight slice group g owns."""
    modules = dict(model.named_modules())
    out = []
    for m in graph.groups[g].members:
        weight = modules[m.module].weight      # None for a BatchNorm without affine parameters
        if weight is not None:                 # consumers own input columns, the others output rows
            out.append((weight, 1 if m.role == "consumer" else 0, m.positions, m.multiplicity))
    return out


def _magnitude(graph: ChannelGraph, model: nn.Module, g: int) -> np.ndarray:
    score = np.zeros(graph.groups[g].size)
    for w, dim, pos, mult in _slices(graph, model, g):
        w = w.detach().double().cpu()
        per = (w.transpose(0, dim) ** 2).reshape(w.shape[dim], -1).sum(1).numpy()
        if mult > 1:
            per = per.reshape(-1, mult).sum(1)
        total = per.sum()
        if total > 0:
            score += per[pos] / total
    return score


def _taylor(graph: ChannelGraph, model: nn.Module, groups: Sequence[int], calib: tuple[torch.Tensor, torch.Tensor],
            batch_size: int) -> list[np.ndarray]:
    gates = {g: torch.ones(graph.groups[g].size, dtype=torch.float64, requires_grad=True) for g in groups}
    scores = {g: torch.zeros(graph.groups[g].size, dtype=torch.float64) for g in groups}
    x, y = calib
    with eval_mode(model), channel_gates(model, graph, gates):
        for s in range(0, x.shape[0], batch_size):
            xb, yb = x[s:s + batch_size], y[s:s + batch_size]
            loss = F.cross_entropy(model(xb), yb)
            grads = torch.autograd.grad(loss, [gates[g] for g in groups], allow_unused=True)
            for g, gr in zip(groups, grads):
                if gr is not None:          # None: nothing downstream reads the group
                    scores[g] += xb.shape[0] * gr.detach() ** 2
    return [scores[g].numpy() for g in groups]


def channel_importance(model: nn.Module, graph: ChannelGraph, groups: Sequence[int], kind: str = "taylor",
                       calib: tuple[torch.Tensor, torch.Tensor] | None = None,
                       batch_size: int = 64) -> list[np.ndarray]:
    """One importance per channel of each group in ``groups`` (module docstring), >= 0."""
    kind = choice(kind, "importance", CHANNEL_IMPORTANCES)
    if kind == "magnitude":
        return [_magnitude(graph, model, g) for g in groups]
    if calib is None:
        raise OptionError("`calib` is required for importance='taylor' (images and labels)")
    return _taylor(graph, model, groups, calib, batch_size)


@dataclass
class ChannelReport:
    """What :func:`prune_channels` did. Counts are per group (``groups``: their names);
    ``flops``/``params`` dicts hold ``dense``, ``budget``, ``milp`` (the MILP's exact count) and
    ``counted`` (re-counted on the small model by :mod:`.flops` and ``numel``)."""

    groups: list[str]
    sizes: list[int]
    kept: list[int]
    kept_channels: dict[str, list[int]]
    importance: str
    solver: str
    status: str
    value: float
    bound: float
    gap: float
    solve_s: float
    flops: dict[str, float]
    params: dict[str, float]
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_model: dict[str, Any] = field(default_factory=dict)
    batchnorm_recalibrated: bool = False
    times: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def flops_fraction(self) -> float:
        return self.flops["counted"] / self.flops["dense"]


def _round_up(x: Fraction) -> float:
    """The float nearest ``x`` from above (a budget of fraction 1 keeps the dense model feasible)."""
    f = float(x)
    return f if Fraction(f) >= x else math.nextafter(f, math.inf)


def _count(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    return (dense_flops(prunable_layers(model, example_input[:1])),
            sum(p.numel() for p in model.parameters()))


def prune_channels(model: nn.Module, example_input: torch.Tensor, *, flops_fraction: float | None = None,
                   params_fraction: float | None = None, latency_fraction: float | None = None,
                   calib: tuple[torch.Tensor, torch.Tensor] | None = None, importance: str = "taylor",
                   solver: str = "highs", min_keep: int = 1, time_limit: float | None = 60.0,
                   latency_batches: Sequence[int] = (1, 64), latency_model: LatencyModel | None = None,
                   recalibrate: bool = True, batch_size: int = 64,
                   round_to: int = 1) -> tuple[nn.Module, ChannelReport]:
    """Prune whole channels of ``model`` to the given fractions of its MACs / parameters /
    fitted latency (at least one); returns ``(smaller_model, report)``. ``model`` is not
    modified. ``calib``: (images, labels) of training data (Taylor scores, BatchNorm
    re-estimation); ``latency_batches``: batch sizes at which CPU latency is measured before
    and after (empty: none); ``latency_model``: a fitted per-layer table for the latency
    budget (default: fitted here when ``latency_fraction`` is given); ``round_to``: kept counts
    are multiples of it (or the whole group)."""
    budgets = {"flops": fraction(flops_fraction, "flops_fraction"),
               "params": fraction(params_fraction, "params_fraction"),
               "latency": fraction(latency_fraction, "latency_fraction")}
    if all(v is None for v in budgets.values()):
        raise OptionError("give at least one of `flops_fraction`, `params_fraction`, `latency_fraction`")
    for k, v in budgets.items():
        if v is not None and v <= 0:
            raise OptionError(f"`{k}_fraction` must be in (0, 1]; got {v!r}")
    importance = choice(importance, "importance", CHANNEL_IMPORTANCES)
    solver = choice(solver, "solver", CHANNEL_SOLVERS)
    min_keep = integer(min_keep, "min_keep", 1)
    if calib is not None:
        calib = check_calib(calib)
    elif importance == "taylor":
        raise OptionError("`calib` is required for importance='taylor' (images and labels)")
    if not isinstance(example_input, torch.Tensor):
        raise OptionError(f"`example_input` must be a tensor; got {type(example_input).__name__}")
    if isinstance(latency_batches, (str, bytes)) or not isinstance(latency_batches, Sequence):
        raise OptionError(f"`latency_batches` must be a list of batch sizes; got {latency_batches!r}")
    batches = tuple(integer(b, "latency_batches", 1) for b in latency_batches)
    real(time_limit, "time_limit", strict=True, unit="seconds", optional=True)
    batch_size = integer(batch_size, "batch_size", 1)
    round_to = integer(round_to, "round_to", 1)
    if latency_model is not None and not isinstance(latency_model, LatencyModel):
        raise OptionError(f"`latency_model` must be a LatencyModel (fit_latency_model); got "
                          f"{type(latency_model).__name__}")

    times: dict[str, float] = {}
    t = time.perf_counter()
    graph = build_channel_graph(model, example_input)
    groups = graph.prunable
    if not groups:
        raise OptionError(f"{type(model).__name__} has no prunable channel group")
    times["graph"] = time.perf_counter() - t

    t = time.perf_counter()
    scores = channel_importance(model, graph, groups, importance, calib, batch_size)
    orders = [np.argsort(-s, kind="stable") for s in scores]
    values = [np.maximum(s[o], 0.0) for s, o in zip(scores, orders)]
    times["importance"] = time.perf_counter() - t

    resources = channel_resources(model, graph, groups)
    if budgets["latency"] is not None and latency_model is None:
        t = time.perf_counter()
        latency_model = fit_latency_model(model, graph, batch=max(batches) if batches else 64,
                                          example_input=example_input)
        times["latency_table"] = time.perf_counter() - t
    if latency_model is not None:
        resources["latency"] = latency_model.resource(graph, groups)
    sizes = [graph.groups[g].size for g in groups]
    dense_counts = np.array(sizes, dtype=np.int64)
    problem = ChannelProblem.from_groups(
        values, resources, {r: None for r in resources}, names=[graph.groups[g].name for g in groups],
        min_keep=np.minimum(min_keep, sizes))
    dense_exact = check_counts(problem, dense_counts).usage
    flops_dense, params_dense = _count(model, example_input)
    if dense_exact["flops"] != flops_dense or dense_exact["params"] != params_dense:
        raise ModelError(f"the channel graph's cost model of {type(model).__name__} disagrees with an "
                         f"independent count (MACs {float(dense_exact['flops'])} vs {flops_dense}, parameters "
                         f"{float(dense_exact['params'])} vs {params_dense}): a pattern it does not model")
    budget_abs = {r: (None if budgets.get(r) is None else _round_up(Fraction(budgets[r]) * dense_exact[r]))
                  for r in resources}
    dense_use = {r: float(u) for r, u in dense_exact.items()}
    problem = ChannelProblem.from_groups(values, resources, budget_abs, names=problem.names,
                                         min_keep=problem.min_keep, metadata={"dense": dense_use},
                                         round_to=round_to)

    t = time.perf_counter()
    res = solve_channels(problem, solver=solver, time_limit=time_limit)
    times["solve"] = time.perf_counter() - t
    if res.counts is None:
        raise OptionError(f"no channel counts meet the budgets ({res.status}: "
                          f"{res.extra.get('reason', res.extra.get('termination', ''))})")

    keep = {g: np.sort(o[:k]) for g, o, k in zip(groups, orders, res.counts.tolist())}
    t = time.perf_counter()
    small = slice_model(model, graph, keep)
    recal = False
    if recalibrate and calib is not None and has_batchnorm(small):
        recalibrate_batchnorm(small, calib[0])
        recal = True
    times["surgery"] = time.perf_counter() - t

    flops_small, params_small = _count(small, example_input)
    latency: dict[str, dict[str, float]] = {}
    t = time.perf_counter()
    for b in batches:
        xb = example_input[:1].expand(b, *example_input.shape[1:]).contiguous()
        before, after = compare_latency(model, small, xb)
        latency[f"batch{b}"] = {"dense_s": before, "pruned_s": after, "ratio": after / before}
    times["latency"] = time.perf_counter() - t
    report = ChannelReport(
        groups=list(problem.names), sizes=sizes, kept=res.counts.tolist(),
        kept_channels={problem.names[i]: keep[g].tolist() for i, g in enumerate(groups)},
        importance=importance, solver=solver, status=res.status, value=res.value, bound=res.bound, gap=res.gap,
        solve_s=res.runtime_s,
        flops={"dense": flops_dense, "budget": budget_abs["flops"] or math.inf, "milp": res.usage["flops"],
               "counted": flops_small},
        params={"dense": params_dense, "budget": budget_abs["params"] or math.inf, "milp": res.usage["params"],
                "counted": params_small},
        latency=latency, latency_model={} if latency_model is None else latency_model.summary(),
        batchnorm_recalibrated=recal, times=times,
        extra={k: v for k, v in res.extra.items() if isinstance(v, (int, float, str))})
    return small, report


CHANNEL_FILE_FORMAT = "falcon-milp-channels/1"


def save_channel_pruned(small: nn.Module, arch: str, report: ChannelReport, path: str) -> None:
    """Write the architecture name, the kept channels of every group and ``small``'s state_dict
    (``torch.save`` of a dict of tensors and lists; :func:`load_channel_pruned` reads it)."""
    torch.save({"format": CHANNEL_FILE_FORMAT, "arch": arch, "kept_channels": report.kept_channels,
                "state_dict": small.state_dict()}, path)


def load_channel_pruned(path: str) -> nn.Module:
    """The small model of a :func:`save_channel_pruned` file: the architecture rebuilt, cut to
    the kept channels with :func:`slice_model`, the saved weights loaded."""
    from .architectures import build_model, example_input
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - one line for any unreadable file
        raise OptionError(f"`{path}` is not a readable channel-pruned model file ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != CHANNEL_FILE_FORMAT:
        raise OptionError(f"`{path}` is not a channel-pruned model file (format {CHANNEL_FILE_FORMAT})")
    model = build_model(blob["arch"])
    graph = build_channel_graph(model, example_input(blob["arch"]))
    index = {grp.name: g for g, grp in enumerate(graph.groups)}
    unknown = [n for n in blob["kept_channels"] if n not in index]
    if unknown:
        raise OptionError(f"`{path}` names group '{unknown[0]}', which {blob['arch']} does not have")
    small = slice_model(model, graph, {index[n]: np.asarray(k) for n, k in blob["kept_channels"].items()})
    small.load_state_dict(blob["state_dict"])
    return small.eval()
