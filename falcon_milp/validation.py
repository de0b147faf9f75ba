"""Validation in one place: the domains of options, and the rules an instance must satisfy.

Options. Each check declares a domain once and raises with one message template,

    `{name}` must be {domain}; got {value!r}

as the ``error`` class the caller names (default :class:`~falcon_milp.exceptions.OptionError`;
the solvers and the CLI pass :class:`~falcon_milp.exceptions.SolverOptionError`, its subclass).
Each returns the value in its canonical type: :func:`fraction` (a number in [0, 1]),
:func:`integer` (an integer >= low), :func:`real` (a finite number >= or > low), :func:`choice`
(one of a list), :func:`boolean`, :func:`grid` (a number or a non-empty list of numbers in a range).

Instances. The rules every instance satisfies (raised as
:class:`~falcon_milp.exceptions.InvalidInstanceError`), checked before any solve; messages name
the field, the group and what was expected and what came. Nothing here modifies its arguments.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Sequence

import numpy as np

from .exceptions import FalconError, InvalidInstanceError, OptionError

ErrorClass = type[FalconError]


# ----------------------------------------------------------------------------- option domains
def fail(name: str, domain: str, value: Any, error: ErrorClass = OptionError) -> FalconError:
    """The one option message ("`name` must be <domain>; got <value>") as an ``error``."""
    return error(f"`{name}` must be {domain}; got {value!r}")


def _real_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, Real)


def fraction(value: Any, name: str, error: ErrorClass = OptionError, optional: bool = True,
             below_one: bool = False) -> float | None:
    """A number in [0, 1] (in [0, 1) with ``below_one``; NaN fails) as a float; None passes when
    ``optional``."""
    if value is None and optional:
        return None
    if not _real_number(value) or not (0.0 <= float(value) < 1.0 if below_one else 0.0 <= float(value) <= 1.0):
        raise fail(name, "in [0, 1)" if below_one else "in [0, 1]", value, error)
    return float(value)


def integer(value: Any, name: str, low: int = 0, error: ErrorClass = OptionError,
            optional: bool = False) -> int | None:
    """An integer >= ``low`` (bools refused) as an int; None passes when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < low:
        raise fail(name, ("None or " if optional else "") + f"an integer >= {low}", value, error)
    return int(value)


def real(value: Any, name: str, low: float = 0.0, strict: bool = False, error: ErrorClass = OptionError,
         unit: str = "", optional: bool = False) -> float | None:
    """A finite number >= ``low`` (> with ``strict``; any finite number for low = -inf) as a
    float; ``unit`` names it in the message ("seconds"); None passes when ``optional``."""
    if value is None and optional:
        return None
    ok = _real_number(value) and math.isfinite(float(value)) and (
        float(value) > low if strict else float(value) >= low)
    if not ok:
        what = "a finite number" + (f" of {unit}" if unit else "")
        if low > -math.inf:
            what += f" {'>' if strict else '>='} {low:g}"
        raise fail(name, what, value, error)
    return float(value)


def choice(value: Any, name: str, allowed: Sequence[Any], error: ErrorClass = OptionError) -> Any:
    """One of ``allowed`` (listed by repr in the message)."""
    if value not in allowed:
        raise fail(name, "one of " + ", ".join(map(repr, allowed)), value, error)
    return value


def boolean(value: Any, name: str, error: ErrorClass = OptionError) -> bool:
    """True or False (not 0 / 1)."""
    if not isinstance(value, bool):
        raise fail(name, "True or False", value, error)
    return value


def grid(value: Any, name: str, low: float = 0.0, high: float = math.inf,
         error: ErrorClass = OptionError) -> tuple[float, ...]:
    """A number or a non-empty sequence of numbers in [low, high] as a tuple."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise fail(name, "a number or a non-empty list of numbers", value, error)
    for v in items:
        if not _real_number(v) or math.isnan(float(v)) or not low <= float(v) <= high:
            raise error(f"`{name}` entries must be numbers in [{low:g}, {high:g}]; got {v!r}")
    return tuple(float(v) for v in items)


# ----------------------------------------------------------------------------- instances


def first_bad(values: np.ndarray) -> tuple[int, float] | None:
    """Index and value of the first NaN, infinite or negative entry, or None."""
    bad = ~np.isfinite(values) | (values < 0)
    if not bad.any():
        return None
    idx = int(np.flatnonzero(bad)[0])
    return idx, float(values[idx])


def as_importance_array(values: Any, group: str) -> np.ndarray:
    """Return a 1-D float array (float32 kept as float32) of finite, non-negative importances."""
    try:
        arr = np.asarray(values)
    except Exception as exc:  # ragged lists and the like
        raise InvalidInstanceError(
            f"`importances` of group '{group}' must be a 1-D array of numbers; {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InvalidInstanceError(
            f"`importances` of group '{group}' must be numeric; got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise InvalidInstanceError(f"`importances` of group '{group}' must be real; got complex")
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size == 0:
        raise InvalidInstanceError(f"`importances` of group '{group}' is empty; a group needs >= 1 weight")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    bad = first_bad(arr)
    if bad is not None:
        raise InvalidInstanceError(
            f"`importances` of group '{group}' must be finite and >= 0; got {bad[1]!r} at index {bad[0]}")
    return arr


def check_cost(value: Any, field: str, group: str) -> float:
    """A per-weight cost: a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise InvalidInstanceError(
            f"`{field}` of group '{group}' must be a finite number >= 0; got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise InvalidInstanceError(f"`{field}` of group '{group}' must be finite and >= 0; got {v!r}")
    return v


def check_max_nnz(value: Any, total: int) -> int:
    """S: an integer >= 0, at most `total` (None means no budget: all `total` weights).

    A larger S constrains nothing and is clamped to `total` (exact integer comparison), so
    2**63 or 1e30 never reaches a solver's fixed-width integers.
    """
    if value is None:
        return total
    if isinstance(value, bool):
        raise InvalidInstanceError(f"`max_nnz` must be an integer >= 0; got {value!r}")
    if isinstance(value, (Integral, np.integer)):
        v = int(value)
    elif isinstance(value, (Real, np.floating)) and math.isfinite(float(value)) and float(value).is_integer():
        v = int(value)
    else:
        raise InvalidInstanceError(f"`max_nnz` must be an integer >= 0; got {value!r}")
    if v < 0:
        raise InvalidInstanceError(f"`max_nnz` must be an integer >= 0; got {v}")
    return min(v, total)


def check_budget(value: Any, field: str) -> float:
    """A resource budget: a real number >= 0 (math.inf allowed), not NaN."""
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise InvalidInstanceError(f"`{field}` must be a number >= 0; got {value!r}")
    v = float(value)
    if math.isnan(v) or v < 0:
        raise InvalidInstanceError(f"`{field}` must be a number >= 0; got {v!r}")
    return v


def check_names(names: Sequence[Any] | None, n_groups: int) -> tuple[str, ...]:
    """Group names: unique, non-empty strings, one per group (default layer0, layer1, ...)."""
    if names is None:
        return tuple(f"layer{i}" for i in range(n_groups))
    names = list(names)
    if len(names) != n_groups:
        raise InvalidInstanceError(
            f"`names` must have one entry per group ({n_groups}); got {len(names)}")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise InvalidInstanceError(f"`names` entry {i} must be a non-empty string; got {name!r}")
        if name in seen:
            raise InvalidInstanceError(f"`names` must be unique; '{name}' appears twice")
        seen.add(name)
    return tuple(names)


def check_group_sizes(sizes: Any) -> np.ndarray:
    arr = np.asarray(sizes)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInstanceError("`group_sizes` must be a non-empty 1-D array of positive integers")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInstanceError(f"`group_sizes` must hold integers; got dtype {arr.dtype}")
    if (arr <= 0).any():
        i = int(np.flatnonzero(arr <= 0)[0])
        raise InvalidInstanceError(f"`group_sizes` entry {i} must be >= 1; got {int(arr[i])}")
    return arr.astype(np.int64)
