"""Architecture-shaped pruning instances without torch: layer tables and synthetic importances.

A layer table lists every prunable tensor of a network (conv and linear weights; biases and
BatchNorm are not pruned) as ``(name, n_weights, flops_per_weight, fan_in)``:

- conv: ``n_weights = out_ch * in_ch / groups * kh * kw``, ``flops_per_weight = H_out * W_out``
  (each kernel entry is used once per output pixel), ``fan_in = in_ch / groups * kh * kw``;
- linear: ``n_weights = in * out``, ``flops_per_weight = 1``, ``fan_in = in``.

The tables are derived from the architectures written out below (the module names follow the
torchvision convention, as in :mod:`falcon_milp.torch.architectures`):

=============  =================  ================  ==========================================
arch           prunable weights   dense MACs        notes
=============  =================  ================  ==========================================
resnet20       268,336 in 20      40,551,040        CIFAR-10 32x32, option-A shortcuts
mobilenetv1    4,209,088 in 28    568,740,352       ImageNet 224x224, width 1.0
resnet50       25,502,912 in 54   4,089,184,256     ImageNet 224x224, v1.5, downsample convs
=============  =================  ================  ==========================================

:func:`arch_instance` draws importances ``I = w**2`` with ``w ~ Normal(0, 1/sqrt(fan_in))`` per
layer (the scale of a He/LeCun-initialised network) and sets the budgets to fractions of the
dense totals: ``max_nnz = floor(nnz_fraction * p)``, ``max_flops = flops_fraction * dense MACs``.
:func:`random_layered` makes instances of any size for scaling studies.
Everything is deterministic given the seed.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .arch_tables import (BOTTLENECK_EXPANSION, MOBILENET_CFG, MOBILENET_STEM, RESNET20_BLOCKS, RESNET20_STAGES,
                          RESNET20_STEM, RESNET50_STAGES, RESNET50_STEM)
from .exceptions import OptionError
from .instance import PruningInstance
from .validation import choice, fraction, integer

LayerRow = tuple[str, int, int, int]
"""(name, n_weights, flops_per_weight, fan_in)"""

ARCHS = ("resnet20", "mobilenetv1", "resnet50")


def _conv(name: str, cin: int, cout: int, k: int, stride: int, h_in: int, groups: int = 1,
          pad: int | None = None) -> tuple[LayerRow, int]:
    """A conv row and its output size (square input of side h_in, 'same'-style padding k//2)."""
    pad = k // 2 if pad is None else pad
    h_out = (h_in + 2 * pad - k) // stride + 1
    fan_in = cin // groups * k * k
    return (name, cout * fan_in, h_out * h_out, fan_in), h_out


def _linear(name: str, fin: int, fout: int) -> LayerRow:
    return (name, fin * fout, 1, fin)


def _resnet20() -> list[LayerRow]:
    rows: list[LayerRow] = []
    row, h = _conv("conv1", 3, RESNET20_STEM, 3, 1, 32)
    rows.append(row)
    cin = RESNET20_STEM
    for s, (planes, stride) in enumerate(RESNET20_STAGES, start=1):
        for b in range(RESNET20_BLOCKS):
            row, h_mid = _conv(f"layer{s}.{b}.conv1", cin, planes, 3, stride if b == 0 else 1, h)
            rows.append(row)
            row, h = _conv(f"layer{s}.{b}.conv2", planes, planes, 3, 1, h_mid)
            rows.append(row)
            cin = planes  # option A: the shortcut has no weights
    rows.append(_linear("fc", cin, 10))
    return rows


def _mobilenetv1() -> list[LayerRow]:
    rows: list[LayerRow] = []
    row, h = _conv("conv1", 3, MOBILENET_STEM, 3, 2, 224)
    rows.append(row)
    cin = MOBILENET_STEM
    for i, (cout, stride) in enumerate(MOBILENET_CFG):
        row, h = _conv(f"blocks.{i}.dw", cin, cin, 3, stride, h, groups=cin)
        rows.append(row)
        row, h = _conv(f"blocks.{i}.pw", cin, cout, 1, 1, h)
        rows.append(row)
        cin = cout
    rows.append(_linear("fc", cin, 1000))
    return rows


def _resnet50() -> list[LayerRow]:
    rows: list[LayerRow] = []
    row, h = _conv("conv1", 3, RESNET50_STEM, 7, 2, 224)
    rows.append(row)
    h = (h + 2 * 1 - 3) // 2 + 1  # max pool 3x3 stride 2 pad 1: 112 -> 56
    cin = RESNET50_STEM
    for s, (planes, n_blocks, stride) in enumerate(RESNET50_STAGES, start=1):
        for b in range(n_blocks):
            st = stride if b == 0 else 1
            cout = planes * BOTTLENECK_EXPANSION
            r1, h1 = _conv(f"layer{s}.{b}.conv1", cin, planes, 1, 1, h)
            r2, h2 = _conv(f"layer{s}.{b}.conv2", planes, planes, 3, st, h1)  # v1.5: stride here
            r3, h3 = _conv(f"layer{s}.{b}.conv3", planes, cout, 1, 1, h2)
            rows += [r1, r2, r3]
            if st != 1 or cin != cout:
                rd, _ = _conv(f"layer{s}.{b}.downsample.0", cin, cout, 1, st, h, pad=0)
                rows.append(rd)
            cin, h = cout, h3
    rows.append(_linear("fc", cin, 1000))
    return rows


_TABLES = {"resnet20": _resnet20, "mobilenetv1": _mobilenetv1, "resnet50": _resnet50}


def _check_arch(arch: Any) -> str:
    return choice(arch, "arch", ARCHS)


def layer_table(arch: str) -> list[LayerRow]:
    """Every prunable tensor of ``arch``: ``[(name, n_weights, flops_per_weight, fan_in), ...]``."""
    return list(_TABLES[_check_arch(arch)]())


def dense_totals(arch: str) -> tuple[int, int]:
    """(number of prunable weights, dense MACs = sum n_weights * flops_per_weight)."""
    rows = layer_table(arch)
    return sum(r[1] for r in rows), sum(r[1] * r[2] for r in rows)


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise OptionError(f"`dtype` must be float32 or float64; got {dtype!r}")
    return dt


def _importances(sizes: np.ndarray, fan_ins: np.ndarray, seed: int, dtype: np.dtype) -> np.ndarray:
    """Concatenated w**2 with w ~ N(0, 1/fan_in) per layer, generated in place (one array)."""
    rng = np.random.default_rng(seed)
    out = np.empty(int(sizes.sum()), dtype=dtype)
    pos = 0
    for n, fan_in in zip(sizes.tolist(), fan_ins.tolist()):
        view = out[pos:pos + n]
        rng.standard_normal(out=view, dtype=dtype)
        np.square(view, out=view)
        view *= dtype.type(1.0 / fan_in)
        pos += n
    return out


def _build(names, sizes, flops, fan_ins, nnz_fraction, flops_fraction, seed, dtype,
           metadata) -> PruningInstance:
    dt = _check_dtype(dtype)
    nnz_fraction = fraction(nnz_fraction, "nnz_fraction", optional=False)
    flops_fraction = fraction(flops_fraction, "flops_fraction", optional=False)
    integer(seed, "seed", 0)
    sizes = np.asarray(sizes, dtype=np.int64)
    flops = np.asarray(flops, dtype=np.float64)
    p = int(sizes.sum())
    total_flops = float(np.dot(sizes, flops))
    imp = _importances(sizes, np.asarray(fan_ins, dtype=np.float64), int(seed), dt)
    meta = dict(metadata)
    meta.update(nnz_fraction=nnz_fraction, flops_fraction=flops_fraction, seed=int(seed),
                importance="w**2, w ~ N(0, 1/fan_in)")
    return PruningInstance.from_flat(imp, sizes, flops.tolist(), max_nnz=int(math.floor(nnz_fraction * p)),
                                     max_flops=flops_fraction * total_flops, names=list(names),
                                     metadata=meta, copy=False)


def arch_instance(arch: str, nnz_fraction: float, flops_fraction: float, seed: int = 0,
                  dtype: Any = np.float32) -> PruningInstance:
    """An instance shaped like ``arch`` with synthetic magnitude importances (see module doc)."""
    rows = layer_table(arch)
    names, sizes, flops, fan_ins = zip(*rows)
    return _build(names, sizes, flops, fan_ins, nnz_fraction, flops_fraction, seed, dtype,
                  {"source": "falcon_milp.synthetic.arch_instance", "arch": arch})


# spatial sizes of a 224x224 CNN, used as the FLOP costs of random layered instances
_SPATIAL = (12544, 3136, 784, 196, 49)


def random_layered(n_weights: int, n_layers: int, seed: int = 0, nnz_fraction: float = 0.3,
                   flops_fraction: float = 0.2, dtype: Any = np.float32) -> PruningInstance:
    """A CNN-like instance of any size: ``n_layers`` layers holding ``n_weights`` weights in all.

    Layer sizes are proportional to log-normal draws (each >= 1); along the depth the FLOP cost
    per weight steps down through 12544, 3136, 784, 196, 49 (the feature-map sizes of a
    224x224 CNN) and the last layer is a classifier with cost 1. ``fan_in`` is 9 * a channel
    count of about sqrt(layer size / 9). Importances and budgets as in :func:`arch_instance`.
    """
    integer(n_weights, "n_weights", 1)
    integer(n_layers, "n_layers", 1)
    if n_layers > n_weights:
        raise OptionError(f"`n_layers` must be <= n_weights ({n_weights}); got {n_layers}")
    integer(seed, "seed", 0)
    rng = np.random.default_rng([int(seed), 1])
    share = rng.lognormal(0.0, 1.0, size=n_layers)
    sizes = 1 + np.floor(share / share.sum() * (n_weights - n_layers)).astype(np.int64)
    sizes[np.argmax(sizes)] += n_weights - int(sizes.sum())
    stage = np.minimum((np.arange(n_layers) * len(_SPATIAL)) // max(n_layers - 1, 1), len(_SPATIAL) - 1)
    flops = np.array([_SPATIAL[s] for s in stage], dtype=np.float64)
    if n_layers > 1:
        flops[-1] = 1.0
    fan_ins = 9 * np.maximum(1, np.round(np.sqrt(sizes / 9.0)))
    names = [f"layer{i}" for i in range(n_layers)]
    return _build(names, sizes, flops, fan_ins, nnz_fraction, flops_fraction, seed, dtype,
                  {"source": "falcon_milp.synthetic.random_layered", "n_layers": int(n_layers)})
