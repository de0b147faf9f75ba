"""Option checks of the PyTorch side: one message template, :class:`OptionError` for all.

Each check returns the value in its canonical type or raises ``OptionError`` with one line
naming the option, what it must be, and what came.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Sequence

import torch

from . import OptionError

__all__ = ["Calib", "check_calib", "choice", "device_option", "fraction", "grid", "int_option", "new_file_option",
           "real_option"]

Calib = tuple[torch.Tensor, torch.Tensor]


def fraction(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
        raise OptionError(f"`{name}` must be in [0, 1]; got {value!r}")
    return float(value)


def int_option(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < low:
        raise OptionError(f"`{name}` must be an integer >= {low}; got {value!r}")
    return int(value)


def real_option(value: Any, name: str, low: float = 0.0, strict: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(float(value))
          and (float(value) > low if strict else float(value) >= low))
    if not ok:
        sign = ">" if strict else ">="
        raise OptionError(f"`{name}` must be a finite number {sign} {low:g}; got {value!r}")
    return float(value)


def grid(value: Any, name: str, low: float = 0.0, high: float = math.inf) -> tuple[float, ...]:
    """A number or a non-empty sequence of numbers in [low, high] as a tuple."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise OptionError(f"`{name}` must be a number or a non-empty list of numbers; got {value!r}")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, Real) or not (low <= float(v) <= high) or math.isnan(float(v)):
            raise OptionError(f"`{name}` entries must be numbers in [{low:g}, {high:g}]; got {v!r}")
        out.append(float(v))
    return tuple(out)


def choice(value: Any, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise OptionError(f"`{name}` must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def check_calib(calib: Any) -> Calib:
    if not (isinstance(calib, (tuple, list)) and len(calib) == 2
            and all(isinstance(t, torch.Tensor) for t in calib)):
        raise OptionError("`calib` must be a pair of tensors (inputs, targets)")
    x, y = calib
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise OptionError(f"`calib` inputs and targets must hold the same number (>= 1) of examples; "
                          f"got {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def device_option(value: Any) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:k"`` (a CUDA device only where one is available)."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise OptionError(f"`device` must be 'cpu' or 'cuda[:k]'; got {value!r}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise OptionError(f"`device` must be 'cpu' or 'cuda[:k]'; got {value!r}")
    if not torch.cuda.is_available():
        raise OptionError(f"`device` is {value!r} but torch sees no CUDA device here")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise OptionError(f"`device` is {value!r} but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev


def new_file_option(value: Any, name: str) -> str | None:
    """A path where a new file can be created (the file must not exist; its folder must)."""
    if value is None:
        return None
    import os
    try:
        path = os.fspath(value)
    except TypeError:
        raise OptionError(f"`{name}` must be a file path; got {value!r}") from None
    if not isinstance(path, str) or not path:
        raise OptionError(f"`{name}` must be a file path; got {value!r}")
    if os.path.exists(path):
        raise OptionError(f"`{name}` {path!r} exists; give the name of a new file (it is scratch space, "
                          "deleted after the run)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OptionError(f"`{name}` {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise OptionError(f"`{name}` {path!r}: folder {folder!r} is not writable")
    return path
