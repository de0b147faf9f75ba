"""The pruning instance: groups of weights, per-weight importances, resource costs and budgets.

A group is one prunable tensor (layer). Inside a group every weight has the same cost for
each resource; resource 0 is the nonzero count (cost 1, budget S = ``max_nnz``) and
resource 1 the FLOPs (cost f_l, budget F = ``max_flops``). Further resources (bytes, a
measured latency per weight, ...) have the same shape: one cost per group and one budget.

The selection problem is

    max  sum_i I_i z_i   s.t.  sum_l c_{l,r} * (number of kept weights of group l) <= B_r  for all r,
                              z in {0, 1}^p.

Budgets are resolved once, when an instance is built: ``None`` means no budget (the dense
total: S = p, B_r = the smallest float >= sum_l c_{l,r} n_l, exactly); a budget above the
dense total constrains nothing and is clamped to it (so ``max_nnz=2**63`` or ``1e30`` reads
as p); ``math.inf`` stays infinite (the file format's ``null``).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields
from decimal import Decimal
from fractions import Fraction
from typing import Any, Mapping, Sequence

import numpy as np

from . import validation as v
from .exceptions import InvalidInstanceError

NNZ, FLOPS = 0, 1


_FLOAT_MAX = Fraction(sys.float_info.max)


def _ceil_float(x: Fraction) -> float:
    """The smallest float >= x (so that a budget resolved from an exact total never cuts it)."""
    if x > _FLOAT_MAX:
        return math.inf
    f = float(x)
    return f if Fraction(f) >= x else math.nextafter(f, math.inf)


def dense_total(costs: np.ndarray, sizes: np.ndarray) -> float:
    """The smallest float >= sum_l costs[l] * sizes[l], summed exactly (inf beyond the float range)."""
    return _ceil_float(sum((Fraction(float(c)) * int(n) for c, n in zip(costs, sizes)), Fraction(0)))


def nnz_from_fraction(fraction: float, total: int) -> int:
    """S = floor(fraction * total), with ``fraction`` read as its shortest decimal (0.29 = 29/100).

    Exact, so ``nnz_from_fraction(0.29, 100) == 29`` although ``0.29 * 100 < 29`` in floats.
    The one rule for every fraction-to-S conversion (``export``, ``prune``, synthetic suites).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(fraction) <= 1.0:
        raise InvalidInstanceError(f"`nnz_fraction` must be a number in [0, 1]; got {fraction!r}")
    return int(math.floor(Fraction(Decimal(repr(float(fraction)))) * int(total)))


def budgets_from_fractions(n_weights: int, dense_flops: float, nnz_fraction: float | None = None,
                           flops_fraction: float | None = None) -> tuple[int | None, float | None]:
    """(max_nnz, max_flops) from kept fractions of the dense totals; None stays None (no budget).

    S = :func:`nnz_from_fraction` (floor, exact); F = flops_fraction * dense_flops (a float).
    """
    if flops_fraction is not None and (isinstance(flops_fraction, bool) or not isinstance(
            flops_fraction, (int, float, np.integer, np.floating)) or not 0.0 <= float(flops_fraction) <= 1.0):
        raise InvalidInstanceError(f"`flops_fraction` must be a number in [0, 1]; got {flops_fraction!r}")
    max_nnz = None if nnz_fraction is None else nnz_from_fraction(nnz_fraction, n_weights)
    max_flops = None if flops_fraction is None else float(flops_fraction) * float(dense_flops)
    return max_nnz, max_flops


def _budget_field(resource_names: Sequence[str], r: int) -> str:
    return "max_flops" if r == FLOPS else f"extra_resources['{resource_names[r]}'] budget"


def _resolve_budget(value: Any, costs: np.ndarray, sizes: np.ndarray, field_name: str) -> float:
    """A checked budget of resource r >= 1: None -> the dense total; above it -> clamped to it."""
    dense = dense_total(costs, sizes)
    if value is None:
        return dense
    b = v.check_budget(value, field_name)
    return dense if math.isfinite(b) and b > dense else b


@dataclass(frozen=True, eq=False)
class PruningInstance:
    """An immutable pruning problem. Build it with :meth:`from_groups` or :meth:`from_flat`.

    Attributes
    ----------
    importance : (p,) float32/float64 array, read-only, groups concatenated in order.
    group_sizes : (L,) int64, number of weights of each group.
    names : group names, unique.
    costs : (L, R) float64, cost per kept weight of each group for each resource.
    budgets : tuple of R budgets; ``budgets[0]`` is the int S, the others floats (inf allowed).
    resource_names : ("nnz", "flops", ...extra).
    metadata : free-form JSON-serialisable dict (model, input shape, importance kind, source).

    Calling the constructor directly validates every field like :meth:`from_flat` and keeps
    read-only copies of the arrays, so later changes to the caller's arrays cannot reach it.
    """

    importance: np.ndarray
    group_sizes: np.ndarray
    names: tuple[str, ...]
    costs: np.ndarray
    budgets: tuple[Any, ...]
    resource_names: tuple[str, ...] = ("nnz", "flops")
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Direct construction: validate through :meth:`from_flat` and adopt its own copies."""
        costs = np.array(self.costs, dtype=np.float64)          # a copy, never the caller's
        rnames, budgets = tuple(self.resource_names), tuple(self.budgets)
        if costs.ndim != 2 or costs.shape[1] != len(rnames) or len(budgets) != len(rnames):
            raise InvalidInstanceError(
                f"`costs` must have shape (groups, {len(rnames)} resources) with one budget per "
                f"resource; got shape {costs.shape} and {len(budgets)} budgets")
        if rnames[:2] != ("nnz", "flops"):
            raise InvalidInstanceError(f"`resource_names` must start with 'nnz', 'flops'; got {rnames[:2]}")
        if not np.array_equal(costs[:, NNZ], np.ones(costs.shape[0])):
            raise InvalidInstanceError("`costs` column 0 (nnz) must be all ones")
        extra = {rnames[r]: (costs[:, r], budgets[r]) for r in range(2, len(rnames))}
        built = PruningInstance.from_flat(
            self.importance, self.group_sizes, costs[:, FLOPS], budgets[NNZ], budgets[FLOPS],
            names=self.names, extra_resources=extra, metadata=self.metadata, copy=True)
        for f in fields(self):
            object.__setattr__(self, f.name, getattr(built, f.name))

    @classmethod
    def _assemble(cls, importance: np.ndarray, group_sizes: np.ndarray, names: tuple[str, ...],
                  costs: np.ndarray, budgets: tuple[Any, ...], resource_names: tuple[str, ...],
                  metadata: dict) -> "PruningInstance":
        """An instance from fields already validated and owned (read-only); skips __post_init__."""
        obj = object.__new__(cls)
        for name, value in (("importance", importance), ("group_sizes", group_sizes), ("names", names),
                            ("costs", costs), ("budgets", budgets), ("resource_names", resource_names),
                            ("metadata", metadata)):
            object.__setattr__(obj, name, value)
        return obj

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_groups(
        cls,
        importances: Sequence[Any],
        flops_per_weight: Sequence[float],
        max_nnz: int | None = None,
        max_flops: float | None = None,
        names: Sequence[str] | None = None,
        extra_resources: Mapping[str, tuple[Sequence[float], float | None]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> "PruningInstance":
        """Build from one importance array per group and one FLOP cost per weight of each group.

        ``max_nnz=None`` / ``max_flops=None`` mean no such budget (resolved to the dense total).
        ``extra_resources`` maps a resource name to (cost per weight of each group, budget).
        The caller's arrays are copied, never modified.
        """
        if isinstance(importances, np.ndarray) or not isinstance(importances, Sequence):
            raise InvalidInstanceError(
                "`importances` must be a list with one array per group; got "
                f"{type(importances).__name__}")
        if len(importances) == 0:
            raise InvalidInstanceError("`importances` is empty; an instance needs at least one group")
        n_groups = len(importances)
        group_names = v.check_names(names, n_groups)
        arrays = [v.as_importance_array(a, group_names[i]) for i, a in enumerate(importances)]
        dtype = np.float32 if all(a.dtype == np.float32 for a in arrays) else np.float64
        flat = np.concatenate([a.astype(dtype, copy=False) for a in arrays])
        sizes = np.array([a.size for a in arrays], dtype=np.int64)
        return cls._build(flat, sizes, group_names, flops_per_weight, max_nnz, max_flops,
                          extra_resources, metadata)

    @classmethod
    def from_flat(
        cls,
        importance: np.ndarray,
        group_sizes: Sequence[int],
        flops_per_weight: Sequence[float],
        max_nnz: int | None = None,
        max_flops: float | None = None,
        names: Sequence[str] | None = None,
        extra_resources: Mapping[str, tuple[Sequence[float], float | None]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        copy: bool = True,
    ) -> "PruningInstance":
        """Build from one flat importance array and the group sizes (cheap at 25M weights).

        With ``copy=False`` a float32/float64 array is shared, not copied: the instance holds a
        read-only view (the caller's array and its flags are left as they are), so the caller
        must not change the array while the instance is in use.
        """
        sizes = v.check_group_sizes(group_sizes)
        group_names = v.check_names(names, sizes.size)
        arr = np.asarray(importance)
        if arr.ndim != 1 or arr.size != int(sizes.sum()):
            raise InvalidInstanceError(
                f"`importance` must be 1-D with sum(group_sizes) = {int(sizes.sum())} entries; "
                f"got shape {arr.shape}")
        if arr.dtype not in (np.float32, np.float64):
            if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
                raise InvalidInstanceError(f"`importance` must be real numbers; got dtype {arr.dtype}")
            arr = arr.astype(np.float64)
        else:
            arr = arr.copy() if copy else arr.view()   # a view: its read-only flag is its own
        bad = v.first_bad(arr)
        if bad is not None:
            offsets = np.concatenate([[0], np.cumsum(sizes)])
            g = int(np.searchsorted(offsets, bad[0], side="right") - 1)
            raise InvalidInstanceError(
                f"`importances` of group '{group_names[g]}' must be finite and >= 0; "
                f"got {bad[1]!r} at index {bad[0] - int(offsets[g])}")
        return cls._build(arr, sizes, group_names, flops_per_weight, max_nnz, max_flops,
                          extra_resources, metadata)

    @classmethod
    def _build(cls, flat, sizes, names, flops_per_weight, max_nnz, max_flops,
               extra_resources, metadata) -> "PruningInstance":
        n_groups = sizes.size
        flops = cls._cost_column(flops_per_weight, "flops_per_weight", names)
        columns = [np.ones(n_groups), flops]
        resource_names = ["nnz", "flops"]
        raw_budgets: list[Any] = [max_nnz, max_flops]
        for rname, spec in (extra_resources or {}).items():
            if not isinstance(rname, str) or not rname or rname in resource_names:
                raise InvalidInstanceError(
                    f"`extra_resources` names must be new non-empty strings; got {rname!r}")
            try:
                costs_r, budget_r = spec
            except (TypeError, ValueError):
                raise InvalidInstanceError(
                    f"`extra_resources['{rname}']` must be a pair (costs per group, budget)") from None
            columns.append(cls._cost_column(costs_r, f"extra_resources['{rname}']", names))
            resource_names.append(rname)
            raw_budgets.append(budget_r)
        costs = np.column_stack(columns).astype(np.float64)
        p = int(sizes.sum())
        budgets: list[Any] = [v.check_max_nnz(raw_budgets[0], p)]
        for r in range(1, len(resource_names)):
            budgets.append(_resolve_budget(raw_budgets[r], costs[:, r], sizes, _budget_field(resource_names, r)))
        meta = dict(metadata or {})
        flat.flags.writeable = False
        sizes.flags.writeable = False
        costs.flags.writeable = False
        return cls._assemble(flat, sizes, tuple(names), costs, tuple(budgets), tuple(resource_names), meta)

    @staticmethod
    def _cost_column(values: Any, field_name: str, names: tuple[str, ...]) -> np.ndarray:
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise InvalidInstanceError(
                f"`{field_name}` must have one number per group ({len(names)}); got {values!r}")
        vals = list(values)
        if len(vals) != len(names):
            raise InvalidInstanceError(
                f"`{field_name}` must have one number per group ({len(names)}); got {len(vals)}")
        return np.array([v.check_cost(x, field_name, names[i]) for i, x in enumerate(vals)])

    # ----------------------------------------------------------------- views
    @property
    def n_weights(self) -> int:
        return int(self.importance.size)

    @property
    def n_groups(self) -> int:
        return int(self.group_sizes.size)

    @property
    def n_resources(self) -> int:
        return len(self.resource_names)

    @property
    def offsets(self) -> np.ndarray:
        """(L+1,) start of each group in the flat arrays; offsets[-1] = p."""
        out = np.zeros(self.n_groups + 1, dtype=np.int64)
        np.cumsum(self.group_sizes, out=out[1:])
        return out

    @property
    def importances(self) -> list[np.ndarray]:
        """One read-only view per group."""
        return np.split(self.importance, self.offsets[1:-1])

    @property
    def flops_per_weight(self) -> np.ndarray:
        return self.costs[:, FLOPS]

    @property
    def max_nnz(self) -> int:
        return int(self.budgets[NNZ])

    @property
    def max_flops(self) -> float:
        return float(self.budgets[FLOPS])

    @property
    def total_flops(self) -> float:
        """Dense FLOPs, sum_l f_l * n_l (float)."""
        return float(np.dot(self.costs[:, FLOPS], self.group_sizes))

    def weight_costs(self, resource: int = FLOPS) -> np.ndarray:
        """(p,) cost of each weight for one resource (materialised: O(p) memory)."""
        return np.repeat(self.costs[:, resource], self.group_sizes)

    def group_of_weight(self) -> np.ndarray:
        """(p,) index of the group of each weight."""
        return np.repeat(np.arange(self.n_groups), self.group_sizes)

    def with_budgets(self, **budgets: Any) -> "PruningInstance":
        """A copy with some budgets changed: ``max_nnz=``, ``max_flops=`` or an extra resource name.

        Budgets not named are kept; ``None`` means no budget (the dense total), as in
        :meth:`from_groups`. The arrays are shared (they are read-only).
        """
        new = list(self.budgets)
        for key, value in budgets.items():
            if key == "max_nnz":
                new[NNZ] = v.check_max_nnz(value, self.n_weights)
                continue
            r = FLOPS if key == "max_flops" else (
                self.resource_names.index(key) if key in self.resource_names[2:] else None)
            if r is None:
                raise InvalidInstanceError(f"unknown budget `{key}`; known: max_nnz, max_flops, "
                                           + ", ".join(self.resource_names[2:]))
            new[r] = _resolve_budget(value, self.costs[:, r], self.group_sizes,
                                     _budget_field(self.resource_names, r))
        return PruningInstance._assemble(self.importance, self.group_sizes, self.names, self.costs,
                                         tuple(new), self.resource_names, dict(self.metadata))

    def summary(self) -> dict[str, Any]:
        """Sizes and budgets, JSON-friendly (what `falcon-milp info` prints)."""
        return {
            "n_weights": self.n_weights,
            "n_groups": self.n_groups,
            "dtype": str(self.importance.dtype),
            "resources": {
                name: {"budget": self.budgets[r],
                       "dense_total": float(np.dot(self.costs[:, r], self.group_sizes))}
                for r, name in enumerate(self.resource_names)},
            "total_importance": float(np.sum(self.importance, dtype=np.float64)),
            "metadata": self.metadata,
        }
