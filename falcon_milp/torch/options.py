"""Option checks that need torch (calibration pairs, devices) or the file system (new files).

The domains every layer shares (fractions, counts, numbers, choices, grids) are in
:mod:`falcon_milp.validation`; these use the same message template and
:class:`~falcon_milp.exceptions.OptionError`.
"""
from __future__ import annotations

from typing import Any

import torch

from ..exceptions import OptionError

__all__ = ["Calib", "check_calib", "device_option", "new_file_option"]

Calib = tuple[torch.Tensor, torch.Tensor]


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
